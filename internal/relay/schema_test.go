package relay_test

import (
	"context"
	"fmt"
	"math/rand"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/e2e/avrocheck"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
)

// registryEnv is a database on the shared Postgres, the shared Kafka and
// the shared schema registry, and the relay binary: for tests that disturb
// only the relay (SIGKILL) or put their own proxy in front of the registry.
type registryEnv struct {
	t        *testing.T
	ctx      context.Context
	dsn      string
	conn     *pgx.Conn
	brokers  []string
	registry string
	name     string
	topic    string
	bin      string
	dir      string
}

func newRegistryEnv(t *testing.T, ddl string) *registryEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	e := &registryEnv{t: t, ctx: ctx, dsn: testenv.NewDatabase(t), brokers: testenv.KafkaBrokers(t),
		registry: testenv.RegistryURL(t), name: testenv.UniqueName(t, "r"), dir: t.TempDir()}
	var err error
	if e.bin, err = e2e.Binary(); err != nil {
		t.Fatal(err)
	}
	if e.conn, err = pgx.Connect(ctx, e.dsn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.conn.Close(context.Background()) })
	e.exec(ddl,
		fmt.Sprintf("CREATE PUBLICATION cdcrelay_%s FOR TABLE items", e.name),
		fmt.Sprintf("SELECT pg_create_logical_replication_slot('cdcrelay_%s', 'pgoutput')", e.name))
	e.topic = e.name
	if err := testenv.CreateTopic(ctx, e.brokers, e.topic, 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := e2e.CreateTopic(e.brokers, "cdcrelay.checkpoints", 1, true); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *registryEnv) exec(stmts ...string) {
	e.t.Helper()
	for _, s := range stmts {
		if _, err := e.conn.Exec(e.ctx, s); err != nil {
			e.t.Fatalf("%s: %v", s, err)
		}
	}
}

