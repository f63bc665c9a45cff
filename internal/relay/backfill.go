package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

// Backfill follows Netflix's DBLog, as Debezium's incremental snapshots do:
// the table is read in primary-key chunks while the stream goes on, and a
// chunk's rows are published at the chunk's high watermark, a logical
// message written into the WAL after the chunk was read, except the rows
// whose key the stream changed in a way the chunk does not show. The chunk
// cursor is part of the checkpoint, committed in the same Kafka transaction
// as the chunk's events, so a restart continues after the last published
// chunk.
//
// Which changes does a chunk not show? WAL order is not visibility order:
// Postgres writes and flushes a transaction's commit record, marks it
// committed in pg_xact, waits for a synchronous standby if one is
// configured, and only then removes it from the proc array
// (RecordTransactionCommit, then ProcArrayEndTransaction in
// CommitTransaction); new snapshots see it from that moment on. The stream
// delivers the transaction once its commit record is flushed, so it may be
// delivered - and published - before it is visible, for microseconds
// normally, for as long as a slow synchronous standby takes. A chunk read in
// that moment holds the row as it was before, and publishing it after the
// update would overtake the update (or bring back a deleted row). So the
// window is defined by the chunk's snapshot, not by WAL positions:
//
//  1. Each chunk is read in a REPEATABLE READ, READ ONLY transaction whose
//     first statement returns pg_current_snapshot(): rows and snapshot S are
//     one. A row holds the changes of exactly the transactions visible in
//     S. The high watermark H is written after that transaction ends.
//  2. Every transaction T visible in S is delivered before H: T's commit
//     record was inserted before T left the proc array, which was before S
//     was taken, which was before H's commit record was inserted; the stream
//     delivers transactions in the order of their commit records.
//  3. Rule at H: a chunk row is dropped iff a transaction T that the stream
//     delivered before H changed its key and T is not visible in S. A
//     visible T is reflected in the row already. An invisible T is newer
//     than the row: a later change of the same row waits for the earlier
//     one's row lock, which is released only after it left the proc array,
//     so an older change than the row's is visible. Its change was
//     published when it was delivered, and any later change follows in the
//     stream, so the key still ends with its newest state. Transactions
//     delivered after H are published after the chunk: correct order.
//  4. The committer therefore keeps, while a table's backfill runs, a log of
//     the table's streamed changes: the keys per source transaction
//     (changeLog), not only those after some watermark. At each H, after
//     deciding, it forgets the transactions visible in S: a committed
//     transaction visible in one snapshot is visible in every later one.
//     What stays are the changes since the last chunk and the few
//     transactions committed but not yet visible; nothing waits for them.
//     A truncate, or a transaction logged past maxLoggedKeys, has no keys
//     to drop: while it is invisible in S the chunk is not published but
//     read again, after it has become visible.
//  5. The base case: transactions delivered before the log began (a
//     backfill requested mid-session, or a session starting with a backfill
//     running). At a request, the last transactions the stream delivered
//     that changed the table are known (xidRing): they are logged with
//     unknown keys, so the first chunk is read only once they are visible.
//     In both cases the first chunk also waits for every transaction whose
//     commit waits for a synchronous standby (wait event SyncRep in
//     pg_stat_activity; pgChunks.awaitVisible): the only way a commit stays
//     invisible for long. pg_xact_status() cannot serve here: it reports
//     "in progress" for a committed transaction still in the proc array.
//     Only committed transactions are waited for: they become visible as
//     soon as the standby confirms. A transaction that stays open for hours
//     holds nothing back: it is not committed, and when it commits its
//     changes are delivered and logged like any other. A wait of more than
//     a second is logged at WARN with the session's pid and wait event, and
//     counted in cdcrelay_backfill_held_back_total.
//
// The one assumption left: without a synchronous standby, the moment
// between a commit record's flush and the transaction leaving the proc
// array is short (a few steps of RecordTransactionCommit and
// ProcArrayEndTransaction, waiting at most for their locks); a commit that
// took longer than a relay restart (or, at a backfill request, one older
// than the ring's 4096 transactions) would not be waited for by the first
// chunk. So would a COMMIT PREPARED waiting for a synchronous standby (the
// session waiting is not the prepared transaction's). And to see other
// roles' wait events the relay's role needs pg_read_all_stats; without it,
// and with synchronous replication configured, the relay says so at WARN.
// The checkpoint cannot carry the unconfirmed xids instead: it has to fit
// the broker's offset metadata (offset.metadata.max.bytes, 4 KiB).
//
// There is no low watermark: the log is continuous while a backfill runs,
// and the snapshot, not a WAL position, says which changes a chunk shows.
// High watermarks of older versions and low watermarks are ignored.

