package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
	"github.com/cdcrelay/cdcrelay/sink"
)

// TestServerMatrix runs what a user does with the CLI on every supported
// PostgreSQL major version (the shared servers of the test matrix, one per
// version, in parallel): setup, check, run while a writer commits outbox
// rows, a SIGKILL of the relay mid-stream and a resume from the Kafka
// checkpoint, a backfill of a table's existing rows, and status. A
// read_committed consumer must find every outbox row once, in order per
// aggregate, and one backfilled event per existing row. (The golden value
// encodings run on every version too: TestE2EGoldenTypes in package mapping.)
func TestServerMatrix(t *testing.T) {
	t.Parallel() // shared servers, its own databases and topics
	servers := testenv.PostgresMatrix(t)
	brokers := testenv.KafkaBrokers(t)
	bin, err := e2e.Binary()
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range servers {
		t.Run(srv.Name(), func(t *testing.T) {
			t.Parallel()
			runMatrixScenario(t, bin, brokers, srv)
		})
	}
}

func runMatrixScenario(t *testing.T, bin string, brokers []string, srv testenv.MatrixServer) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dsn := testenv.NewDatabaseOn(t, srv.DSN)
	name := testenv.UniqueName(t, "m")
	const existing = 400
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var version string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		t.Fatal(err)
	}
	t.Logf("PostgreSQL %s", version)
	if _, err := conn.Exec(ctx, outboxDDL+fmt.Sprintf(`
		CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
		INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, %d) g;`, existing)); err != nil {
		t.Fatal(err)
	}
	outboxTopic, customersTopic := name+".outbox", name+".customers"
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "relay.toml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
[relay]
name = %q
[postgres]
dsn = %q
status_interval = "1s"
idle_checkpoint_interval = "1s"
[kafka]
brokers = [%q]
checkpoint_topic = "%s.checkpoints"
request_timeout = "10s"
[kafka.topics]
partitions = 3
[batch]
linger = "10ms"
[[mapping]]
table = "public.outbox"
kind = "outbox"
topic = %q
[[mapping]]
table = "public.customers"
kind = "table"
topic = %q
envelope = "json"
`, name, dsn, brokers[0], name, outboxTopic, customersTopic)), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "relay.log")
	dumpLogOnFailure(t, logPath)
	cli := func(wantCode int, args ...string) string {
		t.Helper()
		p, err := e2e.Start(bin, "", append(args, "--config", cfgPath)...)
		if err != nil {
			t.Fatal(err)
		}
		code, err := p.Wait(2 * time.Minute)
		if err != nil {
			p.Kill()
			t.Fatalf("%v: %v\n%s", args, err, p.Output())
		}
		if code != wantCode {
			t.Fatalf("%v: exit %d, want %d:\n%s", args, code, wantCode, p.Output())
		}
		return p.Output()
	}

	out := cli(0, "setup")
	for _, want := range []string{"pg_create_logical_replication_slot", "Setup complete"} {
		if !strings.Contains(out, want) {
			t.Errorf("setup: no %q in\n%s", want, out)
		}
	}
	if out := cli(0, "check"); !strings.Contains(out, "Ready.") {
		t.Errorf("check after setup:\n%s", out)
	}

	w := &outboxWriter{dsn: dsn, aggregates: 6, seq: map[string]int{}}
	if w.conn, err = pgx.Connect(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	defer w.conn.Close(context.Background())
	rnd := rand.New(rand.NewSource(int64(srv.Major)))
	write := func(txns int) {
		t.Helper()
		for i := 0; i < txns; i++ {
			if err := w.txn(ctx, 1+rnd.Intn(20), rnd); err != nil {
				t.Fatal(err)
			}
		}
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	checkpoint := func() sink.Checkpoint {
		cp, _, err := sink.LoadCheckpoint(ctx, &cfg.Kafka)
		if err != nil {
			t.Fatal(err)
		}
		return cp
	}

	relay, err := e2e.Start(bin, logPath, "run", "--config", cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	write(20)
	// SIGKILL once the relay has committed some of it: mid-stream, with
	// more rows still to come.
	waitFor(t, time.Minute, "a first checkpoint in Kafka", func() bool { return checkpoint().Seq > 0 })
	write(10)
	relay.Kill()
	write(20)
	relay, err = e2e.Start(bin, logPath, "run", "--config", cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Kill()
	waitFor(t, time.Minute, "the relay to resume", func() bool {
		return strings.Contains(relay.Output(), "resuming from kafka checkpoint")
	})

	// The backfill request waits (progress bar) until its table is done.
	cli(0, "backfill", "public.customers")
	write(10)

	recs, err := e2e.ReadCommitted(ctx, brokers, []string{outboxTopic}, int(w.committed.Load()), 3*time.Second)
	if err != nil {
		t.Fatalf("%v\n%s", err, relay.Output())
	}
	checkOutboxEvents(t, recs, int(w.committed.Load()), w.seq)
	crecs, err := e2e.ReadCommitted(ctx, brokers, []string{customersTopic}, existing, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	read := map[string]int{}
	for _, r := range crecs {
		var env struct {
			Op    string         `json:"op"`
			After map[string]any `json:"after"`
		}
		if err := json.Unmarshal(r.Value, &env); err != nil {
			t.Fatalf("customers event %s: %v", r.Value, err)
		}
		if env.Op == "read" {
			read[fmt.Sprint(env.After["id"])]++
		}
	}
	if len(read) != existing {
		t.Errorf("backfill: %d distinct rows read, want %d", len(read), existing)
	}
	for id, n := range read {
		if n != 1 {
			t.Errorf("backfill: row %s published %d times", id, n)
		}
	}

	out = cli(0, "status", "--output", "json")
	var st struct {
		Slot struct {
			Exists, Active bool
			WALStatus      string `json:"wal_status"`
		} `json:"slot"`
		Checkpoint struct {
			Found bool   `json:"found"`
			LSN   string `json:"lsn"`
		} `json:"checkpoint"`
		Warnings []string `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --output json: %v\n%s", err, out)
	}
	if !st.Slot.Exists || !st.Slot.Active || st.Slot.WALStatus == "lost" || !st.Checkpoint.Found || len(st.Warnings) > 0 {
		t.Errorf("status of a streaming relay:\n%s", out)
	}
	if err := relay.Stop(10 * time.Second); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
	t.Logf("PostgreSQL %s: %d outbox rows exactly once across a SIGKILL, %d rows backfilled", version, w.committed.Load(), len(read))
}
