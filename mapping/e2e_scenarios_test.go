package mapping_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cdcrelay/cdcrelay/internal/e2e"
)

// randomText returns SQL for n characters of random hex text: it does not
// compress, so a value of this size is stored out of line (TOASTed).
func randomText(n int) string {
	return fmt.Sprintf("(SELECT left(string_agg(md5(random()::text), ''), %d) FROM generate_series(1, %d))", n, n/32+1)
}

// TestE2EUnchangedToast: a 100 KB text column that an UPDATE does not change
// is sent by pgoutput as 'u' (no value). It must never reach Kafka as null:
// with the default replica identity it is left out of "after" and listed in
// "unchanged_toast"; with REPLICA IDENTITY FULL it is filled in from the old
// row.
func TestE2EUnchangedToast(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(
		`CREATE TABLE doc_default (id int PRIMARY KEY, n int, big text, small text)`,
		`CREATE TABLE doc_full (id int PRIMARY KEY, n int, big text, small text)`,
		`ALTER TABLE doc_full REPLICA IDENTITY FULL`,
	)
	e.publish("doc_default", "doc_full")
	tDefault := e.topic("toast_default", 1, nil)
	tFull := e.topic("toast_full", 1, nil)
	e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.doc_default"
kind = "table"
topic = %q

[[mapping]]
table = "public.doc_full"
kind = "table"
topic = %q
[mapping.rows]
key_columns = ["id"]
`, tDefault, tFull)))

	for _, tbl := range []string{"doc_default", "doc_full"} {
		e.exec(fmt.Sprintf(`INSERT INTO %s VALUES (1, 0, %s, 'a')`, tbl, randomText(100_000)))
		e.exec(fmt.Sprintf(`UPDATE %s SET n = 1 WHERE id = 1`, tbl))                   // big unchanged
		e.exec(fmt.Sprintf(`UPDATE %s SET n = 2, small = NULL WHERE id = 1`, tbl))     // big unchanged, small now NULL
		e.exec(fmt.Sprintf(`UPDATE %s SET big = big || 'x', n = 3 WHERE id = 1`, tbl)) // big changed
		e.exec(fmt.Sprintf(`UPDATE %s SET n = 4 WHERE id = 1`, tbl))                   // unchanged again
		e.exec(fmt.Sprintf(`UPDATE %s SET big = NULL, n = 5 WHERE id = 1`, tbl))       // really NULL
	}
	var bigDefault, bigFull string
	// The value as inserted, for comparison: read it from the insert event.
	check := func(topic string, full bool) {
		recs := e.read([]string{topic}, 6, 2*time.Second)
		if len(recs) != 6 {
			t.Fatalf("%s: %d events, want 6", topic, len(recs))
		}
		var envs []envelope
		for _, r := range recs {
			envs = append(envs, decodeEnvelope(t, r))
		}
		var inserted string
		if err := json.Unmarshal(envs[0].After["big"], &inserted); err != nil || len(inserted) != 100_000 {
			t.Fatalf("%s insert: big is %d chars (%v), want 100000", topic, len(inserted), err)
		}
		if full {
			bigFull = inserted
		} else {
			bigDefault = inserted
		}
		bigOf := func(i int, img map[string]json.RawMessage) (string, bool, bool) {
			raw, ok := img["big"]
			if !ok {
				return "", false, false
			}
			if string(raw) == "null" {
				return "", true, true
			}
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				t.Fatalf("%s event %d: big %s: %v", topic, i, raw[:min(len(raw), 50)], err)
			}
			return s, true, false
		}
		wantBig := []string{inserted, inserted, inserted, inserted + "x", inserted + "x", ""}
		for i := 1; i < 6; i++ {
			env := envs[i]
			if env.Op != "update" {
				t.Errorf("%s event %d: op %q", topic, i, env.Op)
			}
			var n int
			json.Unmarshal(env.After["n"], &n)
			if n != i {
				t.Errorf("%s event %d: n=%d, want %d", topic, i, n, i)
			}
			s, present, isNull := bigOf(i, env.After)
			unchangedUpdate := i == 1 || i == 2 || i == 4
			switch {
			case i == 5:
				if !present || !isNull {
					t.Errorf("%s event %d: big set to NULL must be null, got present=%v null=%v", topic, i, present, isNull)
				}
			case unchangedUpdate && !full:
				if present {
					t.Errorf("%s event %d: unchanged TOAST column present in after (null=%v, %d chars); want it left out", topic, i, isNull, len(s))
				}
				if !reflect.DeepEqual(env.UnchangedToast, []string{"big"}) {
					t.Errorf("%s event %d: unchanged_toast %v, want [big]", topic, i, env.UnchangedToast)
				}
			default:
				if !present || isNull || s != wantBig[i] {
					t.Errorf("%s event %d: big present=%v null=%v len=%d, want the full value (%d chars)", topic, i, present, isNull, len(s), len(wantBig[i]))
				}
				if len(env.UnchangedToast) != 0 {
					t.Errorf("%s event %d: unchanged_toast %v, want none", topic, i, env.UnchangedToast)
				}
			}
			if i == 2 {
				if raw, ok := env.After["small"]; !ok || string(raw) != "null" {
					t.Errorf("%s event %d: small set to NULL: %s (present %v), want null", topic, i, raw, ok)
				}
			}
			if full {
				// The old row is complete too.
				bs, bpresent, bnull := bigOf(i, env.Before)
				if !bpresent || bnull || bs != wantBig[i-1] {
					t.Errorf("%s event %d: before.big present=%v null=%v len=%d, want the old value (%d chars)", topic, i, bpresent, bnull, len(bs), len(wantBig[i-1]))
				}
			}
			for _, img := range []map[string]json.RawMessage{env.After, env.Before} {
				for col, raw := range img {
					if string(raw) == "null" && col != "big" && col != "small" {
						t.Errorf("%s event %d: column %s is null", topic, i, col)
					}
				}
			}
		}
	}
	check(tDefault, false)
	check(tFull, true)
	if len(bigDefault) != 100_000 || len(bigFull) != 100_000 {
		t.Errorf("inserted values: %d, %d chars", len(bigDefault), len(bigFull))
	}
	// The value really is stored out of line (in the TOAST table).
	var toastBytes int64
	if err := e.conn.QueryRow(e.ctx, `SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = 'doc_default'`).Scan(&toastBytes); err != nil || toastBytes < 100_000 {
		t.Errorf("doc_default's TOAST table holds %d bytes (%v): the test value was not TOASTed", toastBytes, err)
	}
}

// headersOf returns a record's headers without the ones every event of the
// envelope carries anyway, for exact comparison.
func headersOf(r e2e.Record) map[string]string {
	h := map[string]string{}
	for k, v := range r.Headers {
		h[k] = v
	}
	return h
}

// TestE2EOutboxDebezium runs a Debezium-style outbox table through the relay
// with the Outbox Event Router's defaults and compares topics, keys, headers
// and payloads with what its users expect: topic outbox.event.<aggregatetype>,
// key aggregateid, headers id and type (plus configured extra columns),
// value the payload as is; "insert then delete in one transaction" publishes
// the event once; updates are skipped.
func TestE2EOutboxDebezium(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(`CREATE TABLE outbox (
		id            uuid PRIMARY KEY,
		aggregatetype varchar(255) NOT NULL,
		aggregateid   varchar(255) NOT NULL,
		type          varchar(255) NOT NULL,
		payload       jsonb,
		tenant        text,
		trace_id      text,
		created_at    timestamptz NOT NULL DEFAULT now()
	)`)
	e.publish("outbox")
	suffix := e.name[len(e.name)-6:]
	order, customer := "Order"+suffix, "Customer"+suffix
	e.createTopic("outbox.event."+order, 3, nil)
	e.createTopic("outbox.event."+customer, 1, nil)
	e.start(e.config(`
[[mapping]]
table = "public.outbox"
kind = "outbox"
[mapping.headers]
tenant = "{tenant}"
traceparent = "{trace_id}"
`))

	ins := func(id, aggType, aggID, typ, payload, tenant string) string {
		p := "NULL"
		if payload != "" {
			p = "'" + payload + "'"
		}
		tn := "NULL"
		if tenant != "" {
			tn = "'" + tenant + "'"
		}
		return fmt.Sprintf(`INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, tenant, trace_id) VALUES ('%s', '%s', '%s', '%s', %s, %s, '00-trace-%s')`,
			id, aggType, aggID, typ, p, tn, id[:8])
	}
	ids := []string{
		"4b5f3e5e-7c2a-4f1e-9a3b-2d1c0e9f8a01",
		"4b5f3e5e-7c2a-4f1e-9a3b-2d1c0e9f8a02",
		"4b5f3e5e-7c2a-4f1e-9a3b-2d1c0e9f8a03",
		"4b5f3e5e-7c2a-4f1e-9a3b-2d1c0e9f8a04",
		"4b5f3e5e-7c2a-4f1e-9a3b-2d1c0e9f8a05",
	}
	// 1: two events in one transaction.
	e.tx(
		ins(ids[0], order, "42", "OrderCreated", `{"id": 42, "lines": [{"sku": "A-1", "qty": 2, "price": 9.90}], "total": "19.80"}`, "acme"),
		ins(ids[1], customer, "7", "CustomerUpdated", `{"id": 7, "name": "Ann \"Annie\" Lee", "tags": ["vip"]}`, "acme"),
	)
	// 2: Debezium's pattern: insert then delete in the same transaction.
	e.tx(
		ins(ids[2], order, "43", "OrderCreated", `{"id": 43}`, "globex"),
		fmt.Sprintf(`DELETE FROM outbox WHERE id = '%s'`, ids[2]),
	)
	// 3: no tenant (no header), then an update of an existing row (skipped
	// with a warning), a delete (ignored) and a NULL payload (tombstone).
	e.exec(ins(ids[3], order, "42", "OrderShipped", `{"id": 42, "carrier": "DHL"}`, ""))
	e.exec(fmt.Sprintf(`UPDATE outbox SET payload = '{"changed": true}' WHERE id = '%s'`, ids[3]))
	e.exec(fmt.Sprintf(`DELETE FROM outbox WHERE id = '%s'`, ids[0]))
	e.exec(ins(ids[4], customer, "7", "CustomerDeleted", "", "acme"))

	// What Postgres prints for each payload (jsonb's normalized text): the
	// value is exactly that, as Debezium's String/JSON converters pass it.
	payloadText := map[string]*string{}
	{
		rows, err := e.conn.Query(e.ctx, `SELECT id::text, payload::text FROM outbox`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id string
			var p *string
			rows.Scan(&id, &p)
			payloadText[id] = p
		}
		rows.Close()
	}
	payloadText[ids[0]] = strPtr(`{"id": 42, "lines": [{"qty": 2, "sku": "A-1", "price": 9.90}], "total": "19.80"}`)
	payloadText[ids[2]] = strPtr(`{"id": 43}`)
	payloadText[ids[3]] = strPtr(`{"id": 42, "carrier": "DHL"}`) // before the update

	recs := e.read([]string{"outbox.event." + order, "outbox.event." + customer}, 5, 3*time.Second)
	type want struct {
		topic, key string
		headers    map[string]string
		value      *string
	}
	wants := map[string]want{
		ids[0]: {"outbox.event." + order, "42", map[string]string{"id": ids[0], "type": "OrderCreated", "tenant": "acme", "traceparent": "00-trace-4b5f3e5e"}, payloadText[ids[0]]},
		ids[1]: {"outbox.event." + customer, "7", map[string]string{"id": ids[1], "type": "CustomerUpdated", "tenant": "acme", "traceparent": "00-trace-4b5f3e5e"}, payloadText[ids[1]]},
		ids[2]: {"outbox.event." + order, "43", map[string]string{"id": ids[2], "type": "OrderCreated", "tenant": "globex", "traceparent": "00-trace-4b5f3e5e"}, payloadText[ids[2]]},
		ids[3]: {"outbox.event." + order, "42", map[string]string{"id": ids[3], "type": "OrderShipped", "traceparent": "00-trace-4b5f3e5e"}, payloadText[ids[3]]},
		ids[4]: {"outbox.event." + customer, "7", map[string]string{"id": ids[4], "type": "CustomerDeleted", "tenant": "acme", "traceparent": "00-trace-4b5f3e5e"}, nil},
	}
	seen := map[string]int{}
	partOfKey := map[string]int32{}
	for _, r := range recs {
		id := r.Headers["id"]
		seen[id]++
		w, ok := wants[id]
		if !ok {
			t.Errorf("unexpected event %s key %s headers %v value %s", r.Topic, r.Key, r.Headers, r.Value)
			continue
		}
		if r.Topic != w.topic || string(r.Key) != w.key {
			t.Errorf("event %s: topic %s key %q, want %s %q", id, r.Topic, r.Key, w.topic, w.key)
		}
		if got := headersOf(r); !reflect.DeepEqual(got, w.headers) {
			t.Errorf("event %s: headers %v, want %v", id, got, w.headers)
		}
		switch {
		case w.value == nil && r.Value != nil:
			t.Errorf("event %s: value %s, want a tombstone (NULL payload)", id, r.Value)
		case w.value != nil && string(r.Value) != *w.value:
			t.Errorf("event %s: value\n got %s\nwant %s", id, r.Value, *w.value)
		}
		if p, ok := partOfKey[r.Topic+"/"+string(r.Key)]; ok && p != r.Partition {
			t.Errorf("key %s of %s on partitions %d and %d", r.Key, r.Topic, p, r.Partition)
		}
		partOfKey[r.Topic+"/"+string(r.Key)] = r.Partition
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("event %s published %d times, want exactly once", id, seen[id])
		}
	}
	// Order within an aggregate: OrderCreated before OrderShipped for 42.
	var order42 []string
	for _, r := range recs {
		if r.Topic == "outbox.event."+order && string(r.Key) == "42" {
			order42 = append(order42, r.Headers["type"])
		}
	}
	if !reflect.DeepEqual(order42, []string{"OrderCreated", "OrderShipped"}) {
		t.Errorf("aggregate 42 events in order %v, want [OrderCreated OrderShipped]", order42)
	}
}

func strPtr(s string) *string { return &s }

// TestE2EChangelogAudit: an AFTER INSERT/UPDATE/DELETE trigger on a business
// table writes table name, operation, old and new row as jsonb, a type and a
// timestamp into an audit table; the audit table (only it is published) is
// mapped with kind "changelog". Each business change becomes one event about
// the business table, keyed by its id, in the json envelope.
func TestE2EChangelogAudit(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(
		`CREATE SCHEMA audit`,
		`CREATE TABLE audit.log (
			id         bigserial PRIMARY KEY,
			table_name text NOT NULL,
			op         text NOT NULL,
			old_data   jsonb,
			new_data   jsonb,
			event_type text,
			changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
		)`,
		`CREATE FUNCTION audit.record() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO audit.log (table_name, op, old_data, new_data, event_type)
			VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP,
			        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
			        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
			        TG_TABLE_NAME || '.' || lower(TG_OP));
			RETURN NULL;
		END $$`,
		`CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, balance numeric(12,2), tags text[])`,
		`CREATE TRIGGER customers_audit AFTER INSERT OR UPDATE OR DELETE ON customers FOR EACH ROW EXECUTE FUNCTION audit.record()`,
	)
	e.publish("audit.log")
	prefix := "audit_" + e.name[len(e.name)-6:]
	topic := prefix + ".public.customers"
	e.createTopic(topic, 2, nil)
	e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "audit.log"
kind = "changelog"
topic = "%s.{schema}.{table}"
[mapping.changelog]
type_column = "event_type"
time_column = "changed_at"
id_column = "id"
key_fields = ["id"]
`, prefix)))

	e.exec(`INSERT INTO customers VALUES (7, 'Ann', 10.50, '{vip}')`)
	e.exec(`UPDATE customers SET name = 'Anne', balance = 12.00 WHERE id = 7`)
	e.tx(`INSERT INTO customers VALUES (8, 'Bob', NULL, NULL)`, `DELETE FROM customers WHERE id = 8`)
	e.exec(`DELETE FROM customers WHERE id = 7`)
	e.exec(`DELETE FROM audit.log WHERE id = 1`) // clean-up of the audit table: ignored

	type auditRow struct {
		id        string
		changedAt time.Time
	}
	var audit []auditRow
	rows, err := e.conn.Query(e.ctx, `SELECT id::text, changed_at FROM audit.log ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var a auditRow
		rows.Scan(&a.id, &a.changedAt)
		audit = append(audit, a)
	}
	rows.Close()

	recs := e.read([]string{topic}, 5, 3*time.Second)
	if len(recs) != 5 {
		t.Fatalf("%d events, want 5", len(recs))
	}
	type want struct {
		key, op, typ, before, after string
	}
	wants := map[string]want{
		"1": {`{"id":7}`, "insert", "customers.insert", `null`, `{"id":7,"name":"Ann","tags":["vip"],"balance":10.50}`},
		"2": {`{"id":7}`, "update", "customers.update", `{"id":7,"name":"Ann","tags":["vip"],"balance":10.50}`, `{"id":7,"name":"Anne","tags":["vip"],"balance":12.00}`},
		"3": {`{"id":8}`, "insert", "customers.insert", `null`, `{"id":8,"name":"Bob","tags":null,"balance":null}`},
		"4": {`{"id":8}`, "delete", "customers.delete", `{"id":8,"name":"Bob","tags":null,"balance":null}`, `null`},
		"5": {`{"id":7}`, "delete", "customers.delete", `{"id":7,"name":"Anne","tags":["vip"],"balance":12.00}`, `null`},
	}
	seen := map[string]int{}
	var ops7 []string
	for _, r := range recs {
		var env struct {
			ID     string          `json:"id"`
			Op     string          `json:"op"`
			Type   string          `json:"type"`
			Time   string          `json:"time"`
			Source map[string]any  `json:"source"`
			Before json.RawMessage `json:"before"`
			After  json.RawMessage `json:"after"`
		}
		if err := json.Unmarshal(r.Value, &env); err != nil {
			t.Fatalf("value %s: %v", r.Value, err)
		}
		seen[env.ID]++
		w, ok := wants[env.ID]
		if !ok {
			t.Errorf("unexpected event %s", r.Value)
			continue
		}
		if string(r.Key) != w.key || env.Op != w.op || env.Type != w.typ {
			t.Errorf("event %s: key %s op %s type %s, want %s %s %s", env.ID, r.Key, env.Op, env.Type, w.key, w.op, w.typ)
		}
		if r.Headers["type"] != w.typ {
			t.Errorf("event %s: header type %q, want %q", env.ID, r.Headers["type"], w.typ)
		}
		if compactJSON(env.Before) != w.before || compactJSON(env.After) != w.after {
			t.Errorf("event %s:\n before %s\n  after %s\nwant before %s\n  after %s", env.ID, env.Before, env.After, w.before, w.after)
		}
		if env.Source["schema"] != "public" || env.Source["table"] != "customers" || env.Source["changelog"] != "audit.log" || env.Source["db"] != e.db {
			t.Errorf("event %s: source %v", env.ID, env.Source)
		}
		for _, a := range audit {
			if a.id == env.ID {
				if want := a.changedAt.UTC().Format(time.RFC3339Nano); env.Time != want {
					t.Errorf("event %s: time %s, want %s (changed_at)", env.ID, env.Time, want)
				}
			}
		}
		if string(r.Key) == `{"id":7}` {
			ops7 = append(ops7, env.Op)
		}
	}
	for id := range wants {
		if seen[id] != 1 {
			t.Errorf("audit row %s published %d times, want once", id, seen[id])
		}
	}
	if strings.Join(ops7, ",") != "insert,update,delete" {
		t.Errorf("customer 7: ops in order %v, want insert, update, delete (one key, one partition)", ops7)
	}
}

// TestE2EKeyOnlyOldRow: under REPLICA IDENTITY DEFAULT pgoutput sends the
// old row of a key-changing UPDATE (and of a DELETE) as a key-only tuple
// ('K') whose other columns come as NULL ('n'). They are not NULL: they are
// not part of the image. The before image holds the key columns only, and an
// unchanged TOAST column of the new row must not be "filled" with that NULL.
func TestE2EKeyOnlyOldRow(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(`CREATE TABLE doc (id int PRIMARY KEY, n int, big text)`)
	e.publish("doc")
	topic := e.topic("keyonly", 1, nil)
	e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.doc"
kind = "table"
topic = %q
[mapping.rows]
tombstones = false
`, topic)))
	e.exec(fmt.Sprintf(`INSERT INTO doc VALUES (1, 0, %s)`, randomText(100_000)))
	e.exec(`UPDATE doc SET id = 2 WHERE id = 1`) // key changed, big unchanged ('u'), old row 'K'
	e.exec(`DELETE FROM doc WHERE id = 2`)

	recs := e.read([]string{topic}, 3, 2*time.Second)
	if len(recs) != 3 {
		t.Fatalf("%d events, want 3", len(recs))
	}
	upd, del := decodeEnvelope(t, recs[1]), decodeEnvelope(t, recs[2])
	if raw, ok := upd.After["big"]; ok {
		t.Errorf("update changing the key: after.big = %.40s…; the unchanged TOAST value must be left out (and listed), never null", raw)
	}
	if !reflect.DeepEqual(upd.UnchangedToast, []string{"big"}) {
		t.Errorf("update changing the key: unchanged_toast %v, want [big]", upd.UnchangedToast)
	}
	for name, env := range map[string]envelope{"update": upd, "delete": del} {
		var cols []string
		for c := range env.Before {
			cols = append(cols, c)
		}
		if len(cols) != 1 || cols[0] != "id" {
			t.Errorf("%s: before image %v, want the key column only ({\"id\":…}): the other columns were not sent, they are not NULL", name, env.Before)
		}
	}
}

