package mapping

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cdcrelay/cdcrelay/replication"
)

var (
	tInt8  = &replication.Type{Name: "int8", Kind: 'b'}
	tText  = &replication.Type{Name: "text", Kind: 'b'}
	tJSONB = &replication.Type{Name: "jsonb", Kind: 'b'}
	tUUID  = &replication.Type{Name: "uuid", Kind: 'b'}
	tTS    = &replication.Type{Name: "timestamptz", Kind: 'b'}
)

func text(s string) replication.Value {
	return replication.Value{Kind: replication.ValueText, Text: []byte(s)}
}

var (
	null      = replication.Value{Kind: replication.ValueNull}
	unchanged = replication.Value{Kind: replication.ValueUnchanged}
)

func ordersRel() *replication.Relation {
	return &replication.Relation{Schema: "public", Table: "orders", ReplicaIdentity: 'd', Columns: []replication.Column{
		{Name: "id", Type: tInt8, Key: true},
		{Name: "region", Type: tText},
		{Name: "doc", Type: tJSONB},
	}}
}

func outboxRel() *replication.Relation {
	return &replication.Relation{Schema: "public", Table: "outbox", ReplicaIdentity: 'd', Columns: []replication.Column{
		{Name: "id", Type: tUUID, Key: true},
		{Name: "aggregatetype", Type: tText},
		{Name: "aggregateid", Type: tText},
		{Name: "type", Type: tText},
		{Name: "payload", Type: tJSONB},
	}}
}

func withColumn(rel *replication.Relation, name string, t *replication.Type) *replication.Relation {
	rel.Columns = append(rel.Columns, replication.Column{Name: name, Type: t})
	return rel
}

func change(op replication.Op, rel *replication.Relation, newVals, oldVals []replication.Value) *replication.Change {
	lsn := replication.LSN(0x16B374D848)
	return &replication.Change{Op: op, Relation: rel, New: newVals, Old: oldVals,
		Pos: replication.Pos{CommitLSN: lsn, Index: 3}, XID: 1234,
		CommitTime: time.Date(2024, 1, 2, 3, 4, 5, 123456000, time.UTC)}
}

