package mapping_test

// End-to-end tests of the mappings through the real pipeline: a row written
// in Postgres, decoded by pgoutput, mapped, published by the relay in a Kafka
// transaction, and read back by a read_committed consumer. They need the
// servers that `make test` starts:
//
//	make test PKG=./mapping/... TESTFLAGS='-run E2E -v'
//
// This file holds the harness and the golden type test; e2e_*_test.go hold
// the other scenarios.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/relay"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
)

// updateGolden reports the -update flag, which package mapping's golden test
// defines (both test packages share one binary, so it cannot be defined twice).
func updateGolden() bool {
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

// syncBuffer collects the in-process relay's log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// relayEnv is one test's source database, relay name and Kafka.
type relayEnv struct {
	t       *testing.T
	ctx     context.Context
	dsn     string
	db      string
	name    string // relay.name: slot, publication, transactional id, group
	brokers []string
	conn    *pgx.Conn
	dir     string
}

func newRelayEnv(t *testing.T, timeout time.Duration) *relayEnv {
	t.Helper()
	return newRelayEnvOn(t, timeout, testenv.PostgresDSN(t))
}

// newRelayEnvOn is newRelayEnv on the server of the superuser DSN admin.
func newRelayEnvOn(t *testing.T, timeout time.Duration, admin string) *relayEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	e := &relayEnv{t: t, ctx: ctx, dir: t.TempDir()}
	e.dsn = testenv.NewDatabaseOn(t, admin)
	e.brokers = testenv.KafkaBrokers(t)
	u, err := url.Parse(e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	e.db = strings.TrimPrefix(u.Path, "/")
	var r [5]byte
	rand.Read(r[:])
	e.name = "e2e_" + hex.EncodeToString(r[:])
	if err := e2e.CreateTopic(e.brokers, config.DefaultCheckpointTopic, 1, true); err != nil {
		t.Fatal(err)
	}
	e.conn, err = pgx.Connect(ctx, e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.conn.Close(context.Background()) })
	return e
}

// exec runs each statement, failing the test on an error.
func (e *relayEnv) exec(stmts ...string) {
	e.t.Helper()
	for _, s := range stmts {
		if _, err := e.conn.Exec(e.ctx, s); err != nil {
			e.t.Fatalf("%s: %v", s, err)
		}
	}
}

// tx runs the statements in one transaction.
func (e *relayEnv) tx(stmts ...string) {
	e.t.Helper()
	e.exec(append(append([]string{"BEGIN"}, stmts...), "COMMIT")...)
}

// topic creates a topic with a unique name and returns the name.
func (e *relayEnv) topic(prefix string, partitions int32, configs map[string]string) string {
	e.t.Helper()
	name := testenv.UniqueName(e.t, prefix)
	if err := testenv.CreateTopic(e.ctx, e.brokers, name, partitions, configs); err != nil {
		e.t.Fatalf("create topic %s: %v", name, err)
	}
	return name
}

// createTopic creates a topic with exactly this name.
func (e *relayEnv) createTopic(name string, partitions int32, configs map[string]string) {
	e.t.Helper()
	if err := testenv.CreateTopic(e.ctx, e.brokers, name, partitions, configs); err != nil {
		e.t.Fatalf("create topic %s: %v", name, err)
	}
}

// publish creates the publication of tables and the slot, as setup would.
func (e *relayEnv) publish(tables ...string) {
	e.t.Helper()
	e.exec(
		fmt.Sprintf("CREATE PUBLICATION cdcrelay_%s FOR TABLE %s", e.name, strings.Join(tables, ", ")),
		fmt.Sprintf("SELECT pg_create_logical_replication_slot('cdcrelay_%s', 'pgoutput')", e.name),
	)
}

// config is a relay.toml for this environment with the given [[mapping]]s.
func (e *relayEnv) config(mappings string) string {
	return fmt.Sprintf(`
[relay]
name = %q
log_level = "debug"

[postgres]
dsn = %q
status_interval = "1s"
idle_checkpoint_interval = "1s"

[kafka]
brokers = [%q]
request_timeout = "10s"
transaction_timeout = "30s"

[batch]
linger = "10ms"

%s
`, e.name, e.dsn, strings.Join(e.brokers, `", "`), mappings)
}