// TestE2EChangelogTruncate: a statement-level AFTER TRUNCATE trigger writes
// an audit row with op TRUNCATE and no old/new row; it becomes a truncate
// event without key (key_fields have nothing to read).
func TestE2EChangelogTruncate(t *testing.T) {
	e := newRelayEnv(t, 3*time.Minute)
	e.exec(
		`CREATE TABLE audit_log (id bigserial PRIMARY KEY, table_name text NOT NULL, op text NOT NULL, old_data jsonb, new_data jsonb)`,
		`CREATE FUNCTION audit_record() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO audit_log (table_name, op, old_data, new_data)
			VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP,
			        CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
			        CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END);
			RETURN NULL;
		END $$`,
		`CREATE TABLE customers (id int PRIMARY KEY, name text)`,
		`CREATE TRIGGER customers_audit AFTER INSERT OR UPDATE OR DELETE ON customers FOR EACH ROW EXECUTE FUNCTION audit_record()`,
		`CREATE TRIGGER customers_audit_truncate AFTER TRUNCATE ON customers FOR EACH STATEMENT EXECUTE FUNCTION audit_record()`,
	)
	e.publish("audit_log")
	topic := e.topic("cl_truncate", 1, nil)
	e.start(e.config(fmt.Sprintf(`
[[mapping]]
table = "public.audit_log"
kind = "changelog"
topic = %q
[mapping.changelog]
key_fields = ["id"]
`, topic)))
	e.exec(`INSERT INTO customers VALUES (1, 'a')`, `TRUNCATE customers`)
	recs := e.read([]string{topic}, 2, 2*time.Second)
	if len(recs) != 2 {
		t.Fatalf("%d events, want 2", len(recs))
	}
	ins, tr := decodeEnvelope(t, recs[0]), decodeEnvelope(t, recs[1])
	if ins.Op != "insert" || string(recs[0].Key) != `{"id":1}` {
		t.Errorf("insert: op %s key %s", ins.Op, recs[0].Key)
	}
	if tr.Op != "truncate" || recs[1].Key != nil || tr.Before != nil || tr.After != nil || tr.Source.Table != "customers" {
		t.Errorf("truncate: key %q value %s", recs[1].Key, recs[1].Value)
	}
}
