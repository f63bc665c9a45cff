package mapping_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/relay"
)

// outboxInsert is an INSERT of one outbox row; aggID "" is NULL.
func outboxInsert(id, aggID, payload string) string {
	a := "NULL"
	if aggID != "" {
		a = "'" + aggID + "'"
	}
	return fmt.Sprintf(`INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('%s', 'order', %s, 'T', '%s')`, id, a, payload)
}

func auditInsert(id, newData string) string {
	return fmt.Sprintf(`INSERT INTO audit (id, table_name, op, new_data) VALUES (%s, 'public.orders', 'INSERT', '%s')`, id, newData)
}

const errorTablesDDL = `
CREATE TABLE outbox (id text PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text, type text, payload jsonb);
CREATE TABLE audit (id int PRIMARY KEY, table_name text NOT NULL, op text NOT NULL, old_data text, new_data text)`

// countBy counts records by a function of each record, and reports any
// value seen more than once.
func countBy(t *testing.T, what string, recs []e2e.Record, f func(e2e.Record) string) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, r := range recs {
		n[f(r)]++
	}
	for k, c := range n {
		if c != 1 {
			t.Errorf("%s %s published %d times, want exactly once", what, k, c)
		}
	}
	return n
}

func sortedKeys(m map[string]int) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// TestE2EDeadLetter: rows that cannot be mapped (a NULL key column; invalid
// JSON where the changelog needs JSON) and an event larger than its topic
// accepts (max.message.bytes = 2000) go to the dead-letter topic with their
// reason in headers; the rows around them, in the same and in other
// transactions, are delivered exactly once, also across a restart of the
// relay.
func TestE2EDeadLetter(t *testing.T) {
	e := newRelayEnv(t, 4*time.Minute)
	e.exec(errorTablesDDL)
	e.publish("outbox", "audit")
	events := e.topic("dl_events", 2, map[string]string{"max.message.bytes": "2000"})
	audit := e.topic("dl_audit", 1, nil)
	dlq := e.topic("dl_dlq", 1, nil)
	toml := e.config(fmt.Sprintf(`
[[mapping]]
table = "public.outbox"
kind = "outbox"
topic = %[1]q
on_error = "dead-letter"
dead_letter_topic = %[3]q

[[mapping]]
table = "public.audit"
kind = "changelog"
topic = %[2]q
on_error = "dead-letter"
dead_letter_topic = %[3]q
[mapping.changelog]
id_column = "id"
`, events, audit, dlq))
	r := e.start(toml)

	big := `{"blob": "` + strings.Repeat("x", 3000) + `"}`
	// Same transaction: good, unmappable (NULL key), good.
	e.tx(outboxInsert("a1", "k1", `{"n": 1}`), outboxInsert("a2", "", `{"n": 2}`), outboxInsert("a3", "k3", `{"n": 3}`))
	// Same transaction: good, oversized, good.
	e.tx(outboxInsert("a4", "k4", `{"n": 4}`), outboxInsert("a5", "k5", big), outboxInsert("a6", "k6", `{"n": 6}`))
	// Changelog: good, invalid JSON in new_data, good.
	e.tx(auditInsert("1", `{"id": 1}`), auditInsert("2", `{"id": 2,`), auditInsert("3", `{"id": 3}`))
	// Mixed, across both tables.
	e.tx(outboxInsert("a7", "k7", `{"n": 7}`), auditInsert("4", `not json`), auditInsert("5", `{"id": 5}`), outboxInsert("a8", "k8", big))
	e.exec(outboxInsert("a9", "k9", `{"n": 9}`))

	e.read([]string{events, audit, dlq}, 6+3+5, 2*time.Second)
	// Restart: nothing published twice, nothing lost.
	if err := r.stop(); err != nil {
		t.Fatalf("relay: %v", err)
	}
	e.tx(outboxInsert("b1", "k1", `{"n": 10}`), outboxInsert("b2", "", `{}`))
	r = e.start(toml)
	e.exec(outboxInsert("b3", "k3", `{"n": 11}`), auditInsert("6", `{"id": 6}`))

	recs := e.read([]string{events, audit, dlq}, 8+4+6, 3*time.Second)
	var ev, au, dl []e2e.Record
	for _, rec := range recs {
		switch rec.Topic {
		case events:
			ev = append(ev, rec)
		case audit:
			au = append(au, rec)
		case dlq:
			dl = append(dl, rec)
		}
	}
	got := countBy(t, "outbox event", ev, func(r e2e.Record) string { return r.Headers["id"] })
	if want := []string{"a1", "a3", "a4", "a6", "a7", "a9", "b1", "b3"}; !equalStrings(sortedKeys(got), want) {
		t.Errorf("outbox events %v, want %v", sortedKeys(got), want)
	}
	gotAudit := countBy(t, "audit event", au, func(r e2e.Record) string {
		var env struct{ ID string }
		json.Unmarshal(r.Value, &env)
		return env.ID
	})
	if want := []string{"1", "3", "5", "6"}; !equalStrings(sortedKeys(gotAudit), want) {
		t.Errorf("audit events %v, want %v", sortedKeys(gotAudit), want)
	}

	// Dead letters: the row errors carry the row; the oversized ones a
	// small record naming the event.
	type dead struct{ reason, table, column, key string }
	wantDead := map[string]dead{
		"a2": {"NULL", "public.outbox", "aggregateid", ""},
		"b2": {"NULL", "public.outbox", "aggregateid", ""},
		"a5": {"exceeds the limit of 2000 bytes", "public.outbox", "", "k5"},
		"a8": {"exceeds the limit of 2000 bytes", "public.outbox", "", "k8"},
		"2":  {"JSON", "public.audit", "new_data", ""},
		"4":  {"JSON", "public.audit", "new_data", ""},
	}
	lsnRe := regexp.MustCompile(`^[0-9A-F]+/[0-9A-F]+$`)
	gotDead := countBy(t, "dead letter", dl, func(r e2e.Record) string {
		if id := r.Headers["cdcrelay.event_id"]; id != "" {
			return id
		}
		var v struct {
			After map[string]*string `json:"after"`
		}
		if err := json.Unmarshal(r.Value, &v); err != nil || v.After["id"] == nil {
			t.Errorf("dead letter %s: no row id (%v)", r.Value, err)
			return "?"
		}
		return *v.After["id"]
	})
	if want := []string{"2", "4", "a2", "a5", "a8", "b2"}; !equalStrings(sortedKeys(gotDead), want) {
		t.Errorf("dead letters %v, want %v", sortedKeys(gotDead), want)
	}
	for _, rec := range dl {
		id := rec.Headers["cdcrelay.event_id"]
		if id == "" {
			var v struct {
				After map[string]*string `json:"after"`
			}
			json.Unmarshal(rec.Value, &v)
			if v.After["id"] != nil {
				id = *v.After["id"]
			}
		}
		w, ok := wantDead[id]
		if !ok {
			continue
		}
		h := rec.Headers
		t.Logf("dead letter %s: headers %v value %.300s", id, h, rec.Value)
		if !strings.Contains(h["cdcrelay.reason"], w.reason) {
			t.Errorf("dead letter %s: reason %q, want it to mention %q", id, h["cdcrelay.reason"], w.reason)
		}
		if h["cdcrelay.table"] != w.table || !lsnRe.MatchString(h["cdcrelay.lsn"]) || h["cdcrelay.op"] != "insert" {
			t.Errorf("dead letter %s: table %q lsn %q op %q", id, h["cdcrelay.table"], h["cdcrelay.lsn"], h["cdcrelay.op"])
		}
		if w.column != "" && h["cdcrelay.column"] != w.column {
			t.Errorf("dead letter %s: column %q, want %q", id, h["cdcrelay.column"], w.column)
		}
		if w.key != "" {
			if h["cdcrelay.topic"] != events || h["cdcrelay.key"] != w.key || h["cdcrelay.limit"] == "" || h["cdcrelay.size"] == "" {
				t.Errorf("dead letter %s: oversized headers %v", id, h)
			}
			if len(rec.Value) > 2000 {
				t.Errorf("dead letter %s: %d bytes, carries the oversized value", id, len(rec.Value))
			}
		}
		if len(rec.Value) == 0 || !json.Valid(rec.Value) {
			t.Errorf("dead letter %s: value is not JSON: %s", id, rec.Value)
		}
	}
}