func mustNew(t *testing.T, specs []Spec, opts ...Option) *Mapper {
	t.Helper()
	m, err := New(specs, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func header(ev Event, key string) string {
	v, ok := ev.Header(key)
	if !ok {
		return "<none>"
	}
	return string(v)
}

func TestMapUnmappedTableIsNothing(t *testing.T) {
	m := mustNew(t, []Spec{{Table: "outbox", Kind: "outbox"}})
	evs, err := m.Map(change(replication.OpInsert, ordersRel(), []replication.Value{text("1"), text("eu"), null}, nil))
	if evs != nil || err != nil {
		t.Fatalf("Map = %v, %v", evs, err)
	}
	if err := m.CheckRelation(ordersRel()); err != nil {
		t.Fatalf("CheckRelation of an unmapped table: %v", err)
	}
}

func TestCheckRelation(t *testing.T) {
	full := ordersRel()
	full.ReplicaIdentity = 'f'
	for i := range full.Columns {
		full.Columns[i].Key = true
	}
	fullPK := ordersRel()
	fullPK.ReplicaIdentity = 'f'
	for i := range fullPK.Columns {
		fullPK.Columns[i].Key = true
	}
	fullPK.Columns[0].PrimaryKey = true
	tests := []struct {
		name string
		spec Spec
		rel  *replication.Relation
		key  string // "" when the relation fits
		msg  string
	}{
		{"outbox fits", Spec{Table: "outbox", Kind: "outbox"}, outboxRel(), "", ""},
		{"outbox payload missing", Spec{Table: "outbox", Kind: "outbox", Outbox: OutboxSpec{Payload: "body"}}, outboxRel(), "outbox.payload_column", `column "body" does not exist in public.outbox`},
		{"topic names a missing column", Spec{Table: "outbox", Kind: "outbox", Topic: "e.{tenant}"}, outboxRel(), "topic", `column "tenant" does not exist`},
		{"header names a missing column", Spec{Table: "outbox", Kind: "outbox", Headers: map[string]string{"t": "{tenant}"}}, outboxRel(), "headers.t", `column "tenant"`},
		{"timestamp column of the wrong type", Spec{Table: "outbox", Kind: "outbox", Outbox: OutboxSpec{Timestamp: "created"}}, withColumn(outboxRel(), "created", tText), "outbox.timestamp_column", `column "created" is text, not timestamptz`},
		{"timestamp column", Spec{Table: "outbox", Kind: "outbox", Outbox: OutboxSpec{Timestamp: "created"}}, withColumn(outboxRel(), "created", tTS), "", ""},
		{"missing key column", Spec{Table: "orders", Kind: "table", Rows: TableSpec{KeyColumns: []string{"order_no"}}}, ordersRel(), "rows.key_columns", `column "order_no"`},
		{"missing include column", Spec{Table: "orders", Kind: "table", Rows: TableSpec{Include: []string{"id", "total"}}}, ordersRel(), "rows.include_columns", `column "total"`},
		{"delete with a non-key topic column", Spec{Table: "orders", Kind: "table", Topic: "orders.{region}"}, ordersRel(), "topic", "a delete does not carry it"},
		{"non-key topic column without deletes", Spec{Table: "orders", Kind: "table", Topic: "orders.{region}", Rows: TableSpec{Ops: []string{"insert"}}}, ordersRel(), "", ""},
		{"replica identity full without a primary key needs a key", Spec{Table: "orders", Kind: "table"}, full, "rows.key_columns", "REPLICA IDENTITY FULL"},
		{"replica identity full with a primary key", Spec{Table: "orders", Kind: "table"}, fullPK, "", ""},
		{"replica identity full with a key", Spec{Table: "orders", Kind: "table", Rows: TableSpec{KeyColumns: []string{"id"}}}, full, "", ""},
		{"changelog missing op column", Spec{Table: "orders", Kind: "changelog"}, ordersRel(), "changelog.table_column", `column "table_name"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mustNew(t, []Spec{tt.spec})
			err := m.CheckRelation(tt.rel)
			if tt.key == "" {
				if err != nil {
					t.Fatalf("CheckRelation: %v", err)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Key != tt.key || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("CheckRelation = %v, want key %q and %q", err, tt.key, tt.msg)
			}
			if !strings.HasPrefix(err.Error(), `mapping "public.`) {
				t.Errorf("error %q does not name the mapping", err)
			}
		})
	}
}

// The mapping follows ALTER TABLE: it reads the Relation each change carries.
func TestSchemaChangeTakesEffectAtTheNextChange(t *testing.T) {
	m := mustNew(t, []Spec{{Table: "orders", Kind: "table", Envelope: "raw"}})
	rel := ordersRel()
	evs, err := m.Map(change(replication.OpInsert, rel, []replication.Value{text("1"), text("eu"), text("{}")}, nil))
	if err != nil || string(evs[0].Value) != `{"id":1,"region":"eu","doc":{}}` {
		t.Fatalf("before ALTER: %s, %v", evs[0].Value, err)
	}
	// ALTER TABLE orders ADD COLUMN total numeric, DROP COLUMN region.
	altered := ordersRel()
	altered.Columns = []replication.Column{altered.Columns[0], altered.Columns[2], {Name: "total", Type: &replication.Type{Name: "numeric"}}}
	if err := m.CheckRelation(altered); err != nil {
		t.Fatal(err)
	}
	evs, err = m.Map(change(replication.OpInsert, altered, []replication.Value{text("2"), text("[]"), text("9.90")}, nil))
	if err != nil || string(evs[0].Value) != `{"id":2,"doc":[],"total":"9.90"}` {
		t.Fatalf("after ALTER: %s, %v", evs[0].Value, err)
	}
	// A type change: doc becomes text.
	retyped := ordersRel()
	retyped.Columns[2].Type = tText
	evs, err = m.Map(change(replication.OpInsert, retyped, []replication.Value{text("3"), text("eu"), text("{}")}, nil))
	if err != nil || string(evs[0].Value) != `{"id":3,"region":"eu","doc":"{}"}` {
		t.Fatalf("after a type change: %s, %v", evs[0].Value, err)
	}
	// What Map caches is per Relation, not per table: a change that still
	// carries the first Relation maps by its shape.
	evs, err = m.Map(change(replication.OpInsert, rel, []replication.Value{text("4"), text("us"), text("{}")}, nil))
	if err != nil || string(evs[0].Value) != `{"id":4,"region":"us","doc":{}}` {
		t.Fatalf("first Relation again: %s, %v", evs[0].Value, err)
	}
}

