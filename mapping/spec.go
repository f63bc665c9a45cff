package mapping

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Spec is one [[mapping]] section of relay.toml. Every key is documented, with
// its default, in docs/mapping.md; keep the two in step.
type Spec struct {
	// Table is the source table, "schema.table" ("public" when no schema is given).
	Table string `toml:"table"`
	// Kind is "outbox", "changelog" or "table".
	Kind string `toml:"kind"`
	// Topic is a template for the destination topic: {column}, {schema}, {table}, {op}.
	// Default: outbox "outbox.event.{<aggregate_type_column>}", table
	// "{schema}.{table}", changelog "changelog.{schema}.{table}" (for a
	// changelog, {schema}, {table} and {op} are the source table's and op).
	Topic string `toml:"topic"`
	// Key is a template for the record key. Empty: the kind's default (outbox:
	// "{<aggregate_id_column>}"; table: a JSON object of the key columns;
	// changelog: changelog.key_fields, else no key).
	Key string `toml:"key"`
	// Headers maps header names to templates.
	Headers map[string]string `toml:"headers"`
	// Envelope is "raw", "json", "cloudevents-binary", "cloudevents-structured",
	// or, for table and changelog, "avro" or "json-schema" (published
	// through the schema registry). Default: "raw" for outbox, "json" for
	// table and changelog.
	Envelope string `toml:"envelope"`
	// OnError is "dead-letter" or "stop" (default): what happens to a row that
	// cannot be mapped or an event larger than the topic accepts.
	OnError string `toml:"on_error"`
	// DeadLetterTopic receives rejected rows when OnError is "dead-letter".
	// Default "cdcrelay.dlq.<relay name>" ("cdcrelay.dlq.default" without one).
	DeadLetterTopic string `toml:"dead_letter_topic"`

	Outbox      OutboxSpec      `toml:"outbox"`
	Changelog   ChangelogSpec   `toml:"changelog"`
	Rows        TableSpec       `toml:"rows"`
	CloudEvents CloudEventsSpec `toml:"cloudevents"`
	Schema      SchemaSpec      `toml:"schema"`
	Trace       TraceSpec       `toml:"trace"`
}

// SchemaSpec tunes the envelopes "avro" and "json-schema".
type SchemaSpec struct {
	// Value is "change" (default: the change envelope with before, after,
	// op and source) or "row" (kind table: the row image alone, the after
	// image, the before image of a delete).
	Value string `toml:"value"`
	// Compatibility is the compatibility level the relay sets on the
	// subjects it registers: "BACKWARD" (default), "BACKWARD_TRANSITIVE",
	// "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE", or
	// "registry" to leave the registry's own setting alone.
	Compatibility string `toml:"compatibility"`
}

// OutboxSpec names the columns of an outbox table (Debezium's Outbox Event
// Router defaults).
type OutboxSpec struct {
	ID            string `toml:"id_column"`             // default "id"
	AggregateType string `toml:"aggregate_type_column"` // default "aggregatetype"
	AggregateID   string `toml:"aggregate_id_column"`   // default "aggregateid"
	Type          string `toml:"type_column"`           // default "type"
	Payload       string `toml:"payload_column"`        // default "payload"
	// Timestamp, when set, names a timestamp/timestamptz column that becomes
	// the event time (record timestamp, ce_time) instead of the commit time.
	Timestamp string `toml:"timestamp_column"`
	// OnUpdate is "warn" (default: skip the row and report it to the warning
	// function) or "error" (a row error, which follows OnError).
	OnUpdate string `toml:"on_update"`
	// PayloadSchema "registry": the payload must fit the latest schema of
	// PayloadSubject in the schema registry (JSON Schema: validated; Avro:
	// encoded from its JSON), and is published in the registry's wire
	// format. "" (default): the payload passes through unchecked.
	PayloadSchema string `toml:"payload_schema"`
	// PayloadSubject is a template for the subject whose latest schema the
	// payload must fit. Default "<topic>-value".
	PayloadSubject string `toml:"payload_subject"`
}