// writeConfig writes relay.toml text to a file and returns its path.
func (e *relayEnv) writeConfig(text string) string {
	e.t.Helper()
	path := filepath.Join(e.dir, fmt.Sprintf("relay-%d.toml", time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// running is an in-process relay.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
	log    *syncBuffer
}

// start runs relay.Run in-process with the relay.toml text until stop (or
// the end of the test).
func (e *relayEnv) start(toml string) *running {
	e.t.Helper()
	cfg, err := config.Parse("relay.toml", []byte(toml))
	if err != nil {
		e.t.Fatalf("config: %v\n%s", err, toml)
	}
	r := &running{done: make(chan struct{}), log: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	logger := slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() {
		defer close(r.done)
		r.err = relay.Run(ctx, cfg, relay.Options{Logger: logger})
	}()
	e.t.Cleanup(func() {
		r.stop()
		if e.t.Failed() {
			e.t.Logf("relay %s log:\n%s", e.name, tail(r.log.String(), 20000))
		}
	})
	return r
}

// stop cancels the relay and waits for Run to return its error.
func (r *running) stop() error {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(60 * time.Second):
		return errors.New("relay did not stop within 60s")
	}
	return r.err
}

// exited tells whether Run returned by itself.
func (r *running) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// read returns the committed records of topics: at least want, then nothing
// new for quiet.
func (e *relayEnv) read(topics []string, want int, quiet time.Duration) []e2e.Record {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
	defer cancel()
	var recs []e2e.Record
	var err error
	for attempt := 1; ; attempt++ {
		// A fresh consumer can meet metadata that lags a new topic's
		// leader election ("not the leader"): try again.
		recs, err = e2e.ReadCommitted(ctx, e.brokers, topics, want, quiet)
		if err == nil || attempt == 5 || ctx.Err() != nil || !strings.Contains(err.Error(), "leader") {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		e.t.Fatalf("read %v: %v", topics, err)
	}
	sort.SliceStable(recs, func(i, j int) bool {
		if recs[i].Topic != recs[j].Topic {
			return recs[i].Topic < recs[j].Topic
		}
		if recs[i].Partition != recs[j].Partition {
			return recs[i].Partition < recs[j].Partition
		}
		return recs[i].Offset < recs[j].Offset
	})
	return recs
}

// envelope is the json envelope of a table or changelog event.
type envelope struct {
	ID     string `json:"id"`
	Op     string `json:"op"`
	Type   string `json:"type"`
	Source struct {
		DB         string  `json:"db"`
		Schema     string  `json:"schema"`
		Table      string  `json:"table"`
		Changelog  string  `json:"changelog"`
		LSN        string  `json:"lsn"`
		Index      int     `json:"index"`
		TxID       int64   `json:"txid"`
		CommitTime *string `json:"commit_time"`
	} `json:"source"`
	Before         map[string]json.RawMessage `json:"before"`
	After          map[string]json.RawMessage `json:"after"`
	UnchangedToast []string                   `json:"unchanged_toast"`
}

func decodeEnvelope(t *testing.T, r e2e.Record) envelope {
	t.Helper()
	var env envelope
	if err := json.Unmarshal(r.Value, &env); err != nil {
		t.Fatalf("record %s/%d@%d: value is not a json envelope: %v\n%s", r.Topic, r.Partition, r.Offset, err, r.Value)
	}
	return env
}

// ---- golden types ----

// goldenTypeFile is one file of testdata/golden/types (format:
// testdata/golden/README.md); the field order is the files'.
type goldenTypeFile struct {
	Comment    string          `json:"comment,omitempty"`
	ColumnType string          `json:"column_type"`
	Setup      []string        `json:"setup,omitempty"`
	Type       json.RawMessage `json:"type"`
	Cases      []*goldenCase   `json:"cases"`
}

type goldenCase struct {
	SQL      string          `json:"sql,omitempty"`
	TimeZone string          `json:"timezone,omitempty"`
	Style    string          `json:"style,omitempty"`
	Null     bool            `json:"null,omitempty"`
	Text     *string         `json:"text,omitempty"`
	Want     json.RawMessage `json:"want,omitempty"`
	Error    string          `json:"error,omitempty"`
}

// writeGoldenTypeFile writes a golden type file as package mapping's golden
// test does: one case per line.
func writeGoldenTypeFile(f *goldenTypeFile) []byte {
	enc := func(v any) string {
		var buf bytes.Buffer
		e := json.NewEncoder(&buf)
		e.SetEscapeHTML(false)
		if err := e.Encode(v); err != nil {
			panic(err)
		}
		return strings.TrimSuffix(buf.String(), "\n")
	}
	var b bytes.Buffer
	b.WriteString("{\n")
	if f.Comment != "" {
		b.WriteString(`  "comment": ` + enc(f.Comment) + ",\n")
	}
	b.WriteString(`  "column_type": ` + enc(f.ColumnType) + ",\n")
	if len(f.Setup) > 0 {
		b.WriteString(`  "setup": ` + enc(f.Setup) + ",\n")
	}
	b.WriteString(`  "type": ` + compactJSON(f.Type) + ",\n")
	b.WriteString("  \"cases\": [\n")
	for i, c := range f.Cases {
		b.WriteString("    " + enc(c))
		if i < len(f.Cases)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString("  ]\n}\n")
	return b.Bytes()
}

func compactJSON(raw []byte) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}

// pinnedSession is what the relay's replication session sets (and what the
// golden files' "text" assume), for reading a value's text over SQL.
const pinnedSession = `SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; ` +
	`SET bytea_output = 'hex'; SET lc_monetary = 'C'; SET TimeZone = 'UTC'`

// TestE2EGoldenTypes inserts every SQL case of every golden type file into
// one wide table (a column per file, a row per case index) mapped with kind
// "table" and the json envelope, runs the relay, and compares each column of
// each event's "after" image with the case's "want". It also checks each
// case's "text" against the server's output under the session settings the
// relay pins (plus the case's TimeZone). -update rewrites "text" from the
// server and "want" from the events.
//
// It runs on every server of the test matrix (PostgreSQL 14 to 18) in
// parallel: every value must be encoded the same on each. -update rewrites
// from the main server only.
func TestE2EGoldenTypes(t *testing.T) {
	main := testenv.PostgresDSN(t)
	for _, srv := range testenv.PostgresMatrix(t) {
		if updateGolden() && srv.DSN != main {
			continue
		}
		t.Run(srv.Name(), func(t *testing.T) {
			t.Parallel()
			goldenTypesOn(t, srv.DSN, srv.DSN == main)
		})
	}
}

// goldenColumn is one golden type file as a column of the golden table.
type goldenColumn struct {
	name string
	path string
	f    *goldenTypeFile
}

// loadGoldenTable creates table name with a column c_<file> per golden type
// file (after every setup statement) and returns the columns and the row
// count (the most cases of any file). skip leaves a file out.
func loadGoldenTable(t *testing.T, e *relayEnv, name string, skip func(*goldenTypeFile) bool) ([]*goldenColumn, int) {
	t.Helper()
	paths, err := filepath.Glob("../testdata/golden/types/*.json")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no golden type files: %v", err)
	}
	var cols []*goldenColumn
	var setup []string
	seen := map[string]bool{}
	rows := 0
	hstore := true
	if _, err := e.conn.Exec(e.ctx, "CREATE EXTENSION IF NOT EXISTS hstore"); err != nil {
		hstore = false
		t.Logf("hstore is not available (%v): its column is skipped", err)
	}
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var f goldenTypeFile
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if !hstore && strings.Contains(f.ColumnType, "hstore") || skip != nil && skip(&f) {
			continue
		}
		for _, s := range f.Setup {
			if !seen[s] {
				seen[s] = true
				setup = append(setup, s)
			}
		}
		cols = append(cols, &goldenColumn{name: "c_" + strings.TrimSuffix(filepath.Base(p), ".json"), path: p, f: &f})
		rows = max(rows, len(f.Cases))
	}
	e.exec(setup...)
	var ddl strings.Builder
	ddl.WriteString("CREATE TABLE " + name + " (id int PRIMARY KEY")
	for _, c := range cols {
		fmt.Fprintf(&ddl, ", %s %s", c.name, c.f.ColumnType)
	}
	ddl.WriteString(")")
	e.exec(ddl.String())
	return cols, rows
}

func goldenTypesOn(t *testing.T, admin string, mainServer bool) {
	e := newRelayEnvOn(t, 4*time.Minute, admin)
	cols, rows := loadGoldenTable(t, e, "golden", nil)
	e.publish("golden")
	topic := e.topic("golden", 1, nil)
	e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.golden"
kind = "table"
topic = %q
envelope = "json"
`, topic)))

	// One row per case index; a file without an SQL case at that index
	// contributes NULL (not compared).
	for i := 0; i < rows; i++ {
		names, vals := []string{"id"}, []string{fmt.Sprint(i)}
		for _, c := range cols {
			if i < len(c.f.Cases) && c.f.Cases[i].SQL != "" {
				names = append(names, c.name)
				vals = append(vals, c.f.Cases[i].SQL)
			}
		}
		e.exec(fmt.Sprintf("INSERT INTO golden (%s) VALUES (%s)", strings.Join(names, ", "), strings.Join(vals, ", ")))
	}

	// The text each case's value has under the relay's session settings,
	// read over SQL (pgoutput runs the same output functions in the walsender).
	texts := map[string]map[int]*string{}
	{
		conn, err := pgx.Connect(e.ctx, e.dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(e.ctx, pinnedSession); err != nil {
			t.Fatal(err)
		}
		for _, c := range cols {
			texts[c.name] = map[int]*string{}
			for i, gc := range c.f.Cases {
				if gc.SQL == "" {
					continue
				}
				tz := "UTC"
				if gc.TimeZone != "" {
					tz = gc.TimeZone
				}
				if _, err := conn.Exec(e.ctx, "SELECT set_config('TimeZone', $1, false)", tz); err != nil {
					t.Fatal(err)
				}
				// The column's output function in text result format (a
				// ::text cast is not always the output function: bool, inet).
				res := conn.PgConn().ExecParams(e.ctx, fmt.Sprintf("SELECT %s FROM golden WHERE id = %d", c.name, i), nil, nil, nil, []int16{0}).Read()
				if res.Err != nil || len(res.Rows) != 1 {
					t.Fatalf("%s row %d: %v (%d rows)", c.name, i, res.Err, len(res.Rows))
				}
				if v := res.Rows[0][0]; v != nil {
					s := string(v)
					texts[c.name][i] = &s
				} else {
					texts[c.name][i] = nil
				}
			}
		}
	}

	recs := e.read([]string{topic}, rows, 3*time.Second)
	if len(recs) != rows {
		t.Fatalf("got %d events, want %d (one per row)", len(recs), rows)
	}
	afters := map[int]map[string]json.RawMessage{}
	for _, r := range recs {
		env := decodeEnvelope(t, r)
		if env.Op != "insert" || env.Source.Table != "golden" || env.Source.Schema != "public" {
			t.Errorf("event %s: op %q source %s.%s", r.Value[:min(len(r.Value), 200)], env.Op, env.Source.Schema, env.Source.Table)
		}
		var id int
		if err := json.Unmarshal(env.After["id"], &id); err != nil {
			t.Fatalf("after.id: %v in %s", err, r.Value)
		}
		if want := fmt.Sprintf(`{"id":%d}`, id); string(r.Key) != want {
			t.Errorf("row %d: key %s, want %s", id, r.Key, want)
		}
		afters[id] = env.After
	}
	compared := 0
	for _, c := range cols {
		changed := false
		for i, gc := range c.f.Cases {
			if gc.SQL == "" {
				continue
			}
			after, ok := afters[i]
			if !ok {
				t.Errorf("row %d: no event", i)
				continue
			}
			got, present := after[c.name]
			if !present {
				t.Errorf("%s case %d (%s): column missing from after", c.name, i, gc.SQL)
				continue
			}
			srvText := texts[c.name][i]
			if updateGolden() {
				if srvText == nil {
					gc.Text, gc.Null = nil, true
				} else {
					gc.Text, gc.Null = srvText, false
				}
				gc.Want, gc.Error = json.RawMessage(compactJSON(got)), ""
				changed = true
				continue
			}
			compared++
			switch {
			case gc.Null != (srvText == nil):
				t.Errorf("%s case %d (%s): server null=%v, golden null=%v", c.name, i, gc.SQL, srvText == nil, gc.Null)
			case srvText != nil && (gc.Text == nil || *gc.Text != *srvText) && gc.TimeZone != "" && !mainServer:
				// The golden text comes from the main server. Another build
				// may carry other time zone data (tzdata 2022b+ folded
				// Europe/Amsterdam's local mean time into Brussels), so a
				// historical local time prints differently; the event, in
				// UTC, must not differ (checked below).
				t.Logf("%s case %d (%s): server text %q under time zone %s, golden text %q (this build's tz data)", c.name, i, gc.SQL, *srvText, gc.TimeZone, deref(gc.Text))
			case srvText != nil && (gc.Text == nil || *gc.Text != *srvText):
				t.Errorf("%s case %d (%s): server text %q, golden text %q", c.name, i, gc.SQL, *srvText, deref(gc.Text))
			}
			if gc.Error != "" {
				t.Errorf("%s case %d (%s): golden expects error %q, but the pipeline delivered %s", c.name, i, gc.SQL, gc.Error, got)
				continue
			}
			if compactJSON(got) != compactJSON(gc.Want) {
				t.Errorf("%s case %d (%s):\n got %s\nwant %s", c.name, i, gc.SQL, got, gc.Want)
			}
		}
		if changed {
			if err := os.WriteFile(c.path, writeGoldenTypeFile(c.f), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("%d columns (types), %d rows, %d values compared through Postgres -> relay -> Kafka", len(cols), rows, compared)
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}
