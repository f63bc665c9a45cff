package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
)

// haEnv is a private primary with a synchronous streaming standby (made by
// a cold copy: the matrix's server builds have no pg_basebackup), the shared
// Kafka broker, and a relay.toml whose DSN names both hosts.
type haEnv struct {
	primary, standby *testenv.Postgres
	db, name         string
	dsn              string // both hosts, as the relay and the writer use it
	brokers          []string
	topic            string
	dir, cfgPath     string
	logPath          string
	metrics          string
	bin              string
}

func startHAEnv(t *testing.T, ctx context.Context, major int, syncSlots bool) *haEnv {
	t.Helper()
	e := &haEnv{dir: t.TempDir(), brokers: testenv.KafkaBrokers(t)}
	var err error
	if e.bin, err = e2e.Binary(); err != nil {
		t.Fatal(err)
	}
	e.primary = testenv.NewPostgresVersion(t, major, testenv.PostgresOptions{WALSenderTimeout: 10 * time.Second})
	e.name = testenv.UniqueName(t, "ha")
	e.db = "shop"
	if err := e.primary.CreateDatabase(ctx, e.db); err != nil {
		t.Fatal(err)
	}
	if err := e.primary.ExecSQL(ctx, e.db, outboxDDL); err != nil {
		t.Fatal(err)
	}
	e.standby = testenv.NewStandby(t, e.primary, testenv.StandbyOptions{DBName: e.db, Synchronous: true, SyncSlots: syncSlots})
	e.dsn = fmt.Sprintf("postgres://postgres@%s,%s/%s?sslmode=disable&connect_timeout=3", e.primary.Addr(), e.standby.Addr(), e.db)
	e.topic = e.name + ".outbox"
	e.metrics = freeAddr(t)
	e.cfgPath = filepath.Join(e.dir, "relay.toml")
	e.logPath = filepath.Join(e.dir, "relay.log")
	dumpLogOnFailure(t, e.logPath)
	if err := os.WriteFile(e.cfgPath, []byte(fmt.Sprintf(`
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
linger = "20ms"
[metrics]
listen = %q
[[mapping]]
table = "public.outbox"
kind = "outbox"
topic = %q
`, e.name, e.dsn, e.brokers[0], e.name, e.metrics, e.topic)), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *haEnv) cli(t *testing.T, wantCode int, args ...string) string {
	t.Helper()
	p, err := e2e.Start(e.bin, "", append(args, "--config", e.cfgPath)...)
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

func (e *haEnv) startRelay(t *testing.T) *e2e.Process {
	t.Helper()
	p, err := e2e.Start(e.bin, e.logPath, "run", "--config", e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

// published is the relay's cdcrelay_events_published_total (-1: no answer).
func (e *haEnv) published() float64 {
	m, err := scrape(e.metrics)
	if err != nil {
		return -1
	}
	return sum(m, "cdcrelay_events_published_total")
}

// haWriter commits outbox transactions through the two-host DSN until
// stopped, riding through the failover: an interrupted transaction is
// retried unless the table shows it committed (outboxWriter.txn).
type haWriter struct {
	w    *outboxWriter
	stop chan struct{}
	done chan error
	// retries counts transactions repeated after an error.
	retries atomic.Int64
}

func startHAWriter(ctx context.Context, t *testing.T, dsn string) *haWriter {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn+"&target_session_attrs=primary")
	if err != nil {
		t.Fatal(err)
	}
	hw := &haWriter{
		w:    &outboxWriter{dsn: dsn + "&target_session_attrs=primary", conn: conn, aggregates: 12, seq: map[string]int{}},
		stop: make(chan struct{}), done: make(chan error, 1),
	}
	go func() {
		rnd := rand.New(rand.NewSource(time.Now().UnixNano()))
		for {
			select {
			case <-hw.stop:
				hw.done <- nil
				return
			case <-time.After(20 * time.Millisecond):
			}
			if err := hw.w.txn(ctx, 1+rnd.Intn(15), rnd); err != nil {
				if ctx.Err() != nil {
					hw.done <- err
					return
				}
				hw.retries.Add(1)
				time.Sleep(200 * time.Millisecond)
				if c, err := pgx.Connect(ctx, hw.w.dsn); err == nil {
					hw.w.conn.Close(context.Background())
					hw.w.conn = c
				}
			}
		}
	}()
	return hw
}

func (hw *haWriter) finish(t *testing.T) {
	t.Helper()
	close(hw.stop)
	if err := <-hw.done; err != nil {
		t.Fatalf("writer: %v", err)
	}
	hw.w.conn.Close(context.Background())
}

// checkAgainstTable asserts the guarantee across a failover: the events are
// exactly the rows the new primary holds (every one once; nothing else, so
// no event of a transaction the failover lost), each aggregate's events in
// sequence order, and as many as the writer saw committed. (Outbox ids are
// not dense after a promotion: sequences are WAL-logged ahead.)
func checkAgainstTable(t *testing.T, ctx context.Context, pg *testenv.Postgres, db string, recs []e2e.Record, seq map[string]int) {
	t.Helper()
	conn, err := pg.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT id::text FROM outbox`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	inTable := map[string]bool{}
	for _, id := range ids {
		inTable[id] = true
	}
	seen := map[string]int{}
	type ev struct {
		part   int32
		offset int64
		seq    int
	}
	byAgg := map[string][]ev{}
	var phantom, dup []string
	for _, r := range recs {
		id := r.Headers["id"]
		seen[id]++
		if seen[id] == 2 {
			dup = append(dup, id)
		}
		if !inTable[id] {
			phantom = append(phantom, id)
		}
		var p struct {
			Aggregate string `json:"aggregate"`
			Seq       int    `json:"seq"`
		}
		if err := json.Unmarshal(r.Value, &p); err != nil {
			t.Fatalf("record %s/%d@%d: %v", r.Topic, r.Partition, r.Offset, err)
		}
		byAgg[p.Aggregate] = append(byAgg[p.Aggregate], ev{r.Partition, r.Offset, p.Seq})
	}
	var missing []string
	for _, id := range ids {
		if seen[id] == 0 {
			missing = append(missing, id)
		}
	}
	if len(dup)+len(phantom)+len(missing) > 0 {
		t.Errorf("%d rows in the table, %d events: %d published twice %v, %d not in the table %v, %d never published %v",
			len(ids), len(recs), len(dup), first(dup), len(phantom), first(phantom), len(missing), first(missing))
	}
	for agg, evs := range byAgg {
		sort.Slice(evs, func(i, j int) bool { return evs[i].offset < evs[j].offset })
		for i, e := range evs {
			if e.part != evs[0].part || e.seq != i+1 {
				t.Fatalf("aggregate %s: event %d has seq %d on partition %d (order per key broken)", agg, i+1, e.seq, e.part)
			}
		}
	}
	for agg, n := range seq {
		if len(byAgg[agg]) != n {
			t.Errorf("aggregate %s: the writer saw %d rows committed, the consumer %d events", agg, n, len(byAgg[agg]))
		}
	}
}

func first(s []string) []string { return s[:min(len(s), 10)] }

// TestPrimaryFailoverExactlyOnce is the proof that a relay follows a
// PostgreSQL 17 primary failover exactly once. The primary has a
// synchronous standby with a physical slot, synchronized_standby_slots,
// sync_replication_slots = on and hot_standby_feedback; setup creates a
// failover slot. While a writer commits outbox rows through a two-host DSN,
// the primary is stopped with -m immediate and the standby promoted; the
// relay (its own process, the same two-host DSN) reconnects to the new
// primary, finds the synchronized slot and resumes from the Kafka
// checkpoint; then it is SIGKILLed 6 more times while the writer goes on.
// A read_committed consumer must see every row the new primary holds once,
// in order per aggregate, as many per aggregate as the writer saw
// committed, and nothing else.
func TestPrimaryFailoverExactlyOnce(t *testing.T) {
	t.Parallel() // private servers, its own topics: overlaps the other matrix tests
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	e := startHAEnv(t, ctx, 17, true)
	out := e.cli(t, 0, "setup")
	if !strings.Contains(out, "failover => true") {
		t.Fatalf("setup did not create a failover slot:\n%s", out)
	}
	slot := "cdcrelay_" + e.name
	relay := e.startRelay(t)
	hw := startHAWriter(ctx, t, e.dsn)

	// The standby keeps a synchronized, persistent copy of the slot. It may
	// lag the primary's: the relay skips what Kafka already has.
	waitFor(t, time.Minute, "the synchronized slot on the standby", func() bool {
		conn, err := e.standby.Connect(ctx, "postgres")
		if err != nil {
			return false
		}
		defer conn.Close(context.Background())
		var ok bool
		err = conn.QueryRow(ctx, `SELECT synced AND NOT temporary AND invalidation_reason IS NULL
			FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&ok)
		return err == nil && ok
	})
	// check and status see the standby (the DSN's second host) ready.
	out = e.cli(t, 0, "check")
	for _, want := range []string{"is a failover slot", "synchronized_standby_slots = standby1", "sync_replication_slots = on on " + e.standby.Addr(),
		"hot_standby_feedback = on", "primary_slot_name = standby1", "primary_conninfo names dbname=shop", "keeps a synchronized copy of slot " + slot} {
		if !strings.Contains(out, want) {
			t.Errorf("check: no %q in\n%s", want, out)
		}
	}
	var st struct {
		Failover struct {
			SlotFailover bool `json:"slot_failover"`
			Standbys     []struct {
				Slot struct{ Synced bool } `json:"slot"`
			} `json:"standbys"`
		} `json:"failover"`
		Warnings []string `json:"warnings"`
	}
	out = e.cli(t, 0, "status", "--output", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil || !st.Failover.SlotFailover || len(st.Failover.Standbys) != 1 ||
		!st.Failover.Standbys[0].Slot.Synced || len(st.Warnings) > 0 {
		t.Errorf("status --output json (%v):\n%s", err, out)
	}
	waitFor(t, time.Minute, "events published from the first primary", func() bool { return e.published() > 300 })
	slotLSN := func(pg *testenv.Postgres) string {
		var lsn string
		conn, err := pg.Connect(ctx, e.db)
		if err != nil {
			return "?"
		}
		defer conn.Close(context.Background())
		_ = conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&lsn)
		return lsn
	}
	t.Logf("before the failover: slot at %s on the primary, %s on the standby", slotLSN(e.primary), slotLSN(e.standby))

	if err := e.primary.Crash(ctx); err != nil {
		t.Fatal(err)
	}
	crashed := time.Now()
	// The relay notices (its session fails), then the standby is promoted.
	waitFor(t, time.Minute, "the relay to notice the loss of the primary", func() bool {
		return strings.Count(relay.Output(), "relay session failed") > 0
	})
	before := e.published()
	if err := e.standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	waitFor(t, 2*time.Minute, "the first event published from the new primary", func() bool { return e.published() > before })
	t.Logf("primary crashed; promoted %s later; first event published from the new primary %s after the promotion",
		promoted.Sub(crashed).Round(time.Millisecond), time.Since(promoted).Round(time.Millisecond))
	if !strings.Contains(relay.Output(), "addr="+e.standby.Addr()) || !strings.Contains(relay.Output(), "timeline=2") {
		t.Errorf("the relay does not log the new primary's address and timeline:\n%s", tail(relay.Output(), 4000))
	}

	// SIGKILLs on the new primary, while the writer goes on.
	rnd := rand.New(rand.NewSource(time.Now().UnixNano()))
	kills := 0
	for ; kills < 6; kills++ {
		time.Sleep(time.Duration(300+rnd.Intn(1500)) * time.Millisecond)
		if relay.Exited() {
			t.Fatalf("relay exited by itself:\n%s", tail(relay.Output(), 4000))
		}
		relay.Kill()
		relay = e.startRelay(t)
	}
	time.Sleep(time.Second)
	hw.finish(t)
	t.Logf("relay SIGKILLed %d times after the failover; the writer committed %d rows (%d transactions retried across the failover)",
		kills, hw.w.committed.Load(), hw.retries.Load())

	var total int
	conn, err := e.standby.Connect(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&total); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())
	recs, err := e2e.ReadCommitted(ctx, e.brokers, []string{e.topic}, total, 4*time.Second)
	if err != nil {
		t.Fatalf("%v\n%s", err, tail(relay.Output(), 4000))
	}
	checkAgainstTable(t, ctx, e.standby, e.db, recs, hw.w.seq)
	logb, _ := os.ReadFile(e.logPath)
	if !strings.Contains(string(logb), "following it") {
		t.Errorf("the relay never said it follows the new timeline")
	}
	if err := relay.Stop(10 * time.Second); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
}