func equalStrings(a, b []string) bool {
	return strings.Join(a, ",") == strings.Join(b, ",")
}

// TestE2EOnErrorStop: with on_error = "stop" an unmappable row stops the
// relay (the binary exits non-zero) with a message naming the table, the LSN
// and the column; nothing after the row is published. After switching the
// mapping to dead-letter and restarting, every row is delivered exactly once
// and the bad row is in the dead-letter topic.
func TestE2EOnErrorStop(t *testing.T) {
	e := newRelayEnv(t, 4*time.Minute)
	bin, err := e2e.Binary()
	if err != nil {
		t.Fatal(err)
	}
	e.exec(errorTablesDDL)
	e.publish("outbox")
	events := e.topic("stop_events", 1, nil)
	dlq := e.topic("stop_dlq", 1, nil)
	mappingFor := func(onError string) string {
		return e.config(fmt.Sprintf(`
[[mapping]]
table = "public.outbox"
kind = "outbox"
topic = %q
on_error = %q
dead_letter_topic = %q
`, events, onError, dlq))
	}
	// dead_letter_topic is only allowed with dead-letter: leave it out for stop.
	stopCfg := e.writeConfig(strings.Replace(mappingFor("stop"), fmt.Sprintf("dead_letter_topic = %q\n", dlq), "", 1))

	e.exec(outboxInsert("c1", "k1", `{"n": 1}`))
	e.tx(outboxInsert("c2", "k2", `{"n": 2}`), outboxInsert("c3", "", `{"n": 3}`), outboxInsert("c4", "k4", `{"n": 4}`))
	e.exec(outboxInsert("c5", "k5", `{"n": 5}`))

	p, err := e2e.Start(bin, filepath.Join(e.dir, "stop.log"), "run", "--config", stopCfg)
	if err != nil {
		t.Fatal(err)
	}
	code, err := p.Wait(60 * time.Second)
	if err != nil {
		p.Kill()
		t.Fatalf("relay did not stop on the bad row: %v\n%s", err, p.Output())
	}
	out := p.Output()
	t.Logf("exit %d; output:\n%s", code, tail(out, 3000))
	if code == 0 {
		t.Errorf("exit code 0 after an unmappable row with on_error = stop")
	}
	for _, want := range []string{"public.outbox", `"aggregateid"`, "lsn "} {
		if !strings.Contains(out, want) {
			t.Errorf("the stop message does not name %s", want)
		}
	}
	if !regexp.MustCompile(`lsn [0-9A-F]+/[0-9A-F]+`).MatchString(out) {
		t.Errorf("the stop message has no LSN")
	}
	// Nothing from or after the bad transaction is published (c1, before
	// it, may or may not be: it can share the Kafka transaction that the
	// stop discarded).
	recs := e.read([]string{events}, 0, 2*time.Second)
	for _, r := range recs {
		if id := r.Headers["id"]; id != "c1" {
			t.Errorf("event %s published although the relay stopped before it", id)
		}
	}

	// The operator switches to dead-letter and restarts: nothing is lost.
	p, err = e2e.Start(bin, filepath.Join(e.dir, "fixed.log"), "run", "--config", e.writeConfig(mappingFor("dead-letter")))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(10 * time.Second)
	e.exec(outboxInsert("c6", "k6", `{"n": 6}`))
	recs = e.read([]string{events, dlq}, 6, 3*time.Second)
	var ids []string
	for _, r := range recs {
		if r.Topic == events {
			ids = append(ids, r.Headers["id"])
		} else {
			if r.Headers["cdcrelay.column"] != "aggregateid" || r.Headers["cdcrelay.table"] != "public.outbox" {
				t.Errorf("dead letter headers %v", r.Headers)
			}
			ids = append(ids, "dlq:"+r.Headers["cdcrelay.table"])
		}
	}
	sort.Strings(ids)
	if want := []string{"c1", "c2", "c4", "c5", "c6", "dlq:public.outbox"}; !equalStrings(ids, want) {
		t.Errorf("after the restart: %v, want %v\n%s", ids, want, p.Output())
	}
}

