package mapping_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/testenv"
)

// TestE2ETableKeysAndTombstones: a business table with the json envelope and
// defaults: the key is the primary key as a JSON object; an update that
// changes the key is preceded by a tombstone for the old key; a delete is
// followed by a tombstone; truncate is an event without key when asked for.
func TestE2ETableKeysAndTombstones(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(`CREATE TABLE orders (region text, id int, total numeric(10,2), note text, PRIMARY KEY (region, id))`)
	e.publish("orders")
	topic := e.topic("orders", 3, nil)
	e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.orders"
kind = "table"
topic = %q
headers = { region = "{region}", what = "{schema}.{table}.{op}" }
[mapping.rows]
ops = ["insert", "update", "delete", "truncate"]
exclude_columns = ["note"]
`, topic)))
	e.exec(`INSERT INTO orders VALUES ('eu', 1, 9.90, 'secret')`)
	e.exec(`UPDATE orders SET total = 10 WHERE id = 1`)
	e.exec(`UPDATE orders SET id = 2 WHERE id = 1`)
	e.exec(`DELETE FROM orders WHERE id = 2`)
	e.exec(`TRUNCATE orders`)

	recs := e.read([]string{topic}, 7, 3*time.Second)
	// Records of one key are on one partition, in order; the truncate has no
	// key. Put them in source order by the event id (lsn:index) and
	// tombstones right after/before their event, as published: read them
	// per partition and merge by offset within the key's partition.
	type ev struct {
		key, op, before, after, what, region string
		tomb                                 bool
	}
	byKey := map[string][]ev{}
	for _, r := range recs {
		x := ev{key: string(r.Key), what: r.Headers["what"], region: r.Headers["region"]}
		if r.Value == nil {
			x.tomb = true
		} else {
			env := decodeEnvelope(t, r)
			x.op = env.Op
			b, _ := json.Marshal(env.Before)
			a, _ := json.Marshal(env.After)
			x.before, x.after = string(b), string(a)
			if strings.Contains(string(r.Value), "secret") {
				t.Errorf("excluded column in %s", r.Value)
			}
		}
		byKey[x.key] = append(byKey[x.key], x)
	}
	want := map[string][]ev{
		`{"region":"eu","id":1}`: {
			{op: "insert", before: "null", after: `{"id":1,"region":"eu","total":"9.90"}`, what: "public.orders.insert", region: "eu"},
			{op: "update", before: "null", after: `{"id":1,"region":"eu","total":"10.00"}`, what: "public.orders.update", region: "eu"},
			{tomb: true},
		},
		`{"region":"eu","id":2}`: {
			{op: "update", before: `{"id":1,"region":"eu"}`, after: `{"id":2,"region":"eu","total":"10.00"}`, what: "public.orders.update", region: "eu"},
			{op: "delete", before: `{"id":2,"region":"eu"}`, after: "null", what: "public.orders.delete", region: "eu"},
			{tomb: true},
		},
		"": {{op: "truncate", before: "null", after: "null", what: "public.orders.truncate"}},
	}
	for k := range want {
		for i := range want[k] {
			want[k][i].key = k
		}
	}
	if !reflect.DeepEqual(byKey, want) {
		t.Errorf("events by key:\n got %+v\nwant %+v", byKey, want)
		for _, r := range recs {
			t.Logf("p%d@%d key %s headers %v value %s", r.Partition, r.Offset, r.Key, r.Headers, r.Value)
		}
	}
}

// TestE2ECloudEvents: the CloudEvents envelopes through the real pipeline:
// binary mode (ce_* headers, the data as value) for an outbox and structured
// mode (one JSON document) for a table.
func TestE2ECloudEvents(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(
		`CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype text, aggregateid text, type text, payload jsonb, created_at timestamptz)`,
		`CREATE TABLE items (id int PRIMARY KEY, name text)`,
	)
	e.publish("outbox", "items")
	tOutbox := e.topic("ce_outbox", 1, nil)
	tItems := e.topic("ce_items", 1, nil)
	e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.outbox"
kind = "outbox"
topic = %q
envelope = "cloudevents-binary"
[mapping.outbox]
timestamp_column = "created_at"
[mapping.cloudevents]
source = "/shop/{aggregatetype}"

[[mapping]]
table = "public.items"
kind = "table"
topic = %q
envelope = "cloudevents-structured"
`, tOutbox, tItems)))
	e.exec(`INSERT INTO outbox VALUES ('9d3c2b1a-0f9e-4d8c-b7a6-5f4e3d2c1b0a', 'Order', '42', 'OrderCreated', '{"id": 42}', '2024-01-02 03:04:05.25+00')`)
	e.exec(`INSERT INTO items VALUES (1, 'pen')`)

	recs := e.read([]string{tOutbox, tItems}, 2, 2*time.Second)
	if len(recs) != 2 {
		t.Fatalf("%d records", len(recs))
	}
	for _, r := range recs {
		switch r.Topic {
		case tOutbox:
			want := map[string]string{
				"ce_specversion": "1.0", "ce_id": "9d3c2b1a-0f9e-4d8c-b7a6-5f4e3d2c1b0a", "ce_source": "/shop/Order",
				"ce_type": "OrderCreated", "ce_time": "2024-01-02T03:04:05.25Z", "content-type": "application/json",
				"id": "9d3c2b1a-0f9e-4d8c-b7a6-5f4e3d2c1b0a", "type": "OrderCreated",
			}
			if !reflect.DeepEqual(r.Headers, want) {
				t.Errorf("binary mode headers\n got %v\nwant %v", r.Headers, want)
			}
			if string(r.Value) != `{"id": 42}` || string(r.Key) != "42" {
				t.Errorf("binary mode key %s value %s", r.Key, r.Value)
			}
		case tItems:
			if r.Headers["content-type"] != "application/cloudevents+json; charset=utf-8" {
				t.Errorf("structured mode headers %v", r.Headers)
			}
			var ce map[string]json.RawMessage
			if err := json.Unmarshal(r.Value, &ce); err != nil {
				t.Fatalf("structured value %s: %v", r.Value, err)
			}
			str := func(k string) string {
				var s string
				json.Unmarshal(ce[k], &s)
				return s
			}
			if str("specversion") != "1.0" || str("type") != "public.items.insert" || str("source") != "/cdcrelay/"+e.db+"/public/items" ||
				str("datacontenttype") != "application/json" || !regexp.MustCompile(`^[0-9A-F]+/[0-9A-F]+:0$`).MatchString(str("id")) {
				t.Errorf("structured event %s", r.Value)
			}
			if _, err := time.Parse(time.RFC3339Nano, str("time")); err != nil {
				t.Errorf("structured time %q: %v", str("time"), err)
			}
			var data envelope
			if err := json.Unmarshal(ce["data"], &data); err != nil || string(data.After["name"]) != `"pen"` || data.ID != str("id") {
				t.Errorf("structured data %s (%v)", ce["data"], err)
			}
		}
	}
}

