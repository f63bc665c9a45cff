package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

// chunk is a run of stream messages handed from the reader to the committer.
// The reader cuts chunks at transaction ends and keepalives, so a small
// transaction is never held back waiting for company.
type chunk struct {
	msgs  []replication.Message
	bytes int64
	// received is when the reader got the chunk's first message: the linger
	// of a batch counts from there, not from when the committer got to it.
	received time.Time
}

const (
	chunkMaxMsgs  = 512
	chunkMaxBytes = 256 << 10
)

// pipeline is the data path of one session: a reader goroutine that reads
// ahead into a bounded buffer and keeps the server answered, and the
// committer (the calling goroutine) that maps, batches and commits.
type pipeline struct {
	s      *session
	stream *replication.Stream
	w      *sink.Writer
	log    *slog.Logger
	mapper *mapping.Mapper

	chunks  chan chunk
	budget  *budget
	readErr chan error

	// committer state
	txn          *sink.Txn
	txnEvents    int
	txnBytes     int64
	txnOpened    time.Time
	arrived      time.Time // when the input being handled reached the relay
	txnTopics    map[string]int
	lastSource   time.Time // commit time of the last source transaction seen whole
	serverWALEnd replication.LSN
	pending      sink.Checkpoint // what the open transaction (or the next one) reaches
	inTx         bool
	cur          replication.Begin
	skipAll      bool // the current transaction is already published
	skipBelow    int  // changes with a smaller index are already published
	lastCommit   time.Time
	// mustCheckpoint asks for a commit at the next transaction boundary even
	// without events (a backfill's state changed).
	mustCheckpoint bool
	bf             *backfiller
	tr             eventTracer // spans of the open transaction's events
}

func newPipeline(s *session, stream *replication.Stream, w *sink.Writer) *pipeline {
	return &pipeline{
		s:       s,
		stream:  stream,
		w:       w,
		log:     s.log,
		mapper:  s.mapper,
		chunks:  make(chan chunk, 1024),
		budget:  newBudget(s.cfg.Batch.ReadAheadBytes),
		readErr: make(chan error, 1),
		pending: s.durable,
		tr:      s.eventTracer(),
	}
}

func (p *pipeline) run(ctx context.Context) error {
	p.bf = newBackfiller(ctx, p, newPGChunks(p.s.cfg.Postgres.DSN, watermarkPrefix(p.s.cfg), p.log, p.s.obs))
	defer p.bf.close()
	rctx, stopReader := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.readErr <- p.read(rctx)
	}()
	err := p.commitLoop(ctx)
	stopReader()
	wg.Wait()
	return err
}

// read runs in its own goroutine and is the only user of the stream.
func (p *pipeline) read(ctx context.Context) error {
	var c chunk
	flush := func() error {
		if len(c.msgs) == 0 {
			return nil
		}
		if err := p.budget.acquire(ctx, c.bytes, p.keepServerAnswered); err != nil {
			return err
		}
		select {
		case p.chunks <- c:
		case <-ctx.Done():
			return ctx.Err()
		}
		c = chunk{msgs: make([]replication.Message, 0, 16)}
		return nil
	}
	for {
		m, err := p.stream.Next(ctx)
		if err != nil {
			return err
		}
		if len(c.msgs) == 0 {
			c.received = time.Now()
		}
		c.msgs = append(c.msgs, m)
		c.bytes += messageSize(m)
		switch m.(type) {
		case *replication.Change, *replication.Begin:
			if len(c.msgs) < chunkMaxMsgs && c.bytes < chunkMaxBytes {
				continue
			}
		}
		if err := flush(); err != nil {
			return err
		}
	}
}

// keepServerAnswered runs while the reader waits for buffer space: the
// walsender must keep hearing from us or wal_sender_timeout ends the session.
func (p *pipeline) keepServerAnswered(ctx context.Context) error {
	if p.stream.StatusDue() {
		return p.stream.SendStatus(ctx)
	}
	return nil
}

func messageSize(m replication.Message) int64 {
	c, ok := m.(*replication.Change)
	if !ok {
		return 64
	}
	n := int64(128)
	for _, v := range c.New {
		n += int64(len(v.Text)) + 32
	}
	for _, v := range c.Old {
		n += int64(len(v.Text)) + 32
	}
	return n
}