// TestE2ESchemaChange: ALTER TABLE while the relay runs. ADD COLUMN shows in
// the next event, DROP COLUMN is gone from it, a type change re-encodes the
// column; dropping the key column breaks the mapping and follows on_error:
// dead-letter for one table, stop (relay.Run returns an error naming table
// and column) for the other.
func TestE2ESchemaChange(t *testing.T) {
	e := newRelayEnv(t, 4*time.Minute)
	e.exec(
		`CREATE TABLE items (id int PRIMARY KEY, name text, qty int)`,
		`CREATE TABLE strict_items (id int PRIMARY KEY, name text)`,
	)
	e.publish("items", "strict_items")
	topic := e.topic("schema_items", 1, nil)
	strictTopic := e.topic("schema_strict", 1, nil)
	dlq := e.topic("schema_dlq", 1, nil)
	r := e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.items"
kind = "table"
topic = %q
on_error = "dead-letter"
dead_letter_topic = %q
[mapping.rows]
key_columns = ["id"]

[[mapping]]
table = "public.strict_items"
kind = "table"
topic = %q
[mapping.rows]
key_columns = ["id"]
`, topic, dlq, strictTopic)))

	after := func(n int) []map[string]json.RawMessage {
		t.Helper()
		recs := e.read([]string{topic}, n, 2*time.Second)
		if len(recs) != n {
			t.Fatalf("%d events, want %d", len(recs), n)
		}
		var out []map[string]json.RawMessage
		for _, rec := range recs {
			out = append(out, decodeEnvelope(t, rec).After)
		}
		return out
	}
	cols := func(m map[string]json.RawMessage) string {
		var s []string
		for k, v := range m {
			s = append(s, k+"="+string(v))
		}
		sort.Strings(s)
		return strings.Join(s, " ")
	}
	e.exec(`INSERT INTO items VALUES (1, 'a', 5)`)
	if got := cols(after(1)[0]); got != `id=1 name="a" qty=5` {
		t.Errorf("before any ALTER: %s", got)
	}
	e.exec(`ALTER TABLE items ADD COLUMN email text DEFAULT 'x@example.com'`, `INSERT INTO items VALUES (2, 'b', 6, 'b@example.com')`)
	if got := cols(after(2)[1]); got != `email="b@example.com" id=2 name="b" qty=6` {
		t.Errorf("after ADD COLUMN: %s", got)
	}
	e.exec(`ALTER TABLE items DROP COLUMN name`, `INSERT INTO items (id, qty, email) VALUES (3, 7, 'c@example.com')`)
	if got := cols(after(3)[2]); got != `email="c@example.com" id=3 qty=7` {
		t.Errorf("after DROP COLUMN: %s", got)
	}
	e.exec(`ALTER TABLE items ALTER COLUMN qty TYPE numeric(10,2)`, `INSERT INTO items VALUES (4, 8.5, 'd@example.com')`)
	if got := cols(after(4)[3]); got != `email="d@example.com" id=4 qty="8.50"` {
		t.Errorf("after ALTER COLUMN TYPE numeric: %s", got)
	}
	// An update of an old row under the new schema.
	e.exec(`UPDATE items SET qty = 1 WHERE id = 1`)
	if got := cols(after(5)[4]); got != `email="x@example.com" id=1 qty="1.00"` {
		t.Errorf("update after the ALTERs: %s", got)
	}

	// Drop the key column: the mapping's key_columns names a column that is
	// gone. dead-letter: the row goes there, the relay goes on.
	e.exec(`ALTER TABLE items DROP COLUMN id`, `INSERT INTO items (qty, email) VALUES (9, 'e@example.com')`)
	e.exec(`ALTER TABLE items ADD COLUMN id int`, `INSERT INTO items (id, qty, email) VALUES (6, 10, 'f@example.com')`)
	recs := e.read([]string{dlq}, 1, 2*time.Second)
	if len(recs) != 1 {
		t.Fatalf("%d dead letters after dropping the key column, want 1", len(recs))
	}
	t.Logf("dead letter after DROP COLUMN id: %v %s", recs[0].Headers, recs[0].Value)
	if h := recs[0].Headers; h["cdcrelay.table"] != "public.items" || h["cdcrelay.column"] != "id" {
		t.Errorf("dead letter headers %v, want table public.items, column id", h)
	}
	if got := cols(after(6)[5]); got != `email="f@example.com" id=6 qty="10.00"` {
		t.Errorf("after re-adding the key column: %s", got)
	}

	// stop: the relay ends with an error naming the table and column.
	e.exec(`INSERT INTO strict_items VALUES (1, 'a')`)
	if n := len(e.read([]string{strictTopic}, 1, time.Second)); n != 1 {
		t.Fatalf("strict_items: %d events before the ALTER", n)
	}
	e.exec(`ALTER TABLE strict_items DROP COLUMN id`, `INSERT INTO strict_items (name) VALUES ('b')`)
	select {
	case <-r.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the relay did not stop after the key column of an on_error = stop mapping was dropped")
	}
	var fe *relay.FatalError
	if r.err == nil || !errors.As(r.err, &fe) {
		t.Fatalf("relay.Run returned %v, want a FatalError", r.err)
	}
	msg := r.err.Error()
	t.Logf("stop message: %s", msg)
	if !strings.Contains(msg, "public.strict_items") || !strings.Contains(msg, `"id"`) || !regexp.MustCompile(`lsn [0-9A-F]+/[0-9A-F]+`).MatchString(msg) {
		t.Errorf("stop message %q does not name table, column and LSN", msg)
	}
	if n := len(e.read([]string{strictTopic}, 1, time.Second)); n != 1 {
		t.Errorf("strict_items: %d events, want 1 (nothing after the breaking change)", n)
	}
}

// TestE2ESmallEventsOnASmallTopic: many events that each fit a topic with
// max.message.bytes = 2000, published in one transaction to one partition.
// The broker checks max.message.bytes against a whole record batch, so the
// producer must not batch them beyond the topic's limit: all are delivered,
// none is dead-lettered, the relay does not get stuck retrying.
//
// FAILS today (a sink bug, see the report): sarama fills a partition's
// record batch up to Producer.MaxMessageBytes (1 MB) whatever the topic's
// max.message.bytes; the broker refuses the batch with MESSAGE_TOO_LARGE, the
// session fails, and every retry fails the same way: the relay is stuck.
func TestE2ESmallEventsOnASmallTopic(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(errorTablesDDL)
	e.publish("outbox")
	events := e.topic("small_events", 1, map[string]string{"max.message.bytes": "2000"})
	dlq := e.topic("small_dlq", 1, nil)
	r := e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.outbox"
kind = "outbox"
topic = %q
on_error = "dead-letter"
dead_letter_topic = %q
`, events, dlq)))
	payload := `{"text": "` + strings.Repeat("y", 400) + `"}`
	var stmts []string
	for i := 0; i < 50; i++ {
		stmts = append(stmts, outboxInsert(fmt.Sprintf("s%02d", i), "same-key", payload))
	}
	e.tx(stmts...)
	recs := e.read([]string{events, dlq}, 50, 3*time.Second)
	n := map[string]int{}
	for _, rec := range recs {
		n[rec.Topic]++
	}
	if n[events] != 50 || n[dlq] != 0 {
		t.Errorf("%d events, %d dead letters; want 50 and 0", n[events], n[dlq])
		if strings.Contains(r.log.String(), "MESSAGE_TOO_LARGE") || strings.Contains(r.log.String(), "too large") {
			t.Errorf("the broker refused a batch of events that each fit the topic: the producer batches beyond max.message.bytes")
		}
	}
}

