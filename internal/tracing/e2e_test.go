package tracing_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
	"github.com/cdcrelay/cdcrelay/internal/tracing/otlptest"
)

// relayEnv is a database on the shared Postgres, the shared Kafka, and a
// relay binary to run against them with [tracing] on.
type relayEnv struct {
	t       *testing.T
	ctx     context.Context
	dsn     string
	name    string
	topic   string
	brokers []string
	conn    *pgx.Conn
	dir     string
	bin     string
}

const tracedOutboxDDL = `CREATE TABLE outbox (
	id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	aggregatetype text NOT NULL,
	aggregateid   text NOT NULL,
	type          text NOT NULL,
	payload       jsonb NOT NULL,
	traceparent   text,
	tracestate    text,
	tracingspancontext text,
	correlation   text)`

func newRelayEnv(t *testing.T) *relayEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	e := &relayEnv{t: t, ctx: ctx, dir: t.TempDir(), dsn: testenv.NewDatabase(t), brokers: testenv.KafkaBrokers(t)}
	e.name = testenv.UniqueName(t, "tr")
	if len(e.name) > 40 {
		e.name = e.name[len(e.name)-40:]
	}
	e.name = strings.Trim(e.name, "_")
	e.topic = "outbox.event." + e.name
	var err error
	if e.bin, err = e2e.Binary(); err != nil {
		t.Fatal(err)
	}
	if e.conn, err = pgx.Connect(ctx, e.dsn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.conn.Close(context.Background()) })
	for _, s := range []string{tracedOutboxDDL,
		"CREATE PUBLICATION cdcrelay_" + e.name + " FOR TABLE outbox",
		"SELECT pg_create_logical_replication_slot('cdcrelay_" + e.name + "', 'pgoutput')"} {
		if _, err := e.conn.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	for topic, parts := range map[string]int32{"cdcrelay.checkpoints": 1, e.topic: 3} {
		if err := e2e.CreateTopic(e.brokers, topic, parts, topic == "cdcrelay.checkpoints"); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// start runs the relay binary with [tracing] as given, and metrics on addr.
func (e *relayEnv) start(tracingSection, metricsAddr string) *e2e.Process {
	e.t.Helper()
	cfg := fmt.Sprintf(`
[relay]
name = %q
[postgres]
dsn = %q
status_interval = "1s"
idle_checkpoint_interval = "1s"
[kafka]
brokers = [%q]
[batch]
linger = "10ms"
max_events = 50
[metrics]
listen = %q
%s
[[mapping]]
table = "public.outbox"
kind = "outbox"
topic = %q
[mapping.trace]
correlation_id_column = "correlation"
`, e.name, e.dsn, strings.Join(e.brokers, `", "`), metricsAddr, tracingSection, e.topic)
	path := filepath.Join(e.dir, "relay.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		e.t.Fatal(err)
	}
	logPath := filepath.Join(e.dir, "relay.log")
	p, err := e2e.Start(e.bin, logPath, "run", "--config", path)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if !p.Exited() {
			_ = p.Stop(20 * time.Second)
		}
		if e.t.Failed() {
			out := p.Output()
			if len(out) > 8000 {
				out = out[len(out)-8000:]
			}
			e.t.Logf("relay output:\n%s", out)
		}
	})
	return p
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ports, err := testenv.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0])
}

// metric reads one series from the relay's /metrics ("" name{labels} as printed).
func metric(addr, series string) (float64, bool) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
	}
	return 0, false
}

// row is an outbox row as the service wrote it.
type row struct {
	agg, traceparent, tracestate, props, correlation string
}

