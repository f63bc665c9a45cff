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

// chaosEnv is a private Postgres and Kafka, each behind a fault-injecting
// proxy, so this test can restart and disturb them without touching the
// servers other packages' tests share.
type chaosEnv struct {
	pg      *testenv.Postgres
	kafka   *testenv.Kafka
	pgProxy *testenv.Proxy
	kProxy  *testenv.Proxy
	dir     string
	bin     string
	brokers []string // direct, for the test's own consumer and admin
}

func startChaosEnv(t *testing.T, pgOpts testenv.PostgresOptions) *chaosEnv {
	t.Helper()
	e := &chaosEnv{dir: t.TempDir()}
	var err error
	if e.bin, err = e2e.Binary(); err != nil {
		t.Fatal(err)
	}
	e.pg = testenv.NewPostgres(t, pgOpts)
	if e.pgProxy, err = testenv.NewProxy(e.pg.Addr()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.pgProxy.Close() })
	// Clients learn broker addresses from metadata: with Proxy the broker
	// advertises the proxy, so all the relay's traffic passes through it.
	e.kafka = testenv.NewKafka(t, testenv.KafkaOptions{Proxy: true})
	e.kProxy = e.kafka.Proxy()
	e.brokers = e.kafka.InternalBrokers()
	return e
}

