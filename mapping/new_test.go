package mapping

import (
	"errors"
	"strings"
	"testing"
)

func TestNewRejectsBadConfigurations(t *testing.T) {
	outbox := func(f func(*Spec)) []Spec {
		s := Spec{Table: "public.outbox", Kind: "outbox"}
		f(&s)
		return []Spec{s}
	}
	table := func(f func(*Spec)) []Spec {
		s := Spec{Table: "public.orders", Kind: "table"}
		f(&s)
		return []Spec{s}
	}
	changelog := func(f func(*Spec)) []Spec {
		s := Spec{Table: "audit.log", Kind: "changelog"}
		f(&s)
		return []Spec{s}
	}
	tests := []struct {
		name  string
		specs []Spec
		table string // the mapping the error names ("" for "mapping N")
		key   string
		msg   string
	}{
		{"no table", []Spec{{Kind: "outbox"}}, "", "table", "is required"},
		{"bad table name", []Spec{{Table: "a.b.c", Kind: "outbox"}}, "a.b.c", "table", `is not "schema.table"`},
		{"table mapped twice", []Spec{{Table: "orders", Kind: "table"}, {Table: "public.orders", Kind: "outbox"}}, "public.orders", "table", "mapped twice"},
		{"no kind", []Spec{{Table: "t"}}, "public.t", "kind", "is required"},
		{"unknown kind", []Spec{{Table: "t", Kind: "cdc"}}, "public.t", "kind", `"cdc" is not one of`},
		{"unknown envelope", outbox(func(s *Spec) { s.Envelope = "protobuf" }), "public.outbox", "envelope", `"protobuf" is not one of`},
		{"unknown on_error", outbox(func(s *Spec) { s.OnError = "ignore" }), "public.outbox", "on_error", `"ignore" is not one of`},
		{"dead letter topic with stop", outbox(func(s *Spec) { s.DeadLetterTopic = "dlq" }), "public.outbox", "dead_letter_topic", `on_error is "stop"`},
		{"bad dead letter topic", outbox(func(s *Spec) { s.OnError = "dead-letter"; s.DeadLetterTopic = "dl q" }), "public.outbox", "dead_letter_topic", "may only contain"},
		{"unclosed topic template", outbox(func(s *Spec) { s.Topic = "events.{aggregatetype" }), "public.outbox", "topic", "unclosed '{'"},
		{"empty placeholder", outbox(func(s *Spec) { s.Topic = "events.{}" }), "public.outbox", "topic", "empty placeholder"},
		{"stray brace in key", outbox(func(s *Spec) { s.Key = "a}b" }), "public.outbox", "key", "unmatched '}'"},
		{"bad literal topic", table(func(s *Spec) { s.Topic = "orders/all" }), "public.orders", "topic", "may only contain"},
		{"bad header template", outbox(func(s *Spec) { s.Headers = map[string]string{"tenant": "{tenant"} }), "public.outbox", "headers.tenant", "unclosed"},
		{"reserved header", outbox(func(s *Spec) { s.Headers = map[string]string{"id": "{id}"} }), "public.outbox", "headers.id", "set by the mapping itself"},
		{"reserved cloudevents header", table(func(s *Spec) { s.Envelope = "cloudevents-binary"; s.Headers = map[string]string{"ce_type": "x"} }), "public.orders", "headers.ce_type", "set by the mapping itself"},
		{"empty header name", outbox(func(s *Spec) { s.Headers = map[string]string{" ": "x"} }), "public.outbox", "headers", "empty"},
		{"bad outbox on_update", outbox(func(s *Spec) { s.Outbox.OnUpdate = "ignore" }), "public.outbox", "outbox.on_update", `"ignore" is not one of`},
		{"outbox column used twice", outbox(func(s *Spec) { s.Outbox.Payload = "id" }), "public.outbox", "outbox.payload_column", `column "id" is already outbox.id_column`},
		{"rows section on outbox", outbox(func(s *Spec) { s.Rows.Ops = []string{"insert"} }), "public.outbox", "rows", `does not apply to kind "outbox"`},
		{"outbox section on table", table(func(s *Spec) { s.Outbox.Payload = "p" }), "public.orders", "outbox", `does not apply to kind "table"`},
		{"unknown op", table(func(s *Spec) { s.Rows.Ops = []string{"insert", "upsert"} }), "public.orders", "rows.ops", `"upsert" is not one of`},
		{"op twice", table(func(s *Spec) { s.Rows.Ops = []string{"insert", "insert"} }), "public.orders", "rows.ops", "listed twice"},
		{"truncate in raw", table(func(s *Spec) { s.Envelope = "raw"; s.Rows.Ops = []string{"truncate"} }), "public.orders", "rows.ops", "no row to carry"},
		{"truncate with column topic", table(func(s *Spec) { s.Topic = "o.{region}"; s.Rows.Ops = []string{"truncate"} }), "public.orders", "rows.ops", `names column "region"`},
		{"include and exclude", table(func(s *Spec) { s.Rows.Include = []string{"a"}; s.Rows.Exclude = []string{"b"} }), "public.orders", "rows.exclude_columns", "cannot be combined"},
		{"key columns and key", table(func(s *Spec) { s.Rows.KeyColumns = []string{"id"}; s.Key = "{id}" }), "public.orders", "rows.key_columns", "cannot be combined"},
		{"key column twice", table(func(s *Spec) { s.Rows.KeyColumns = []string{"id", "id"} }), "public.orders", "rows.key_columns", `"id" is listed twice`},
		{"empty include entry", table(func(s *Spec) { s.Rows.Include = []string{""} }), "public.orders", "rows.include_columns", "empty"},
		{"cloudevents on json", table(func(s *Spec) { s.CloudEvents.Source = "/x" }), "public.orders", "cloudevents", "only used with envelope"},
		{"bad cloudevents type", table(func(s *Spec) { s.Envelope = "cloudevents-structured"; s.CloudEvents.Type = "{op" }), "public.orders", "cloudevents.type", "unclosed"},
		{"changelog key twice", changelog(func(s *Spec) { s.Key = "{id}"; s.Changelog.KeyFields = []string{"id"} }), "audit.log", "changelog.key_fields", "cannot be combined"},
		{"changelog on_update", changelog(func(s *Spec) { s.Changelog.OnUpdate = "skip" }), "audit.log", "changelog.on_update", `"skip" is not one of`},
		{"changelog column twice", changelog(func(s *Spec) { s.Changelog.OldColumn = "new_data" }), "audit.log", "changelog.old_column", `column "new_data" is already changelog.new_column`},
		{"rows on changelog", changelog(func(s *Spec) { s.Rows.Tombstones = ptr(false) }), "audit.log", "rows", `does not apply to kind "changelog"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.specs)
			if err == nil {
				t.Fatal("New accepted the configuration")
			}
			name := `mapping "` + tt.table + `"`
			if tt.table == "" {
				name = "mapping 1"
			}
			want := name + `: key "` + tt.key + `": `
			if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %q\nwant it to contain %q and %q", err, want, tt.msg)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Key != tt.key {
				t.Fatalf("error %v is not a *ConfigError with key %q", err, tt.key)
			}
		})
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	_, err := New([]Spec{
		{Table: "a", Kind: "outbox", Envelope: "protobuf", OnError: "ignore"},
		{Table: "b", Kind: "table", Rows: TableSpec{Ops: []string{"upsert"}}},
	})
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %v is not joined", err)
	}
	errs := j.Unwrap()
	if len(errs) != 3 {
		t.Fatalf("got %d errors, want 3: %v", len(errs), err)
	}
	for i, want := range []struct {
		index      int
		table, key string
	}{{1, "public.a", "on_error"}, {1, "public.a", "envelope"}, {2, "public.b", "rows.ops"}} {
		ce := errs[i].(*ConfigError)
		if ce.Index != want.index || ce.Table != want.table || ce.Key != want.key {
			t.Errorf("error %d = %+v, want %+v", i, ce, want)
		}
	}
}

func TestNewDefaults(t *testing.T) {
	m, err := New([]Spec{
		{Table: "outbox", Kind: "outbox"},
		{Table: "shop.orders", Kind: "table"},
		{Table: "audit.log", Kind: "changelog", OnError: "dead-letter"},
		{Table: "public.events", Kind: "outbox", Envelope: "cloudevents-binary", Outbox: OutboxSpec{AggregateType: "table"}},
	}, WithRelayName("shop"))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Tables(); strings.Join(got, ",") != "public.outbox,shop.orders,audit.log,public.events" {
		t.Errorf("Tables() = %v", got)
	}
	o, _ := m.Spec("public.outbox")
	if o.Topic != "outbox.event.{aggregatetype}" || o.Key != "{aggregateid}" || o.Envelope != "raw" ||
		o.OnError != "stop" || o.Outbox.ID != "id" || o.Outbox.Payload != "payload" || o.Outbox.OnUpdate != "warn" {
		t.Errorf("outbox defaults: %+v", o)
	}
	tb, _ := m.Spec("shop.orders")
	if tb.Topic != "{schema}.{table}" || tb.Envelope != "json" || !*tb.Rows.Tombstones ||
		strings.Join(tb.Rows.Ops, ",") != "insert,update,delete" {
		t.Errorf("table defaults: %+v", tb)
	}
	cl, _ := m.Spec("audit.log")
	if cl.Topic != "changelog.{schema}.{table}" || cl.Changelog.TableColumn != "table_name" || cl.Changelog.OpColumn != "op" ||
		cl.Changelog.OldColumn != "old_data" || cl.Changelog.NewColumn != "new_data" || *cl.Changelog.Tombstones {
		t.Errorf("changelog defaults: %+v", cl)
	}
	ev, _ := m.Spec("public.events")
	if ev.Topic != "outbox.event.{col:table}" || ev.CloudEvents.Source != "/cdcrelay/{schema}/{table}" {
		t.Errorf("outbox with a reserved column name: %+v", ev)
	}
	if got := m.DeadLetterTopic("audit.log"); got != "cdcrelay.dlq.shop" {
		t.Errorf("DeadLetterTopic = %q", got)
	}
	if got := m.DeadLetterTopic("public.outbox"); got != "" {
		t.Errorf("DeadLetterTopic of a stop mapping = %q", got)
	}
}

func TestNewDoesNotModifyItsInput(t *testing.T) {
	specs := []Spec{{Table: "t", Kind: "outbox", Headers: map[string]string{"h": "{x}"}}}
	if _, err := New(specs); err != nil {
		t.Fatal(err)
	}
	if specs[0].Table != "t" || specs[0].Topic != "" || specs[0].Outbox.ID != "" {
		t.Errorf("New changed its input: %+v", specs[0])
	}
}