// BackfillState is one table's backfill as recorded in the checkpoint.
type BackfillState struct {
	ID        string    `json:"id"`
	Where     string    `json:"where,omitempty"`
	ChunkSize int       `json:"chunk_size"`
	MaxRate   float64   `json:"max_rate,omitempty"`
	Cursor    []string  `json:"cursor,omitempty"` // primary key of the last row read
	Done      int64     `json:"done"`
	Total     int64     `json:"total"`
	Status    string    `json:"status"` // running, done, cancelled, failed
	Error     string    `json:"error,omitempty"`
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished,omitzero"`
}

// BackfillStatus is one backfill as `cdcrelay backfill --status --output
// json` prints it: an object keyed by table ("schema.table") whose values are
// these. It is an interface (scripts poll it): fields are only ever added,
// never renamed, removed or changed in meaning. README.md documents it.
type BackfillStatus struct {
	ID        string    `json:"id"`
	Where     string    `json:"where,omitempty"`
	ChunkSize int       `json:"chunk_size"`
	MaxRate   float64   `json:"max_rate,omitempty"`
	Cursor    []string  `json:"cursor,omitempty"`
	Done      int64     `json:"done"`
	Total     int64     `json:"total"`
	Status    string    `json:"status"`
	Error     string    `json:"error,omitempty"`
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished,omitzero"`
}

// Public is the state as the status JSON shows it.
func (st BackfillState) Public() BackfillStatus {
	return BackfillStatus{ID: st.ID, Where: st.Where, ChunkSize: st.ChunkSize, MaxRate: st.MaxRate,
		Cursor: st.Cursor, Done: st.Done, Total: st.Total, Status: st.Status, Error: st.Error,
		Started: st.Started, Finished: st.Finished}
}

// Backfill statuses.
const (
	BackfillRunning   = "running"
	BackfillDone      = "done"
	BackfillCancelled = "cancelled"
	BackfillFailed    = "failed"
)

// DefaultChunkSize is the rows per backfill chunk (Debezium's default too).
const DefaultChunkSize = 1024

// BackfillRequest asks the running relay to start or cancel a backfill. It
// travels as a logical message, so the relay sees it in commit order.
type BackfillRequest struct {
	Op        string  `json:"op"` // start, cancel
	ID        string  `json:"id"`
	Table     string  `json:"table"`
	Where     string  `json:"where,omitempty"`
	ChunkSize int     `json:"chunk_size,omitempty"`
	MaxRate   float64 `json:"max_rate,omitempty"`
}

func requestPrefix(cfg *config.Config) string {
	return replication.MessagePrefix + ":" + cfg.Relay.Name + ":backfill"
}
func watermarkPrefix(cfg *config.Config) string {
	return replication.MessagePrefix + ":" + cfg.Relay.Name + ":watermark"
}

// RequestBackfill writes req into the WAL for the relay named in cfg and
// returns the request's id.
func RequestBackfill(ctx context.Context, cfg *config.Config, req BackfillRequest) (string, error) {
	if req.ID == "" {
		req.ID = newID()
	}
	conn, err := pgx.Connect(ctx, cfg.Postgres.DSN)
	if err != nil {
		return "", fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.Background())
	if req.Op == "start" {
		// Refuse what the relay would refuse, while the user is still here.
		r, err := replication.OpenChunkReader(ctx, cfg.Postgres.DSN, req.Table, req.Where)
		if err != nil {
			return "", err
		}
		_, err = r.Read(ctx, nil, 1)
		r.Close()
		if err != nil {
			return "", fmt.Errorf("backfill %s: --where %q: %w", req.Table, req.Where, err)
		}
	}
	b, err := json.Marshal(req)
	if err != nil {
		return "", err
	}
	if err := replication.EmitMessage(ctx, conn.PgConn(), requestPrefix(cfg), b); err != nil {
		return "", fmt.Errorf("write backfill request: %w", err)
	}
	return req.ID, nil
}

