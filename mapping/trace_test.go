package mapping

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/cdcrelay/cdcrelay/replication"
)

const (
	tpSampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tsValid   = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
)

func TestParseTraceparent(t *testing.T) {
	valid := []string{
		tpSampled,
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09",                       // a later version
		"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds", // a later version with more fields
	}
	for _, s := range valid {
		tc, err := ParseTraceparent(s)
		if err != nil || !tc.Valid() {
			t.Errorf("ParseTraceparent(%q) = %v, %v; want valid", s, tc, err)
		}
	}
	tc, _ := ParseTraceparent(tpSampled)
	if tc.TraceID != [16]byte{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36} ||
		tc.SpanID != [8]byte{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7} || tc.Flags != 1 || !tc.Sampled() {
		t.Errorf("ParseTraceparent(%q) = %+v", tpSampled, tc)
	}
	if got := string(FormatTraceparent(tc.TraceID, tc.SpanID, tc.Flags)); got != tpSampled {
		t.Errorf("FormatTraceparent = %q, want %q", got, tpSampled)
	}

	invalid := map[string]string{
		"empty":              "",
		"short":              "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
		"uppercase trace id": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
		"uppercase flags":    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
		"zero trace id":      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"zero span id":       "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
		"version ff":         "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"version 00 longer":  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
		"later version junk": "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
		"wrong separators":   "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
		"not hex":            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
		"leading space":      " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"trailing newline":   tpSampled + "\n",
		"jaeger format":      "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1",
	}
	for name, s := range invalid {
		if tc, err := ParseTraceparent(s); err == nil || tc.Valid() {
			t.Errorf("%s: ParseTraceparent(%q) = %+v, nil; want an error", name, s, tc)
		}
	}
}

func TestCheckTracestate(t *testing.T) {
	for _, s := range []string{
		tsValid, "a=1", "rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE", "a=1,,b=2", "tenant@vendor=x", "1tenant@vendor=x",
		"k=" + strings.Repeat("v", 256), "a=b c",
	} {
		if err := checkTracestate(s); err != nil {
			t.Errorf("checkTracestate(%q) = %v, want nil", s, err)
		}
	}
	var many []string
	for i := 0; i < 33; i++ {
		many = append(many, "k"+strings.Repeat("x", i)+"=v")
	}
	for _, s := range []string{
		"novalue", "Upper=1", "a=1,a=2", "a=", "a=x,b", "1abc=x", "a@1vendor=x", "a=b=c",
		"k=" + strings.Repeat("v", 257), strings.Join(many, ","), "a=\x01",
	} {
		if err := checkTracestate(s); err == nil {
			t.Errorf("checkTracestate(%q) = nil, want an error", s)
		}
	}
}