// TestPrimaryFailoverWithoutFailoverSlot: on PostgreSQL 16 a logical slot
// exists on the primary only. After a failover the relay finds no slot on
// the new primary: it must stop with exit status 3 and a message that says
// so and names the way out, create no slot, and publish nothing twice.
func TestPrimaryFailoverWithoutFailoverSlot(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := startHAEnv(t, ctx, 16, false)
	e.cli(t, 0, "setup")
	if out := e.cli(t, 0, "check"); !strings.Contains(out, "has no failover slots") {
		t.Errorf("check on PostgreSQL 16 with a standby does not warn that a failover loses the slot:\n%s", out)
	}
	relay := e.startRelay(t)
	hw := startHAWriter(ctx, t, e.dsn)
	waitFor(t, time.Minute, "events published", func() bool { return e.published() > 200 })
	hw.finish(t)
	committed := int(hw.w.committed.Load())
	recs, err := e2e.ReadCommitted(ctx, e.brokers, []string{e.topic}, committed, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}

	if err := e.primary.Crash(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	code, err := relay.Wait(2 * time.Minute)
	if err != nil {
		t.Fatalf("the relay keeps running without its slot: %v\n%s", err, tail(relay.Output(), 4000))
	}
	for _, want := range []string{"does not exist on the primary at " + e.standby.Addr(), "timeline 2",
		"does not create a new slot", "cdcrelay setup", "--allow-slot-ahead", "cdcrelay backfill"} {
		if !strings.Contains(relay.Output(), want) {
			t.Errorf("the relay's last words lack %q:\n%s", want, tail(relay.Output(), 3000))
		}
	}
	if code != 3 {
		t.Errorf("exit status %d, want 3", code)
	}
	// Started again (a supervisor), it refuses again and still creates nothing.
	again := e.startRelay(t)
	if code, err := again.Wait(time.Minute); err != nil || code != 3 {
		t.Errorf("second start: exit %d, %v\n%s", code, err, again.Output())
	}
	var slots int
	conn, err := e.standby.Connect(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'`).Scan(&slots); err != nil {
		t.Fatal(err)
	}
	if slots != 0 {
		t.Errorf("%d logical slots on the new primary: the relay must not create one", slots)
	}
	after, err := e2e.ReadCommitted(ctx, e.brokers, []string{e.topic}, len(recs), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	checkAgainstTable(t, ctx, e.standby, e.db, after, hw.w.seq)
	t.Logf("refused with exit status 3 after the failover: %s", lastLine(relay.Output()))
}