// ChangelogSpec names the columns of a trigger-written change table.
type ChangelogSpec struct {
	TableColumn string `toml:"table_column"` // default "table_name"; "schema.table" or "table"
	// SchemaColumn, when set, holds the source table's schema.
	SchemaColumn string `toml:"schema_column"`
	OpColumn     string `toml:"op_column"`  // default "op"; INSERT/UPDATE/DELETE/TRUNCATE or I/U/D/T (any case)
	OldColumn    string `toml:"old_column"` // default "old_data"; json/jsonb
	NewColumn    string `toml:"new_column"` // default "new_data"; json/jsonb
	// TypeColumn, when set, holds the event type (header "type", ce_type).
	TypeColumn string `toml:"type_column"`
	// TimeColumn, when set, is a timestamp/timestamptz column: the event time.
	TimeColumn string `toml:"time_column"`
	// IDColumn, when set, is the event id; otherwise it derives from the
	// change's position (commit LSN, index).
	IDColumn string `toml:"id_column"`
	// KeyFields are fields of the old/new JSON whose values form the key, as a
	// JSON object (like a table's key). Exclusive with Key.
	KeyFields []string `toml:"key_fields"`
	// Tombstones: emit a tombstone after a delete (needs a key). Default false.
	Tombstones *bool `toml:"tombstones"`
	// OnUpdate and deletes of the change table itself: as the outbox's
	// ("warn" default, or "error"); deletes are ignored.
	OnUpdate string `toml:"on_update"`
}

// TableSpec says which changes of a business table become events and how.
type TableSpec struct {
	// Ops: "insert", "update", "delete", "truncate", "read" (backfill; implied
	// by "insert"). Default insert, update, delete.
	Ops     []string `toml:"ops"`
	Include []string `toml:"include_columns"`
	Exclude []string `toml:"exclude_columns"`
	// KeyColumns replace the replica identity's columns (under REPLICA
	// IDENTITY FULL, the primary key's) as the key. Exclusive with Key.
	KeyColumns []string `toml:"key_columns"`
	// Tombstones: emit a tombstone (nil value) after a delete. Default true.
	Tombstones *bool `toml:"tombstones"`
}

// CloudEventsSpec tunes the CloudEvents envelopes.
type CloudEventsSpec struct {
	// Source is a template for ce_source. Default "/cdcrelay/{schema}/{table}"
	// ("/cdcrelay/<db>/{schema}/{table}" when the database is known).
	Source string `toml:"source"`
	// Type is a template for ce_type. Default: outbox, the type column;
	// table "{schema}.{table}.{op}"; changelog, the type column if set, else
	// "<schema>.<table>.<op>" of the source table.
	Type string `toml:"type"`
}

// Kinds, envelopes, ops and error policies, as written in relay.toml.
const (
	KindOutbox    = "outbox"
	KindChangelog = "changelog"
	KindTable     = "table"

	EnvelopeRaw        = "raw"
	EnvelopeJSON       = "json"
	EnvelopeCEBinary   = "cloudevents-binary"
	EnvelopeCEStructed = "cloudevents-structured"

	EnvelopeAvro       = "avro"
	EnvelopeJSONSchema = "json-schema"

	OnErrorStop       = "stop"
	OnErrorDeadLetter = "dead-letter"

	PayloadSchemaRegistry = "registry"

	SchemaValueChange = "change"
	SchemaValueRow    = "row"

	// CompatibilityRegistry leaves a subject's compatibility level alone.
	CompatibilityRegistry = "registry"
)

// compatibilityLevels are the registry's levels, as the Confluent API names them.
var compatibilityLevels = []string{"BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE"}

var allOps = []string{"insert", "update", "delete", "truncate", "read"}

// keyError is a configuration error about one key of a mapping.
type keyError struct {
	key string
	msg string
}

func (e *keyError) Error() string { return fmt.Sprintf("key %q: %s", e.key, e.msg) }

func kerr(key, format string, a ...any) error {
	return &keyError{key: key, msg: fmt.Sprintf(format, a...)}
}