// A relay that runs for months sees a new Relation per session and per ALTER
// TABLE: the per-Relation cache must stay bounded.
func TestRelationCacheIsBounded(t *testing.T) {
	m := mustNew(t, []Spec{{Table: "orders", Kind: "table", Envelope: "raw"}})
	for i := 0; i < 3*maxCachedRelations; i++ {
		evs, err := m.Map(change(replication.OpInsert, ordersRel(), []replication.Value{text("1"), text("eu"), text("{}")}, nil))
		if err != nil || len(evs) != 1 {
			t.Fatalf("Map %d: %v, %v", i, evs, err)
		}
		if n := len(m.rels); n > maxCachedRelations {
			t.Fatalf("%d Relations cached after %d changes, bound %d", n, i+1, maxCachedRelations)
		}
	}
}

// A change that breaks the mapping (the key column is dropped) is a row
// error naming the column, which follows on_error.
func TestDroppedKeyColumnIsARowError(t *testing.T) {
	m := mustNew(t, []Spec{{Table: "orders", Kind: "table", Rows: TableSpec{KeyColumns: []string{"id"}}, OnError: "dead-letter"}})
	rel := ordersRel()
	rel.Columns = rel.Columns[1:] // ALTER TABLE orders DROP COLUMN id
	if err := m.CheckRelation(rel); err == nil || !strings.Contains(err.Error(), `key "rows.key_columns"`) {
		t.Fatalf("CheckRelation = %v", err)
	}
	c := change(replication.OpInsert, rel, []replication.Value{text("eu"), text("{}")}, nil)
	_, err := m.Map(c)
	var re *RowError
	if !errors.As(err, &re) || re.Column != "id" || re.Table != "public.orders" || re.Pos.Index != 3 {
		t.Fatalf("Map = %v", err)
	}
	if !strings.Contains(err.Error(), "table public.orders at lsn 16/B374D848 (change 3), column \"id\"") {
		t.Errorf("error %q", err)
	}
	dl, ok := m.DeadLetter(c, err)
	if !ok || header(dl, "cdcrelay.column") != "id" {
		t.Fatalf("DeadLetter = %+v, %v", dl, ok)
	}
}

