package relay

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/internal/tracing"
	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

// eventTracer is what the committer tells tracing: each event before it is
// sent (Start may add the relay's traceparent header), that it went into
// the Kafka transaction (Sent), and how the transaction ended (Committed
// with where the events landed, or Discard). It is a *tracing.Batch when
// [tracing] is on, and noTracing, which does nothing, when it is off.
type eventTracer interface {
	Start(ev *mapping.Event, c *replication.Change)
	Sent()
	Committed(deliveries []sink.Delivery, seq int64, lsn replication.LSN, started, committed time.Time)
	Discard()
}

type noTracing struct{}

func (noTracing) Start(*mapping.Event, *replication.Change) {}
func (noTracing) Sent()                                     {}
func (noTracing) Committed([]sink.Delivery, int64, replication.LSN, time.Time, time.Time) {
}
func (noTracing) Discard() {}

var _ eventTracer = (*tracing.Batch)(nil)

// NewTracer sets up tracing as relay.toml's [tracing] says; nil when it is
// off. The caller passes it in [Options.Tracer] and shuts it down after Run.
func NewTracer(ctx context.Context, cfg *config.Config, log *slog.Logger) (*tracing.Tracer, error) {
	if !cfg.Tracing.On() {
		return nil, nil
	}
	t := &cfg.Tracing
	return tracing.New(ctx, tracing.Config{
		Protocol: t.Protocol, Endpoint: t.Endpoint, Headers: t.Headers, SampleRatio: t.SampleRatio,
		ServiceName: t.ServiceName, Timeout: t.Timeout.Duration, QueueSize: t.QueueSize,
		RelayName: cfg.Relay.Name, Database: databaseName(cfg.Postgres.DSN),
	}, log)
}

// eventTracer is the session's span state: nothing with tracing off.
func (s *session) eventTracer() eventTracer {
	if s.opts.Tracer == nil {
		return noTracing{}
	}
	return s.opts.Tracer.NewBatch()
}

// writerOptions are the sink options tracing needs: with tracing on the
// writer keeps each transaction's messages for their partitions and offsets;
// off, nothing changes on the hot path.
func (s *session) writerOptions() []sink.WriterOption {
	if s.opts.Tracer == nil {
		return nil
	}
	return []sink.WriterOption{sink.RecordDeliveries()}
}

// traceContextReporter counts the rows whose trace context was invalid
// and logs the first one of each table (then only the counter moves: an
// application that writes a bad traceparent writes it into every row).
type traceContextReporter struct {
	log *slog.Logger
	obs func() Observer

	mu     sync.Mutex
	logged map[string]bool
}

func (r *traceContextReporter) report(e *mapping.RowError) {
	r.obs().TraceContextInvalid(e.Table)
	r.mu.Lock()
	first := !r.logged[e.Table]
	if first {
		if r.logged == nil {
			r.logged = map[string]bool{}
		}
		r.logged[e.Table] = true
	}
	r.mu.Unlock()
	if first {
		r.log.Warn("trace context left out: the event is published without it; further ones of this table are only counted (cdcrelay_trace_context_invalid_total)",
			"table", e.Table, "lsn", e.Pos.CommitLSN.String(), "column", e.Column, "reason", e.Reason)
	}
}
