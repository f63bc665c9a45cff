package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand"
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

// TestTracingExactlyOnceUnderKills: with tracing on, a relay SIGKILLed at
// random moments still publishes every outbox row once, in order per
// aggregate, and tracing adds no duplicate: no event id has two PRODUCER
// spans, and every span is the one whose traceparent the visible record
// carries (a span of a transaction that was aborted, or replayed and
// skipped after a restart, would name another span). Spans are at most
// once: a kill between a commit and its export loses that export.
func TestTracingExactlyOnceUnderKills(t *testing.T) {
	if testing.Short() {
		t.Skip("long test")
	}
	e := startChaosEnv(t, testenv.PostgresOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	const name, db = "traced", "traced"
	e.setupOutbox(t, ctx, db, name, 3)
	rcv := otlptest.NewReceiver(t)
	cfgPath := e.config(t, name, db, fmt.Sprintf(`
[tracing]
endpoint = %q

[[mapping]]
table = "public.outbox"
kind = "outbox"
`, rcv.URL))
	logPath := filepath.Join(e.dir, "relay.log")
	defer dumpLogOnFailure(t, logPath)

	conn, err := pgx.Connect(ctx, e.pg.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	w := &outboxWriter{dsn: e.pg.DSN(db), conn: conn, aggregates: 12, seq: map[string]int{}}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewSource(seed))
	const rows = 4000
	writerDone := make(chan error, 1)
	go func() {
		wr := rand.New(rand.NewSource(seed + 1))
		for written := 0; written < rows; {
			n := min(1+wr.Intn(120), rows-written)
			if err := w.txn(ctx, n, wr); err != nil {
				writerDone <- err
				return
			}
			written += n
			time.Sleep(time.Duration(10+wr.Intn(60)) * time.Millisecond)
		}
		writerDone <- nil
	}()

	kills := 0
	for writing := true; writing || kills < 6; {
		p, err := e2e.Start(e.bin, logPath, "run", "--config", cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(300+rnd.Intn(1500)) * time.Millisecond)
		if p.Exited() {
			t.Fatalf("relay exited by itself:\n%s", p.Output())
		}
		p.Kill()
		kills++
		select {
		case err := <-writerDone:
			if err != nil {
				t.Fatalf("writer: %v", err)
			}
			writing = false
		default:
		}
	}
	final, err := e2e.Start(e.bin, logPath, "run", "--config", cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	// A tail written while the last relay runs: no kill follows it, so every
	// one of its events must have its span (the SIGTERM below exports them).
	// Spans of the killed runs are at most once: a kill between a commit and
	// its export loses that export, however many that is on a loaded host.
	beforeTail := maps.Clone(w.seq)
	for range 10 {
		if err := w.txn(ctx, 50, rnd); err != nil {
			t.Fatalf("writer: %v", err)
		}
	}
	total := int(w.committed.Load())
	recs, err := e2e.ReadCommitted(ctx, e.brokers, []string{"outbox.event.order"}, total, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := final.Stop(20 * time.Second); err != nil { // SIGTERM: the last spans are exported
		t.Errorf("SIGTERM: %v", err)
	}
	checkOutboxEvents(t, recs, total, w.seq)
	logb, _ := os.ReadFile(logPath)
	resumes := strings.Count(string(logb), "resuming from kafka checkpoint")
	t.Logf("%d kills, %d rows, %d resumes from a checkpoint", kills, total, resumes)
	if resumes < kills/2 {
		t.Errorf("only %d resumes in %d runs: the kills did not interrupt a streaming relay", resumes, kills)
	}

	byID := map[string]e2e.Record{}
	for _, r := range recs {
		byID[r.Headers["id"]] = r
	}
	spans := map[string]int{}
	for _, s := range rcv.Spans() {
		if s.Kind != tracepb.Span_SPAN_KIND_PRODUCER {
			continue
		}
		id := s.Attr("messaging.message.id")
		spans[id]++
		r, ok := byID[id]
		if !ok {
			t.Errorf("span %s for event %q that no consumer sees", s.SpanID(), id)
			continue
		}
		if want := "00-" + s.TraceID() + "-" + s.SpanID() + "-01"; r.Headers["traceparent"] != want {
			t.Errorf("event %s: span %s, but the record carries traceparent %q: a span of a transaction that never became visible", id, want, r.Headers["traceparent"])
		}
		if s.Attr("messaging.kafka.offset") != strconv.FormatInt(r.Offset, 10) || s.Attr("messaging.destination.partition.id") != strconv.Itoa(int(r.Partition)) {
			t.Errorf("event %s at %d@%d: span says %s@%s", id, r.Partition, r.Offset, s.Attr("messaging.destination.partition.id"), s.Attr("messaging.kafka.offset"))
		}
	}
	dups := 0
	for id, n := range spans {
		if n > 1 {
			dups++
			if dups <= 5 {
				t.Errorf("event %s has %d PRODUCER spans", id, n)
			}
		}
	}
	missing := total - len(spans)
	t.Logf("%d events, %d with their span, %d duplicates, %d spans lost to the kills (at most once)", total, len(spans), dups, missing)
	tail, tailMissing := 0, 0
	for _, r := range recs {
		var p struct {
			Aggregate string `json:"aggregate"`
			Seq       int    `json:"seq"`
		}
		if err := json.Unmarshal(r.Value, &p); err != nil {
			t.Fatalf("event %s: payload %q: %v", r.Headers["id"], r.Value, err)
		}
		if p.Seq <= beforeTail[p.Aggregate] {
			continue
		}
		tail++
		if spans[r.Headers["id"]] == 0 {
			tailMissing++
		}
	}
	if tail != 500 || tailMissing > 0 {
		t.Errorf("the last, unkilled run published %d tail events (want 500); %d of them have no span", tail, tailMissing)
	}
}