func (e *relayEnv) insert(rows []row) (before, after time.Time) {
	e.t.Helper()
	nullable := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	before = time.Now()
	tx, err := e.conn.Begin(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, r := range rows {
		if _, err := tx.Exec(e.ctx, `INSERT INTO outbox (aggregatetype, aggregateid, type, payload, traceparent, tracestate, tracingspancontext, correlation)
			VALUES ('order', $1, 'OrderPlaced', '{}', $2, $3, $4, $5)`, r.agg, nullable(r.traceparent), nullable(r.tracestate), nullable(r.props), nullable(r.correlation)); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := tx.Commit(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	return before, time.Now()
}

func (e *relayEnv) read(want int) map[string]e2e.Record {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 90*time.Second)
	defer cancel()
	recs, err := e2e.ReadCommitted(ctx, e.brokers, []string{e.topic}, want, 2*time.Second)
	if err != nil {
		e.t.Fatal(err)
	}
	byAgg := map[string]e2e.Record{}
	for _, r := range recs {
		if _, dup := byAgg[string(r.Key)]; dup {
			e.t.Fatalf("key %s published twice", r.Key)
		}
		byAgg[string(r.Key)] = r
	}
	if len(byAgg) != want {
		e.t.Fatalf("%d records, want %d", len(byAgg), want)
	}
	return byAgg
}

// TestTraceContextThroughTheRelay: an outbox service writes rows with
// traceparents it made itself (in columns, in Debezium's Properties
// column, invalid ones, none); a read_committed consumer finds every valid
// traceparent and tracestate on the record byte for byte, the relay's own
// traceparent where the row had none, and a real OTLP endpoint receives one
// PRODUCER span per event whose parent is the row's span, with the
// record's partition and offset and the source commit as its start.
func TestTraceContextThroughTheRelay(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t)
	rcv := otlptest.NewReceiver(t)
	metrics := freeAddr(t)
	p := e.start(fmt.Sprintf("[tracing]\nendpoint = %q\nservice_name = \"relay-under-test\"\n", rcv.URL), metrics)
	_ = p

	tp := func(i int) string { return fmt.Sprintf("00-%032x-%016x-01", 0xabc0000+i, 0xdef000+i) }
	debezium := func(i int) string {
		// What java.util.Properties.store writes: comments, and '=' escaped in values.
		return "#Tracing span context\n#Tue Dec 02 04:00:00 UTC 2025\ntraceparent=" + tp(i) + "\ntracestate=rojo\\=00f067aa0ba902b7,congo\\=t61rcWkgMzE\n"
	}
	var rows []row
	for i := 0; i < 12; i++ {
		r := row{agg: fmt.Sprintf("a%02d", i), correlation: fmt.Sprintf("order-%d", i)}
		switch i % 4 {
		case 0:
			r.traceparent, r.tracestate = tp(i), "vendor=opaque-"+strconv.Itoa(i)
		case 1:
			r.props = debezium(i)
		case 2:
			r.traceparent = "00-NOT-A-TRACEPARENT-01"
		case 3: // no context
		}
		rows = append(rows, r)
	}
	before, after := e.insert(rows[:6])
	before2, after2 := e.insert(rows[6:])
	recs := e.read(len(rows))

	// Headers, byte for byte.
	relayTrace := map[string]string{} // aggregate -> the relay's traceparent
	for i, r := range rows {
		rec := recs[r.agg]
		switch i % 4 {
		case 0:
			if rec.Headers["traceparent"] != r.traceparent || rec.Headers["tracestate"] != r.tracestate {
				t.Errorf("row %s: headers %q, want traceparent %q tracestate %q", r.agg, rec.Headers, r.traceparent, r.tracestate)
			}
		case 1:
			if rec.Headers["traceparent"] != tp(i) || rec.Headers["tracestate"] != "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE" {
				t.Errorf("row %s (Debezium column): headers %q", r.agg, rec.Headers)
			}
		case 2, 3:
			// An invalid context is left out; tracing on, the relay starts
			// a trace of its own and says so in the header.
			if _, has := rec.Headers["tracestate"]; has || rec.Headers["traceparent"] == "" || rec.Headers["traceparent"] == r.traceparent {
				t.Errorf("row %s: headers %q, want the relay's own traceparent only", r.agg, rec.Headers)
			}
			relayTrace[r.agg] = rec.Headers["traceparent"]
		}
		if rec.Headers["correlation_id"] != r.correlation {
			t.Errorf("row %s: correlation_id header %q, want %q", r.agg, rec.Headers["correlation_id"], r.correlation)
		}
	}

	spans := rcv.WaitFor(t, 60*time.Second, "a PRODUCER span per event", func(s []otlptest.Span) bool {
		n := 0
		for _, sp := range s {
			if sp.Kind == tracepb.Span_SPAN_KIND_PRODUCER {
				n++
			}
		}
		return n >= len(rows)
	})
	byID := map[string][]otlptest.Span{}
	commits := 0
	for _, s := range spans {
		switch s.Kind {
		case tracepb.Span_SPAN_KIND_PRODUCER:
			byID[s.Attr("messaging.message.id")] = append(byID[s.Attr("messaging.message.id")], s)
		case tracepb.Span_SPAN_KIND_CLIENT:
			commits++
		}
	}
	if commits == 0 {
		t.Error("no commit span")
	}
	for i, r := range rows {
		rec := recs[r.agg]
		ss := byID[rec.Headers["id"]]
		if len(ss) != 1 {
			t.Errorf("row %s: %d PRODUCER spans, want 1", r.agg, len(ss))
			continue
		}
		s := ss[0]
		wantTrace, wantParent := "", ""
		switch i % 4 {
		case 0, 1:
			f := strings.Split(tp(i), "-")
			wantTrace, wantParent = f[1], f[2]
		default:
			f := strings.Split(relayTrace[r.agg], "-")
			if s.TraceID() != f[1] || s.SpanID() != f[2] || s.ParentSpanID() != "" {
				t.Errorf("row %s: span %s/%s (parent %q), the record's header says %s", r.agg, s.TraceID(), s.SpanID(), s.ParentSpanID(), relayTrace[r.agg])
			}
		}
		if wantParent != "" && (s.TraceID() != wantTrace || s.ParentSpanID() != wantParent) {
			t.Errorf("row %s: span in trace %s with parent %s, want %s / %s (the row's)", r.agg, s.TraceID(), s.ParentSpanID(), wantTrace, wantParent)
		}
		if s.Service != "relay-under-test" || s.Name != "send "+e.topic {
			t.Errorf("row %s: span %q of %q", r.agg, s.Name, s.Service)
		}
		for k, v := range map[string]string{
			"messaging.system": "kafka", "messaging.operation.type": "send", "messaging.destination.name": e.topic,
			"messaging.destination.partition.id": strconv.Itoa(int(rec.Partition)), "messaging.kafka.offset": strconv.FormatInt(rec.Offset, 10),
			"messaging.kafka.message.key": r.agg, "messaging.message.conversation_id": r.correlation,
			"db.system.name": "postgresql", "db.collection.name": "public.outbox",
		} {
			if got := s.Attr(k); got != v {
				t.Errorf("row %s: %s = %q, want %q", r.agg, k, got, v)
			}
		}
		if !strings.Contains(s.Attr("cdcrelay.source.lsn"), "/") {
			t.Errorf("row %s: source lsn %q", r.agg, s.Attr("cdcrelay.source.lsn"))
		}
		// Start: the source transaction's commit (between the test's
		// BEGIN and its COMMIT returning); end: after it, at the Kafka commit.
		lo, hi := before, after
		if i >= 6 {
			lo, hi = before2, after2
		}
		start, end := time.Unix(0, int64(s.StartTimeUnixNano)), time.Unix(0, int64(s.EndTimeUnixNano))
		if start.Before(lo.Add(-time.Millisecond)) || start.After(hi.Add(time.Millisecond)) || !end.After(start) || end.After(time.Now()) {
			t.Errorf("row %s: span %v .. %v, the source transaction committed within %v .. %v", r.agg, start, end, lo, hi)
		}
	}
	// The invalid traceparents are counted (three rows: 2, 6, 10).
	if v, _ := metric(metrics, `cdcrelay_trace_context_invalid_total{table="public.outbox"}`); v != 3 {
		t.Errorf("cdcrelay_trace_context_invalid_total = %v, want 3", v)
	}
	if v, ok := metric(metrics, "cdcrelay_tracing_spans_exported_total"); !ok || v < float64(len(rows)) {
		t.Errorf("cdcrelay_tracing_spans_exported_total = %v", v)
	}
}

// TestTracingOffLeavesHeadersAlone: without [tracing] the row's context
// still travels, and a row without one gets no header.
func TestTracingOffLeavesHeadersAlone(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t)
	e.start("", freeAddr(t))
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
	e.insert([]row{{agg: "with", traceparent: tp}, {agg: "without"}})
	recs := e.read(2)
	if recs["with"].Headers["traceparent"] != tp {
		t.Errorf("headers %q", recs["with"].Headers)
	}
	if _, has := recs["without"].Headers["traceparent"]; has {
		t.Errorf("tracing off, a row without context got %q", recs["without"].Headers)
	}
}

