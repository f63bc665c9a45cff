package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/replication"
)

// workload is a backlog: txns transactions of rowsPerTx outbox rows, each
// with a JSON payload of about payload bytes.
type workload struct {
	name      string
	desc      string
	txns      int
	rowsPerTx int
	payload   int
	// mapping replaces the outbox mapping's keys (after table = ...): the
	// table workloads map the same rows with kind "table".
	mapping string
}

// tableMapping maps the outbox table as a business table with envelope env
// to the workload's topic.
func tableMapping(env string) string {
	return "kind = \"table\"\ntopic = \"{{topic}}\"\nenvelope = \"" + env + "\"\n"
}

func (w workload) rows() int { return w.txns * w.rowsPerTx }

func workloads(scale float64) []workload {
	n := func(v int) int { return max(1, int(float64(v)*scale)) }
	return []workload{
		{name: "outbox-small", desc: "1,000,000 outbox rows of ~200 B payload, 10 rows per transaction", txns: n(100_000), rowsPerTx: 10, payload: 200},
		{name: "outbox-large", desc: "100,000 outbox rows of ~4 KB payload, 10 rows per transaction", txns: n(10_000), rowsPerTx: 10, payload: 4096},
		{name: "tiny-txns", desc: "100,000 single-row transactions, ~200 B payload", txns: n(100_000), rowsPerTx: 1, payload: 200},
		{name: "one-big-txn", desc: "one transaction of 1,000,000 rows, ~200 B payload", txns: 1, rowsPerTx: n(1_000_000), payload: 200},
		// The same rows as outbox-small, published as a table's changes:
		// the json envelope, and Avro through the schema registry.
		{name: "table-json", desc: "1,000,000 rows (int8, 3 text, ~200 B jsonb), 10 per transaction, kind table, envelope json", txns: n(100_000), rowsPerTx: 10, payload: 200, mapping: tableMapping("json")},
		{name: "table-avro", desc: "the same rows, envelope avro (schema registry)", txns: n(100_000), rowsPerTx: 10, payload: 200, mapping: tableMapping("avro")},
	}
}

// result is one row of the table.
type result struct {
	name       string
	events     int
	relaySecs  float64
	limitSecs  float64 // pg_recvlogical on the same WAL range (0: not measured)
	cpuSecs    float64
	peakRSSMB  float64
	heapNote   string
	latency    *latencyStats
	walBytes   int64
	limitCPU   float64
	limitNote  string
	rateNote   string
	writeSecs  float64
	relayNote  string
	latencyRun bool
}

// bench is one fresh database with an outbox table, its publication, the
// relay's slot and a reference slot, and a fresh event topic.
type bench struct {
	o        *options
	name     string // relay name; slot and publication are cdcrelay_<name>
	db       string
	dsn      string
	aggType  string
	topic    string
	refSlot  string
	cfgPath  string
	conn     *pgx.Conn
	startLSN string
}

func dbDSN(admin, db string) (string, error) {
	u, err := url.Parse(admin)
	if err != nil {
		return "", err
	}
	u.Path = "/" + db
	return u.String(), nil
}

