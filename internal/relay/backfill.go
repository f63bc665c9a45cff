package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

// Backfill follows Netflix's DBLog (as Debezium's incremental snapshots do):
// the table is read in primary-key chunks, each between a low and a high
// watermark written into the WAL. While the stream passes between the two,
// the keys it changes are noted; at the high watermark the chunk's rows whose
// key the stream did not change are published as "read" events. Every key
// therefore ends with its newest state, and no backfill event overtakes a
// newer change. The chunk cursor is part of the checkpoint, committed in the
// same Kafka transaction as the chunk's events, so a restart continues from
// the last published chunk.

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

// backfiller is the committer's backfill machinery for one session.
type backfiller struct {
	p         *pipeline
	reqPrefix string
	wmPrefix  string

	results  chan chunkResult
	inflight *chunkRun
	next     time.Time // earliest start of the next chunk (rate limit, retry)
	wg       sync.WaitGroup

	readersMu sync.Mutex // the chunk goroutine's; held only while one runs
	readers   map[string]*replication.ChunkReader
}

type chunkRun struct {
	id      string
	table   string
	state   BackfillState
	started time.Time
	low     bool                  // the low watermark has passed in the stream
	window  []*replication.Change // the table's changes since the low watermark
	result  *chunkResult
}

type chunkResult struct {
	id       string
	rows     [][]replication.Value
	keys     [][]string
	rel      *replication.Relation
	pk       []string
	estimate int64
	err      error
}

func newBackfiller(p *pipeline) *backfiller {
	return &backfiller{
		p:         p,
		reqPrefix: requestPrefix(p.s.cfg),
		wmPrefix:  watermarkPrefix(p.s.cfg),
		results:   make(chan chunkResult, 1),
		readers:   map[string]*replication.ChunkReader{},
	}
}

// close waits for a running chunk read and closes the connections.
func (b *backfiller) close() {
	b.wg.Wait()
	for _, r := range b.readers {
		r.Close()
	}
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

// setState records a table's state in the pending checkpoint. The map is
// copied, never changed in place: the durable checkpoint shares it.
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

// onMessage handles a logical message that reached the committer.
func (b *backfiller) onMessage(ctx context.Context, m *replication.LogicalMessage) error {
	switch m.Prefix {
	case b.reqPrefix:
		return b.onRequest(m.Content)
	case b.wmPrefix:
		kind, id, _ := strings.Cut(string(m.Content), ":")
		c := b.inflight
		if c == nil || c.id != id {
			return nil // a watermark of a chunk abandoned by an earlier session
		}
		switch kind {
		case "low":
			c.low = true
		case "high":
			if !c.low {
				return nil
			}
			return b.publishChunk(ctx, c)
		}
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
		if b.inflight != nil && b.inflight.table == table {
			b.inflight = nil // superseded
		}
		b.p.log.Info("backfill requested", "table", table, "id", req.ID, "where", req.Where, "chunk_size", st.ChunkSize, "max_rate", st.MaxRate)
		b.setState(table, st)
	case "cancel":
		if !exists || cur.Status != BackfillRunning {
			return nil
		}
		cur.Status, cur.Finished = BackfillCancelled, time.Now().UTC()
		if b.inflight != nil && b.inflight.table == table {
			b.inflight = nil
		}
		b.p.log.Info("backfill cancelled", "table", table, "id", cur.ID, "done", cur.Done)
		b.setState(table, cur)
	}
	return nil
}

// onChange notes a streamed change of the table while a chunk's window is
// open; its key is compared with the chunk's rows at the high watermark.
func (b *backfiller) onChange(c *replication.Change) {
	r := b.inflight
	if r == nil || !r.low || c.Relation.QualifiedName() != r.table {
		return
	}
	r.window = append(r.window, c)
}

// maybeStart launches the next chunk read when none is in flight.
func (b *backfiller) maybeStart(ctx context.Context) {
	if b.inflight != nil || time.Now().Before(b.next) || len(b.p.pending.Backfills) == 0 {
		return
	}
	states := b.states()
	for _, table := range b.p.mapper.Tables() {
		st, ok := states[table]
		if !ok || st.Status != BackfillRunning {
			continue
		}
		run := &chunkRun{id: st.ID + "-" + newID(), table: table, state: st, started: time.Now()}
		b.inflight = run
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.results <- b.readChunk(ctx, run)
		}()
		return
	}
}

