package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cdcrelay/cdcrelay/internal/relay"
)

func TestRateWindow(t *testing.T) {
	w := rateWindow{span: 10 * time.Second}
	t0 := time.Unix(1000, 0)
	w.add(t0, 0)
	if _, ok := w.rate(); ok {
		t.Fatal("a rate from one sample")
	}
	w.add(t0.Add(time.Second), 0) // the first chunk not yet committed
	if _, ok := w.rate(); ok {
		t.Fatal("a rate over 1s of a 10s window")
	}
	// 1000 rows/s in steps of 2000 rows every 2 s, then 100 rows/s.
	for i := 1; i <= 10; i++ {
		w.add(t0.Add(time.Duration(2*i)*time.Second), int64(2000*i))
	}
	if r, _ := w.rate(); r < 900 || r > 1100 {
		t.Fatalf("rate %.0f, want about 1000", r)
	}
	for i := 1; i <= 10; i++ {
		w.add(t0.Add(time.Duration(20+2*i)*time.Second), int64(20000+200*i))
	}
	if r, _ := w.rate(); r < 90 || r > 110 {
		t.Fatalf("rate %.0f after the pace changed, want about 100 (a moving window)", r)
	}
}

// Outside a terminal the progress is plain lines, a few seconds apart,
// with no carriage returns; the rate shown is the recent one, and the end
// line gives the whole backfill's average from the relay's own times.
func TestFollowWithoutTerminal(t *testing.T) {
	var stdout, stderr bytes.Buffer
	a := &app{stdout: &stdout, stderr: &stderr}
	started := time.Now().UTC()
	polls := 0
	states := func(context.Context) (map[string]relay.BackfillState, error) {
		polls++
		st := relay.BackfillState{ID: "x", Status: relay.BackfillRunning, Total: 5000, Done: int64(min(polls, 50) * 100), Started: started}
		if polls > 50 {
			st.Status, st.Finished = relay.BackfillDone, started.Add(5*time.Second)
		}
		return map[string]relay.BackfillState{"public.items": st}, nil
	}
	if err := a.follow(context.Background(), "public.items", "x", false, 100*time.Millisecond, states); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stderr.String(), "\r") {
		t.Fatalf("carriage returns outside a terminal:\n%q", stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if len(lines) < 1 || len(lines) > 2 || !strings.HasPrefix(lines[0], "backfill public.items: 100/5000 rows (2.0%), measuring rate") {
		t.Fatalf("progress lines (one per 5s over ~5s):\n%s", stderr.String())
	}
	if len(lines) == 2 && !strings.Contains(lines[1], " rows/s") {
		t.Fatalf("second line without a rate:\n%s", stderr.String())
	}
	if got := stdout.String(); got != "backfill of public.items done: 5000 rows in 5s (1000 rows/s)\n" {
		t.Fatalf("end line %q", got)
	}
}

// The status JSON is an interface: its field names are pinned here.
func TestBackfillStatusJSON(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := relay.BackfillState{ID: "a1", Where: "id > 5", ChunkSize: 1024, MaxRate: 500, Cursor: []string{"42"},
		Done: 2048, Total: 10000, Status: relay.BackfillFailed, Error: "boom", Started: at, Finished: at.Add(time.Minute)}
	b, err := json.Marshal(st.Public())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"a1","where":"id \u003e 5","chunk_size":1024,"max_rate":500,"cursor":["42"],"done":2048,"total":10000,` +
		`"status":"failed","error":"boom","started":"2026-01-02T03:04:05Z","finished":"2026-01-02T03:05:05Z"}`
	if string(b) != want {
		t.Fatalf("status JSON\n got %s\nwant %s", b, want)
	}
	b, _ = json.Marshal(relay.BackfillState{ID: "b", ChunkSize: 1024, Status: relay.BackfillRunning, Started: at}.Public())
	if want := `{"id":"b","chunk_size":1024,"done":0,"total":0,"status":"running","started":"2026-01-02T03:04:05Z"}`; string(b) != want {
		t.Fatalf("status JSON of a fresh backfill\n got %s\nwant %s", b, want)
	}
}