func TestDeadLetter(t *testing.T) {
	m := mustNew(t, []Spec{
		{Table: "orders", Kind: "table", OnError: "dead-letter"},
		{Table: "outbox", Kind: "outbox"},
	}, WithRelayName("shop"))
	c := change(replication.OpUpdate, ordersRel(), []replication.Value{text("1"), unchanged, text("{bad")}, nil)
	_, err := m.Map(c)
	if err == nil {
		t.Fatal("invalid jsonb mapped")
	}
	dl, ok := m.DeadLetter(c, err)
	if !ok {
		t.Fatal("DeadLetter refused a dead-letter mapping")
	}
	if dl.Topic != "cdcrelay.dlq.shop" || string(dl.Key) != "public.orders" {
		t.Errorf("topic %q key %q", dl.Topic, dl.Key)
	}
	for k, want := range map[string]string{
		"cdcrelay.reason": "jsonb value is not valid JSON", "cdcrelay.table": "public.orders",
		"cdcrelay.lsn": "16/B374D848", "cdcrelay.change_index": "3", "cdcrelay.txid": "1234",
		"cdcrelay.op": "update", "cdcrelay.column": "doc", "cdcrelay.commit_time": "2024-01-02T03:04:05.123456Z",
	} {
		if got := header(dl, k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	want := `{"reason":"jsonb value is not valid JSON","table":"public.orders","column":"doc","op":"update","lsn":"16/B374D848","index":3,"txid":1234,"commit_time":"2024-01-02T03:04:05.123456Z","before":null,"after":{"id":"1","doc":"{bad"},"unchanged_toast":["region"]}`
	if string(dl.Value) != want {
		t.Errorf("value\n got %s\nwant %s", dl.Value, want)
	}

	// on_error = "stop": no record, the relay stops.
	oc := change(replication.OpUpdate, outboxRel(), nil, nil)
	if _, ok := m.DeadLetter(oc, errors.New("x")); ok {
		t.Error("DeadLetter accepted a stop mapping")
	}
	if _, ok := m.DeadLetterOversized(Event{Topic: "t"}, oc, 10); ok {
		t.Error("DeadLetterOversized accepted a stop mapping")
	}
}

func TestDeadLetterCarriesBinaryAndCapsItsSize(t *testing.T) {
	m := mustNew(t, []Spec{{Table: "orders", Kind: "table", OnError: "dead-letter", DeadLetterTopic: "orders.dlq"}})
	c := change(replication.OpInsert, ordersRel(), []replication.Value{text("1"), text("\xff\xfe"), null}, nil)
	_, err := m.Map(c)
	if err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Fatalf("Map = %v", err)
	}
	dl, _ := m.DeadLetter(c, err)
	if dl.Topic != "orders.dlq" || !strings.Contains(string(dl.Value), `"region":{"base64":"//4="}`) || !json.Valid(dl.Value) {
		t.Errorf("dead letter %s: %s", dl.Topic, dl.Value)
	}
	big := change(replication.OpInsert, ordersRel(), []replication.Value{text("1"), text(strings.Repeat("x", maxDeadLetterValue)), null}, nil)
	dl, _ = m.DeadLetter(big, errors.New("too big"))
	if len(dl.Value) > 1024 || !strings.Contains(string(dl.Value), `"values_omitted":true`) || !json.Valid(dl.Value) {
		t.Errorf("oversized row's dead letter is %d bytes: %.200s", len(dl.Value), dl.Value)
	}
}

func TestDeadLetterOversized(t *testing.T) {
	m := mustNew(t, []Spec{{Table: "outbox", Kind: "outbox", OnError: "dead-letter"}})
	c := change(replication.OpInsert, outboxRel(), []replication.Value{
		text("4b5f3e5e-7c2a-4f1e-9a3b-2d1c0e9f8a7b"), text("Order"), text("42"), text("OrderCreated"),
		text(`{"blob":"` + strings.Repeat("x", 2<<20) + `"}`)}, nil)
	evs, err := m.Map(c)
	if err != nil {
		t.Fatal(err)
	}
	dl, ok := m.DeadLetterOversized(evs[0], c, 1<<20)
	if !ok {
		t.Fatal("refused")
	}
	if dl.Size() > 2048 {
		t.Errorf("the dead letter itself is %d bytes", dl.Size())
	}
	for k, want := range map[string]string{
		"cdcrelay.topic": "outbox.event.Order", "cdcrelay.limit": "1048576", "cdcrelay.key": "42",
		"cdcrelay.event_id": "4b5f3e5e-7c2a-4f1e-9a3b-2d1c0e9f8a7b", "cdcrelay.lsn": "16/B374D848", "cdcrelay.change_index": "3",
	} {
		if got := header(dl, k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	if !strings.Contains(header(dl, "cdcrelay.reason"), "exceeds the limit of 1048576 bytes") || !json.Valid(dl.Value) {
		t.Errorf("reason %q value %s", header(dl, "cdcrelay.reason"), dl.Value)
	}
}

func TestEventIDIsStableAcrossRestarts(t *testing.T) {
	m := mustNew(t, []Spec{{Table: "orders", Kind: "table", Envelope: "cloudevents-binary"}})
	row := []replication.Value{text("1"), text("eu"), null}
	a, _ := m.Map(change(replication.OpInsert, ordersRel(), row, nil))
	b, _ := m.Map(change(replication.OpInsert, ordersRel(), row, nil)) // the same change, re-sent after a restart
	if header(a[0], "ce_id") != "16/B374D848:3" || header(a[0], "ce_id") != header(b[0], "ce_id") {
		t.Errorf("ce_id %q then %q", header(a[0], "ce_id"), header(b[0], "ce_id"))
	}
}

func TestOutboxRowErrors(t *testing.T) {
	m := mustNew(t, []Spec{{Table: "outbox", Kind: "outbox", Envelope: "cloudevents-structured"}})
	tests := []struct {
		name   string
		row    []replication.Value
		column string
		reason string
	}{
		{"null id", []replication.Value{null, text("Order"), text("42"), text("T"), text("{}")}, "id", "the event id is NULL"},
		{"null aggregate type", []replication.Value{text("x"), null, text("42"), text("T"), text("{}")}, "aggregatetype", "topic: value is NULL"},
		{"null key", []replication.Value{text("x"), text("Order"), null, text("T"), text("{}")}, "aggregateid", "key: value is NULL"},
		{"null type with cloudevents", []replication.Value{text("x"), text("Order"), text("42"), null, text("{}")}, "", "CloudEvents requires"},
		{"invalid json payload", []replication.Value{text("x"), text("Order"), text("42"), text("T"), text("{")}, "payload", "not valid JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.Map(change(replication.OpInsert, outboxRel(), tt.row, nil))
			var re *RowError
			if !errors.As(err, &re) || re.Column != tt.column || !strings.Contains(re.Reason, tt.reason) {
				t.Fatalf("Map = %#v, want column %q reason %q", err, tt.column, tt.reason)
			}
		})
	}
}

func TestUnchangedToastIsNeverNull(t *testing.T) {
	m := mustNew(t, []Spec{{Table: "orders", Kind: "table", Key: "{region}", Rows: TableSpec{Ops: []string{"insert", "update"}}}})
	// The key template needs region, which did not change and was not sent.
	_, err := m.Map(change(replication.OpUpdate, ordersRel(), []replication.Value{text("1"), unchanged, null}, nil))
	var re *RowError
	if !errors.As(err, &re) || re.Column != "region" || !strings.Contains(re.Reason, "unchanged TOASTed") {
		t.Fatalf("Map = %v", err)
	}
	// With the old row (REPLICA IDENTITY FULL) it is filled in.
	full := ordersRel()
	full.ReplicaIdentity = 'f'
	for i := range full.Columns {
		full.Columns[i].Key = true
	}
	evs, err := m.Map(change(replication.OpUpdate, full, []replication.Value{text("1"), unchanged, null},
		[]replication.Value{text("1"), text("eu"), null}))
	if err != nil || string(evs[0].Key) != "eu" || strings.Contains(string(evs[0].Value), "unchanged_toast") {
		t.Fatalf("Map = %v, %v", evs, err)
	}
	// Under REPLICA IDENTITY DEFAULT an old row is key-only ('K'): pgoutput
	// sends its other columns as NULL. That NULL must not fill the unchanged
	// value: the column is left out and listed.
	m = mustNew(t, []Spec{{Table: "orders", Kind: "table"}})
	evs, err = m.Map(change(replication.OpUpdate, ordersRel(), []replication.Value{text("2"), unchanged, null},
		[]replication.Value{text("1"), null, null}))
	if err != nil || len(evs) != 2 {
		t.Fatalf("Map = %v, %v", evs, err)
	}
	if v := string(evs[1].Value); strings.Contains(v, `"region":null`) || !strings.Contains(v, `"unchanged_toast":["region"]`) ||
		!strings.Contains(v, `"before":{"id":1}`) {
		t.Errorf("key-changing update under DEFAULT: %s", v)
	}
}

func TestWarnFunc(t *testing.T) {
	var got []*RowError
	m := mustNew(t, []Spec{{Table: "outbox", Kind: "outbox"}}, WithWarnFunc(func(e *RowError) { got = append(got, e) }))
	evs, err := m.Map(change(replication.OpUpdate, outboxRel(), make([]replication.Value, 5), nil))
	if evs != nil || err != nil || len(got) != 1 || got[0].Table != "public.outbox" {
		t.Fatalf("Map = %v, %v; warnings %v", evs, err, got)
	}
}

func TestTemplates(t *testing.T) {
	tests := []struct {
		tmpl, want, err string
	}{
		{"plain", "plain", ""},
		{"{schema}.{table}.{op}", "public.orders.insert", ""},
		{"{region}-{id}", "eu-1", ""},
		{"{col:op}", "OP", ""},
		{"{{literal}}", "{literal}", ""},
		{"a{{b}}{region}", "a{b}eu", ""},
		{"{region", "", "unclosed"},
		{"{}", "", "empty placeholder"},
		{"{col:}", "", "empty column name"},
		{"x}", "", "unmatched"},
		{"{a{b}", "", "inside a placeholder"},
	}
	env := &tmplEnv{schema: "public", table: "orders", op: "insert", col: func(n string) (replication.Value, error) {
		return map[string]replication.Value{"region": text("eu"), "id": text("1"), "op": text("OP")}[n], nil
	}}
	for _, tt := range tests {
		tm, err := parseTemplate(tt.tmpl)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parseTemplate(%q) = %v, want %q", tt.tmpl, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseTemplate(%q): %v", tt.tmpl, err)
			continue
		}
		if got, err := tm.expand(env); got != tt.want || err != nil {
			t.Errorf("expand(%q) = %q, %v, want %q", tt.tmpl, got, err, tt.want)
		}
	}
}