// normalize fills defaults and checks everything that does not need the live
// schema. It returns one error per offending key.
func (s *Spec) normalize(db string) []error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}

	def(&s.OnError, OnErrorStop)
	switch s.OnError {
	case OnErrorStop, OnErrorDeadLetter:
	default:
		add(kerr("on_error", "%q is not one of %q, %q", s.OnError, OnErrorStop, OnErrorDeadLetter))
	}
	if s.DeadLetterTopic != "" {
		if s.OnError == OnErrorStop {
			add(kerr("dead_letter_topic", "is set but on_error is %q: set on_error = %q or remove it", OnErrorStop, OnErrorDeadLetter))
		}
		add(checkTopicName("dead_letter_topic", s.DeadLetterTopic))
	}

	switch s.Kind {
	case KindOutbox:
		o := &s.Outbox
		def(&o.ID, "id")
		def(&o.AggregateType, "aggregatetype")
		def(&o.AggregateID, "aggregateid")
		def(&o.Type, "type")
		def(&o.Payload, "payload")
		def(&o.OnUpdate, "warn")
		add(checkOnUpdate("outbox.on_update", o.OnUpdate))
		add(checkDistinct("outbox", map[string]string{
			"id_column": o.ID, "aggregate_type_column": o.AggregateType, "aggregate_id_column": o.AggregateID,
			"type_column": o.Type, "payload_column": o.Payload, "timestamp_column": o.Timestamp,
		}))
		def(&s.Topic, "outbox.event."+placeholder(o.AggregateType))
		def(&s.Key, placeholder(o.AggregateID))
		def(&s.Envelope, EnvelopeRaw)
		switch o.PayloadSchema {
		case "":
			if o.PayloadSubject != "" {
				add(kerr("outbox.payload_subject", "is only used with outbox.payload_schema = %q", PayloadSchemaRegistry))
			}
		case PayloadSchemaRegistry:
			if s.Envelope != EnvelopeRaw && s.Envelope != EnvelopeCEBinary {
				add(kerr("outbox.payload_schema", "%q needs envelope %q or %q (the payload is the record's value), not %q", o.PayloadSchema, EnvelopeRaw, EnvelopeCEBinary, s.Envelope))
			}
		default:
			add(kerr("outbox.payload_schema", "%q is not \"\" or %q", o.PayloadSchema, PayloadSchemaRegistry))
		}
		if s.Envelope == EnvelopeAvro || s.Envelope == EnvelopeJSONSchema {
			add(kerr("envelope", "%q is for kinds table and changelog; an outbox payload is checked against the registry with outbox.payload_schema = %q", s.Envelope, PayloadSchemaRegistry))
		}
		add(unused("changelog", !isZeroChangelog(s.Changelog), s.Kind))
		add(unused("rows", !isZeroRows(s.Rows), s.Kind))
	case KindChangelog:
		c := &s.Changelog
		def(&c.TableColumn, "table_name")
		def(&c.OpColumn, "op")
		def(&c.OldColumn, "old_data")
		def(&c.NewColumn, "new_data")
		def(&c.OnUpdate, "warn")
		add(checkOnUpdate("changelog.on_update", c.OnUpdate))
		add(checkDistinct("changelog", map[string]string{
			"table_column": c.TableColumn, "schema_column": c.SchemaColumn, "op_column": c.OpColumn,
			"old_column": c.OldColumn, "new_column": c.NewColumn, "type_column": c.TypeColumn,
			"time_column": c.TimeColumn, "id_column": c.IDColumn,
		}))
		if len(c.KeyFields) > 0 && s.Key != "" {
			add(kerr("changelog.key_fields", "cannot be combined with key = %q: choose one", s.Key))
		}
		add(checkList("changelog.key_fields", c.KeyFields))
		if c.Tombstones == nil {
			c.Tombstones = ptr(false)
		}
		def(&s.Topic, "changelog.{schema}.{table}")
		def(&s.Envelope, EnvelopeJSON)
		add(unused("outbox", s.Outbox != OutboxSpec{}, s.Kind))
		add(unused("rows", !isZeroRows(s.Rows), s.Kind))
	case KindTable:
		r := &s.Rows
		if len(r.Ops) == 0 {
			r.Ops = []string{"insert", "update", "delete"}
		}
		for _, op := range r.Ops {
			if !slices.Contains(allOps, op) {
				add(kerr("rows.ops", "%q is not one of %s", op, quoteList(allOps)))
			}
		}
		add(checkList("rows.ops", r.Ops))
		add(checkList("rows.include_columns", r.Include))
		add(checkList("rows.exclude_columns", r.Exclude))
		add(checkList("rows.key_columns", r.KeyColumns))
		if len(r.Include) > 0 && len(r.Exclude) > 0 {
			add(kerr("rows.exclude_columns", "cannot be combined with rows.include_columns: choose one"))
		}
		if len(r.KeyColumns) > 0 && s.Key != "" {
			add(kerr("rows.key_columns", "cannot be combined with key = %q: choose one", s.Key))
		}
		if r.Tombstones == nil {
			r.Tombstones = ptr(true)
		}
		def(&s.Topic, "{schema}.{table}")
		def(&s.Envelope, EnvelopeJSON)
		if s.Envelope == EnvelopeRaw && slices.Contains(r.Ops, "truncate") {
			add(kerr("rows.ops", "\"truncate\" has no row to carry in envelope \"raw\": use envelope \"json\" or a cloudevents envelope"))
		}
		add(unused("outbox", s.Outbox != OutboxSpec{}, s.Kind))
		add(unused("changelog", !isZeroChangelog(s.Changelog), s.Kind))
	case "":
		add(kerr("kind", "is required (%q, %q or %q)", KindOutbox, KindChangelog, KindTable))
		return errs
	default:
		add(kerr("kind", "%q is not one of %q, %q, %q", s.Kind, KindOutbox, KindChangelog, KindTable))
		return errs
	}

	add(s.normalizeSchema())
	switch s.Envelope {
	case EnvelopeRaw, EnvelopeJSON, EnvelopeAvro, EnvelopeJSONSchema:
		if s.CloudEvents != (CloudEventsSpec{}) {
			add(kerr("cloudevents", "is only used with envelope %q or %q, not %q", EnvelopeCEBinary, EnvelopeCEStructed, s.Envelope))
		}
	case EnvelopeCEBinary, EnvelopeCEStructed:
		src := "/cdcrelay/{schema}/{table}"
		if db != "" {
			src = "/cdcrelay/" + escapeLiteral(db) + "/{schema}/{table}"
		}
		def(&s.CloudEvents.Source, src)
		if s.Kind == KindTable {
			def(&s.CloudEvents.Type, "{schema}.{table}.{op}")
		}
	default:
		add(kerr("envelope", "%q is not one of %q, %q, %q, %q, %q, %q", s.Envelope, EnvelopeRaw, EnvelopeJSON, EnvelopeCEBinary, EnvelopeCEStructed, EnvelopeAvro, EnvelopeJSONSchema))
	}

	for _, err := range s.Trace.normalize(s.Kind) {
		add(err)
	}
	if t := &s.Trace; t.CorrelationIDColumn != "" {
		for name := range s.Headers {
			if strings.EqualFold(name, t.CorrelationIDHeader) {
				add(kerr("trace.correlation_id_column", "header %q is also a template in [mapping.headers]: use one of the two", name))
			}
		}
		if slices.Contains(s.reservedHeaders(), strings.ToLower(t.CorrelationIDHeader)) {
			add(kerr("trace.correlation_id_header", "header %q is set by the mapping itself (kind %q, envelope %q)", t.CorrelationIDHeader, s.Kind, s.Envelope))
		}
	}

	for _, name := range sortedKeys(s.Headers) {
		switch {
		case strings.TrimSpace(name) == "":
			add(kerr("headers", "a header name is empty"))
		case slices.Contains(s.reservedHeaders(), strings.ToLower(name)):
			add(kerr("headers."+name, "header %q is set by the mapping itself (kind %q, envelope %q)", name, s.Kind, s.Envelope))
		}
	}
	return errs
}

