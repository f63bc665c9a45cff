package metrics

import (
	"strings"
	"testing"
	"time"
)

func TestBackfillHeldBack(t *testing.T) {
	m := New(Options{Relay: "shop", Version: "v1"})
	m.BackfillHeldBack("public.orders", 1500*time.Millisecond)
	m.BackfillHeldBack("public.orders", 500*time.Millisecond)
	_, page := get(t, m.Handler(), "/metrics")
	for _, want := range []string{
		`cdcrelay_backfill_held_back_total{table="public.orders"} 2`,
		`cdcrelay_backfill_held_back_seconds_total{table="public.orders"} 2`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