// TestE2ELargeTransactionWithDeadLettersAcrossRestart: one Postgres
// transaction of 3000 outbox rows, every 100th unmappable, is cut into many
// Kafka transactions (batch.max_events = 50); the relay is stopped in the
// middle of it and started again. Every good row is published exactly once
// and every bad row dead-lettered exactly once.
func TestE2ELargeTransactionWithDeadLettersAcrossRestart(t *testing.T) {
	e := newRelayEnv(t, 4*time.Minute)
	e.exec(errorTablesDDL)
	e.publish("outbox")
	events := e.topic("big_events", 3, nil)
	dlq := e.topic("big_dlq", 1, nil)
	toml := strings.Replace(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.outbox"
kind = "outbox"
topic = %q
on_error = "dead-letter"
dead_letter_topic = %q
`, events, dlq)), `linger = "10ms"`, "linger = \"10ms\"\nmax_events = 50", 1)
	const rows = 3000
	e.exec(fmt.Sprintf(`INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
		SELECT 'r' || g, 'order', CASE WHEN g %% 100 = 0 THEN NULL ELSE 'k' || (g %% 7) END, 'T', json_build_object('g', g)
		FROM generate_series(1, %d) g`, rows))
	r := e.start(toml)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && strings.Count(r.log.String(), "msg=committed") < 5 {
		time.Sleep(5 * time.Millisecond)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	commits := strings.Count(r.log.String(), "msg=committed")
	t.Logf("stopped after %d Kafka transactions", commits)
	r = e.start(toml)
	recs := e.read([]string{events, dlq}, rows, 3*time.Second)
	var ev, dl []e2e.Record
	for _, rec := range recs {
		if rec.Topic == events {
			ev = append(ev, rec)
		} else {
			dl = append(dl, rec)
		}
	}
	got := countBy(t, "event", ev, func(r e2e.Record) string { return r.Headers["id"] })
	gotDead := countBy(t, "dead letter", dl, func(r e2e.Record) string {
		var v struct {
			After map[string]*string `json:"after"`
		}
		json.Unmarshal(r.Value, &v)
		if v.After["id"] == nil {
			return "?"
		}
		return *v.After["id"]
	})
	if len(got) != rows-rows/100 || len(gotDead) != rows/100 {
		t.Errorf("%d distinct events (want %d), %d distinct dead letters (want %d)", len(got), rows-rows/100, len(gotDead), rows/100)
	}
	if !strings.Contains(r.log.String(), "resuming from kafka checkpoint") {
		t.Errorf("the second run did not resume from a checkpoint")
	}
	// Per key, in order.
	last := map[string]int{}
	for _, rec := range ev {
		var p struct{ G int }
		json.Unmarshal(rec.Value, &p)
		k := string(rec.Key)
		if p.G <= last[k] {
			t.Errorf("key %s: g=%d after g=%d", k, p.G, last[k])
		}
		last[k] = p.G
	}
}

// TestE2EOversizedStop: with on_error = "stop", an event larger than its
// topic accepts stops the relay with a message naming table, LSN and size;
// nothing of its transaction is published.
func TestE2EOversizedStop(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(errorTablesDDL)
	e.publish("outbox")
	events := e.topic("ostop_events", 1, map[string]string{"max.message.bytes": "2000"})
	r := e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.outbox"
kind = "outbox"
topic = %q
`, events)))
	e.exec(outboxInsert("o1", "k1", `{"n": 1}`))
	if n := len(e.read([]string{events}, 1, time.Second)); n != 1 {
		t.Fatalf("%d events before the oversized row", n)
	}
	e.tx(outboxInsert("o2", "k2", `{"n": 2}`), outboxInsert("o3", "k3", `{"blob": "`+strings.Repeat("z", 3000)+`"}`))
	select {
	case <-r.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the relay did not stop on an oversized event with on_error = stop")
	}
	msg := fmt.Sprint(r.err)
	t.Logf("stop message: %s", msg)
	if !strings.Contains(msg, "public.outbox") || !regexp.MustCompile(`lsn [0-9A-F]+/[0-9A-F]+`).MatchString(msg) || !strings.Contains(msg, "2000") {
		t.Errorf("stop message %q does not name table, LSN and limit", msg)
	}
	for _, rec := range e.read([]string{events}, 1, time.Second) {
		if rec.Headers["id"] != "o1" {
			t.Errorf("event %s published from the stopped transaction", rec.Headers["id"])
		}
	}
}

