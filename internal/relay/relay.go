// Package relay is the daemon loop: it wires replication -> mapping -> sink and
// holds the exactly-once argument in one place.
//
// The argument, step by step:
//
//  1. Leadership. A session-level advisory lock on the source database names
//     the one relay that may stream from the slot; a second relay is refused
//     before it touches Kafka (or waits, as a standby).
//  2. Fencing. The Kafka producer is created before anything is read: its
//     InitProducerId bumps the epoch of the relay's transactional.id, fencing
//     any zombie and aborting its open transaction.
//  3. Resume. The checkpoint is read from Kafka (committed transactions only)
//     and replication restarts at its LSN. The slot is never trusted alone:
//     transactions at or before the checkpoint are skipped by the relay, and
//     a transaction that was half published is skipped up to its change index.
//  4. Atomic unit. Events and the checkpoint they reach are committed in one
//     Kafka transaction. Only after that commit is the position acknowledged to
//     the slot, so the slot never passes the checkpoint.
//  5. Crash-only errors. Any failure - a produce error, a failed or timed-out
//     commit, a lost connection - ends the session without aborting with the
//     same producer epoch; the next session starts again at step 1.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/internal/tracing"
	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

// Options are the `cdcrelay run` flags that are not part of relay.toml.
type Options struct {
	// AllowSlotAhead starts even when the slot has been moved past the Kafka
	// checkpoint (events between the two are lost; the operator accepts that).
	AllowSlotAhead bool
	// Standby waits for the active relay to go away instead of failing.
	Standby bool
	Logger  *slog.Logger
	// Observer is told about sessions and commits (metrics, health).
	Observer Observer
	// Tracer makes spans of the relay's work ([NewTracer]); nil: off.
	Tracer *tracing.Tracer
}

// FatalError is a failure that retrying cannot fix; `cdcrelay run` exits with it.
type FatalError struct{ Err error }

func (e *FatalError) Error() string { return e.Err.Error() }
func (e *FatalError) Unwrap() error { return e.Err }

func fatal(format string, args ...any) error {
	return &FatalError{Err: fmt.Errorf(format, args...)}
}

// Run streams until ctx is cancelled (then returns nil after a clean stop) or a
// fatal error occurs. Transient failures of Postgres or Kafka are retried with
// backoff, each session resuming from the Kafka checkpoint.
func Run(ctx context.Context, cfg *config.Config, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	traceCtx := &traceContextReporter{log: log, obs: func() Observer { return opts.Observer }}
	mapper, err := mapping.New(cfg.Mappings,
		mapping.WithRelayName(cfg.Relay.Name),
		mapping.WithTraceContextFunc(traceCtx.report),
		mapping.WithDatabase(databaseName(cfg.Postgres.DSN)),
		mapping.WithWarnFunc(func(e *mapping.RowError) {
			log.Warn("row skipped", "table", e.Table, "lsn", e.Pos.CommitLSN.String(), "column", e.Column, "reason", e.Reason)
		}))
	if err != nil {
		return &FatalError{Err: err}
	}
	enc, err := newEncoder(cfg, log, opts.Observer)
	if err != nil {
		return &FatalError{Err: err}
	}
	// The lock is held across sessions: a session that fails for any other
	// reason keeps it, so no second relay slips in while this one retries.
	var lock *leaderLock
	var previousPID uint32
	defer func() {
		if lock != nil {
			lock.Close()
		}
	}()
	backoff := time.Second
	for attempt := 1; ; attempt++ {
		var err error
		if lock != nil && lock.alive(ctx) != nil {
			previousPID = lock.pid
			lock.Close()
			lock = nil
		}
		if lock == nil {
			lock, err = acquireLeadership(ctx, cfg, opts, log, previousPID)
		}
		s := &session{cfg: cfg, opts: opts, log: log, mapper: mapper, obs: opts.Observer, enc: enc}
		started := time.Now()
		if err == nil {
			err = s.run(ctx, lock)
		}
		if ctx.Err() != nil {
			s.obs.SessionEnded(nil)
			log.Info("relay stopped", "slot", cfg.Postgres.Slot, "lsn", s.durable.LSN.String())
			return nil
		}
		s.obs.SessionEnded(err)
		var fe *FatalError
		if errors.As(err, &fe) || sink.IsFatal(err) {
			return err
		}
		var lost *lockLostError
		if errors.As(err, &lost) && lock != nil {
			previousPID = lock.pid
			lock.Close()
			lock = nil
		}
		if time.Since(started) > time.Minute {
			backoff, attempt = time.Second, 1
		}
		log.Warn("relay session failed; reconnecting", "err", err, "attempt", attempt, "retry_in", backoff.String(), "slot", cfg.Postgres.Slot)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		if backoff < 30*time.Second {
			backoff *= 2
		}
	}
}

// session is one connection of both sides, from leadership to the first error.
type session struct {
	cfg    *config.Config
	opts   Options
	log    *slog.Logger
	mapper *mapping.Mapper
	obs    Observer
	enc    Encoder // nil: no mapping publishes through a schema registry

	durable sink.Checkpoint // committed in Kafka
}

