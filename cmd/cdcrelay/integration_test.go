package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/testenv"
)

// TestCommandsAgainstRealServers runs check, setup, status and teardown as a
// user would, against the real Postgres and Kafka, with a password in the DSN
// that must never be printed.
func TestCommandsAgainstRealServers(t *testing.T) {
	const secret = "s3cr3t-pw-4711"
	dsn := testenv.NewDatabase(t)
	brokers := testenv.KafkaBrokers(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `
		CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype text, aggregateid text, type text, payload jsonb);
		CREATE TABLE orders (id bigint PRIMARY KEY, status text);
		ALTER TABLE orders REPLICA IDENTITY FULL`); err != nil {
		t.Fatal(err)
	}

	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	name := "t" + hex.EncodeToString(suffix[:])
	// The local test server trusts loopback connections: the password is
	// sent nowhere that checks it, but it is in every DSN the commands see.
	t.Setenv("CDCRELAY_TEST_DSN", strings.Replace(dsn, "postgres://postgres@", "postgres://postgres:"+secret+"@", 1))
	path := writeConfig(t, fmt.Sprintf(`
[relay]
name = %q
[postgres]
dsn = "${CDCRELAY_TEST_DSN}"
[kafka]
brokers = [%q]
checkpoint_topic = "%s.checkpoints"
[[mapping]]
table = "public.outbox"
kind = "outbox"
[[mapping]]
table = "public.orders"
kind = "table"
topic = "%s.orders"
on_error = "dead-letter"
dead_letter_topic = "%s.dlq"
`, name, brokers[0], name, name, name))

	var all strings.Builder
	cmd := func(wantCode int, args ...string) string {
		t.Helper()
		code, out, errOut := run(t, append(args, "--config", path)...)
		all.WriteString(out + errOut)
		if code != wantCode {
			t.Fatalf("%q: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", args, code, wantCode, out, errOut)
		}
		return out
	}

	out := cmd(exitFailure, "check")
	for _, want := range []string{"FAIL  replication slot cdcrelay_" + name + " does not exist", "cdcrelay setup", "transactions work"} {
		if !strings.Contains(out, want) {
			t.Errorf("check before setup: no %q in\n%s", want, out)
		}
	}

	out = cmd(exitOK, "setup", "--dry-run")
	if !strings.Contains(out, `CREATE PUBLICATION "cdcrelay_`+name+`" FOR TABLE "public"."outbox", "public"."orders"`) ||
		!strings.Contains(out, "Dry run: nothing was changed.") {
		t.Errorf("setup --dry-run:\n%s", out)
	}

	out = cmd(exitOK, "setup")
	for _, want := range []string{"Ran on PostgreSQL:", "pg_create_logical_replication_slot", "topic " + name + ".checkpoints (checkpoint) created",
		"topic " + name + ".orders (events of public.orders) created", "topic " + name + ".dlq (dead letters of public.orders) created",
		"outbox.event.{aggregatetype}", "Setup complete"} {
		if !strings.Contains(out, want) {
			t.Errorf("setup: no %q in\n%s", want, out)
		}
	}

	out = cmd(exitOK, "setup")
	if !strings.Contains(out, "Nothing to change") || strings.Contains(out, "Ran on PostgreSQL") {
		t.Errorf("second setup:\n%s", out)
	}

	out = cmd(exitOK, "check")
	if !strings.Contains(out, "Ready.") {
		t.Errorf("check after setup:\n%s", out)
	}

	out = cmd(exitOK, "status", "--output", "json")
	var st struct {
		Slot        map[string]any `json:"slot"`
		Publication struct {
			Tables []string `json:"tables"`
		} `json:"publication"`
		Checkpoint map[string]any `json:"checkpoint"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --output json: %v\n%s", err, out)
	}
	for _, k := range []string{"exists", "active", "active_pid", "confirmed_flush_lsn", "restart_lsn", "retained_wal_bytes", "wal_status", "safe_wal_size"} {
		if _, ok := st.Slot[k]; !ok {
			t.Errorf("status JSON: slot has no %q: %s", k, out)
		}
	}
	if st.Slot["exists"] != true || st.Slot["active"] != false || len(st.Publication.Tables) != 2 || st.Checkpoint["found"] != false {
		t.Errorf("status JSON:\n%s", out)
	}
	out = cmd(exitOK, "status")
	for _, want := range []string{"Slot cdcrelay_" + name, "confirmed_flush_lsn", "retained WAL", "none yet"} {
		if !strings.Contains(out, want) {
			t.Errorf("status: no %q in\n%s", want, out)
		}
	}

	out = cmd(exitOK, "teardown", "--yes")
	if !strings.Contains(out, "pg_drop_replication_slot") || !strings.Contains(out, "DROP PUBLICATION") {
		t.Errorf("teardown:\n%s", out)
	}
	out = cmd(exitOK, "teardown", "--yes")
	if !strings.Contains(out, "Nothing to do") {
		t.Errorf("second teardown:\n%s", out)
	}

	if strings.Contains(all.String(), secret) {
		t.Errorf("the password appears in the output:\n%s", all.String())
	}
}