// TestE2EEventIDsAreStable: the event id is derived from the change's
// position in the WAL, so two relays reading the same changes (two slots)
// publish the same ids: a consumer can deduplicate on it, also after a
// relay restart re-publishes a transaction.
func TestE2EEventIDsAreStable(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(`CREATE TABLE items (id int PRIMARY KEY, name text)`)
	e.publish("items")
	// A second relay on the same database: its own name, slot, publication.
	first := e.name
	e2 := *e
	e2.name = first + "b"
	e2.publish("items")
	t1 := e.topic("ids_a", 1, nil)
	t2 := e.topic("ids_b", 1, nil)
	m := `
[[mapping]]
table = "public.items"
kind = "table"
topic = %q
`
	e.start(e.config(fmt.Sprintf(m, t1)))
	e2.start(e2.config(fmt.Sprintf(m, t2)))
	e.tx(`INSERT INTO items VALUES (1, 'a')`, `INSERT INTO items VALUES (2, 'b')`, `UPDATE items SET name = 'c' WHERE id = 1`)
	e.exec(`DELETE FROM items WHERE id = 2`)
	ids := func(topic string) []string {
		var out []string
		for _, r := range e.read([]string{topic}, 5, 2*time.Second) {
			if r.Value != nil {
				out = append(out, decodeEnvelope(t, r).ID)
			}
		}
		return out
	}
	a, b := ids(t1), ids(t2)
	if len(a) != 4 || !reflect.DeepEqual(a, b) {
		t.Errorf("event ids of two relays differ:\n%v\n%v", a, b)
	}
	seen := map[string]bool{}
	for _, id := range a {
		if seen[id] {
			t.Errorf("id %s used twice", id)
		}
		seen[id] = true
	}
}