// reservedHeaders are the header names the mapping writes itself.
func (s *Spec) reservedHeaders() []string {
	var h []string
	switch s.Kind {
	case KindOutbox:
		h = append(h, "id", "type")
	case KindChangelog:
		if s.Changelog.TypeColumn != "" {
			h = append(h, "type")
		}
		if s.Envelope == EnvelopeRaw {
			h = append(h, "op", "unchanged_toast")
		}
	case KindTable:
		if s.Envelope == EnvelopeRaw || s.Envelope != EnvelopeJSON && s.Schema.Value == SchemaValueRow {
			h = append(h, "op", "unchanged_toast")
		}
	}
	switch s.Envelope {
	case EnvelopeCEBinary:
		h = append(h, "ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type")
	case EnvelopeCEStructed:
		h = append(h, "content-type")
	}
	return h
}

func checkOnUpdate(key, v string) error {
	switch v {
	case "warn", "error":
		return nil
	}
	return kerr(key, "%q is not one of \"warn\", \"error\"", v)
}

// checkDistinct refuses two roles given the same column.
func checkDistinct(section string, cols map[string]string) error {
	seen := map[string]string{}
	for _, k := range sortedKeys(cols) {
		v := cols[k]
		if v == "" {
			continue
		}
		if other, dup := seen[v]; dup {
			return kerr(section+"."+k, "column %q is already %s.%s", v, section, other)
		}
		seen[v] = k
	}
	return nil
}

