package tracing

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/sink"
)

type nopExp struct{}

func (nopExp) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (nopExp) Shutdown(context.Context) error                             { return nil }

func benchWith(b *testing.B, tr *Tracer) {
	batch := tr.NewBatch()
	parent, _ := mapping.ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	deliveries := make([]sink.Delivery, 1000)
	c := change(0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ev := mapping.Event{Topic: "outbox.event.order", Key: []byte("42"), ID: "5c7d9e59-3f3c-4c3b-8d0a-6f2c1c1e9a11"}
		if i%2 == 0 {
			ev.Trace = parent
		}
		batch.Start(&ev, c)
		batch.Sent()
		if i%1000 == 999 {
			batch.Committed(deliveries, int64(i), 1, time.Now(), time.Now())
		}
	}
	_ = tr.ForceFlush(context.Background())
	b.StopTimer()
	b.Logf("%+v", tr.Stats())
}

func BenchmarkNopExporter(b *testing.B) {
	tr, _ := newTracer(context.Background(), Config{QueueSize: 1 << 20}, quiet, noEnv, nopExp{})
	benchWith(b, tr)
}

func BenchmarkHTTPDiscard(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }))
	defer srv.Close()
	tr, _ := newTracer(context.Background(), Config{Endpoint: srv.URL, QueueSize: 1 << 20}, quiet, noEnv, nil)
	benchWith(b, tr)
}