// TestE2EStartRejectsMissingTemplateColumn: "a template that names a missing
// column is a configuration error at start, not a runtime surprise" (issue 4).
// mapping.Mapper.CheckRelation finds it from the live schema, but neither
// the daemon (relay.Run) nor `cdcrelay check` calls it: the relay starts,
// and every row becomes a row error (here: dead letters) instead.
func TestE2EStartRejectsMissingTemplateColumn(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(`CREATE TABLE items (id int PRIMARY KEY, name text)`)
	e.publish("items")
	topic := e.topic("tmpl", 1, nil)
	dlq := e.topic("tmpl_dlq", 1, nil)
	r := e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.items"
kind = "table"
topic = %q
headers = { tenant = "{tenant}" }
key = "{region}-{id}"
on_error = "dead-letter"
dead_letter_topic = %q
`, topic, dlq)))
	// Give the relay time to start and (as it should) refuse.
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && !r.exited() {
		time.Sleep(200 * time.Millisecond)
	}
	if !r.exited() {
		e.exec(`INSERT INTO items VALUES (1, 'a')`)
		recs := e.read([]string{topic, dlq}, 1, 2*time.Second)
		var where []string
		for _, rec := range recs {
			where = append(where, rec.Topic+": "+rec.Headers["cdcrelay.reason"])
		}
		t.Fatalf("the relay started with key = \"{region}-{id}\" although public.items has no column region; "+
			"the first row then went to %v. Want relay.Run to fail at start with mapping \"public.items\": key \"key\": column \"region\" does not exist", where)
	}
	msg := fmt.Sprint(r.err)
	for _, w := range []string{"public.items", `"key"`, `"region"`} {
		if !strings.Contains(msg, w) {
			t.Errorf("start error %q does not name %s", msg, w)
		}
	}
}

// TestE2EIdentifiersAndPayloadKinds: a schema and table with capitals,
// columns with capitals and a space; outbox payloads of type text and bytea
// pass through as their text and their bytes.
func TestE2EIdentifiersAndPayloadKinds(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(
		`CREATE SCHEMA "Sales"`,
		`CREATE TABLE "Sales"."Orders" ("OrderId" int PRIMARY KEY, "line items" int[], "Note" text, g int GENERATED ALWAYS AS ("OrderId" * 2) STORED)`,
		`CREATE TABLE outbox_text (id text PRIMARY KEY, aggregatetype text, aggregateid text, type text, payload text)`,
		`CREATE TABLE outbox_bytes (id text PRIMARY KEY, aggregatetype text, aggregateid text, type text, payload bytea)`,
	)
	e.publish(`"Sales"."Orders"`, "outbox_text", "outbox_bytes")
	tOrders := e.topic("ident_orders", 1, nil)
	tText := e.topic("payload_text", 1, nil)
	tBytes := e.topic("payload_bytes", 1, nil)
	e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "Sales.Orders"
kind = "table"
topic = %q
headers = { note = "{Note}", where = "{schema}/{table}" }

[[mapping]]
table = "outbox_text"
kind = "outbox"
topic = %q

[[mapping]]
table = "outbox_bytes"
kind = "outbox"
topic = %q
`, tOrders, tText, tBytes)))
	e.exec(`INSERT INTO "Sales"."Orders" VALUES (7, '{1,2}', 'Ünï "x"')`)
	e.exec(`INSERT INTO outbox_text VALUES ('t1', 'A', 'k', 'T', E'plain text, not JSON: {\n')`)
	e.exec(`INSERT INTO outbox_bytes VALUES ('b1', 'A', 'k', 'T', '\x00ff10fe'::bytea)`)
	recs := e.read([]string{tOrders, tText, tBytes}, 3, 2*time.Second)
	if len(recs) != 3 {
		t.Fatalf("%d records", len(recs))
	}
	for _, r := range recs {
		switch r.Topic {
		case tOrders:
			env := decodeEnvelope(t, r)
			b, _ := json.Marshal(env.After)
			if string(r.Key) != `{"OrderId":7}` || string(b) != `{"Note":"Ünï \"x\"","OrderId":7,"line items":[1,2]}` ||
				env.Source.Schema != "Sales" || env.Source.Table != "Orders" ||
				r.Headers["note"] != `Ünï "x"` || r.Headers["where"] != "Sales/Orders" {
				t.Errorf("Sales.Orders: key %s headers %v value %s", r.Key, r.Headers, r.Value)
			}
		case tText:
			if string(r.Value) != "plain text, not JSON: {\n" {
				t.Errorf("text payload %q", r.Value)
			}
		case tBytes:
			if string(r.Value) != "\x00\xff\x10\xfe" {
				t.Errorf("bytea payload %x", r.Value)
			}
		}
	}
}