func checkList(key string, l []string) error {
	seen := map[string]bool{}
	for _, v := range l {
		if v == "" {
			return kerr(key, "an entry is empty")
		}
		if seen[v] {
			return kerr(key, "%q is listed twice", v)
		}
		seen[v] = true
	}
	return nil
}

func unused(section string, set bool, kind string) error {
	if set {
		return kerr(section, "[mapping.%s] does not apply to kind %q", section, kind)
	}
	return nil
}

func isZeroRows(r TableSpec) bool {
	return len(r.Ops) == 0 && len(r.Include) == 0 && len(r.Exclude) == 0 && len(r.KeyColumns) == 0 && r.Tombstones == nil
}

func isZeroChangelog(c ChangelogSpec) bool {
	return c.TableColumn == "" && c.SchemaColumn == "" && c.OpColumn == "" && c.OldColumn == "" &&
		c.NewColumn == "" && c.TypeColumn == "" && c.TimeColumn == "" && c.IDColumn == "" &&
		len(c.KeyFields) == 0 && c.Tombstones == nil && c.OnUpdate == ""
}

// checkTopicName applies Kafka's rules for topic names to a literal name.
func checkTopicName(key, t string) error {
	if t == "" {
		return kerr(key, "is empty")
	}
	if t == "." || t == ".." {
		return kerr(key, "%q is not a valid topic name", t)
	}
	if len(t) > 249 {
		return kerr(key, "topic name is %d characters long; Kafka allows 249", len(t))
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return kerr(key, "%q: a topic name may only contain ASCII letters, digits, '.', '_' and '-'", t)
		}
	}
	return nil
}

// validTableName checks "schema.table" (after QualifyTable).
func validTableName(t string) bool {
	parts := strings.Split(t, ".")
	if len(parts) != 2 {
		return false
	}
	for _, p := range parts {
		if p == "" || strings.TrimSpace(p) != p {
			return false
		}
	}
	return true
}

// placeholder is the template that stands for a column's value.
func placeholder(col string) string {
	if _, reserved := reservedVars[col]; reserved {
		return "{col:" + col + "}"
	}
	return "{" + col + "}"
}

// escapeLiteral doubles braces so s stands for itself in a template.
func escapeLiteral(s string) string {
	return strings.NewReplacer("{", "{{", "}", "}}").Replace(s)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func quoteList(l []string) string {
	q := make([]string, len(l))
	for i, v := range l {
		q[i] = fmt.Sprintf("%q", v)
	}
	return strings.Join(q, ", ")
}

func ptr[T any](v T) *T { return &v }

// registryEnvelope tells the envelopes published through the schema registry.
func (s *Spec) registryEnvelope() bool {
	return s.Envelope == EnvelopeAvro || s.Envelope == EnvelopeJSONSchema
}

// normalizeSchema fills and checks [mapping.schema].
func (s *Spec) normalizeSchema() error {
	sc := &s.Schema
	if !s.registryEnvelope() {
		if *sc != (SchemaSpec{}) {
			return kerr("schema", "[mapping.schema] is only used with envelope %q or %q, not %q", EnvelopeAvro, EnvelopeJSONSchema, s.Envelope)
		}
		return nil
	}
	if sc.Value == "" {
		sc.Value = SchemaValueChange
	}
	if sc.Compatibility == "" {
		sc.Compatibility = "BACKWARD"
	}
	switch sc.Value {
	case SchemaValueChange:
	case SchemaValueRow:
		if s.Kind != KindTable {
			return kerr("schema.value", "%q is for kind %q; a changelog's row images are JSON without column types", sc.Value, KindTable)
		}
		if slices.Contains(s.Rows.Ops, "truncate") {
			return kerr("rows.ops", "\"truncate\" has no row to carry with schema.value = %q", SchemaValueRow)
		}
	default:
		return kerr("schema.value", "%q is not %q or %q", sc.Value, SchemaValueChange, SchemaValueRow)
	}
	up := strings.ToUpper(sc.Compatibility)
	if slices.Contains(compatibilityLevels, up) {
		sc.Compatibility = up
	} else if sc.Compatibility != CompatibilityRegistry {
		return kerr("schema.compatibility", "%q is not one of %s or %q", sc.Compatibility, quoteList(compatibilityLevels), CompatibilityRegistry)
	}
	return nil
}
