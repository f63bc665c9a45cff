package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cdcrelay/cdcrelay/internal/testenv"
)

// TestStatusWarnsWhenTheSlotIsLost fills a private server's WAL past
// max_slot_wal_keep_size while no relay reads the slot: status must show the
// shrinking safe_wal_size, and once the server has invalidated the slot, say
// in plain words that it is lost and how to recover.
func TestStatusWarnsWhenTheSlotIsLost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{Settings: map[string]string{
		"max_slot_wal_keep_size": "'48MB'",
		"max_wal_size":           "'64MB'",
		"min_wal_size":           "'32MB'",
	}})
	brokers := testenv.KafkaBrokers(t)
	const db = "walfill"
	name := testenv.UniqueName(t, "lost")
	if err := pg.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`CREATE TABLE outbox (id bigserial PRIMARY KEY, aggregatetype text, aggregateid text, type text, payload jsonb)`,
		`CREATE TABLE noise (id bigserial PRIMARY KEY, filler text)`,
		fmt.Sprintf(`CREATE PUBLICATION cdcrelay_%s FOR TABLE outbox`, name),
		fmt.Sprintf(`SELECT pg_create_logical_replication_slot('cdcrelay_%s', 'pgoutput')`, name),
	} {
		if err := pg.ExecSQL(ctx, db, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	path := writeConfig(t, fmt.Sprintf(`
[relay]
name = %q
[postgres]
dsn = %q
[kafka]
brokers = [%q]
checkpoint_topic = "%s.checkpoints"
[[mapping]]
table = "public.outbox"
kind = "outbox"
`, name, pg.DSN(db), brokers[0], name))

	status := func() (string, map[string]any) {
		t.Helper()
		code, out, errOut := run(t, "status", "--config", path)
		if code != exitOK {
			t.Fatalf("status: exit %d\n%s%s", code, out, errOut)
		}
		_, js, errOut := run(t, "status", "--config", path, "--output", "json")
		var st struct {
			Slot map[string]any `json:"slot"`
		}
		if err := json.Unmarshal([]byte(js), &st); err != nil {
			t.Fatalf("status --output json: %v\n%s%s", err, js, errOut)
		}
		return out, st.Slot
	}
	out, slot := status()
	if slot["wal_status"] != "reserved" || strings.Contains(out, "LOST") {
		t.Fatalf("fresh slot:\n%s", out)
	}
	safe0, _ := slot["safe_wal_size"].(float64)
	t.Logf("fresh slot: safe_wal_size %.0f bytes", safe0)

	// Write WAL while nobody reads the slot, checkpointing, until the server
	// invalidates it.
	lost := false
	for i := 0; i < 20 && !lost; i++ {
		if err := pg.ExecSQL(ctx, db, `INSERT INTO noise (filler) SELECT repeat(md5(g::text), 64) FROM generate_series(1, 8000) g`); err != nil {
			t.Fatal(err)
		}
		if err := pg.ExecSQL(ctx, db, `SELECT pg_switch_wal(); CHECKPOINT`); err != nil {
			t.Fatal(err)
		}
		out, slot = status()
		t.Logf("after %d fills: wal_status %v, retained %v bytes, safe_wal_size %v", i+1, slot["wal_status"], slot["retained_wal_bytes"], slot["safe_wal_size"])
		lost = slot["wal_status"] == "lost"
	}
	if !lost {
		t.Fatalf("the slot was never invalidated:\n%s", out)
	}
	for _, want := range []string{"wal_status            lost", "is LOST", "cdcrelay teardown --yes", "cdcrelay setup", "--allow-slot-ahead", "cdcrelay backfill"} {
		if !strings.Contains(out, want) && !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("status of a lost slot: no %q in\n%s", want, out)
		}
	}
}
