package tracing

import (
	"context"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// scopeName is the instrumentation scope of the relay's spans.
const scopeName = "github.com/cdcrelay/cdcrelay"

// Tracer owns the SDK's provider, the exporter and the export queue. One
// serves the whole process; [Tracer.NewBatch] gives each session its own
// per-transaction state.
type Tracer struct {
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
	q        *queue
	log      *slog.Logger
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
	provider := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		// A row's context decides for its events (sampled upstream means
		// recorded here); the ratio decides for the traces the relay starts.
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
		sdktrace.WithSpanProcessor(q),
	)
	log.Info("tracing: exporting spans over OTLP", "protocol", protocol, "endpoint", cfg.Endpoint, "sample_ratio", ratio)
	return &Tracer{provider: provider, tracer: provider.Tracer(scopeName), q: q, log: log}, nil
}

// Shutdown exports the queued spans, within ctx, and stops the exporter.
func (t *Tracer) Shutdown(ctx context.Context) error {
	return t.provider.Shutdown(ctx)
}

// ForceFlush exports the queued spans now.
func (t *Tracer) ForceFlush(ctx context.Context) error {
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