// BackfillStates decodes the backfills recorded in a checkpoint.
func BackfillStates(cp sink.Checkpoint) (map[string]BackfillState, error) {
	out := make(map[string]BackfillState, len(cp.Backfills))
	for table, raw := range cp.Backfills {
		var st BackfillState
		if err := json.Unmarshal(raw, &st); err != nil {
			return nil, fmt.Errorf("backfill state of %s: %w", table, err)
		}
		out[table] = st
	}
	return out, nil
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// backfiller is the committer's backfill machinery for one session. It
// runs on the committer's goroutine, except the chunk reads: at most one
// chunk goroutine runs at a time, and its result is taken only by the
// committer.
type backfiller struct {
	p         *pipeline
	src       chunkSource
	reqPrefix string
	wmPrefix  string

	// ctx is the chunk goroutines'; close cancels it.
	ctx     context.Context
	cancel  context.CancelFunc
	results chan chunkResult
	wg      sync.WaitGroup
	// run is the chunk being read or awaiting its high watermark. It stays
	// set while its goroutine runs, even when the chunk was abandoned (a
	// newer request, a cancel), so no second read starts beside it.
	run *chunkRun

	next  time.Time // earliest start of the next chunk (rate limit, retry)
	timer *time.Timer

	logs map[string]*changeLog // tables whose backfill runs
	ring xidRing
	// the log of the last change's relation, looked up once per relation
	lastRel *replication.Relation
	lastLog *changeLog
	lastPK  []string
}

type chunkRun struct {
	id        string
	table     string
	state     BackfillState
	limit     int
	scheduled time.Time // when the rate limit let it start
	cancel    context.CancelFunc
	abandoned bool
	result    *chunkResult
}

// newBackfiller makes the session's backfiller; ctx bounds its chunk reads.
func newBackfiller(ctx context.Context, p *pipeline, src chunkSource) *backfiller {
	ctx, cancel := context.WithCancel(ctx)
	b := &backfiller{
		p:         p,
		src:       src,
		reqPrefix: requestPrefix(p.s.cfg),
		wmPrefix:  watermarkPrefix(p.s.cfg),
		ctx:       ctx,
		cancel:    cancel,
		results:   make(chan chunkResult, 1),
		timer:     time.NewTimer(time.Hour),
		logs:      map[string]*changeLog{},
	}
	b.timer.Stop()
	// A running backfill's log begins with the session. Of the transactions
	// committed before, the session knows none: the first chunk waits for
	// the commits waiting for a synchronous standby (point 5).
	for table, st := range b.states() {
		if st.Status == BackfillRunning {
			b.logs[table] = newChangeLog(nil)
		}
	}
	return b
}

// close stops a running chunk read, waits for its goroutine and closes the
// connections. It does not block on an error exit: the read is cancelled
// and its result is not sent once the context is done.
func (b *backfiller) close() {
	b.cancel()
	b.wg.Wait()
	b.timer.Stop()
	b.src.close()
}

// states returns the pending backfill states, decoded.
func (b *backfiller) states() map[string]BackfillState {
	st, err := BackfillStates(b.p.pending)
	if err != nil {
		b.p.log.Error("unreadable backfill state in checkpoint; ignoring it", "err", err)
		return nil
	}
	return st
}

// setState records a table's state in the pending checkpoint and asks for
// a commit. The map is copied, never changed in place: the durable
// checkpoint shares it.
func (b *backfiller) setState(table string, st BackfillState) {
	raw, _ := json.Marshal(st)
	m := maps.Clone(b.p.pending.Backfills)
	if m == nil {
		m = map[string]json.RawMessage{}
	}
	m[table] = raw
	b.p.pending.Backfills = m
	b.p.mustCheckpoint = true
	b.p.s.obs.BackfillProgress(table, st.Done, st.Total)
}

// setLog changes which tables are logged; the per-relation cache follows.
func (b *backfiller) setLog(table string, l *changeLog) {
	if l == nil {
		delete(b.logs, table)
	} else {
		b.logs[table] = l
	}
	b.lastRel, b.lastLog, b.lastPK = nil, nil, nil
}

// onMessage handles a logical message that reached the committer.
func (b *backfiller) onMessage(ctx context.Context, m *replication.LogicalMessage) error {
	switch m.Prefix {
	case b.reqPrefix:
		return b.onRequest(m.Content)
	case b.wmPrefix:
		kind, id, _ := strings.Cut(string(m.Content), ":")
		if kind != "high" {
			return nil // a low watermark of an older version
		}
		r := b.run
		if r == nil || r.id != id || r.abandoned {
			return nil // a chunk abandoned, or of an earlier session
		}
		// The reader writes the high watermark before it hands over the
		// rows, so they are at most a moment away.
		for r.result == nil {
			select {
			case res := <-b.results:
				b.onResult(res)
			case <-ctx.Done():
				return ctx.Err()
			}
			if b.run != r {
				return nil // the read failed after all; it is retried
			}
		}
		return b.publishChunk(ctx, r)
	}
	return nil
}

func (b *backfiller) onRequest(content []byte) error {
	var req BackfillRequest
	if err := json.Unmarshal(content, &req); err != nil {
		b.p.log.Error("ignoring unreadable backfill request", "err", err)
		return nil
	}
	table := req.Table
	states := b.states()
	cur, exists := states[table]
	switch req.Op {
	case "start":
		if exists && cur.ID == req.ID {
			return nil // seen before this restart
		}
		st := BackfillState{ID: req.ID, Where: req.Where, ChunkSize: req.ChunkSize, MaxRate: req.MaxRate,
			Status: BackfillRunning, Started: time.Now().UTC()}
		if st.ChunkSize <= 0 {
			st.ChunkSize = DefaultChunkSize
		}
		if _, mapped := b.p.mapper.Spec(table); !mapped {
			st.Status, st.Error = BackfillFailed, "table is not mapped in relay.toml"
		}
		b.abandon(table)
		if st.Status == BackfillRunning {
			// The transactions just delivered may not be visible yet: the
			// first chunk waits for them (point 5 of the argument).
			b.setLog(table, newChangeLog(b.ring.of(table)))
		} else {
			b.setLog(table, nil)
		}
		b.p.log.Info("backfill requested", "table", table, "id", req.ID, "where", req.Where, "chunk_size", st.ChunkSize, "max_rate", st.MaxRate)
		b.setState(table, st)
	case "cancel":
		if !exists || cur.Status != BackfillRunning {
			return nil
		}
		cur.Status, cur.Finished = BackfillCancelled, time.Now().UTC()
		b.abandon(table)
		b.setLog(table, nil)
		b.p.log.Info("backfill cancelled", "table", table, "id", cur.ID, "done", cur.Done)
		b.setState(table, cur)
	}
	return nil
}

// abandon gives up the chunk of table in flight, if any: its goroutine is
// cancelled, and its result and high watermark will be ignored. Until the
// goroutine has ended no other chunk starts.
func (b *backfiller) abandon(table string) {
	r := b.run
	if r == nil || r.table != table {
		return
	}
	if r.result != nil {
		b.run = nil // its goroutine has ended already
		return
	}
	r.abandoned = true
	r.cancel()
}

// onChange notes a streamed change (also one already published by an
// earlier session and skipped now: it was published before the next high
// watermark all the same).
func (b *backfiller) onChange(c *replication.Change) {
	b.ring.note(c.XID, c.Relation)
	if len(b.logs) == 0 {
		return
	}
	if c.Relation != b.lastRel {
		b.lastRel = c.Relation
		b.lastLog = b.logs[c.Relation.QualifiedName()]
		b.lastPK = b.lastPK[:0]
		for _, col := range c.Relation.Columns {
			if col.PrimaryKey {
				b.lastPK = append(b.lastPK, col.Name)
			}
		}
	}
	l := b.lastLog
	if l == nil {
		return
	}
	var keys [][]string
	if c.Op != replication.OpTruncate && len(b.lastPK) > 0 {
		keys = replication.KeyOfChange(c, b.lastPK)
	}
	if len(keys) == 0 {
		l.addUnknown(c.XID) // a truncate, or a change whose key we cannot read
		return
	}
	l.add(c.XID, keys)
}

// chunkLimit is the rows per chunk: the requested size, and with a rate
// limit at most a tenth of a second's rows, so the rate holds over short
// windows too and the last chunk ends close to rows/rate.
func chunkLimit(st BackfillState) int {
	n := st.ChunkSize
	if st.MaxRate > 0 {
		n = min(n, max(1, int(math.Ceil(st.MaxRate/10))))
	}
	return n
}

// maybeStart launches the next chunk read when none is in flight.
func (b *backfiller) maybeStart() {
	now := time.Now()
	if b.run != nil || len(b.logs) == 0 || now.Before(b.next) {
		return
	}
	states := b.states()
	for _, table := range b.p.mapper.Tables() {
		st, ok := states[table]
		l := b.logs[table]
		if !ok || st.Status != BackfillRunning || l == nil {
			continue
		}
		limit := chunkLimit(st)
		// The rate holds on average from the first chunk on: a chunk that
		// starts late (the first one opens its connection, a commit was
		// slow) is made up for by the next ones, but never more than a
		// second of them, so a pause does not end in a burst.
		scheduled := b.next
		if st.MaxRate <= 0 || now.Sub(scheduled) > time.Second {
			scheduled = now
		}
		ctx, cancel := context.WithCancel(b.ctx)
		run := &chunkRun{id: st.ID + "-" + newID(), table: table, state: st, limit: limit, scheduled: scheduled, cancel: cancel}
		req := chunkRequest{
			id: run.id, table: table, where: st.Where, after: st.Cursor, limit: limit,
			estimate: st.Total == 0, waitFor: l.unknown(), base: l.needBase,
		}
		b.run = run
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer cancel()
			res := b.src.read(ctx, req)
			select {
			case b.results <- res:
			case <-b.ctx.Done():
			}
		}()
		return
	}
}