// readChunk runs in its own goroutine: low watermark, chunk query, high
// watermark, each its own short transaction.
func (b *backfiller) readChunk(ctx context.Context, run *chunkRun) chunkResult {
	b.readersMu.Lock()
	defer b.readersMu.Unlock()
	res := chunkResult{id: run.id}
	st := run.state
	r := b.readers[run.table]
	if r == nil {
		var err error
		r, err = replication.OpenChunkReader(ctx, b.p.s.cfg.Postgres.DSN, run.table, st.Where)
		if err != nil {
			res.err = err
			return res
		}
		b.readers[run.table] = r
	} else if err := r.Refresh(ctx); err != nil {
		res.err = err
		return res
	}
	res.rel, res.pk = r.Relation(), r.PrimaryKeyNames()
	if st.Total == 0 {
		if n, err := r.Estimate(ctx); err == nil {
			res.estimate = n
		}
	}
	if res.err = r.Watermark(ctx, b.wmPrefix, []byte("low:"+run.id)); res.err != nil {
		return res
	}
	if res.rows, res.err = r.Read(ctx, st.Cursor, st.ChunkSize); res.err != nil {
		return res
	}
	for _, row := range res.rows {
		res.keys = append(res.keys, r.Key(row))
	}
	res.err = r.Watermark(ctx, b.wmPrefix, []byte("high:"+run.id))
	return res
}

// onResult takes a chunk read's outcome off the results channel.
func (b *backfiller) onResult(res chunkResult) {
	r := b.inflight
	if r == nil || r.id != res.id {
		return
	}
	if res.err != nil {
		b.p.log.Warn("backfill chunk failed; retrying", "table", r.table, "err", res.err)
		b.inflight = nil
		b.next = time.Now().Add(5 * time.Second)
		return
	}
	r.result = &res
}

// publishChunk runs at the high watermark: the chunk's rows that the stream
// did not change inside the window become "read" events.
func (b *backfiller) publishChunk(ctx context.Context, r *chunkRun) error {
	if r.result == nil {
		// The high watermark is committed before the reader hands over its
		// rows, so they are at most a moment away.
		select {
		case res := <-b.results:
			b.onResult(res)
		case <-ctx.Done():
			return ctx.Err()
		}
		if b.inflight != r || r.result == nil {
			return nil
		}
	}
	res := r.result
	b.inflight = nil
	changed := map[string]bool{}
	for _, c := range r.window {
		for _, k := range replication.KeyOfChange(c, res.pk) {
			changed[strings.Join(k, "\x00")] = true
		}
	}
	cur := b.p.cur
	published := 0
	for i, row := range res.rows {
		if changed[strings.Join(res.keys[i], "\x00")] {
			continue // the stream already carried a newer state of this row
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
	if len(res.rows) < st.ChunkSize {
		st.Status, st.Finished = BackfillDone, time.Now().UTC()
		st.Total = st.Done
		b.p.log.Info("backfill finished", "table", r.table, "id", st.ID, "rows", st.Done)
	}
	b.setState(r.table, st)
	if st.MaxRate > 0 {
		b.next = r.started.Add(time.Duration(float64(len(res.rows)) / st.MaxRate * float64(time.Second)))
	}
	b.p.log.Debug("backfill chunk", "table", r.table, "rows", len(res.rows), "published", published, "dropped", len(res.rows)-published)
	return nil
}

// pendingResults exposes the results channel to the committer's select.
func (b *backfiller) pendingResults() <-chan chunkResult { return b.results }
