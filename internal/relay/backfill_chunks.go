package relay

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/cdcrelay/cdcrelay/replication"
)

// chunkSource reads backfill chunks; it runs on the chunk goroutine, one
// read at a time. The one in use reads Postgres (pgChunks); tests use
// their own.
type chunkSource interface {
	// read reads one chunk and then writes its high watermark into the WAL.
	read(ctx context.Context, req chunkRequest) chunkResult
	// close releases the source's connections; no read runs any more.
	close()
}

// chunkRequest is one chunk to read.
type chunkRequest struct {
	id    string // also the high watermark's
	table string
	where string
	after []string // primary key of the last row already read; nil: from the start
	limit int
	// estimate asks for the number of rows to read in all.
	estimate bool
	// waitFor are transactions the stream delivered (committed) whose keys
	// are unknown: the chunk must be read in a snapshot that sees them.
	waitFor []uint32
	// base: the first chunk since the table's change log began. Before it is
	// read, every transaction whose commit waits for a synchronous standby
	// is waited for (see the argument in backfill.go).
	base bool
}

// chunkResult is a chunk read, or why it was not.
type chunkResult struct {
	id       string
	snap     replication.Snapshot // the snapshot the rows were read in
	rows     [][]replication.Value
	keys     [][]string // primary key of each row, as text
	rel      *replication.Relation
	estimate int64
	err      error
}

// heldBackObserver is implemented by observers that count the chunks held
// back by transactions committed but not yet visible.
type heldBackObserver interface {
	BackfillHeldBack(table string, waited time.Duration)
}

// pgChunks reads chunks from Postgres, one connection per table.
type pgChunks struct {
	dsn      string
	wmPrefix string
	log      *slog.Logger
	obs      Observer
	readers  map[string]*pgReader
	// warnedHidden: the warning about hidden wait events was logged.
	warnedHidden bool
}

type pgReader struct {
	*replication.ChunkReader
	where string
}

func newPGChunks(dsn, wmPrefix string, log *slog.Logger, obs Observer) *pgChunks {
	return &pgChunks{dsn: dsn, wmPrefix: wmPrefix, log: log, obs: obs, readers: map[string]*pgReader{}}
}

func (s *pgChunks) close() {
	for _, r := range s.readers {
		r.Close()
	}
	s.readers = map[string]*pgReader{}
}

// reader returns the table's open reader, its shape re-read (a chunk may
// follow an ALTER TABLE).
func (s *pgChunks) reader(ctx context.Context, table, where string) (*pgReader, error) {
	r := s.readers[table]
	if r != nil && r.where != where {
		r.Close()
		delete(s.readers, table)
		r = nil
	}
	if r == nil {
		cr, err := replication.OpenChunkReader(ctx, s.dsn, table, where)
		if err != nil {
			return nil, err
		}
		r = &pgReader{ChunkReader: cr, where: where}
		s.readers[table] = r
		return r, nil
	}
	if err := r.Refresh(ctx); err != nil {
		r.Close()
		delete(s.readers, table)
		return nil, err
	}
	return r, nil
}

func (s *pgChunks) read(ctx context.Context, req chunkRequest) chunkResult {
	res := chunkResult{id: req.id}
	r, err := s.reader(ctx, req.table, req.where)
	if err != nil {
		res.err = err
		return res
	}
	res.rel = r.Relation()
	if req.estimate {
		if n, err := r.Estimate(ctx); err == nil {
			res.estimate = n
		}
	}
	if res.err = s.awaitVisible(ctx, r, req); res.err != nil {
		return res
	}
	c, err := r.ReadChunk(ctx, req.after, req.limit)
	if err != nil {
		res.err = err
		return res
	}
	res.snap, res.rows = c.Snapshot, c.Rows
	res.keys = make([][]string, len(c.Rows))
	for i, row := range c.Rows {
		res.keys[i] = r.Key(row)
	}
	// After the chunk's transaction: see the argument in backfill.go for
	// why every transaction visible in res.snap is delivered before it.
	res.err = r.Watermark(ctx, s.wmPrefix, []byte("high:"+req.id))
	return res
}