// TestE2ESchemaChangeNewTypes: types created while the relay runs (an enum,
// a domain, an array of the enum) used by columns added while it runs, an
// enum value added, and a column renamed: the next events follow.
func TestE2ESchemaChangeNewTypes(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(`CREATE TABLE items (id int PRIMARY KEY, name text)`)
	e.publish("items")
	topic := e.topic("newtypes", 1, nil)
	e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.items"
kind = "table"
topic = %q
`, topic)))
	e.exec(`INSERT INTO items VALUES (1, 'a')`)
	e.read([]string{topic}, 1, time.Second)
	e.exec(
		`CREATE TYPE status AS ENUM ('new', 'paid')`,
		`CREATE DOMAIN cents AS bigint CHECK (VALUE >= 0)`,
		`ALTER TABLE items ADD COLUMN s status, ADD COLUMN price cents, ADD COLUMN history status[], ADD COLUMN total numeric(12,2)`,
		`INSERT INTO items VALUES (2, 'b', 'paid', 250, '{new,paid}', 2.5)`,
		`ALTER TYPE status ADD VALUE 'shipped'`,
		`INSERT INTO items VALUES (3, 'c', 'shipped', 0, '{new,NULL,shipped}', NULL)`,
		`ALTER TABLE items RENAME COLUMN name TO title`,
		`ALTER TABLE items ALTER COLUMN total TYPE float8`,
		`INSERT INTO items VALUES (4, 'd', 'new', 1, '{}', 0.1)`,
	)
	recs := e.read([]string{topic}, 4, 2*time.Second)
	want := []string{
		`{"id":1,"name":"a"}`,
		`{"id":2,"name":"b","s":"paid","price":250,"history":["new","paid"],"total":"2.50"}`,
		`{"id":3,"name":"c","s":"shipped","price":0,"history":["new",null,"shipped"],"total":null}`,
		`{"id":4,"title":"d","s":"new","price":1,"history":[],"total":0.1}`,
	}
	if len(recs) != len(want) {
		t.Fatalf("%d events, want %d", len(recs), len(want))
	}
	for i, r := range recs {
		// The after image in column order, as the relay wrote it.
		var raw struct {
			After json.RawMessage `json:"after"`
		}
		json.Unmarshal(r.Value, &raw)
		if got := compactJSON(raw.After); got != want[i] {
			t.Errorf("event %d:\n got %s\nwant %s", i, got, want[i])
		}
	}
}

// TestE2EReplicaIdentityFullWhileRunning: `cdcrelay check` advises
// ALTER TABLE ... REPLICA IDENTITY FULL for complete before images. Done on a
// running relay whose mapping takes the default key, the mapping keeps the
// primary key as the key (FULL marks every column as a replica identity
// column; the primary key is still the row's identity) and before images
// become complete. No restart, no row error.
func TestE2EReplicaIdentityFullWhileRunning(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(`CREATE TABLE items (id int PRIMARY KEY, name text, qty int)`)
	e.publish("items")
	topic := e.topic("rifull", 1, nil)
	r := e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.items"
kind = "table"
topic = %q
`, topic)))
	e.exec(`INSERT INTO items VALUES (1, 'a', 1)`, `UPDATE items SET qty = 2 WHERE id = 1`)
	e.exec(`ALTER TABLE items REPLICA IDENTITY FULL`)
	e.exec(`UPDATE items SET qty = 3 WHERE id = 1`, `DELETE FROM items WHERE id = 1`)
	recs := e.read([]string{topic}, 5, 2*time.Second)
	if r.exited() {
		t.Fatalf("the relay stopped after REPLICA IDENTITY FULL: %v", r.err)
	}
	type row struct{ key, op, before string }
	var got []row
	for _, rec := range recs {
		x := row{key: string(rec.Key)}
		if rec.Value != nil {
			env := decodeEnvelope(t, rec)
			b, _ := json.Marshal(env.Before)
			x.op, x.before = env.Op, string(b)
		}
		got = append(got, x)
	}
	want := []row{
		{`{"id":1}`, "insert", "null"},
		{`{"id":1}`, "update", "null"},
		{`{"id":1}`, "update", `{"id":1,"name":"a","qty":2}`},
		{`{"id":1}`, "delete", `{"id":1,"name":"a","qty":3}`},
		{`{"id":1}`, "", ""},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("events\n got %v\nwant %v", got, want)
	}
}

