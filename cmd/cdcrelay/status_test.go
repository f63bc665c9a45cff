package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/replication"
)

func TestStatusWarnings(t *testing.T) {
	safe := func(n int64) *int64 { return &n }
	const gib = int64(1 << 30)
	cases := []struct {
		name string
		slot replication.SlotInfo
		want []string // substrings, in order of the warnings; none: no warning
	}{
		{"healthy", replication.SlotInfo{Slot: "s", Exists: true, Active: true, WALStatus: "reserved", SafeWALSize: safe(9 * gib), MaxSlotWALKeepSize: 10 * gib}, nil},
		{"missing", replication.SlotInfo{Slot: "s"}, []string{"does not exist: run `cdcrelay setup`"}},
		{"lost", replication.SlotInfo{Slot: "s", Exists: true, WALStatus: "lost"},
			[]string{"is LOST", "teardown --yes", "cdcrelay setup", "--allow-slot-ahead", "backfill"}},
		{"unreserved", replication.SlotInfo{Slot: "s", Exists: true, Active: true, WALStatus: "unreserved", RetainedWALBytes: 11 * gib, MaxSlotWALKeepSize: 10 * gib},
			[]string{"more WAL (11.0 GiB) than max_slot_wal_keep_size", "invalidate the slot"}},
		{"near the limit", replication.SlotInfo{Slot: "s", Exists: true, Active: true, WALStatus: "extended", SafeWALSize: safe(gib), MaxSlotWALKeepSize: 10 * gib},
			[]string{"close to max_slot_wal_keep_size (10.0 GiB): only 1.0 GiB more WAL"}},
		{"unlimited and idle", replication.SlotInfo{Slot: "s", Exists: true, WALStatus: "reserved", RetainedWALBytes: 3 * gib, MaxSlotWALKeepSize: -1},
			[]string{"keeps 3.0 GiB of WAL", "disk can fill up", "no relay streams from slot s"}},
		{"inactive", replication.SlotInfo{Slot: "s", Exists: true, WALStatus: "reserved", SafeWALSize: safe(9 * gib), MaxSlotWALKeepSize: 10 * gib},
			[]string{"no relay streams from slot s"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			slot := c.slot
			st := &statusOut{Slot: &slot, Publication: &replication.PublicationInfo{Name: "p", Exists: true}}
			got := statusWarnings(&config.Config{}, st)
			text := strings.Join(got, "\n")
			if len(c.want) == 0 && len(got) != 0 {
				t.Fatalf("warnings: %q", got)
			}
			for _, w := range c.want {
				if !strings.Contains(text, w) {
					t.Errorf("no %q in\n%s", w, text)
				}
			}
		})
	}
}

func TestStatusReadsTheRunningRelay(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "# HELP cdcrelay_ready x\ncdcrelay_ready 1\ncdcrelay_last_commit_timestamp_seconds 1.7e+09\n"+
			"cdcrelay_replication_lag_seconds 0.25\ncdcrelay_replication_lag_bytes 4096\n")
	}))
	defer srv.Close()
	r := readRunning(t.Context(), strings.TrimPrefix(srv.URL, "http://"))
	if r.Error != "" || !r.Ready || r.LastCommit == nil || r.LastCommit.Unix() != 1700000000 || *r.LagSeconds != 0.25 || *r.LagBytes != 4096 {
		t.Fatalf("%+v", r)
	}
	st := &statusOut{Running: r, Checkpoint: &checkpointOut{Found: true, LSN: "0/10", Seq: 3,
		Backfills: map[string]json.RawMessage{"public.orders": json.RawMessage(`{"cursor":[42]}`)}}}
	var b bytes.Buffer
	printStatus(&b, &config.Config{Relay: config.Relay{Name: "x"}}, st)
	for _, want := range []string{"ready                yes, streaming", "last commit          2023-11-14T22:13:20Z", "lag                  0.2 s",
		`backfill public.orders {"cursor":[42]}`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("no %q in\n%s", want, b.String())
		}
	}

	down := readRunning(t.Context(), "127.0.0.1:1")
	if down.Error == "" || down.Ready {
		t.Errorf("nothing listening: %+v", down)
	}
}