// awaitVisible waits until the transactions the chunk must see are visible
// to new snapshots: req.waitFor, and for a base chunk every transaction
// whose commit waits for a synchronous standby. Only such transactions -
// committed, their commit record written - are waited for: they leave the
// proc array as soon as their backend gets to it, whereas a transaction
// that merely stays open, however long, never holds a chunk back. A wait of
// more than a second is logged at WARN with the sessions concerned, and
// every wait is counted (cdcrelay_backfill_held_back_*).
func (s *pgChunks) awaitVisible(ctx context.Context, r *pgReader, req chunkRequest) error {
	if len(req.waitFor) == 0 && !req.base {
		return nil
	}
	snap, err := r.CurrentSnapshot(ctx)
	if err != nil {
		return err
	}
	// committed: delivered by the stream, so committed; visible once they
	// leave the proc array. syncWaits: waiting for a synchronous standby;
	// committed, unless it is a PREPARE TRANSACTION waiting (that one stays
	// invisible until COMMIT PREPARED), so each is waited for only while it
	// still waits for the standby.
	committed := invisible(snap, req.waitFor)
	var syncWaits []uint64
	if req.base {
		if syncWaits, err = s.syncRepWaiters(ctx, r, req.table, snap); err != nil {
			return err
		}
	}
	if len(committed) == 0 && len(syncWaits) == 0 {
		return nil
	}
	started := time.Now()
	var warned time.Time
	delay := 2 * time.Millisecond
	for len(committed)+len(syncWaits) > 0 {
		if time.Since(started) > time.Second && time.Since(warned) > 30*time.Second {
			s.warnHeldBack(ctx, r, req.table, slices.Concat(committed, syncWaits), time.Since(started))
			warned = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 250*time.Millisecond)
		if snap, err = r.CurrentSnapshot(ctx); err != nil {
			return err
		}
		committed = slices.DeleteFunc(committed, snap.Visible)
		if len(syncWaits) > 0 {
			still, err := s.syncRepWaiters(ctx, r, req.table, snap)
			if err != nil {
				return err
			}
			syncWaits = slices.DeleteFunc(syncWaits, func(x uint64) bool { return !slices.Contains(still, x) })
		}
	}
	waited := time.Since(started)
	if o, ok := s.obs.(heldBackObserver); ok {
		o.BackfillHeldBack(req.table, waited)
	}
	if !warned.IsZero() {
		s.log.Info("backfill chunk no longer held back", "table", req.table, "waited", waited.Round(time.Millisecond).String())
	} else {
		s.log.Debug("backfill chunk waited for commits in flight", "table", req.table, "waited", waited.String())
	}
	return nil
}

// invisible widens the stream xids and keeps those not visible in snap.
func invisible(snap replication.Snapshot, xids []uint32) []uint64 {
	var out []uint64
	for _, x := range xids {
		if full := snap.Widen(x); !snap.Visible(full) {
			out = append(out, full)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// syncRepWaiters returns the transactions, not visible in snap, whose
// commit waits for a synchronous standby.
func (s *pgChunks) syncRepWaiters(ctx context.Context, r *pgReader, table string, snap replication.Snapshot) ([]uint64, error) {
	xids, seen, err := r.SyncRepWaiters(ctx)
	if err != nil {
		return nil, err
	}
	if !seen && !s.warnedHidden {
		s.warnedHidden = true
		s.log.Warn("synchronous replication is configured, but the relay's role cannot see other sessions' wait events: "+
			"a backfill resumed by a new session cannot tell a commit waiting for the standby from an open transaction "+
			"and might publish a row older than such a commit; GRANT pg_read_all_stats TO the relay's role", "table", table)
	}
	return invisible(snap, xids), nil
}

func (s *pgChunks) warnHeldBack(ctx context.Context, r *pgReader, table string, xids []uint64, waited time.Duration) {
	bs, err := r.Backends(ctx, xids)
	if err != nil {
		s.log.Warn("backfill chunk held back by transactions that committed but are not yet visible", "table", table, "xids", fmt.Sprint(xids), "waited", waited.Round(time.Second).String(), "err", err)
		return
	}
	for _, b := range bs {
		args := []any{"table", table, "txid", strconv.FormatUint(b.XID, 10), "waited", waited.Round(time.Second).String()}
		switch {
		case b.PID != 0:
			args = append(args, "pid", b.PID, "application", b.App, "state", b.State, "wait_event", b.Wait)
		case b.Prepared != "":
			args = append(args, "prepared_gid", b.Prepared)
		}
		s.log.Warn("backfill chunk held back: a transaction has committed (its commit record is in the WAL) but is not yet visible to new snapshots; "+
			"the chunk waits for it (a synchronous standby that does not confirm keeps it so: wait_event IPC:SyncRep)", args...)
	}
}