// config writes a relay.toml with one avro mapping of table items.
func (e *registryEnv) config(registryURL, extra string) string {
	e.t.Helper()
	cfg := fmt.Sprintf(`
[relay]
name = %q

[postgres]
dsn = %q
status_interval = "1s"
idle_checkpoint_interval = "1s"

[kafka]
brokers = [%q]

[batch]
linger = "20ms"

[schema_registry]
url = %q
request_timeout = "2s"

[[mapping]]
table = "public.items"
kind = "table"
topic = %q
envelope = "avro"
%s
`, e.name, e.dsn, strings.Join(e.brokers, `", "`), registryURL, e.topic, extra)
	path := filepath.Join(e.dir, fmt.Sprintf("relay-%d.toml", time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// events reads the topic as a read_committed consumer and decodes every
// value by its schema id with goavro: the rows' after images by id, each
// with the schema id it came with. A row seen twice fails the test.
func (e *registryEnv) events(want int) map[int64]decodedRow {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	recs, err := e2e.ReadCommitted(ctx, e.brokers, []string{e.topic}, want, 3*time.Second)
	if err != nil {
		e.t.Fatal(err)
	}
	dec := avrocheck.New(e.registry)
	rows := map[int64]decodedRow{}
	for _, r := range recs {
		native, id, err := dec.Avro(r.Value)
		if err != nil {
			e.t.Fatalf("record %d: %v", r.Offset, err)
		}
		after := avrocheck.Unwrap(native.(map[string]any)["after"]).(map[string]any)
		rid := after["id"].(int64)
		if _, dup := rows[rid]; dup {
			e.t.Errorf("row %d published twice", rid)
		}
		rows[rid] = decodedRow{schemaID: id, after: after}
	}
	return rows
}

type decodedRow struct {
	schemaID int
	after    map[string]any
}

// TestSchemaEvolutionWhileRunning runs a series of ALTER TABLEs under a
// running relay (envelope avro, compatibility BACKWARD): adding a column,
// dropping a nullable one, widening a type and renaming a column each
// register a new version at the table's next change, before its event; a
// SIGKILL between registering a version and committing the events that use
// it is harmless (the next relay finds the same schema id); and a change
// the registry refuses (bigint -> text) stops the relay with a message
// naming the table, the column and the rule, with nothing of it published.
func TestSchemaEvolutionWhileRunning(t *testing.T) {
	t.Parallel()
	e := newRegistryEnv(t, `CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, note text)`)
	cfg := e.config(e.registry, "")
	logPath := filepath.Join(e.dir, "relay.log")
	p, err := e2e.Start(e.bin, logPath, "run", "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if !p.Exited() {
			p.Kill()
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("relay log:\n%s", b)
		}
	}()
	registered := func() int { b, _ := os.ReadFile(logPath); return strings.Count(string(b), `msg="schema registered"`) }
	step := func(n int, stmts ...string) {
		t.Helper()
		before := registered()
		e.exec(stmts...)
		waitFor(t, time.Minute, fmt.Sprintf("step %d's new schema", n), func() bool { return registered() > before })
	}
	step(1, `INSERT INTO items VALUES (1, 'bolt', 10, 'n1')`) // version 1 (and the key's)
	step(2, `ALTER TABLE items ADD COLUMN color text`, `INSERT INTO items VALUES (2, 'nut', 20, 'n2', 'red')`)
	step(3, `ALTER TABLE items DROP COLUMN note`, `INSERT INTO items VALUES (3, 'washer', 30, 'blue')`)
	step(4, `ALTER TABLE items ALTER COLUMN qty TYPE bigint`, `INSERT INTO items VALUES (4, 'screw', 4000000000, 'green')`)

	// A rename, and a SIGKILL after its schema is registered but before
	// the Kafka transaction carrying the row commits: a relay with a long
	// linger holds the transaction open.
	p.Stop(10 * time.Second)
	slow := e.config(e.registry, "")
	slowText, _ := os.ReadFile(slow)
	os.WriteFile(slow, []byte(strings.Replace(string(slowText), `linger = "20ms"`, `linger = "30s"`, 1)), 0o644)
	if p, err = e2e.Start(e.bin, logPath, "run", "--config", slow); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the relay to stream", func() bool { return strings.Contains(p.Output(), "streaming") })
	before := registered()
	e.exec(`ALTER TABLE items RENAME COLUMN name TO title`, `INSERT INTO items VALUES (5, 'rivet', 50, 'black')`)
	waitFor(t, time.Minute, "the renamed table's schema", func() bool { return registered() > before })
	p.Kill()
	if rows := e.events(4); len(rows) != 4 || rows[5].after != nil {
		t.Fatalf("after the SIGKILL the topic has rows %v: row 5's transaction must not have committed", keys(rows))
	}
	if p, err = e2e.Start(e.bin, logPath, "run", "--config", cfg); err != nil {
		t.Fatal(err)
	}
	rows := e.events(5)
	if len(rows) != 5 {
		t.Fatalf("rows %v, want 1..5", keys(rows))
	}
	ids := map[int]bool{}
	for _, r := range rows {
		ids[r.schemaID] = true
	}
	if len(ids) != 5 {
		t.Errorf("rows came with %d schema ids, want 5 (one per shape): %v", len(ids), rows)
	}
	for id, check := range map[int64]func(map[string]any) bool{
		1: func(a map[string]any) bool {
			return avrocheck.Unwrap(a["name"]) == "bolt" && avrocheck.Unwrap(a["qty"]) == int32(10) && avrocheck.Unwrap(a["note"]) == "n1"
		},
		2: func(a map[string]any) bool { return avrocheck.Unwrap(a["color"]) == "red" },
		3: func(a map[string]any) bool {
			_, has := a["note"]
			return !has && avrocheck.Unwrap(a["color"]) == "blue"
		},
		4: func(a map[string]any) bool { return avrocheck.Unwrap(a["qty"]) == int64(4000000000) },
		5: func(a map[string]any) bool {
			_, has := a["name"]
			return !has && avrocheck.Unwrap(a["title"]) == "rivet"
		},
	} {
		if !check(rows[id].after) {
			t.Errorf("row %d: %v", id, rows[id].after)
		}
	}

	// The incompatible change: a bigint column becomes text. The relay
	// must stop (on_error = "stop") naming table, column and rule, and
	// publish nothing of the row.
	e.exec(`ALTER TABLE items ALTER COLUMN qty TYPE text`, `INSERT INTO items VALUES (6, 'pin', 'six', 'white')`)
	code, err := p.Wait(time.Minute)
	if err != nil {
		t.Fatalf("the relay did not stop on the incompatible change: %v", err)
	}
	out := p.Output()
	for _, w := range []string{"public.items", `column "qty"`, "BACKWARD", "refused"} {
		if !strings.Contains(out, w) {
			t.Errorf("exit %d; the message does not name %q:\n%s", code, w, lastLines(out, 5))
		}
	}
	if code == 0 {
		t.Errorf("exit 0 after refusing a schema")
	}
	if rows := e.events(5); len(rows) != 5 {
		t.Errorf("the incompatible row reached the topic: rows %v", keys(rows))
	}
	t.Logf("refused: %s", lastLines(out, 1))
}

func keys(m map[int64]decodedRow) []int64 {
	var ks []int64
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestRegistryOutage pauses the registry (a proxy in front of it holds
// every byte) while the relay needs a new schema: the relay retries, the
// metrics show the failures, no event goes out without its schema, and
// once the registry is back every row is published exactly once.
func TestRegistryOutage(t *testing.T) {
	t.Parallel()
	e := newRegistryEnv(t, `CREATE TABLE items (id bigint PRIMARY KEY, name text)`)
	u, err := url.Parse(e.registry)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := testenv.NewProxy(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	ports, err := testenv.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	cfg := e.config("http://"+proxy.Addr()+u.Path, fmt.Sprintf("\n[metrics]\nlisten = %q\n", metricsAddr))
	// [metrics] after [[mapping]] would belong to it: move it up.
	text, _ := os.ReadFile(cfg)
	s := string(text)
	i := strings.Index(s, "\n[metrics]")
	s = s[:i] + "\n"
	s = strings.Replace(s, "[schema_registry]", fmt.Sprintf("[metrics]\nlisten = %q\n\n[schema_registry]", metricsAddr), 1)
	os.WriteFile(cfg, []byte(s), 0o644)
	logPath := filepath.Join(e.dir, "relay.log")
	p, err := e2e.Start(e.bin, logPath, "run", "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if !p.Exited() {
			p.Stop(10 * time.Second)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("relay log (tail):\n%s", lastLines(string(b), 60))
		}
	}()
	for i := 1; i <= 20; i++ {
		e.exec(fmt.Sprintf(`INSERT INTO items VALUES (%d, 'a%d')`, i, i))
	}
	if rows := e.events(20); len(rows) != 20 {
		t.Fatalf("before the outage: %d rows", len(rows))
	}

	proxy.Pause()
	t.Log("registry paused")
	e.exec(`ALTER TABLE items ADD COLUMN color text`)
	for i := 21; i <= 60; i++ {
		e.exec(fmt.Sprintf(`INSERT INTO items VALUES (%d, 'b%d', 'c%d')`, i, i, i))
	}
	var errs float64
	waitFor(t, time.Minute, "the metrics to show failed registry requests", func() bool {
		m, err := scrape(metricsAddr)
		if err != nil {
			return false
		}
		errs = 0
		for k, v := range m {
			if strings.HasPrefix(k, "cdcrelay_schema_registry_requests_total{") && strings.Contains(k, `result="error"`) {
				errs += v
			}
		}
		return errs > 0 && m["cdcrelay_schema_registry_up"] == 0
	})
	waitFor(t, time.Minute, "the relay to give up a session on the registry", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "schema registry unavailable")
	})
	if rows := e.events(20); len(rows) != 20 {
		t.Fatalf("during the outage %d rows are in the topic: an event went out without its schema", len(rows))
	}
	t.Logf("during the outage: %.0f failed registry requests, 20 rows in the topic", errs)
	proxy.Resume()
	t.Log("registry back")
	rows := e.events(60)
	if len(rows) != 60 {
		t.Fatalf("after the outage: %d rows, want 60", len(rows))
	}
	for i := int64(21); i <= 60; i++ {
		if avrocheck.Unwrap(rows[i].after["color"]) != fmt.Sprintf("c%d", i) {
			t.Errorf("row %d: %v", i, rows[i].after)
		}
	}
	if p.Exited() {
		t.Fatalf("the relay exited: %s", lastLines(p.Output(), 10))
	}
}

// TestExactlyOnceUnderChaosAvro is a short run of the chaos harness
// (TestExactlyOnceUnderChaos) with envelope "avro": the outbox table mapped
// as a plain table, its rows' Avro events decoded by goavro and checked as
// the outbox events are, while the relay is SIGKILLed at random moments and
// Kafka's connections are reset.
func TestExactlyOnceUnderChaosAvro(t *testing.T) {
	if testing.Short() {
		t.Skip("long test")
	}
	e := startChaosEnv(t, testenv.PostgresOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	const name, db = "chaosavro", "chaosavro"
	e.setupOutbox(t, ctx, db, name, 3)
	registry := testenv.RegistryURL(t)
	cfgPath := e.config(t, name, db, fmt.Sprintf(`
[schema_registry]
url = %q

[[mapping]]
table = "public.outbox"
kind = "table"
topic = "outbox.event.order"
key = "{aggregateid}"
envelope = "avro"
[mapping.rows]
ops = ["insert"]
`, registry))
	logPath := filepath.Join(e.dir, "relay.log")
	conn, err := pgx.Connect(ctx, e.pg.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	w := &outboxWriter{dsn: e.pg.DSN(db), conn: conn, aggregates: 12, seq: map[string]int{}}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewSource(seed))
	writerDone := make(chan error, 1)
	go func() {
		wr := rand.New(rand.NewSource(seed + 1))
		for written := 0; written < 8000; {
			n := min(1+wr.Intn(300), 8000-written)
			if err := w.txn(ctx, n, wr); err != nil {
				writerDone <- err
				return
			}
			written += n
			time.Sleep(time.Duration(20+wr.Intn(100)) * time.Millisecond)
		}
		writerDone <- nil
	}()
	kills, writing := 0, true
	for kills < 8 || writing {
		p, err := e2e.Start(e.bin, logPath, "run", "--config", cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		if kills == 3 {
			time.Sleep(time.Duration(300+rnd.Intn(1000)) * time.Millisecond)
			t.Log("fault: reset Kafka connections")
			e.kProxy.ResetAll()
		}
		time.Sleep(time.Duration(300+rnd.Intn(2000)) * time.Millisecond)
		if p.Exited() {
			t.Fatalf("relay exited by itself:\n%s", p.Output())
		}
		p.Kill()
		kills++
		select {
		case err := <-writerDone:
			if err != nil {
				t.Fatalf("writer: %v", err)
			}
			writing = false
		default:
		}
	}
	final, err := e2e.Start(e.bin, logPath, "run", "--config", cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer final.Stop(10 * time.Second)
	total := int(w.committed.Load())
	recs, err := e2e.ReadCommitted(ctx, e.brokers, []string{"outbox.event.order"}, total, 8*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Decode each event by its schema id and present it as the outbox
	// events checkOutboxEvents reads: payload as the value, id and type as
	// headers.
	dec := avrocheck.New(registry)
	for i := range recs {
		native, _, err := dec.Avro(recs[i].Value)
		if err != nil {
			t.Fatalf("record %d: %v", recs[i].Offset, err)
		}
		after := avrocheck.Unwrap(native.(map[string]any)["after"]).(map[string]any)
		recs[i].Value = []byte(avrocheck.Unwrap(after["payload"]).(string))
		recs[i].Headers = map[string]string{"id": fmt.Sprint(after["id"]), "type": fmt.Sprint(avrocheck.Unwrap(after["type"]))}
	}
	logb, _ := os.ReadFile(logPath)
	resumes := strings.Count(string(logb), "resuming from kafka checkpoint")
	t.Logf("relay SIGKILLed %d times (%d resumes from a checkpoint); %d rows, %d events", kills, resumes, total, len(recs))
	if resumes < kills/2 {
		t.Errorf("only %d resumes in %d runs: the kills did not interrupt a streaming relay", resumes, kills)
	}
	checkOutboxEvents(t, recs, total, w.seq)
	if t.Failed() {
		b, _ := os.ReadFile(logPath)
		t.Logf("relay log (tail):\n%s", lastLines(string(b), 40))
	}
}