// onResult takes a chunk read's outcome off the results channel.
func (b *backfiller) onResult(res chunkResult) {
	r := b.run
	if r == nil || r.id != res.id {
		b.p.log.Debug("ignoring the result of a chunk no longer in flight", "chunk", res.id)
		return
	}
	if r.abandoned {
		b.run = nil
		return
	}
	if res.err != nil {
		b.p.log.Warn("backfill chunk failed; retrying", "table", r.table, "err", res.err)
		b.run = nil
		b.wakeAt(time.Now().Add(5 * time.Second))
		return
	}
	r.result = &res
}

// wakeAt delays the next chunk until t and makes the committer wake then,
// whether or not the stream brings anything.
func (b *backfiller) wakeAt(t time.Time) {
	b.next = t
	b.timer.Reset(time.Until(t))
}

// wake fires when the next chunk may start.
func (b *backfiller) wake() <-chan time.Time { return b.timer.C }

// publishChunk runs at the chunk's high watermark: rows that no
// transaction invisible in the chunk's snapshot changed become "read"
// events (point 3 of the argument).
func (b *backfiller) publishChunk(ctx context.Context, r *chunkRun) error {
	res := r.result
	b.run = nil
	l := b.logs[r.table]
	if l == nil {
		return nil // no longer running (it cannot be: abandon runs first)
	}
	drop, undecided := l.decide(res.snap)
	for _, other := range b.logs {
		other.prune(res.snap)
	}
	if len(undecided) > 0 {
		// Transactions of unknown keys, delivered already, are not visible
		// in the chunk's snapshot: read the chunk again once they are.
		b.p.log.Debug("backfill chunk read again: transactions of unknown keys not yet visible", "table", r.table, "xids", fmt.Sprint(undecided))
		return nil
	}
	l.needBase = false
	cur := b.p.cur
	published := 0
	for i, row := range res.rows {
		if drop[joinKey(res.keys[i])] {
			continue // the stream carried a newer state of this row
		}
		c := &replication.Change{
			Op: replication.OpRead, Relation: res.rel, New: row,
			Pos: replication.Pos{CommitLSN: cur.CommitLSN, Index: i}, XID: cur.XID, CommitTime: cur.CommitTime,
		}
		if err := b.p.publish(ctx, c); err != nil {
			return err
		}
		published++
	}
	st := r.state
	if res.estimate > 0 {
		st.Total = res.estimate
	}
	st.Done += int64(len(res.rows))
	if n := len(res.keys); n > 0 {
		st.Cursor = res.keys[n-1]
	}
	if len(res.rows) < r.limit {
		st.Status, st.Finished = BackfillDone, time.Now().UTC()
		st.Total = st.Done
		b.setLog(r.table, nil)
		b.p.log.Info("backfill finished", "table", r.table, "id", st.ID, "rows", st.Done)
	}
	b.setState(r.table, st)
	if st.MaxRate > 0 && st.Status == BackfillRunning {
		b.wakeAt(r.scheduled.Add(time.Duration(float64(len(res.rows)) / st.MaxRate * float64(time.Second))))
	}
	b.p.log.Debug("backfill chunk", "table", r.table, "rows", len(res.rows), "published", published, "dropped", len(res.rows)-published)
	return nil
}

// pendingResults exposes the results channel to the committer's select.
func (b *backfiller) pendingResults() <-chan chunkResult { return b.results }