func (s *session) run(ctx context.Context, lock *leaderLock) error {
	pg := &s.cfg.Postgres
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	w, err := sink.NewWriter(ctx, &s.cfg.Kafka, s.log, append(s.writerOptions(), sink.WritesTopics(topicMatcher(s.mapper)))...)
	if err != nil {
		return err
	}
	defer w.Close()

	cp, found, err := w.Checkpoint(ctx)
	if err != nil {
		return err
	}
	srv, err := s.identifyPrimary(ctx, lock)
	if err != nil {
		return err
	}
	s.log.Info("connected to the primary", "addr", srv.Addr, "system_identifier", srv.SystemID, "timeline", srv.Timeline, "wal", srv.WALPos.String())
	slot, err := loadSlot(ctx, lock.conn, pg.Slot)
	if err != nil {
		return err
	}
	// A mapping that names a column the table lacks is a configuration
	// error at start, not a surprise on the first row.
	for _, table := range s.mapper.Tables() {
		rel, err := replication.LoadRelation(ctx, lock.conn, table)
		if err != nil {
			return fatal("mapping of %s: %v", table, err)
		}
		if err := s.mapper.CheckRelation(rel); err != nil {
			return &FatalError{Err: err}
		}
	}
	if cp, err = s.resumePoint(cp, found, slot, srv); err != nil {
		return err
	}
	// From here on the checkpoints name the server's cluster and timeline.
	cp.SystemID, cp.Timeline = srv.SystemID, srv.Timeline
	s.durable = cp
	// Lose the lock, lose the right to publish: stop at once. (The lock's
	// connection is the watcher's from here on.)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		lock.watch(ctx, cancel)
	}()
	defer func() {
		cancel(nil)
		<-watchDone
	}()

	stream, err := s.openStream(ctx, cp.LSN, srv)
	if err != nil {
		return err
	}
	defer stream.Close()
	s.log.Info("streaming", "slot", pg.Slot, "publication", pg.Publication, "lsn", cp.LSN.String())
	s.obs.Streaming()

	p := newPipeline(s, stream, w)
	err = p.run(ctx)
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// openStream starts replication. We hold the relay lock, so a slot that is
// still in use is most likely held by the walsender of a relay that just died
// and whose exit Postgres has not yet noticed: wait for it, within reason.
func (s *session) openStream(ctx context.Context, start replication.LSN, srv *replication.ServerIdentity) (*replication.Stream, error) {
	pg := &s.cfg.Postgres
	deadline := time.Now().Add(slotBusyWait)
	for {
		stream, err := replication.Open(ctx, replication.StreamConfig{
			DSN: pg.DSN, Slot: pg.Slot, Publication: pg.Publication,
			Start: start, StatusInterval: pg.StatusInterval.Duration, Expect: srv,
		})
		if err == nil || !errors.Is(err, replication.ErrSlotInUse) {
			return stream, err
		}
		if time.Now().After(deadline) {
			return nil, fatal("%v: something other than cdcrelay streams from it (pg_recvlogical?); stop it first", err)
		}
		// We hold the relay lock, so a cdcrelay walsender on the slot belongs
		// to a relay that lost it (hung, or cut off) and that Kafka has
		// already fenced; its walsender would linger until
		// wal_sender_timeout. End it.
		if pid := s.terminateStaleWalsender(ctx); pid != 0 {
			s.log.Warn("terminated the walsender of a relay that lost the lock", "slot", pg.Slot, "pid", pid)
		} else {
			s.log.Info("slot still in use; waiting for the previous session to end", "slot", pg.Slot, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// terminateStaleWalsender ends a walsender of another cdcrelay session on
// the slot and returns its pid (0: none).
// (The lock's connection belongs to the lease watcher by now: use another.)
func (s *session) terminateStaleWalsender(ctx context.Context) int64 {
	conn, err := pgx.Connect(ctx, s.cfg.Postgres.DSN)
	if err != nil {
		return 0
	}
	defer conn.Close(context.Background())
	var pid int64
	err = conn.QueryRow(ctx, `
		SELECT s.active_pid FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid
		WHERE s.slot_name = $1 AND a.application_name = $2 AND pg_terminate_backend(s.active_pid)`,
		s.cfg.Postgres.Slot, replication.ApplicationName).Scan(&pid)
	if err != nil {
		return 0
	}
	return pid
}

// slotBusyWait is how long a slot held by another session is waited for.
const slotBusyWait = 30 * time.Second

// topicMatcher tells the topics the mappings can write: their topic
// templates ({...} matching any text) and their dead-letter topics.
func topicMatcher(m *mapping.Mapper) func(string) bool {
	var patterns []*regexp.Regexp
	exact := map[string]bool{}
	for _, table := range m.Tables() {
		if dl := m.DeadLetterTopic(table); dl != "" {
			exact[dl] = true
		}
		spec, _ := m.Spec(table)
		var re strings.Builder
		re.WriteString("^")
		t := spec.Topic
		for {
			i := strings.IndexByte(t, '{')
			j := strings.IndexByte(t, '}')
			if i < 0 || j < i {
				re.WriteString(regexp.QuoteMeta(t))
				break
			}
			re.WriteString(regexp.QuoteMeta(t[:i]) + ".+")
			t = t[j+1:]
		}
		re.WriteString("$")
		if p, err := regexp.Compile(re.String()); err == nil {
			patterns = append(patterns, p)
		}
	}
	return func(topic string) bool {
		if exact[topic] {
			return true
		}
		for _, p := range patterns {
			if p.MatchString(topic) {
				return true
			}
		}
		return false
	}
}

// databaseName is the database a DSN connects to, for event metadata.
func databaseName(dsn string) string {
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return ""
	}
	return pc.Database
}
