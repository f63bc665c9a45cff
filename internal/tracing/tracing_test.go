package tracing

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/cdcrelay/cdcrelay/internal/tracing/otlptest"
	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func noEnv(string) string { return "" }

func newTestTracer(t testing.TB, cfg Config) *Tracer {
	t.Helper()
	tr, err := newTracer(context.Background(), cfg, quiet, noEnv, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tr.Shutdown(ctx)
	})
	return tr
}

var (
	outboxRel = &replication.Relation{Schema: "public", Table: "outbox"}
	commitAt  = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
)

func change(i int) *replication.Change {
	return &replication.Change{Op: replication.OpInsert, Relation: outboxRel,
		Pos: replication.Pos{CommitLSN: 0x16B374D848, Index: i}, CommitTime: commitAt}
}

func TestSpansOfACommittedTransaction(t *testing.T) {
	rcv := otlptest.NewReceiver(t)
	tr := newTestTracer(t, Config{Endpoint: rcv.URL, ServiceName: "relay-under-test", Database: "shop", RelayName: "shop"})
	b := tr.NewBatch()

	parent, _ := mapping.ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	parent.State = "rojo=00f067aa0ba902b7"
	withCtx := mapping.Event{Topic: "outbox.event.order", Key: []byte("42"), Value: []byte("{}"), ID: "ev-1", Trace: parent,
		CorrelationID: "order-42", Headers: []mapping.Header{{Key: "traceparent", Value: []byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")}}}
	without := mapping.Event{Topic: "outbox.event.order", Key: []byte("43"), Value: []byte("{}"), ID: "ev-2"}
	b.Start(&withCtx, change(0))
	b.Sent()
	b.Start(&without, change(1))
	b.Sent()
	if len(withCtx.Headers) != 1 {
		t.Errorf("an event with a context got headers %v; its own traceparent must stay alone", withCtx.Headers)
	}
	tp, ok := without.Header("traceparent")
	if !ok {
		t.Fatal("an event without a context got no traceparent header")
	}
	own, err := mapping.ParseTraceparent(string(tp))
	if err != nil || !own.Sampled() {
		t.Fatalf("the relay's traceparent %q: %v (sampled %v)", tp, err, own.Sampled())
	}

	started := time.Now()
	committed := started.Add(7 * time.Millisecond)
	b.Committed([]sink.Delivery{{Partition: 2, Offset: 17}, {Partition: 0, Offset: -1}}, 9, 0x16B374D900, started, committed)
	if err := tr.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := rcv.WaitFor(t, 10*time.Second, "three spans", func(s []otlptest.Span) bool { return len(s) >= 3 })
	if len(spans) != 3 {
		t.Fatalf("%d spans, want 3", len(spans))
	}
	byID := map[string]otlptest.Span{}
	var commit otlptest.Span
	for _, s := range spans {
		if s.Service != "relay-under-test" {
			t.Errorf("span %q from service %q", s.Name, s.Service)
		}
		if s.Name == "commit" {
			commit = s
			continue
		}
		byID[s.Attr("messaging.message.id")] = s
	}
	s1, s2 := byID["ev-1"], byID["ev-2"]
	if s1.Span == nil || s2.Span == nil || commit.Span == nil {
		t.Fatalf("spans %v", spans)
	}
	// The row's context is the parent (and the linked creation context).
	if s1.TraceID() != "4bf92f3577b34da6a3ce929d0e0e4736" || s1.ParentSpanID() != "00f067aa0ba902b7" {
		t.Errorf("span of ev-1: trace %s parent %s", s1.TraceID(), s1.ParentSpanID())
	}
	if len(s1.Links) != 1 || fmt.Sprintf("%x", s1.Links[0].SpanId) != "00f067aa0ba902b7" {
		t.Errorf("span of ev-1: links %v", s1.Links)
	}
	if s1.TraceState != "rojo=00f067aa0ba902b7" {
		t.Errorf("span of ev-1: trace state %q", s1.TraceState)
	}
	// The relay's own trace is a root, and the header names this very span.
	if s2.ParentSpanID() != "" || s2.TraceID() != fmt.Sprintf("%x", own.TraceID) || s2.SpanID() != fmt.Sprintf("%x", own.SpanID) {
		t.Errorf("span of ev-2: trace %s span %s parent %q; header %q", s2.TraceID(), s2.SpanID(), s2.ParentSpanID(), tp)
	}
	for _, s := range []otlptest.Span{s1, s2} {
		if s.Name != "send outbox.event.order" || s.Kind != tracepb.Span_SPAN_KIND_PRODUCER {
			t.Errorf("span %q kind %v", s.Name, s.Kind)
		}
		if got := time.Unix(0, int64(s.StartTimeUnixNano)); !got.Equal(commitAt) {
			t.Errorf("span %q starts %v, want the source commit time %v", s.Name, got, commitAt)
		}
		if got := time.Unix(0, int64(s.EndTimeUnixNano)); !got.Equal(committed) {
			t.Errorf("span %q ends %v, want the Kafka commit %v", s.Name, got, committed)
		}
		for k, v := range map[string]string{"messaging.system": "kafka", "messaging.operation.type": "send", "messaging.operation.name": "send",
			"messaging.destination.name": "outbox.event.order", "db.system.name": "postgresql",
			"db.collection.name": "public.outbox", "cdcrelay.source.lsn": "16/B374D848"} {
			if got := s.Attr(k); got != v {
				t.Errorf("span of %s: %s = %q, want %q", s.Attr("messaging.message.id"), k, got, v)
			}
		}
	}
	for k, v := range map[string]string{"messaging.destination.partition.id": "2", "messaging.kafka.offset": "17",
		"messaging.kafka.message.key": "42", "messaging.message.conversation_id": "order-42"} {
		if got := s1.Attr(k); got != v {
			t.Errorf("span of ev-1: %s = %q, want %q", k, got, v)
		}
	}
	if s2.HasAttr("messaging.kafka.offset") || s2.Attr("messaging.destination.partition.id") != "0" || s2.HasAttr("messaging.message.conversation_id") {
		t.Errorf("span of ev-2: an unknown offset must be left out: %v", s2.Attributes)
	}
	if commit.Kind != tracepb.Span_SPAN_KIND_CLIENT || commit.Attr("messaging.batch.message_count") != "2" ||
		commit.Attr("cdcrelay.kafka.transaction.seq") != "9" || commit.Attr("cdcrelay.checkpoint.lsn") != "16/B374D900" {
		t.Errorf("commit span: %v", commit.Span)
	}
	if d := time.Duration(commit.EndTimeUnixNano - commit.StartTimeUnixNano); d != 7*time.Millisecond {
		t.Errorf("commit span lasts %v, want the commit's 7ms", d)
	}
	if st := tr.Stats(); st.Exported != 3 || st.DroppedQueueFull+st.DroppedExportFailed != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestDiscardedTransactionExportsNothing(t *testing.T) {
	rcv := otlptest.NewReceiver(t)
	tr := newTestTracer(t, Config{Endpoint: rcv.URL})
	b := tr.NewBatch()
	for i := 0; i < 3; i++ {
		ev := mapping.Event{Topic: "t", ID: fmt.Sprint("lost-", i)}
		b.Start(&ev, change(i))
		b.Sent()
	}
	b.Discard()
	// The session retries: the same events again, committed this time.
	for i := 0; i < 3; i++ {
		ev := mapping.Event{Topic: "t", ID: fmt.Sprint("kept-", i)}
		b.Start(&ev, change(i))
		b.Sent()
	}
	// An oversized event replaced by its dead letter: only the second counts.
	big := mapping.Event{Topic: "t", ID: "too-big"}
	b.Start(&big, change(3))
	dl := mapping.Event{Topic: "dlq"}
	b.Start(&dl, change(3))
	b.Sent()
	b.Committed(nil, 1, 1, time.Now(), time.Now())
	_ = tr.ForceFlush(context.Background())
	spans := rcv.WaitFor(t, 10*time.Second, "five spans", func(s []otlptest.Span) bool { return len(s) >= 5 })
	names := map[string]int{}
	for _, s := range spans {
		names[s.Name+" "+s.Attr("messaging.message.id")]++
	}
	want := map[string]int{"send t kept-0": 1, "send t kept-1": 1, "send t kept-2": 1, "send dlq ": 1, "commit ": 1}
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("spans %v, want %v", names, want)
	}
}

func TestSampleRatioZeroStillWritesTraceparent(t *testing.T) {
	rcv := otlptest.NewReceiver(t)
	zero := 0.0
	tr := newTestTracer(t, Config{Endpoint: rcv.URL, SampleRatio: &zero})
	b := tr.NewBatch()
	ev := mapping.Event{Topic: "t"}
	b.Start(&ev, change(0))
	b.Sent()
	// A row sampled upstream is recorded whatever the ratio.
	parent, _ := mapping.ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	sampled := mapping.Event{Topic: "t", Trace: parent, ID: "upstream"}
	b.Start(&sampled, change(1))
	b.Sent()
	b.Committed(nil, 1, 1, time.Now(), time.Now())
	_ = tr.ForceFlush(context.Background())
	tp, ok := ev.Header("traceparent")
	if !ok || !strings.HasSuffix(string(tp), "-00") {
		t.Errorf("unsampled trace: header %q, want a traceparent with flags 00 so consumers can still join it", tp)
	}
	spans := rcv.WaitFor(t, 10*time.Second, "one span", func(s []otlptest.Span) bool { return len(s) >= 1 })
	time.Sleep(0) // nothing else is coming: ForceFlush returned after the export
	if len(spans) != 1 || spans[0].Attr("messaging.message.id") != "upstream" {
		t.Errorf("spans %v, want only the upstream-sampled one", spans)
	}
}

// TestUnreachableCollectorNeverBlocks: with the collector refusing
// connections or swallowing them, ending spans stays instant and the spans
// are counted as dropped.
func TestUnreachableCollectorNeverBlocks(t *testing.T) {
	for name, url := range map[string]string{"refusing": otlptest.RefusingURL(t), "black hole": otlptest.NewBlackHole(t).URL} {
		t.Run(name, func(t *testing.T) {
			tr := newTestTracer(t, Config{Endpoint: url, Timeout: 300 * time.Millisecond, QueueSize: 100})
			b := tr.NewBatch()
			const txns, perTxn = 20, 50
			begin := time.Now()
			for i := 0; i < txns; i++ {
				for j := 0; j < perTxn; j++ {
					ev := mapping.Event{Topic: "t", ID: fmt.Sprint(i, "-", j)}
					b.Start(&ev, change(j))
					b.Sent()
				}
				b.Committed(nil, int64(i), 1, time.Now(), time.Now())
			}
			if took := time.Since(begin); took > 2*time.Second {
				t.Errorf("ending %d spans took %v with the collector %s", txns*(perTxn+1), took, name)
			}
			// Everything ended is queued (100), in the batch being
			// exported (up to exportBatchSize), or dropped at once.
			st := tr.Stats()
			if st.Exported != 0 || st.DroppedQueueFull < txns*(perTxn+1)-100-exportBatchSize {
				t.Errorf("stats %+v after %d spans into a queue of 100", st, txns*(perTxn+1))
			}
			// The export attempts fail within their timeout and count too.
			deadline := time.Now().Add(10 * time.Second)
			for tr.Stats().DroppedExportFailed == 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if st := tr.Stats(); st.DroppedExportFailed == 0 {
				t.Errorf("no failed export counted: %+v", st)
			}
		})
	}
}

func TestConfig(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	c := Config{}
	if p, _ := c.protocol(getenv); p != ProtocolHTTP {
		t.Errorf("default protocol %q", p)
	}
	env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
	if p, _ := c.protocol(getenv); p != ProtocolGRPC {
		t.Errorf("protocol from OTEL_EXPORTER_OTLP_PROTOCOL: %q", p)
	}
	env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
	if p, _ := c.protocol(getenv); p != ProtocolHTTP {
		t.Errorf("the traces variable wins: %q", p)
	}
	if _, err := (&Config{Protocol: "http/json"}).protocol(getenv); err == nil {
		t.Error("http/json accepted")
	}
	if r := c.sampleRatio(getenv); r != 1 {
		t.Errorf("default ratio %v", r)
	}
	env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"] = "parentbased_traceidratio", "0.25"
	if r := c.sampleRatio(getenv); r != 0.25 {
		t.Errorf("ratio from the variables %v", r)
	}
	half := 0.5
	if r := (&Config{SampleRatio: &half}).sampleRatio(getenv); r != 0.5 {
		t.Errorf("relay.toml's ratio %v", r)
	}
	if s := c.serviceName(getenv); s != "cdcrelay" {
		t.Errorf("service name %q", s)
	}
	env["OTEL_SERVICE_NAME"] = "relay-eu"
	if s := c.serviceName(getenv); s != "relay-eu" {
		t.Errorf("service name %q", s)
	}
	for in, want := range map[string]string{
		"http://c:4318": "http://c:4318/v1/traces", "http://c:4318/": "http://c:4318/v1/traces",
		"https://c/otlp/v1/traces": "https://c/otlp/v1/traces",
	} {
		if got, err := endpointURL(in, ProtocolHTTP); err != nil || got != want {
			t.Errorf("endpointURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"c:4318", "ftp://c", "http://"} {
		if _, err := endpointURL(bad, ProtocolHTTP); err == nil {
			t.Errorf("endpointURL(%q) accepted", bad)
		}
	}
	two := 2.0
	if err := (&Config{SampleRatio: &two}).Validate(); err == nil {
		t.Error("sample ratio 2 accepted")
	}
}

// BenchmarkSpanPerEvent is the cost tracing adds per event at ratio 1:
// start, header, attributes, end, and the OTLP/HTTP export (to an endpoint
// that reads and discards, so the receiver's decoding is not counted).
func BenchmarkSpanPerEvent(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }))
	defer srv.Close()
	tr := newTestTracer(b, Config{Endpoint: srv.URL, QueueSize: 1 << 20})
	batch := tr.NewBatch()
	parent, _ := mapping.ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	deliveries := make([]sink.Delivery, 1000)
	c := change(0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ev := mapping.Event{Topic: "outbox.event.order", Key: []byte("42"), ID: "5c7d9e59-3f3c-4c3b-8d0a-6f2c1c1e9a11"}
		if i%2 == 0 {
			ev.Trace = parent // half with the row's context, half in the relay's own trace
		}
		batch.Start(&ev, c)
		batch.Sent()
		if i%1000 == 999 {
			batch.Committed(deliveries, int64(i), 1, time.Now(), time.Now())
		}
	}
	_ = tr.ForceFlush(context.Background())
	b.StopTimer()
	if st := tr.Stats(); st.DroppedQueueFull+st.DroppedExportFailed > 0 {
		b.Errorf("dropped: %+v", st)
	}
}