func (p *pipeline) commitLoop(ctx context.Context) error {
	cfg := p.s.cfg
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	lingerExpired := false
	idle := time.NewTicker(cfg.Postgres.IdleCheckpointInterval.Duration)
	defer idle.Stop()
	p.lastCommit = time.Now()
	for {
		select {
		case <-ctx.Done():
			return p.shutdown()
		case err := <-p.readErr:
			p.abandon()
			if ctx.Err() != nil {
				return p.shutdown()
			}
			return err
		case c := <-p.chunks:
			p.arrived = c.received
			for _, m := range c.msgs {
				if err := p.handle(ctx, m); err != nil {
					p.abandon()
					return err
				}
			}
			p.budget.release(c.bytes)
		case res := <-p.bf.pendingResults():
			p.arrived = time.Now()
			p.bf.onResult(res)
		case <-p.bf.wake():
			// The rate limit (or a retry's delay) lets the next chunk start:
			// maybeStart below, whether or not the stream has anything.
		case <-linger.C:
			lingerExpired = true
		case <-idle.C:
			// While the mapped tables are quiet, checkpoint the server's
			// position so the slot can advance and WAL is not retained.
			p.arrived = time.Now()
			if p.txn == nil && !p.inTx && p.pending.LSN > p.s.durable.LSN &&
				time.Since(p.lastCommit) >= cfg.Postgres.IdleCheckpointInterval.Duration {
				if err := p.commit(ctx); err != nil {
					return err
				}
			}
		}
		if p.txn != nil && p.txnOpened.IsZero() {
			// Changes that arrived while the previous commit was in flight
			// have waited already: their linger is (partly) spent.
			p.txnOpened = time.Now()
			if wait := cfg.Batch.Linger.Duration - p.txnOpened.Sub(p.arrived); wait > 0 {
				linger.Reset(wait)
				lingerExpired = false
			} else {
				linger.Stop()
				lingerExpired = true
			}
		}
		// Under a backlog (more chunks already queued) the transaction keeps
		// filling up to its size limit rather than committing on linger;
		// the linger still bounds it at ten times its value.
		backlog := len(p.chunks) > 0 && time.Since(p.txnOpened) < 10*cfg.Batch.Linger.Duration
		if !p.inTx && (p.txn != nil && (lingerExpired && !backlog || p.full()) || p.mustCheckpoint) {
			linger.Stop()
			lingerExpired = false
			if err := p.commit(ctx); err != nil {
				return err
			}
		}
		p.bf.maybeStart()
	}
}

func (p *pipeline) full() bool {
	b := &p.s.cfg.Batch
	return p.txnEvents >= b.MaxEvents || p.txnBytes >= b.MaxBytes
}

// handle applies one stream message to the committer's state.
func (p *pipeline) handle(ctx context.Context, m replication.Message) error {
	switch m := m.(type) {
	case *replication.Begin:
		p.inTx = true
		p.cur = *m
		d := p.s.durable
		p.skipAll = m.CommitLSN < d.LSN
		p.skipBelow = 0
		if d.TxLSN != 0 && m.CommitLSN == d.TxLSN {
			p.skipBelow = d.TxNext
		}
	case *replication.Change:
		// Before the skip: a change published by an earlier session counts
		// for the backfill like one published now.
		p.bf.onChange(m)
		if p.skipAll || m.Pos.Index < p.skipBelow {
			return nil
		}
		if err := p.publish(ctx, m); err != nil {
			return err
		}
		p.pending.TxLSN = m.Pos.CommitLSN
		p.pending.TxNext = m.Pos.Index + 1
		if p.full() {
			// A large transaction spans several Kafka transactions; the
			// checkpoint names the position inside it.
			return p.commit(ctx)
		}
	case *replication.Commit:
		p.inTx = false
		p.lastSource = m.CommitTime
		if p.txn == nil && p.pending.TxLSN == m.CommitLSN {
			// The last Kafka transaction ended inside this one: checkpoint
			// its end now, not at the next idle tick.
			p.mustCheckpoint = true
		}
		if !p.skipAll && m.EndLSN > p.pending.LSN {
			p.pending.LSN = m.EndLSN
		}
		p.pending.TxLSN, p.pending.TxNext = 0, 0
	case *replication.LogicalMessage:
		if !p.skipAll {
			return p.bf.onMessage(ctx, m)
		}
	case *replication.Keepalive:
		// Everything that commits before WALEnd has been received; with no
		// transaction in flight that position is safe to checkpoint.
		if !p.inTx && m.WALEnd > p.pending.LSN {
			p.pending.LSN = m.WALEnd
		}
		p.serverWALEnd = max(p.serverWALEnd, m.WALEnd)
		p.s.obs.Position(p.serverWALEnd, p.s.durable.LSN)
	}
	return nil
}