// TestE2EInvalidUTF8 (a SQL_ASCII database, where text may hold any bytes):
// a JSON event cannot carry text that is not UTF-8, so the row is a row
// error; the dead-letter record carries the value in base64.
func TestE2EInvalidUTF8(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	// Re-create the test's database with encoding SQL_ASCII (same name: the
	// testenv cleanup still drops it).
	e.conn.Close(e.ctx)
	admin, err := pgx.Connect(e.ctx, testenv.PostgresDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"DROP DATABASE " + pgx.Identifier{e.db}.Sanitize(),
		"CREATE DATABASE " + pgx.Identifier{e.db}.Sanitize() + " ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
	} {
		if _, err := admin.Exec(e.ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	admin.Close(e.ctx)
	if e.conn, err = pgx.Connect(e.ctx, e.dsn); err != nil {
		t.Fatal(err)
	}
	e.exec(`CREATE TABLE items (id int PRIMARY KEY, name text)`)
	e.publish("items")
	topic := e.topic("utf8", 1, nil)
	dlq := e.topic("utf8_dlq", 1, nil)
	e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.items"
kind = "table"
topic = %q
on_error = "dead-letter"
dead_letter_topic = %q
`, topic, dlq)))
	e.exec(`INSERT INTO items VALUES (1, 'ok')`, `INSERT INTO items VALUES (2, E'bad \xff\xfe')`, `INSERT INTO items VALUES (3, 'ok too')`)
	recs := e.read([]string{topic, dlq}, 3, 2*time.Second)
	var ids []string
	for _, r := range recs {
		if r.Topic == topic {
			ids = append(ids, string(r.Key))
			continue
		}
		t.Logf("dead letter: %v %s", r.Headers, r.Value)
		var v struct {
			After map[string]json.RawMessage `json:"after"`
		}
		json.Unmarshal(r.Value, &v)
		if r.Headers["cdcrelay.column"] != "name" || string(v.After["name"]) != `{"base64":"YmFkIP/+"}` {
			t.Errorf("dead letter for invalid UTF-8: headers %v value %s", r.Headers, r.Value)
		}
		ids = append(ids, "dlq")
	}
	sort.Strings(ids)
	if strings.Join(ids, " ") != `dlq {"id":1} {"id":3}` {
		t.Errorf("records %v", ids)
	}
}
