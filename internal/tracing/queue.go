package tracing

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// queue is the span processor between the relay and the exporter: OnEnd
// never blocks (a full queue drops the span and counts it), and one
// goroutine exports batches of up to exportBatchSize spans, each export
// bounded by the exporter's timeout. It exports when a Kafka commit has
// ended spans (nudge), so spans reach the collector within an export's
// time of the commit and a relay killed later loses none of them, and at
// least every exportInterval.
type queue struct {
	exp sdktrace.SpanExporter
	log *slog.Logger
	in  chan sdktrace.ReadOnlySpan

	exported, droppedFull, droppedFailed atomic.Uint64

	flush    chan chan struct{}
	kick     chan struct{}
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once

	lastFailureLog time.Time // touched by the export goroutine only
}

var _ sdktrace.SpanProcessor = (*queue)(nil)

func newQueue(exp sdktrace.SpanExporter, size int, log *slog.Logger) *queue {
	q := &queue{exp: exp, log: log, in: make(chan sdktrace.ReadOnlySpan, size),
		flush: make(chan chan struct{}), kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go q.run()
	return q
}

// OnStart implements [sdktrace.SpanProcessor].
func (q *queue) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd implements [sdktrace.SpanProcessor]: it queues a sampled span, or
// drops it when the queue is full.
func (q *queue) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	select {
	case q.in <- s:
	default:
		q.droppedFull.Add(1)
	}
}

func (q *queue) run() {
	defer close(q.done)
	batch := make([]sdktrace.ReadOnlySpan, 0, exportBatchSize)
	ticker := time.NewTicker(exportInterval)
	defer ticker.Stop()
	export := func() {
		if len(batch) > 0 {
			q.export(batch)
			clear(batch)
			batch = batch[:0]
		}
	}
	drain := func() {
		for {
			select {
			case s := <-q.in:
				if batch = append(batch, s); len(batch) == exportBatchSize {
					export()
				}
			default:
				export()
				return
			}
		}
	}
	for {
		select {
		case s := <-q.in:
			if batch = append(batch, s); len(batch) == exportBatchSize {
				export()
			}
		case <-ticker.C:
			export()
		case <-q.kick:
			drain()
		case ack := <-q.flush:
			drain()
			close(ack)
		case <-q.stop:
			drain()
			return
		}
	}
}

// nudge asks for an export of what is queued, without waiting for it.
func (q *queue) nudge() {
	select {
	case q.kick <- struct{}{}:
	default: // one is pending already
	}
}

func (q *queue) export(batch []sdktrace.ReadOnlySpan) {
	// The exporter bounds the request by its timeout; this context only
	// carries nothing to cancel it early.
	if err := q.exp.ExportSpans(context.Background(), batch); err != nil {
		q.droppedFailed.Add(uint64(len(batch)))
		// An unreachable collector is said once a minute, not per batch.
		if now := time.Now(); now.Sub(q.lastFailureLog) >= time.Minute {
			q.lastFailureLog = now
			q.log.Warn("tracing: export failed; spans dropped (cdcrelay_tracing_spans_dropped_total counts them)", "spans", len(batch), "err", err)
		}
		return
	}
	q.exported.Add(uint64(len(batch)))
}

// ForceFlush implements [sdktrace.SpanProcessor]: it exports what is queued.
func (q *queue) ForceFlush(ctx context.Context) error {
	ack := make(chan struct{})
	select {
	case q.flush <- ack:
	case <-q.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ack:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown implements [sdktrace.SpanProcessor]: it exports what is queued,
// within ctx, and shuts the exporter down.
func (q *queue) Shutdown(ctx context.Context) error {
	q.stopOnce.Do(func() { close(q.stop) })
	select {
	case <-q.done:
	case <-ctx.Done():
		// The export goroutine is in an export, which the exporter's
		// timeout bounds; it ends after that.
		return ctx.Err()
	}
	return q.exp.Shutdown(ctx)
}