// TestCollectorDownNeverBlocksPublishing: with the collector refusing
// connections, or accepting and never answering, every event is published
// as fast as the relay commits, the relay stays ready, and the spans are
// dropped and counted.
func TestCollectorDownNeverBlocksPublishing(t *testing.T) {
	t.Parallel()
	for name, url := range map[string]string{"refusing": otlptest.RefusingURL(t), "black hole": otlptest.NewBlackHole(t).URL} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newRelayEnv(t)
			metrics := freeAddr(t)
			// A small queue and a short timeout, so that drops show within
			// the test; the defaults only make the outage last longer.
			e.start(fmt.Sprintf("[tracing]\nendpoint = %q\ntimeout = \"500ms\"\nqueue_size = 64\n", url), metrics)
			const txns, per = 20, 25
			for i := 0; i < txns; i++ {
				var rows []row
				for j := 0; j < per; j++ {
					rows = append(rows, row{agg: fmt.Sprintf("%d-%d", i, j)})
				}
				e.insert(rows)
			}
			began := time.Now()
			recs := e.read(txns * per)
			t.Logf("collector %s: %d events read %v after the last insert", name, len(recs), time.Since(began).Round(time.Millisecond))
			for _, r := range recs {
				if r.Headers["traceparent"] == "" {
					t.Fatalf("record %s has no traceparent", r.Key)
				}
			}
			var dropped float64
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				full, _ := metric(metrics, `cdcrelay_tracing_spans_dropped_total{reason="queue_full"}`)
				failed, _ := metric(metrics, `cdcrelay_tracing_spans_dropped_total{reason="export_failed"}`)
				if dropped = full + failed; dropped > 0 {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if dropped == 0 {
				t.Errorf("no dropped span counted with the collector %s", name)
			}
			if exported, _ := metric(metrics, "cdcrelay_tracing_spans_exported_total"); exported != 0 {
				t.Errorf("%v spans exported to a collector that is down", exported)
			}
			if ready, _ := metric(metrics, "cdcrelay_ready"); ready != 1 {
				t.Errorf("cdcrelay_ready = %v", ready)
			}
			if failed, _ := metric(metrics, "cdcrelay_kafka_transactions_failed_total"); failed != 0 {
				t.Errorf("%v Kafka transactions failed", failed)
			}
		})
	}
}