// config writes a relay.toml that reaches both servers through the proxies.
func (e *chaosEnv) config(t *testing.T, name, db, extra string) string {
	t.Helper()
	cfg := fmt.Sprintf(`
[relay]
name = %q
log_level = "info"

[postgres]
dsn = "postgres://postgres@%s/%s?sslmode=disable&connect_timeout=5"
status_interval = "1s"
idle_checkpoint_interval = "1s"

[kafka]
brokers = ["%s"]
request_timeout = "6s"
transaction_timeout = "30s"

[batch]
max_events = 2000
linger = "20ms"
%s
`, name, e.pgProxy.Addr(), db, e.kProxy.Addr(), extra)
	path := filepath.Join(e.dir, name+".toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

const outboxDDL = `
CREATE TABLE outbox (
	id            bigserial PRIMARY KEY,
	aggregatetype text NOT NULL,
	aggregateid   text NOT NULL,
	type          text NOT NULL,
	payload       jsonb NOT NULL
);
CREATE TABLE noise (id bigserial PRIMARY KEY, filler text);
`

// setupOutbox creates the database, the outbox table, the publication, the
// slot and the topics, as `cdcrelay setup` would.
func (e *chaosEnv) setupOutbox(t *testing.T, ctx context.Context, db, name string, partitions int32) {
	t.Helper()
	if err := e.pg.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		outboxDDL,
		fmt.Sprintf(`CREATE PUBLICATION cdcrelay_%s FOR TABLE outbox`, name),
		fmt.Sprintf(`SELECT pg_create_logical_replication_slot('cdcrelay_%s', 'pgoutput')`, name),
	} {
		if err := e.pg.ExecSQL(ctx, db, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if err := e2e.CreateTopic(e.brokers, "cdcrelay.checkpoints", 1, true); err != nil {
		t.Fatal(err)
	}
	if err := e2e.CreateTopic(e.brokers, "outbox.event.order", partitions, false); err != nil {
		t.Fatal(err)
	}
}

// outboxWriter inserts outbox rows, each carrying its aggregate's next
// sequence number, and remembers how many it committed.
type outboxWriter struct {
	dsn        string
	conn       *pgx.Conn
	aggregates int
	seq        map[string]int
	committed  atomic.Int64
}

func (w *outboxWriter) txn(ctx context.Context, rows int, rnd *rand.Rand) error {
	tx, err := w.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	next := map[string]int{}
	data := make([][]any, rows)
	for i := range data {
		agg := fmt.Sprintf("agg-%02d", rnd.Intn(w.aggregates))
		n := w.seq[agg] + next[agg] + 1
		next[agg]++
		payload := fmt.Sprintf(`{"aggregate":%q,"seq":%d}`, agg, n)
		data[i] = []any{"order", agg, "OrderPlaced", payload}
	}
	_, err = tx.CopyFrom(ctx, pgx.Identifier{"outbox"}, []string{"aggregatetype", "aggregateid", "type", "payload"}, pgx.CopyFromRows(data))
	if err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		// A restart during COMMIT leaves the outcome unknown: ask the table.
		if !w.committedAnyway(ctx, rows) {
			return err
		}
	}
	for agg, n := range next {
		w.seq[agg] += n
	}
	w.committed.Add(int64(rows))
	return nil
}

func (w *outboxWriter) committedAnyway(ctx context.Context, rows int) bool {
	for i := 0; i < 30 && ctx.Err() == nil; i++ {
		c, err := pgx.Connect(ctx, w.dsn)
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		w.conn.Close(context.Background())
		w.conn = c
		var n int64
		if err := c.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n); err != nil {
			continue
		}
		return n == w.committed.Load()+int64(rows)
	}
	return false
}

// checkOutboxEvents asserts the guarantee on what a read_committed consumer
// sees: every outbox id exactly once, per aggregate in sequence order, and
// nothing else.
func checkOutboxEvents(t *testing.T, recs []e2e.Record, wantRows int, seq map[string]int) {
	t.Helper()
	ids := map[string]int{}
	type ev struct {
		part   int32
		offset int64
		seq    int
	}
	byAgg := map[string][]ev{}
	for _, r := range recs {
		id := r.Headers["id"]
		ids[id]++
		var p struct {
			Aggregate string `json:"aggregate"`
			Seq       int    `json:"seq"`
		}
		if err := json.Unmarshal(r.Value, &p); err != nil {
			t.Fatalf("record %s/%d@%d: value %q is not the row's payload: %v", r.Topic, r.Partition, r.Offset, r.Value, err)
		}
		if string(r.Key) != p.Aggregate {
			t.Fatalf("record %s/%d@%d: key %q, payload aggregate %q", r.Topic, r.Partition, r.Offset, r.Key, p.Aggregate)
		}
		if r.Headers["type"] != "OrderPlaced" {
			t.Fatalf("record %s/%d@%d: header type = %q", r.Topic, r.Partition, r.Offset, r.Headers["type"])
		}
		byAgg[p.Aggregate] = append(byAgg[p.Aggregate], ev{r.Partition, r.Offset, p.Seq})
	}
	var dups []string
	for id, n := range ids {
		if n > 1 {
			dups = append(dups, fmt.Sprintf("%s x%d", id, n))
		}
	}
	sort.Strings(dups)
	if len(dups) > 0 {
		t.Errorf("%d outbox ids published more than once, e.g. %v", len(dups), dups[:min(10, len(dups))])
	}
	var missing []int
	for i := 1; i <= wantRows; i++ {
		if ids[fmt.Sprint(i)] == 0 {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d outbox ids never published, e.g. %v", len(missing), missing[:min(10, len(missing))])
	}
	if len(ids) != wantRows {
		t.Errorf("consumer saw %d distinct ids, the table has %d rows", len(ids), wantRows)
	}
	for agg, evs := range byAgg {
		sort.Slice(evs, func(i, j int) bool { return evs[i].offset < evs[j].offset })
		for i, e := range evs {
			if e.part != evs[0].part {
				t.Fatalf("aggregate %s spread over partitions %d and %d", agg, evs[0].part, e.part)
			}
			if e.seq != i+1 {
				t.Fatalf("aggregate %s: event %d has seq %d (order per key broken, or an event missing/duplicated)", agg, i+1, e.seq)
			}
		}
		if len(evs) != seq[agg] {
			t.Errorf("aggregate %s: %d events, %d rows", agg, len(evs), seq[agg])
		}
	}
}

// TestExactlyOnceUnderChaos is the proof of the guarantee: outbox rows in
// transactions of random size (and one of 50,000 rows) stream while the relay
// process is SIGKILLed over and over, Kafka and Postgres restart, and proxies
// reset, stall and late-deliver both connections. A read_committed consumer
// must then see every row once, in order per aggregate.
func TestExactlyOnceUnderChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("long test")
	}
	e := startChaosEnv(t, testenv.PostgresOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	const name, db = "chaos", "chaos"
	e.setupOutbox(t, ctx, db, name, 3)
	cfgPath := e.config(t, name, db, `
[[mapping]]
table = "public.outbox"
kind = "outbox"
`)
	logPath := filepath.Join(e.dir, "relay.log")
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			s := string(b)
			if len(s) > 20000 {
				s = s[len(s)-20000:]
			}
			t.Logf("relay log (tail):\n%s", s)
		}
	}()

	conn, err := pgx.Connect(ctx, e.pg.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	w := &outboxWriter{dsn: e.pg.DSN(db), conn: conn, aggregates: 24, seq: map[string]int{}}
	rnd := rand.New(rand.NewSource(time.Now().UnixNano()))
	seed := rnd.Int63()
	t.Logf("seed %d", seed)
	rnd = rand.New(rand.NewSource(seed))

	// The writer: 20,000 rows in transactions of 1..500 rows, with one
	// 50,000-row transaction half way. Postgres restarts under it are
	// retried (a failed COPY transaction is rolled back whole).
	const smallRows, bigRows = 20000, 50000
	writerDone := make(chan error, 1)
	go func() {
		wr := rand.New(rand.NewSource(seed + 1))
		written, bigDone := 0, false
		for written < smallRows || !bigDone {
			n := 1 + wr.Intn(500)
			if written+n > smallRows {
				n = smallRows - written
			}
			big := !bigDone && (written >= smallRows/2 || n == 0)
			if big {
				n = bigRows
			}
			if err := w.txn(ctx, n, wr); err != nil {
				if ctx.Err() != nil {
					writerDone <- err
					return
				}
				// Postgres restarting: reconnect and write the transaction again.
				time.Sleep(500 * time.Millisecond)
				if c, err := pgx.Connect(ctx, w.dsn); err == nil {
					w.conn.Close(context.Background())
					w.conn = c
				}
				continue
			}
			if big {
				bigDone = true
			} else {
				written += n
			}
			time.Sleep(time.Duration(20+wr.Intn(150)) * time.Millisecond)
		}
		writerDone <- nil
	}()

	// The relay, killed at random moments, with faults injected between kills.
	faults := map[int]func(){
		3: func() {
			t.Log("fault: Kafka restart")
			if err := e.kafka.Restart(ctx); err != nil {
				t.Errorf("kafka restart: %v", err)
			}
		},
		6: func() {
			t.Log("fault: Postgres restart -m immediate")
			if err := e.pg.Restart(ctx, true); err != nil {
				t.Errorf("postgres restart: %v", err)
			}
		},
		9: func() { t.Log("fault: reset Kafka connections"); e.kProxy.ResetAll() },
		11: func() {
			t.Log("fault: stall Kafka traffic 10s, then deliver it late")
			e.kProxy.Stall(10 * time.Second)
		},
		14: func() { t.Log("fault: reset Postgres connections"); e.pgProxy.ResetAll() },
		17: func() {
			t.Log("fault: stall Postgres traffic 8s, then deliver it late")
			e.pgProxy.Stall(8 * time.Second)
		},
	}
	kills := 0
	var writerErr error
	writing := true
	for kills < 22 || writing {
		p, err := e2e.Start(e.bin, logPath, "run", "--config", cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		if f := faults[kills]; f != nil {
			time.Sleep(time.Duration(300+rnd.Intn(1500)) * time.Millisecond)
			f()
			// Outlive the stalls: the relay's own requests must time out,
			// and it must recover in-process (new producer epoch, outcome
			// from the checkpoint) before the late traffic is delivered.
			time.Sleep(12 * time.Second)
		}
		time.Sleep(time.Duration(200+rnd.Intn(2500)) * time.Millisecond)
		if p.Exited() {
			t.Fatalf("relay exited by itself:\n%s", p.Output())
		}
		p.Kill()
		kills++
		select {
		case writerErr = <-writerDone:
			writing = false
		default:
		}
	}
	if writerErr != nil {
		t.Fatalf("writer: %v", writerErr)
	}
	t.Logf("relay SIGKILLed %d times; %d rows written", kills, w.committed.Load())

	// A final run drains the rest; meanwhile a second relay must be refused.
	final, err := e2e.Start(e.bin, logPath, "run", "--config", cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer final.Stop(10 * time.Second)
	time.Sleep(3 * time.Second)
	second, err := e2e.Start(e.bin, "", "run", "--config", cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	code, err := second.Wait(30 * time.Second)
	if err != nil {
		second.Kill()
		t.Fatalf("second relay on the same slot was not refused: %v\n%s", err, second.Output())
	}
	if code == 0 || !strings.Contains(second.Output(), "already running") {
		t.Fatalf("second relay: exit %d, want a refusal naming the running relay:\n%s", code, second.Output())
	}
	t.Logf("second relay refused (exit %d): %s", code, lastLine(second.Output()))

	// What the relay went through, from its own log: the faults must have
	// hit it mid-flight for this test to mean anything.
	logb, _ := os.ReadFile(logPath)
	relayLog := string(logb)
	resumes := strings.Count(relayLog, "resuming from kafka checkpoint")
	inside := strings.Count(relayLog, "inside transaction")
	failures := strings.Count(relayLog, "relay session failed")
	t.Logf("relay log: %d resumes from a checkpoint (%d inside the large transaction), %d failed sessions retried in-process",
		resumes, inside, failures)
	if failures == 0 {
		t.Errorf("the relay never recovered in-process from a fault: the stalls did not reach it")
	}
	if resumes < kills/2 {
		t.Errorf("only %d resumes from a Kafka checkpoint in %d runs: the kills did not interrupt a streaming relay", resumes, kills)
	}

	total := int(w.committed.Load())
	recs, err := e2e.ReadCommitted(ctx, e.brokers, []string{"outbox.event.order"}, total, 8*time.Second)
	if err != nil {
		t.Fatalf("%v", err)
	}
	checkOutboxEvents(t, recs, total, w.seq)
	if final.Exited() {
		t.Fatalf("final relay exited:\n%s", final.Output())
	}
	if err := final.Stop(10 * time.Second); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