func newBench(ctx context.Context, o *options, kind, mapping string) (*bench, error) {
	id := strconv.FormatInt(time.Now().UnixNano()/1e6, 36)
	name := "bench_" + strings.ReplaceAll(kind, "-", "_") + "_" + id
	b := &bench{o: o, name: name, db: name, aggType: "bench" + strings.ReplaceAll(kind, "-", "") + id, refSlot: "ref_" + name}
	b.topic = "outbox.event." + b.aggType
	admin, err := pgx.Connect(ctx, o.pgDSN)
	if err != nil {
		return nil, err
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+b.db); err != nil {
		return nil, fmt.Errorf("create database: %w", err)
	}
	if b.dsn, err = dbDSN(o.pgDSN, b.db); err != nil {
		return nil, err
	}
	if b.conn, err = pgx.Connect(ctx, b.dsn); err != nil {
		return nil, err
	}
	for _, sql := range []string{
		`CREATE TABLE outbox (
			id            bigserial PRIMARY KEY,
			aggregatetype text NOT NULL,
			aggregateid   text NOT NULL,
			type          text NOT NULL,
			payload       jsonb NOT NULL)`,
		fmt.Sprintf(`CREATE PUBLICATION cdcrelay_%s FOR TABLE outbox`, name),
		// Both slots start at the same point, before any row is written, so
		// the relay and pg_recvlogical decode the very same WAL range.
		fmt.Sprintf(`SELECT pg_create_logical_replication_slot('cdcrelay_%s', 'pgoutput')`, name),
		fmt.Sprintf(`SELECT pg_create_logical_replication_slot('%s', 'pgoutput')`, b.refSlot),
		// Rows are generated on the server: the benchmark measures the relay,
		// not the client that writes. Each loop iteration is one transaction.
		// last_lsn is the WAL insert position just before the last COMMIT:
		// the last transaction's commit record starts after it.
		`CREATE PROCEDURE bench_fill(n_tx int, rows_per_tx int, agg text, pad int, INOUT last_lsn text DEFAULT NULL) LANGUAGE plpgsql AS $$
		DECLARE i int;
		BEGIN
			FOR i IN 0..n_tx-1 LOOP
				INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
				SELECT agg, 'agg-' || ((i*rows_per_tx+j) % 64), 'BenchEvent',
					jsonb_build_object('seq', i*rows_per_tx+j, 'data',
						(SELECT string_agg(md5((i*rows_per_tx+j)::text || '/' || k::text), '') FROM generate_series(1, pad/32) k))
				FROM generate_series(1, rows_per_tx) j;
				IF i = n_tx-1 THEN
					last_lsn := pg_current_wal_insert_lsn()::text;
				END IF;
				COMMIT;
			END LOOP;
		END $$`,
	} {
		if _, err := b.conn.Exec(ctx, sql); err != nil {
			b.close(context.Background())
			return nil, fmt.Errorf("%s: %w", firstLine(sql), err)
		}
	}
	if err := b.conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&b.startLSN); err != nil {
		return nil, err
	}
	if err := createTopic(o.brokers, b.topic, o.partitions); err != nil {
		b.close(context.Background())
		return nil, err
	}
	cfg := fmt.Sprintf(`[relay]
name = %q
log_level = %q

[postgres]
dsn = %q

[kafka]
brokers = [%s]

[[mapping]]
table = "public.outbox"
%s`, name, o.logLevel, b.dsn, quoteList(o.brokers), mappingKeys(mapping, b.topic))
	if o.extraTOML != "" {
		cfg += "\n" + o.extraTOML + "\n"
	}
	b.cfgPath = filepath.Join(o.workDir, name+".toml")
	if err := os.WriteFile(b.cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	return b, nil
}

// mappingKeys is the [[mapping]] body: the outbox defaults, or a workload's
// keys; a mapping through the registry gets [schema_registry] after it.
func mappingKeys(mapping, topic string) string {
	if mapping == "" {
		return "kind = \"outbox\"\n"
	}
	m := strings.ReplaceAll(mapping, "{{topic}}", topic)
	if strings.Contains(m, `"avro"`) || strings.Contains(m, `"json-schema"`) {
		m += fmt.Sprintf("\n[schema_registry]\nurl = %q\n", os.Getenv("CDCRELAY_TEST_REGISTRY_URL"))
	}
	return m
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i > 0 {
		return s[:i]
	}
	return s
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

// close drops the database and its slots (unless -keep).
func (b *bench) close(ctx context.Context) {
	if b.conn != nil {
		b.conn.Close(ctx)
	}
	if b.o.keep {
		return
	}
	admin, err := pgx.Connect(ctx, b.o.pgDSN)
	if err != nil {
		return
	}
	defer admin.Close(ctx)
	for _, s := range []string{"cdcrelay_" + b.name, b.refSlot} {
		for i := 0; i < 20; i++ {
			_, err := admin.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, s)
			if err == nil {
				break
			}
			time.Sleep(250 * time.Millisecond) // the walsender may still be exiting
		}
	}
	_, _ = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+b.db+" WITH (FORCE)")
}

// fill writes the rows and returns the WAL position just before the last
// transaction's commit record.
func (b *bench) fill(ctx context.Context, txns, rowsPerTx, payload int) (replication.LSN, error) {
	var last string
	if err := b.conn.QueryRow(ctx, `CALL bench_fill($1, $2, $3, $4, NULL)`, txns, rowsPerTx, b.aggType, payload).Scan(&last); err != nil {
		return 0, err
	}
	return replication.ParseLSN(last)
}

func (b *bench) currentLSN(ctx context.Context) (string, error) {
	var lsn string
	err := b.conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn)
	return lsn, err
}