// publish maps a change and queues its events; a row its mapping rejects
// goes to the dead-letter topic or stops the relay, as configured.
func (p *pipeline) publish(ctx context.Context, c *replication.Change) error {
	evs, err := p.mapper.Map(c)
	if err != nil {
		var re *mapping.RowError
		if !errors.As(err, &re) {
			return &FatalError{Err: err}
		}
		dl, ok := p.mapper.DeadLetter(c, err)
		if !ok {
			return fatal("%v; the relay stops because the mapping's on_error is \"stop\" (fix the row or set on_error = \"dead-letter\")", err)
		}
		p.s.obs.DeadLettered(c.Relation.QualifiedName(), re.Reason)
		p.log.Warn("row sent to the dead-letter topic", "table", c.Relation.QualifiedName(), "lsn", c.Pos.CommitLSN.String(), "topic", dl.Topic, "err", err)
		evs = []mapping.Event{dl}
	} else if evs, err = p.encode(ctx, c, evs); err != nil {
		return err
	}
	for i := range evs {
		if err := p.send(ctx, c, &evs[i]); err != nil {
			return err
		}
	}
	return nil
}

func (p *pipeline) send(ctx context.Context, c *replication.Change, ev *mapping.Event) error {
	if p.txn == nil {
		txn, err := p.w.Begin(ctx)
		if err != nil {
			return err
		}
		p.txn, p.txnEvents, p.txnBytes, p.txnOpened = txn, 0, 0, time.Time{}
		p.txnTopics = map[string]int{}
	}
	p.tr.Start(ev, c)
	err := p.txn.Send(ctx, ev)
	var tl *sink.TooLargeError
	if errors.As(err, &tl) {
		dl, ok := p.mapper.DeadLetterOversized(*ev, c, tl.Limit)
		if !ok {
			return fatal("table %s at lsn %s (change %d): %v; the relay stops because the mapping's on_error is \"stop\"",
				c.Relation.QualifiedName(), c.Pos.CommitLSN, c.Pos.Index, err)
		}
		p.s.obs.DeadLettered(c.Relation.QualifiedName(), "event too large")
		p.log.Warn("oversized event sent to the dead-letter topic", "table", c.Relation.QualifiedName(), "lsn", c.Pos.CommitLSN.String(), "topic", ev.Topic, "size", tl.Size, "limit", tl.Limit)
		p.tr.Start(&dl, c)
		err = p.txn.Send(ctx, &dl)
		ev = &dl
	}
	if err != nil {
		return err
	}
	p.tr.Sent()
	p.txnEvents++
	p.txnBytes += int64(ev.Size())
	p.txnTopics[ev.Topic]++
	return nil
}

// commit commits the open transaction (or an empty one carrying only the
// checkpoint) and then acknowledges the position to the slot.
func (p *pipeline) commit(ctx context.Context) error {
	if p.txn == nil {
		txn, err := p.w.Begin(ctx)
		if err != nil {
			return err
		}
		p.txn = txn
	}
	cp := p.pending
	cp.Seq = p.s.durable.Seq + 1
	txn := p.txn
	p.txn = nil
	started := time.Now()
	if err := txn.Commit(cp); err != nil {
		p.tr.Discard() // never visible: no spans
		err = fmt.Errorf("kafka transaction %d (checkpoint %s, %d events): %w", cp.Seq, cp, p.txnEvents, err)
		p.s.obs.CommitFailed(err)
		return err
	}
	took := time.Since(started)
	p.tr.Committed(txn.Deliveries(), cp.Seq, cp.LSN, started, started.Add(took))
	p.log.Debug("committed", "seq", cp.Seq, "events", p.txnEvents, "lsn", cp.LSN.String(), "took", took.String())
	p.s.obs.Committed(CommitInfo{Seq: cp.Seq, Events: p.txnTopics, Took: took, LSN: cp.LSN, SourceCommitTime: p.lastSource})
	p.s.obs.Position(p.serverWALEnd, cp.LSN)
	p.txnTopics = nil
	p.s.durable = cp
	p.pending = cp
	p.lastCommit = time.Now()
	p.mustCheckpoint = false
	p.txnEvents, p.txnBytes, p.txnOpened = 0, 0, time.Time{}
	p.stream.Ack(cp.LSN)
	return nil
}

// shutdown ends the session on request: a transaction that ends at a
// transaction boundary is committed, one that does not is discarded.
func (p *pipeline) shutdown() error {
	if p.txn != nil && !p.inTx {
		if err := p.commit(context.Background()); err != nil {
			p.log.Warn("final commit failed; the next start resumes from the previous checkpoint", "err", err)
		}
		return nil
	}
	if p.txn != nil {
		// No commit was attempted, so aborting with this epoch is safe, and
		// it releases read_committed consumers now rather than at the
		// transaction timeout.
		p.txn.Abort()
		p.txn = nil
		p.tr.Discard()
	}
	return nil
}

func (p *pipeline) abandon() {
	if p.txn != nil {
		p.txn.Discard()
		p.txn = nil
	}
	p.tr.Discard()
}
