package tracing

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// scopeName is the instrumentation scope of the relay's spans.
const scopeName = "github.com/cdcrelay/cdcrelay"

// Tracer owns the SDK's provider, the exporter and the export queue. One
// serves the whole process; [Tracer.NewBatch] gives each session its own
// per-transaction state.
type Tracer struct {
	provider    *sdktrace.TracerProvider
	q           *queue
	log         *slog.Logger
	rootSampler sdktrace.Sampler // for the traces the relay starts

	// Committed transactions wait in txns for the span goroutine; backlog
	// counts their spans, bounded by limit.
	txns     chan *committedTxn
	backlog  atomic.Int64
	limit    int64
	made     chan struct{} // closed when the span goroutine has ended
	stopOnce sync.Once
}

// New sets up tracing as cfg says. It does not connect: a collector that is
// down costs spans (counted), never the relay's start or its publishing.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Tracer, error) {
	return newTracer(ctx, cfg, log, os.Getenv, nil)
}

// newTracer is New with the environment and, for tests, an exporter given.
func newTracer(ctx context.Context, cfg Config, log *slog.Logger, getenv func(string) string, exp sdktrace.SpanExporter) (*Tracer, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	protocol := "test"
	if exp == nil {
		e, p, err := newExporter(ctx, &cfg, getenv)
		if err != nil {
			return nil, err
		}
		exp, protocol = e, p
	}
	size := cfg.QueueSize
	if size == 0 {
		size = defaultQueueSize
	}
	attrs := []attribute.KeyValue{attribute.String("service.name", cfg.serviceName(getenv))}
	if cfg.RelayName != "" {
		attrs = append(attrs, attribute.String("cdcrelay.relay", cfg.RelayName))
	}
	if cfg.Database != "" {
		// One database per relay: on the resource, not on every span.
		attrs = append(attrs, attribute.String("db.namespace", cfg.Database))
	}
	// OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME apply; the
	// configuration's service name wins.
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attrs...))
	if err != nil {
		res = resource.NewSchemaless(attrs...)
	}
	q := newQueue(exp, size, log)
	ratio := cfg.sampleRatio(getenv)
	root := sdktrace.TraceIDRatioBased(ratio)
	provider := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		// A row's context decides for its events (sampled upstream means
		// recorded here); the ratio decides for the traces the relay starts
		// (the decision Batch.Start made already, deterministic in the
		// trace id).
		sdktrace.WithSampler(sdktrace.ParentBased(root)),
		sdktrace.WithIDGenerator(presetIDs{}),
		sdktrace.WithSpanProcessor(q),
	)
	t := &Tracer{provider: provider, q: q, log: log, rootSampler: root,
		txns: make(chan *committedTxn, 1024), limit: int64(size), made: make(chan struct{})}
	go t.makeSpans(&spanMaker{tracer: provider.Tracer(scopeName), names: map[string]string{}})
	log.Info("tracing: exporting spans over OTLP", "protocol", protocol, "endpoint", cfg.Endpoint, "sample_ratio", ratio)
	return t, nil
}

// submit hands a committed transaction's spans to the span goroutine, or
// drops them (counted) when it is a queue's length behind.
func (t *Tracer) submit(txn *committedTxn) {
	n := int64(len(txn.spans)) + 1
	if t.backlog.Add(n) > t.limit {
		t.backlog.Add(-n)
		t.q.droppedFull.Add(uint64(n))
		return
	}
	select {
	case t.txns <- txn:
	default:
		t.backlog.Add(-n)
		t.q.droppedFull.Add(uint64(n))
	}
}

// makeSpans makes, ends and queues the spans of committed transactions.
func (t *Tracer) makeSpans(m *spanMaker) {
	defer close(t.made)
	for txn := range t.txns {
		m.make(txn)
		t.backlog.Add(-int64(len(txn.spans)) - 1)
		t.q.nudge()
	}
}

// stopMaking ends the span goroutine once it has made what was submitted.
func (t *Tracer) stopMaking(ctx context.Context) error {
	t.stopOnce.Do(func() { close(t.txns) })
	select {
	case <-t.made:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown makes and exports the spans of the transactions committed so
// far, within ctx, and stops the exporter. No Batch may be used after it.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if err := t.stopMaking(ctx); err != nil {
		return err
	}
	return t.provider.Shutdown(ctx)
}

// ForceFlush makes and exports the spans submitted so far.
func (t *Tracer) ForceFlush(ctx context.Context) error {
	for t.backlog.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.made:
			return t.provider.ForceFlush(ctx)
		case <-time.After(time.Millisecond):
		}
	}
	return t.provider.ForceFlush(ctx)
}

// Stats are the export queue's counters.
type Stats struct {
	Exported uint64 // spans the collector accepted
	// DroppedQueueFull and DroppedExportFailed are spans lost because the
	// queue was full, or because their export failed (or timed out).
	DroppedQueueFull, DroppedExportFailed uint64
}

// Stats reads the counters.
func (t *Tracer) Stats() Stats {
	return Stats{Exported: t.q.exported.Load(), DroppedQueueFull: t.q.droppedFull.Load(), DroppedExportFailed: t.q.droppedFailed.Load()}
}

// Collectors are the Prometheus series of tracing, for the relay's registry:
// cdcrelay_tracing_spans_exported_total and
// cdcrelay_tracing_spans_dropped_total{reason="queue_full"|"export_failed"}.
func (t *Tracer) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "cdcrelay_tracing_spans_exported_total",
			Help: "Spans the OTLP collector accepted.",
		}, func() float64 { return float64(t.q.exported.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "cdcrelay_tracing_spans_dropped_total",
			Help:        "Spans dropped, never exported: the export queue was full (a slow or unreachable collector), or their export failed.",
			ConstLabels: prometheus.Labels{"reason": "queue_full"},
		}, func() float64 { return float64(t.q.droppedFull.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "cdcrelay_tracing_spans_dropped_total",
			Help:        "Spans dropped, never exported: the export queue was full (a slow or unreachable collector), or their export failed.",
			ConstLabels: prometheus.Labels{"reason": "export_failed"},
		}, func() float64 { return float64(t.q.droppedFailed.Load()) }),
	}
}