func TestEncodeValueRefusesWhatJSONCannotCarry(t *testing.T) {
	tests := []struct {
		typ  *replication.Type
		text string
	}{
		{tText, "\xff"},
		{tJSONB, "{\"a\":\"\xff\"}"},
		{&replication.Type{Name: "_text", Elem: tText}, "{\"\xff\"}"},
		{&replication.Type{Name: "hstore"}, "\"a\"=>\"\xff\""},
		{&replication.Type{Name: "float8"}, "0x10"},
		{&replication.Type{Name: "hstore"}, `"a"=>`},
	}
	for _, tt := range tests {
		if got, err := EncodeValue(nil, tt.typ, []byte(tt.text)); err == nil {
			t.Errorf("EncodeValue(%s, %q) = %s, want an error", tt.typ.Name, tt.text, got)
		}
	}
}

func TestDomainLoopIsBounded(t *testing.T) {
	d := &replication.Type{Name: "d", Kind: 'd'}
	d.Base = d
	if _, err := EncodeValue(nil, d, []byte("1")); err == nil {
		t.Error("a domain that is its own base encoded")
	}
}

func TestTopicFromRowValuesMustBeAValidName(t *testing.T) {
	m := mustNew(t, []Spec{{Table: "outbox", Kind: "outbox"}})
	_, err := m.Map(change(replication.OpInsert, outboxRel(), []replication.Value{text("x"), text("Order Items!"), text("42"), text("T"), text("{}")}, nil))
	var re *RowError
	if !errors.As(err, &re) || re.Column != "aggregatetype" || !strings.Contains(re.Reason, `"outbox.event.Order Items!"`) || !strings.Contains(re.Reason, "not a valid Kafka topic name") {
		t.Fatalf("Map = %v", err)
	}
	for _, agg := range []string{strings.Repeat("a", 250), "a/b", "ä"} {
		if _, err := m.Map(change(replication.OpInsert, outboxRel(), []replication.Value{text("x"), text(agg), text("42"), text("T"), text("{}")}, nil)); err == nil {
			t.Errorf("aggregate type %.10q…: no row error", agg)
		}
	}
	if _, err := m.Map(change(replication.OpInsert, outboxRel(), []replication.Value{text("x"), text("Order-1_a.b"), text("42"), text("T"), text("{}")}, nil)); err != nil {
		t.Errorf("valid name refused: %v", err)
	}
}