func TestParseJavaProperties(t *testing.T) {
	cases := []struct {
		name, in string
		want     map[string]string
	}{
		{"Properties.store output", "#Tracing span context\n#Mon Dec 02 03:56:00 UTC 2024\ntraceparent=" + tpSampled + "\ntracestate=rojo\\=00f067aa0ba902b7,congo\\=t61rcWkgMzE\n",
			map[string]string{"traceparent": tpSampled, "tracestate": tsValid}},
		{"colon and spaces", "traceparent : " + tpSampled, map[string]string{"traceparent": tpSampled}},
		{"white space separator", "  traceparent\t" + tpSampled + "\r\n", map[string]string{"traceparent": tpSampled}},
		{"bang comment, blank lines, CR line ends", "! comment\r\r\n\rk=v\r", map[string]string{"k": "v"}},
		{"continuation", "traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-\\\n    00f067aa0ba902b7-01", map[string]string{"traceparent": tpSampled}},
		{"escaped backslash is no continuation", "a=x\\\\\nb=y", map[string]string{"a": `x\`, "b": "y"}},
		{"escapes in keys", "a\\=b\\:c\\ d=e", map[string]string{"a=b:c d": "e"}},
		{"unicode escapes and surrogates", "k=\\u0041\\u00e9\\ud83d\\ude00", map[string]string{"k": "Aé😀"}},
		{"other escapes", "k=\\t\\q\\#", map[string]string{"k": "\tq#"}},
		{"later key wins", "k=1\nk=2", map[string]string{"k": "2"}},
		{"empty value", "k=\nj", map[string]string{"k": "", "j": ""}},
		{"a comment is not continued", "# comment \\\nk=v", map[string]string{"k": "v"}},
		{"value keeps its separators", "k = = v", map[string]string{"k": "= v"}},
		{"empty text", "", map[string]string{}},
	}
	for _, c := range cases {
		got, err := parseJavaProperties(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: parseJavaProperties(%q) = %q, want %q", c.name, c.in, got, c.want)
		}
	}
	for _, bad := range []string{"k=\\u00", "k=\\uzzzz"} {
		if _, err := parseJavaProperties(bad); err == nil {
			t.Errorf("parseJavaProperties(%q): want an error", bad)
		}
	}
}

func tracedOutboxRel() *replication.Relation {
	rel := outboxRel()
	withColumn(rel, "traceparent", tText)
	withColumn(rel, "tracestate", tText)
	withColumn(rel, "tracingspancontext", tText)
	return rel
}

func outboxRow(traceparent, tracestate, props replication.Value) []replication.Value {
	return []replication.Value{text("5c7d9e59-3f3c-4c3b-8d0a-6f2c1c1e9a11"), text("order"), text("42"), text("OrderPlaced"), text(`{"a":1}`),
		traceparent, tracestate, props}
}

func TestOutboxTraceContextHeaders(t *testing.T) {
	var invalid []*RowError
	m := mustNew(t, []Spec{{Table: "outbox", Kind: "outbox"}}, WithTraceContextFunc(func(e *RowError) { invalid = append(invalid, e) }))
	rel := tracedOutboxRel()
	wantTC, _ := ParseTraceparent(tpSampled)
	wantTC.State = tsValid
	debezium := "#Mon Dec 02 03:56:00 UTC 2024\ntraceparent=" + tpSampled + "\ntracestate=rojo\\=00f067aa0ba902b7,congo\\=t61rcWkgMzE\n"
	cases := []struct {
		name               string
		row                []replication.Value
		parent, state      string
		trace              TraceContext
		invalid            int
		invalidColumnIsFor string
	}{
		{"columns", outboxRow(text(tpSampled), text(tsValid), null), tpSampled, tsValid, wantTC, 0, ""},
		{"no context", outboxRow(null, null, null), "<none>", "<none>", TraceContext{}, 0, ""},
		{"debezium properties", outboxRow(null, null, text(debezium)), tpSampled, tsValid, wantTC, 0, ""},
		{"column before properties", outboxRow(text(tpSampled), null, text("traceparent=00-11111111111111111111111111111111-2222222222222222-01")),
			tpSampled, "<none>", TraceContext{TraceID: wantTC.TraceID, SpanID: wantTC.SpanID, Flags: 1}, 0, ""},
		{"invalid traceparent", outboxRow(text("00-XYZ"), text(tsValid), null), "<none>", "<none>", TraceContext{}, 1, "traceparent"},
		{"invalid tracestate keeps traceparent", outboxRow(text(tpSampled), text("not a tracestate"), null), tpSampled, "<none>",
			TraceContext{TraceID: wantTC.TraceID, SpanID: wantTC.SpanID, Flags: 1}, 1, "traceparent"},
		{"properties without traceparent", outboxRow(null, null, text("uber-trace-id=abc:def:0:1")), "<none>", "<none>", TraceContext{}, 0, ""},
		{"malformed properties", outboxRow(null, null, text("traceparent=\\u12")), "<none>", "<none>", TraceContext{}, 1, "tracingspancontext"},
	}
	for _, c := range cases {
		invalid = nil
		evs, err := m.Map(change(replication.OpInsert, rel, c.row, nil))
		if err != nil || len(evs) != 1 {
			t.Fatalf("%s: Map = %v, %v", c.name, evs, err)
		}
		ev := evs[0]
		if got := header(ev, "traceparent"); got != c.parent {
			t.Errorf("%s: header traceparent = %q, want %q", c.name, got, c.parent)
		}
		if got := header(ev, "tracestate"); got != c.state {
			t.Errorf("%s: header tracestate = %q, want %q", c.name, got, c.state)
		}
		if ev.Trace != c.trace {
			t.Errorf("%s: Trace = %+v, want %+v", c.name, ev.Trace, c.trace)
		}
		if ev.ID != "5c7d9e59-3f3c-4c3b-8d0a-6f2c1c1e9a11" {
			t.Errorf("%s: ID = %q", c.name, ev.ID)
		}
		if len(invalid) != c.invalid {
			t.Errorf("%s: %d invalid contexts reported, want %d: %v", c.name, len(invalid), c.invalid, invalid)
		}
		if c.invalid > 0 && len(invalid) > 0 && (invalid[0].Column != c.invalidColumnIsFor || invalid[0].Table != "public.outbox") {
			t.Errorf("%s: invalid context reported as %+v", c.name, invalid[0])
		}
	}
}

func TestOutboxWithoutTraceColumnsIsUnchanged(t *testing.T) {
	m := mustNew(t, []Spec{{Table: "outbox", Kind: "outbox"}})
	if err := m.CheckRelation(outboxRel()); err != nil {
		t.Fatalf("the default trace columns are optional: %v", err)
	}
	row := []replication.Value{text("id-1"), text("order"), text("42"), text("OrderPlaced"), text(`{}`)}
	evs, err := m.Map(change(replication.OpInsert, outboxRel(), row, nil))
	if err != nil || len(evs) != 1 {
		t.Fatal(evs, err)
	}
	if len(evs[0].Headers) != 2 || evs[0].Trace.Valid() {
		t.Errorf("headers %v, trace %+v; want only id and type", evs[0].Headers, evs[0].Trace)
	}
}

func TestTraceColumnsNamedInConfigMustExist(t *testing.T) {
	m := mustNew(t, []Spec{{Table: "outbox", Kind: "outbox", Trace: TraceSpec{TraceparentColumn: "tp"}}})
	err := m.CheckRelation(outboxRel())
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Key != "trace.traceparent_column" {
		t.Fatalf("CheckRelation = %v; want an error about trace.traceparent_column", err)
	}
	m = mustNew(t, []Spec{{Table: "orders", Kind: "table", Trace: TraceSpec{CorrelationIDColumn: "request"}}})
	if err := m.CheckRelation(ordersRel()); err == nil || !strings.Contains(err.Error(), `"request" does not exist`) {
		t.Fatalf("CheckRelation = %v; want an error about the correlation id column", err)
	}
}

func TestTraceSpecErrors(t *testing.T) {
	for _, c := range []struct {
		spec Spec
		key  string
	}{
		{Spec{Table: "orders", Kind: "table", Trace: TraceSpec{TracestateColumn: "ts"}}, "trace.tracestate_column"},
		{Spec{Table: "outbox", Kind: "outbox", Trace: TraceSpec{CorrelationIDColumn: "c", CorrelationIDHeader: "traceparent"}}, "trace.correlation_id_header"},
		{Spec{Table: "outbox", Kind: "outbox", Trace: TraceSpec{CorrelationIDColumn: "c", CorrelationIDHeader: "id"}}, "trace.correlation_id_header"},
		{Spec{Table: "outbox", Kind: "outbox", Headers: map[string]string{"correlation_id": "{c}"}, Trace: TraceSpec{CorrelationIDColumn: "c"}}, "trace.correlation_id_column"},
	} {
		_, err := New([]Spec{c.spec})
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Key != c.key {
			t.Errorf("New(%+v) = %v; want an error about %s", c.spec.Trace, err, c.key)
		}
	}
}

func TestTableAndChangelogTraceFromConfiguredColumn(t *testing.T) {
	rel := withColumn(ordersRel(), "trace_ctx", tText)
	withColumn(rel, "request_id", tText)
	m := mustNew(t, []Spec{{Table: "orders", Kind: "table",
		Trace: TraceSpec{TraceparentColumn: "trace_ctx", CorrelationIDColumn: "request_id", CorrelationIDHeader: "x-request-id"}}})
	if err := m.CheckRelation(rel); err != nil {
		t.Fatal(err)
	}
	evs, err := m.Map(change(replication.OpInsert, rel, []replication.Value{text("1"), text("eu"), null, text(tpSampled), text("req-7")}, nil))
	if err != nil || len(evs) != 1 {
		t.Fatal(evs, err)
	}
	ev := evs[0]
	if header(ev, "traceparent") != tpSampled || !ev.Trace.Valid() || header(ev, "x-request-id") != "req-7" || ev.CorrelationID != "req-7" {
		t.Errorf("event headers %v, trace %+v, correlation %q", ev.Headers, ev.Trace, ev.CorrelationID)
	}
	if ev.ID != "16/B374D848:3" {
		t.Errorf("ID = %q, want the position", ev.ID)
	}
	// A delete under REPLICA IDENTITY DEFAULT carries only the key: no
	// context, no error; its tombstone follows without one either.
	evs, err = m.Map(change(replication.OpDelete, rel, nil, []replication.Value{text("1"), null, null, null, null}))
	if err != nil || len(evs) != 2 {
		t.Fatal(evs, err)
	}
	for _, ev := range evs {
		if _, ok := ev.Header("traceparent"); ok || ev.Trace.Valid() {
			t.Errorf("delete: %+v", ev)
		}
	}
	// Under FULL the old row has the context, and the tombstone carries it too.
	full := withColumn(ordersRel(), "trace_ctx", tText)
	withColumn(full, "request_id", tText)
	full.ReplicaIdentity = 'f'
	full.Columns[0].PrimaryKey = true
	evs, err = m.Map(change(replication.OpDelete, full, nil, []replication.Value{text("1"), text("eu"), null, text(tpSampled), text("req-8")}))
	if err != nil || len(evs) != 2 {
		t.Fatal(evs, err)
	}
	for _, ev := range evs {
		if header(ev, "traceparent") != tpSampled || !ev.Trace.Valid() || ev.CorrelationID != "req-8" {
			t.Errorf("delete under FULL: headers %v, trace %+v", ev.Headers, ev.Trace)
		}
	}
	if evs[1].Value != nil || header(evs[1], "x-request-id") != "req-8" {
		t.Errorf("tombstone %+v", evs[1])
	}

	cl := &replication.Relation{Schema: "audit", Table: "log", ReplicaIdentity: 'd', Columns: []replication.Column{
		{Name: "id", Type: tInt8, Key: true}, {Name: "table_name", Type: tText}, {Name: "op", Type: tText},
		{Name: "old_data", Type: tJSONB}, {Name: "new_data", Type: tJSONB}, {Name: "tp", Type: tText},
	}}
	m = mustNew(t, []Spec{{Table: "audit.log", Kind: "changelog", Trace: TraceSpec{TraceparentColumn: "tp"}}})
	evs, err = m.Map(change(replication.OpInsert, cl, []replication.Value{text("1"), text("shop.orders"), text("INSERT"), null, text(`{"id":1}`), text(tpSampled)}, nil))
	if err != nil || len(evs) != 1 || header(evs[0], "traceparent") != tpSampled {
		t.Fatal(evs, err)
	}
}

func TestCorrelationIDFromHeaderTemplate(t *testing.T) {
	rel := withColumn(outboxRel(), "tenant", tText)
	m := mustNew(t, []Spec{{Table: "outbox", Kind: "outbox", Headers: map[string]string{"x-correlation": "{tenant}/{aggregateid}"},
		Trace: TraceSpec{CorrelationIDHeader: "x-correlation"}}})
	row := []replication.Value{text("id-1"), text("order"), text("42"), text("OrderPlaced"), text(`{}`), text("acme")}
	evs, err := m.Map(change(replication.OpInsert, rel, row, nil))
	if err != nil || len(evs) != 1 {
		t.Fatal(evs, err)
	}
	if evs[0].CorrelationID != "acme/42" || header(evs[0], "x-correlation") != "acme/42" {
		t.Errorf("correlation %q, headers %v", evs[0].CorrelationID, evs[0].Headers)
	}
}

func TestUserTraceparentHeaderTemplateWins(t *testing.T) {
	// Before the mapping knew trace context, users wrote the header by hand;
	// their template keeps writing it, once.
	m := mustNew(t, []Spec{{Table: "outbox", Kind: "outbox", Headers: map[string]string{"traceparent": "{traceparent}"}}})
	evs, err := m.Map(change(replication.OpInsert, tracedOutboxRel(), outboxRow(text(tpSampled), text(tsValid), null), nil))
	if err != nil || len(evs) != 1 {
		t.Fatal(evs, err)
	}
	n := 0
	for _, h := range evs[0].Headers {
		if h.Key == "traceparent" {
			n++
		}
	}
	if n != 1 || !evs[0].Trace.Valid() {
		t.Errorf("%d traceparent headers (want 1), trace %+v", n, evs[0].Trace)
	}
}

func TestTraceHeadersInEveryEnvelope(t *testing.T) {
	for _, env := range []string{EnvelopeRaw, EnvelopeJSON, EnvelopeCEBinary, EnvelopeCEStructed} {
		m := mustNew(t, []Spec{{Table: "outbox", Kind: "outbox", Envelope: env}})
		evs, err := m.Map(change(replication.OpInsert, tracedOutboxRel(), outboxRow(text(tpSampled), text(tsValid), null), nil))
		if err != nil || len(evs) != 1 {
			t.Fatal(env, evs, err)
		}
		if header(evs[0], "traceparent") != tpSampled || header(evs[0], "tracestate") != tsValid {
			t.Errorf("envelope %s: headers %v", env, evs[0].Headers)
		}
	}
}