func runBacklog(ctx context.Context, o *options, w workload) (result, error) {
	r := result{name: w.name, events: w.rows()}
	b, err := newBench(ctx, o, w.name, w.mapping)
	if err != nil {
		return r, err
	}
	defer b.close(context.Background())

	t0 := time.Now()
	lastCommit, err := b.fill(ctx, w.txns, w.rowsPerTx, w.payload)
	if err != nil {
		return r, fmt.Errorf("write rows: %w", err)
	}
	r.writeSecs = since(t0)
	endLSN, err := b.currentLSN(ctx)
	if err != nil {
		return r, err
	}
	if err := b.conn.QueryRow(ctx, `SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::int8`, endLSN, b.startLSN).Scan(&r.walBytes); err != nil {
		return r, err
	}
	fmt.Printf("wrote %d rows in %d transactions in %.1fs (WAL %s .. %s, %.0f MB)\n", w.rows(), w.txns, r.writeSecs, b.startLSN, endLSN, float64(r.walBytes)/1e6)

	// The limit: pg_recvlogical decodes the same range with pgoutput.
	lim, err := runRecvlogical(ctx, o, b, endLSN)
	if err != nil {
		r.limitNote = err.Error()
		fmt.Printf("pg_recvlogical: %v\n", err)
	} else {
		r.limitSecs, r.limitCPU = lim.secs, lim.cpu
		fmt.Printf("pg_recvlogical: %.2fs (%.0f rows/s), client CPU %.2fs\n", lim.secs, float64(w.rows())/lim.secs, lim.cpu)
	}

	// The relay, as a separate process, on the backlog. The clock stops
	// when the relay's checkpoint (committed in the same Kafka transaction
	// as the events) passes the last transaction's commit: from then on a
	// read_committed consumer sees every event. Watching the checkpoint
	// costs a few small requests; consuming a million records on the same
	// two cores would take CPU from the relay, so the events are counted
	// after the clock stopped (and must be exactly the rows written).
	watch, err := newCheckpointWatch(o.brokers, "cdcrelay-"+b.name)
	if err != nil {
		return r, err
	}
	defer watch.close()
	proc, err := startRelay(o, b)
	if err != nil {
		return r, err
	}
	deadline := time.Duration(float64(10*time.Minute) * max(o.scale, 0.2))
	doneAt, err := watch.waitPast(ctx, lastCommit, w.rowsPerTx, deadline, proc)
	if err != nil {
		proc.stop()
		return r, fmt.Errorf("%w\nrelay output (tail):\n%s", err, tail(proc.output(), 3000))
	}
	r.relaySecs = doneAt.Sub(proc.started).Seconds()
	usage, err := proc.stop()
	if err != nil {
		fmt.Printf("relay stop: %v\n", err)
	}
	if err := countEvents(ctx, o.brokers, b.topic, w.rows()); err != nil {
		return r, err
	}
	r.cpuSecs, r.peakRSSMB = usage.cpu, usage.maxRSSMB
	fmt.Printf("relay: %d events in %.2fs (%.0f events/s), CPU %.2fs, peak RSS %.1f MB\n",
		w.rows(), r.relaySecs, float64(w.rows())/r.relaySecs, r.cpuSecs, r.peakRSSMB)
	if r.limitSecs > 0 {
		fmt.Printf("relay/limit: %.2f\n", r.limitSecs/r.relaySecs)
	}
	return r, nil
}

type recvResult struct{ secs, cpu float64 }

func pgRecvlogicalPath(o *options) string {
	if o.pgBin != "" {
		p := filepath.Join(o.pgBin, "pg_recvlogical")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("pg_recvlogical"); err == nil {
		return p
	}
	return ""
}

func runRecvlogical(ctx context.Context, o *options, b *bench, endLSN string) (recvResult, error) {
	bin := pgRecvlogicalPath(o)
	if bin == "" {
		return recvResult{}, fmt.Errorf("pg_recvlogical not found (set CDCRELAY_PG_BIN)")
	}
	cmd := exec.CommandContext(ctx, bin, "-d", b.dsn, "--slot", b.refSlot, "--start",
		"-o", "proto_version=1", "-o", "publication_names=cdcrelay_"+b.name,
		"--endpos", endLSN, "--no-loop", "-f", "/dev/null")
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	t0 := time.Now()
	err := cmd.Run()
	secs := since(t0)
	if err != nil {
		return recvResult{}, fmt.Errorf("%s: %v: %s", filepath.Base(bin), err, strings.TrimSpace(out.String()))
	}
	ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	cpu := 0.0
	if ru != nil {
		cpu = tv(ru.Utime) + tv(ru.Stime)
	}
	return recvResult{secs: secs, cpu: cpu}, nil
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func buildRelay(dir string) (string, error) {
	path := filepath.Join(dir, "cdcrelay")
	cmd := exec.Command("go", "build", "-o", path, "./cmd/cdcrelay")
	cmd.Dir = e2e.ModuleRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/cdcrelay: %v\n%s", err, out)
	}
	return path, nil
}