// TestE2EInvalidTopicFromRow: the outbox's default topic template
// outbox.event.{aggregatetype} meets an aggregate type that makes no valid
// Kafka topic name ("Order Items!"). That is a row error (here: a dead
// letter naming the column), not a produce failure that the relay would
// retry forever; the rows around it are delivered.
func TestE2EInvalidTopicFromRow(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(errorTablesDDL)
	e.publish("outbox")
	suffix := e.name[len(e.name)-6:]
	good := "outbox.event.ok" + suffix
	e.createTopic(good, 1, nil)
	dlq := e.topic("badtopic_dlq", 1, nil)
	r := e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.outbox"
kind = "outbox"
on_error = "dead-letter"
dead_letter_topic = %q
`, dlq)))
	ins := func(id, aggType string) string {
		return fmt.Sprintf(`INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('%s', '%s', 'k', 'T', '{}')`, id, aggType)
	}
	e.tx(ins("i1", "ok"+suffix), ins("i2", "Order Items!"), ins("i3", "ok"+suffix))
	recs := e.read([]string{good, dlq}, 3, 2*time.Second)
	var got []string
	for _, rec := range recs {
		if rec.Topic == good {
			got = append(got, rec.Headers["id"])
		} else {
			t.Logf("dead letter: %v", rec.Headers)
			if rec.Headers["cdcrelay.column"] != "aggregatetype" || !strings.Contains(rec.Headers["cdcrelay.reason"], "topic") {
				t.Errorf("dead letter headers %v", rec.Headers)
			}
			got = append(got, "dlq")
		}
	}
	sort.Strings(got)
	if strings.Join(got, " ") != "dlq i1 i3" {
		t.Errorf("records %v, want i1, i3 and a dead letter; relay log:\n%s", got, tail(r.log.String(), 3000))
	}
}
