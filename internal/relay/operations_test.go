package relay_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
)

func slotState(t *testing.T, ctx context.Context, conn *pgx.Conn, slot string) (active bool, pid int32, retained int64, confirmed string) {
	t.Helper()
	err := conn.QueryRow(ctx, `
		SELECT active, coalesce(active_pid, 0), pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, confirmed_flush_lsn::text
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active, &pid, &retained, &confirmed)
	if err != nil {
		t.Fatalf("slot %s: %v", slot, err)
	}
	return
}

// TestIdleDatabaseRetainsBoundedWAL: the mapped table is quiet while another
// table writes for a minute; the relay must keep advancing the slot so the
// server does not retain WAL without bound.
func TestIdleDatabaseRetainsBoundedWAL(t *testing.T) {
	if testing.Short() {
		t.Skip("takes a minute")
	}
	e := startChaosEnv(t, testenv.PostgresOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const name, db = "idle", "idle"
	e.setupOutbox(t, ctx, db, name, 1)
	cfgPath := e.config(t, name, db, "[[mapping]]\ntable = \"public.outbox\"\nkind = \"outbox\"\n")
	p, err := e2e.Start(e.bin, filepath.Join(e.dir, "idle.log"), "run", "--config", cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(10 * time.Second)

	conn, err := pgx.Connect(ctx, e.pg.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// One outbox row first, so the relay has a checkpoint to move forward from.
	if _, err := conn.Exec(ctx, `INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'a', 'T', '{}')`); err != nil {
		t.Fatal(err)
	}
	wconn, err := pgx.Connect(ctx, e.pg.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer wconn.Close(context.Background())

	var maxRetained, written int64
	_, _, _, startConfirmed := slotState(t, ctx, conn, "cdcrelay_"+name)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		// About 1 MB of WAL a second into a table the relay does not map.
		if _, err := wconn.Exec(ctx, `INSERT INTO noise (filler) SELECT repeat('x', 1000) FROM generate_series(1, 1000)`); err != nil {
			t.Fatal(err)
		}
		written += 1000 * 1000
		_, _, retained, _ := slotState(t, ctx, conn, "cdcrelay_"+name)
		maxRetained = max(maxRetained, retained)
		time.Sleep(time.Second)
	}
	_, _, retained, endConfirmed := slotState(t, ctx, conn, "cdcrelay_"+name)
	t.Logf("noise written: %d MB in 1 min; slot retained WAL: max %.1f MB, at end %.1f MB; confirmed_flush %s -> %s",
		written>>20, float64(maxRetained)/(1<<20), float64(retained)/(1<<20), startConfirmed, endConfirmed)
	if p.Exited() {
		t.Fatalf("relay exited:\n%s", p.Output())
	}
	// The bound: a few idle-checkpoint intervals (1s here) plus a WAL
	// segment or two of slack, far below the ~60 MB written.
	if maxRetained > 32<<20 {
		t.Errorf("slot retained up to %d bytes of WAL while the mapped table was idle; want it bounded below 32 MB", maxRetained)
	}
	if startConfirmed == endConfirmed {
		t.Errorf("slot's confirmed_flush_lsn did not advance (%s) while other tables wrote", endConfirmed)
	}
}

// TestSlowKafkaCommitKeepsWalsender: with a short wal_sender_timeout, a
// Kafka commit that hangs far longer must not get the walsender killed: the
// relay keeps reading ahead and answering the server while it waits.
func TestSlowKafkaCommitKeepsWalsender(t *testing.T) {
	e := startChaosEnv(t, testenv.PostgresOptions{Settings: map[string]string{"wal_sender_timeout": "3s"}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const name, db = "slow", "slow"
	e.setupOutbox(t, ctx, db, name, 1)
	cfgPath := e.config(t, name, db, "[[mapping]]\ntable = \"public.outbox\"\nkind = \"outbox\"\n")
	// The default request timeout of the test config is 6s; make it longer
	// than the stall so the commit waits rather than fails.
	b, _ := os.ReadFile(cfgPath)
	os.WriteFile(cfgPath, []byte(strings.Replace(string(b), `request_timeout = "6s"`, `request_timeout = "30s"`, 1)), 0o644)
	logPath := filepath.Join(e.dir, "slow.log")
	p, err := e2e.Start(e.bin, logPath, "run", "--config", cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(10 * time.Second)

	conn, err := pgx.Connect(ctx, e.pg.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	insert := func(n int) {
		_, err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
			SELECT 'order', 'agg-' || (g %% 5), 'T', json_build_object('aggregate', 'agg-' || (g %% 5), 'seq', 0) FROM generate_series(1, %d) g`, n))
		if err != nil {
			t.Fatal(err)
		}
	}
	insert(10)
	waitFor(t, 30*time.Second, "relay streaming", func() bool {
		active, _, _, _ := slotState(t, ctx, conn, "cdcrelay_"+name)
		return active
	})
	_, pidBefore, _, _ := slotState(t, ctx, conn, "cdcrelay_"+name)

	e.kProxy.Stall(12 * time.Second) // four wal_sender_timeouts
	for i := 0; i < 10; i++ {
		insert(100)
		time.Sleep(time.Second)
	}
	recs, err := e2e.ReadCommitted(ctx, e.brokers, []string{"outbox.event.order"}, 1010, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1010 {
		t.Fatalf("got %d events, want 1010", len(recs))
	}
	active, pidAfter, _, _ := slotState(t, ctx, conn, "cdcrelay_"+name)
	if !active || pidAfter != pidBefore {
		t.Errorf("walsender changed during the slow commit (pid %d -> %d, active %v): the session was lost", pidBefore, pidAfter, active)
	}
	logb, _ := os.ReadFile(e.pg.LogFile())
	if strings.Contains(string(logb), "replication timeout") {
		t.Errorf("Postgres terminated the walsender for replication timeout during the slow commit")
	}
}

