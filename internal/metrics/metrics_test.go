package metrics

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cdcrelay/cdcrelay/internal/relay"
	"github.com/cdcrelay/cdcrelay/replication"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func TestObserverSeriesAndReadiness(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m := New(Options{Relay: "shop", Version: "v1", StallAfter: 30 * time.Second})
	m.now = func() time.Time { return now }
	h := m.Handler()

	if code, _ := get(t, h, "/healthz"); code != 200 {
		t.Fatalf("/healthz = %d", code)
	}
	if code, body := get(t, h, "/readyz"); code != 503 || !strings.Contains(body, "not streaming") {
		t.Fatalf("/readyz before streaming = %d %q", code, body)
	}
	_, page := get(t, h, "/metrics")
	if strings.Contains(page, "cdcrelay_replication_lag_bytes") {
		t.Errorf("lag reported before any position is known")
	}

	m.Streaming()
	if code, _ := get(t, h, "/readyz"); code != 200 {
		t.Fatalf("/readyz while streaming = %d", code)
	}
	src := now.Add(-2 * time.Second)
	m.Committed(relay.CommitInfo{Seq: 1, Events: map[string]int{"a": 3, "b": 1}, Took: 40 * time.Millisecond, LSN: 1000, SourceCommitTime: src})
	m.Committed(relay.CommitInfo{Seq: 2, Events: map[string]int{"a": 2}, Took: 10 * time.Millisecond, LSN: 1500})
	m.CommitFailed(errors.New("boom"))
	m.DeadLettered("public.orders", "bad value")
	m.Position(4000, 1500)
	m.SetSlot(&replication.SlotInfo{Exists: true, Active: true, CurrentLSN: 5000, RetainedWALBytes: 4096, WALStatus: "extended", SafeWALSize: ptr[int64](1 << 20)})
	m.BackfillProgress("public.orders", 10, 100)

	_, page = get(t, h, "/metrics")
	for _, want := range []string{
		`cdcrelay_events_published_total{topic="a"} 5`,
		`cdcrelay_events_published_total{topic="b"} 1`,
		"cdcrelay_kafka_transactions_committed_total 2",
		"cdcrelay_kafka_transactions_failed_total 1",
		"cdcrelay_kafka_commit_duration_seconds_count 2",
		`cdcrelay_dead_lettered_events_total{table="public.orders"} 1`,
		"cdcrelay_replication_lag_bytes 3500", // 5000 (slot poll) - 1500
		"cdcrelay_replication_lag_seconds 2",
		"cdcrelay_server_wal_position_bytes 5000",
		"cdcrelay_checkpoint_wal_position_bytes 1500",
		"cdcrelay_slot_retained_wal_bytes 4096",
		"cdcrelay_slot_safe_wal_size_bytes 1.048576e+06",
		`cdcrelay_slot_wal_status{status="extended"} 1`,
		`cdcrelay_slot_wal_status{status="lost"} 0`,
		"cdcrelay_slot_active 1",
		`cdcrelay_backfill_rows_published{table="public.orders"} 10`,
		`cdcrelay_backfill_rows_estimated{table="public.orders"} 100`,
		`cdcrelay_build_info{relay="shop",version="v1"} 1`,
		"cdcrelay_ready 1",
		"cdcrelay_reconnects_total 0",
		"go_goroutines",
	} {
		if !strings.Contains(page, want+"\n") && !strings.Contains(page, want+" ") {
			t.Errorf("/metrics has no %q", want)
		}
	}

	// No commit for longer than StallAfter while WAL is pending: not ready.
	now = now.Add(31 * time.Second)
	if code, body := get(t, h, "/readyz"); code != 503 || !strings.Contains(body, "stalled") {
		t.Errorf("/readyz of a stalled relay = %d %q", code, body)
	}
	// Caught up: an idle relay with nothing to commit stays ready, lag 0.
	m.Committed(relay.CommitInfo{Seq: 3, LSN: 5000, Took: time.Millisecond})
	now = now.Add(5 * time.Minute)
	if code, _ := get(t, h, "/readyz"); code != 200 {
		t.Errorf("/readyz of an idle, caught-up relay = %d", code)
	}
	_, page = get(t, h, "/metrics")
	for _, want := range []string{"cdcrelay_replication_lag_bytes 0", "cdcrelay_replication_lag_seconds 0"} {
		if !strings.Contains(page, want+"\n") {
			t.Errorf("caught up: /metrics has no %q", want)
		}
	}

	m.SessionEnded(errors.New("lost kafka"))
	if code, _ := get(t, h, "/readyz"); code != 503 {
		t.Errorf("/readyz after a failed session = %d", code)
	}
	m.SessionEnded(nil)
	_, page = get(t, h, "/metrics")
	if !strings.Contains(page, "cdcrelay_reconnects_total 1\n") || !strings.Contains(page, "cdcrelay_ready 0\n") {
		t.Errorf("after sessions ended:\n%s", grep(page, "cdcrelay_re"))
	}
}

func TestListenServesAndCloses(t *testing.T) {
	m := New(Options{Relay: "x"})
	srv, err := Listen("127.0.0.1:0", m.Handler(), discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + srv.Addr() + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz: %v %v", resp, err)
	}
	resp.Body.Close()
	if _, err := Listen(srv.Addr(), m.Handler(), discardLogger()); err == nil || !strings.Contains(err.Error(), "metrics.listen") {
		t.Errorf("second Listen on a taken port: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