// TestShutdownAndRestartGuards covers SIGTERM (clean exit 0 within seconds),
// the refusal to start when the slot was moved past the Kafka checkpoint, and
// --allow-slot-ahead.
func TestShutdownAndRestartGuards(t *testing.T) {
	e := startChaosEnv(t, testenv.PostgresOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const name, db = "guards", "guards"
	e.setupOutbox(t, ctx, db, name, 1)
	cfgPath := e.config(t, name, db, "[[mapping]]\ntable = \"public.outbox\"\nkind = \"outbox\"\n")
	conn, err := pgx.Connect(ctx, e.pg.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	insert := func(n int) {
		_, err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
			SELECT 'order', 'k', 'T', json_build_object('aggregate', 'k', 'seq', g) FROM generate_series(1, %d) g`, n))
		if err != nil {
			t.Fatal(err)
		}
	}
	insert(100)
	p, err := e2e.Start(e.bin, "", "run", "--config", cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e2e.ReadCommitted(ctx, e.brokers, []string{"outbox.event.order"}, 100, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	if err := p.Stop(10 * time.Second); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, p.Output())
	}
	if code, _ := p.Wait(0); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0:\n%s", code, p.Output())
	}
	t.Logf("stopped %s after SIGTERM", time.Since(started).Round(time.Millisecond))

	// Move the slot past the checkpoint by hand, as an operator might.
	insert(5)
	if err := e.pg.ExecSQL(ctx, db, `SELECT pg_replication_slot_advance('cdcrelay_guards', pg_current_wal_lsn())`); err != nil {
		t.Fatal(err)
	}
	p, err = e2e.Start(e.bin, "", "run", "--config", cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	code, err := p.Wait(60 * time.Second)
	if err != nil {
		p.Kill()
		t.Fatalf("relay started although the slot is ahead of the checkpoint: %v", err)
	}
	if code == 0 || !strings.Contains(p.Output(), "ahead of the kafka checkpoint") || !strings.Contains(p.Output(), "--allow-slot-ahead") {
		t.Fatalf("exit %d; want a refusal naming the slot move and the flag:\n%s", code, p.Output())
	}

	p, err = e2e.Start(e.bin, "", "run", "--config", cfgPath, "--allow-slot-ahead")
	if err != nil {
		t.Fatal(err)
	}
	insert(7)
	recs, err := e2e.ReadCommitted(ctx, e.brokers, []string{"outbox.event.order"}, 107, 3*time.Second)
	if err != nil {
		t.Fatalf("%v\n%s", err, p.Output())
	}
	if len(recs) != 107 {
		t.Fatalf("got %d events; want the 100 before and the 7 after the slot move (the 5 skipped by the move are lost, as the flag accepts)", len(recs))
	}
	if err := p.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
