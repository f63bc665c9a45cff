package mapping

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/cdcrelay/cdcrelay/replication"
)

// RowError is a change that its mapping cannot turn into an event. It names
// the table, the position and, where one is to blame, the column. The daemon
// hands it to [Mapper.DeadLetter].
type RowError struct {
	Table  string
	Pos    replication.Pos
	Column string
	Reason string
}

func (e *RowError) Error() string {
	s := fmt.Sprintf("table %s at lsn %s (change %d)", e.Table, e.Pos.CommitLSN, e.Pos.Index)
	if e.Column != "" {
		s += fmt.Sprintf(", column %q", e.Column)
	}
	return s + ": " + e.Reason
}

// Mapper maps changes of the configured tables to events. It holds no
// mutable state after [New] but a cache of per-Relation facts (behind a
// mutex), and is safe for concurrent use.
type Mapper struct {
	rules map[string]*rule // by "schema.table"
	order []string
	opts  options

	relMu sync.Mutex
	rels  map[*replication.Relation]*relInfo
}

// relInfo is what Map derives from a Relation alone. A Relation never changes
// once the stream has made it (ALTER TABLE brings a new one), so this is
// worked out once per Relation rather than once per row (building the
// column index was 6 % of the relay's CPU on an outbox backlog).
type relInfo struct {
	rule  *rule // nil: the table is not mapped
	idx   map[string]int
	probs []relProblem
	reg   *relContract // the registry envelopes' schemas
	// traced: the table has one of the mapping's trace columns (most have
	// none, and then no row needs looking at for them).
	traced bool
}

// maxCachedRelations bounds the cache: every session and every ALTER TABLE
// brings new Relations, and a relay runs for months.
const maxCachedRelations = 1024

func (m *Mapper) relation(rel *replication.Relation) *relInfo {
	m.relMu.Lock()
	ri, ok := m.rels[rel]
	m.relMu.Unlock()
	if ok {
		return ri
	}
	ri = &relInfo{}
	if r, ok := m.rules[rel.QualifiedName()]; ok {
		ri.rule = r
		ri.idx = columnIndex(rel)
		ri.probs = r.checkRelation(rel, ri.idx)
		if r.spec.registryEnvelope() {
			ri.reg = r.contractFor(rel, ri.idx)
		}
		for _, col := range r.spec.Trace.columns() {
			if _, ok := ri.idx[col]; ok && col != "" {
				ri.traced = true
			}
		}
	}
	m.relMu.Lock()
	if m.rels == nil || len(m.rels) >= maxCachedRelations {
		m.rels = map[*replication.Relation]*relInfo{}
	}
	m.rels[rel] = ri
	m.relMu.Unlock()
	return ri
}

// Option tunes a [Mapper] with facts that are not part of a [[mapping]] section.
type Option func(*options)

type options struct {
	relayName string
	database  string
	warn      func(*RowError)
	// traceInvalid hears of trace contexts left out as invalid.
	traceInvalid func(*RowError)
}

// WithRelayName names the relay; the default dead-letter topic is
// "cdcrelay.dlq.<name>" ("cdcrelay.dlq.default" without it).
func WithRelayName(name string) Option { return func(o *options) { o.relayName = name } }

// WithDatabase names the source database, for the envelopes' source.db and
// the default CloudEvents source.
func WithDatabase(name string) Option { return func(o *options) { o.database = name } }

// WithWarnFunc receives the rows a mapping skips on purpose but that an
// operator should hear about: an updated outbox or changelog row with
// on_update = "warn". The daemon logs them (and counts them).
func WithWarnFunc(f func(*RowError)) Option { return func(o *options) { o.warn = f } }

// WithTraceContextFunc receives the rows whose trace context (traceparent,
// tracestate or Debezium's span context column) is invalid: their events
// are published without it. The daemon counts them. It is called from Map,
// so it must be cheap and safe for concurrent use.
func WithTraceContextFunc(f func(*RowError)) Option {
	return func(o *options) { o.traceInvalid = f }
}

type rule struct {
	spec     Spec
	index    int // 1-based position in the configuration
	m        *Mapper
	topic    *template
	key      *template // nil: the kind's default
	headers  []namedTemplate
	ceSource *template
	ceType   *template
	dlqTopic string
	// payloadSubject is outbox.payload_subject (nil: "<topic>-value").
	payloadSubject *template
}

type namedTemplate struct {
	name string
	t    *template
}

// New validates specs and builds a Mapper. It checks everything that does not
// need the live schema (CheckRelation does the rest) and reports every problem
// at once, each naming the mapping by its table and the offending key:
//
//	mapping "public.orders": key "rows.key_columns": "id" is listed twice
func New(specs []Spec, opts ...Option) (*Mapper, error) {
	m := &Mapper{rules: map[string]*rule{}}
	for _, o := range opts {
		o(&m.opts)
	}
	var errs []error
	for i := range specs {
		s := specs[i]
		s.Headers = cloneMap(s.Headers)
		fail := func(err error) {
			ce := &ConfigError{Index: i + 1, Table: s.Table, Msg: err.Error()}
			var ke *keyError
			if errors.As(err, &ke) {
				ce.Key, ce.Msg = ke.key, ke.msg
			}
			errs = append(errs, ce)
		}
		if s.Table == "" {
			fail(kerr("table", "is required"))
			continue
		}
		s.Table = QualifyTable(s.Table)
		if !validTableName(s.Table) {
			fail(kerr("table", "%q is not \"schema.table\"", specs[i].Table))
			continue
		}
		if prev, dup := m.rules[s.Table]; dup {
			fail(kerr("table", "the table is mapped twice (mapping %d and %d)", prev.index, i+1))
			continue
		}
		r, ruleErrs := m.newRule(s)
		for _, err := range ruleErrs {
			fail(err)
		}
		if len(ruleErrs) == 0 {
			r.index = i + 1
			m.rules[s.Table] = r
			m.order = append(m.order, s.Table)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
}

// ConfigError is one problem with one [[mapping]] section, from [New] or
// [Mapper.CheckRelation]. New and CheckRelation return one or several,
// joined with [errors.Join]; walk them with Unwrap() []error or errors.As.
type ConfigError struct {
	Index int    // 1-based position of the [[mapping]] section in relay.toml
	Table string // the section's table, "schema.table" ("" when missing)
	Key   string // the offending key, e.g. "rows.key_columns", "headers.tenant"
	Msg   string
}

// Error reads `mapping "public.orders": key "rows.key_columns": ...`
// (`mapping 3: ...` when the section has no table).
func (e *ConfigError) Error() string {
	s := fmt.Sprintf("mapping %d", e.Index)
	if e.Table != "" {
		s = fmt.Sprintf("mapping %q", e.Table)
	}
	if e.Key != "" {
		s += fmt.Sprintf(": key %q", e.Key)
	}
	return s + ": " + e.Msg
}

func (m *Mapper) newRule(s Spec) (*rule, []error) {
	errs := s.normalize(m.opts.database)
	if len(errs) > 0 && (s.Kind == "" || s.Envelope == "") {
		return nil, errs
	}
	r := &rule{spec: s, m: m}
	parse := func(key, src string) *template {
		if src == "" {
			return nil
		}
		t, err := parseTemplate(src)
		if err != nil {
			errs = append(errs, kerr(key, "%v", err))
		}
		return t
	}
	r.topic = parse("topic", s.Topic)
	if r.topic != nil {
		if lit, ok := r.topic.literal(); ok {
			if err := checkTopicName("topic", lit); err != nil {
				errs = append(errs, err)
			}
		}
	}
	r.key = parse("key", s.Key)
	if s.Kind == KindTable && slices.Contains(s.Rows.Ops, "truncate") {
		if cols := r.topic.columns(); len(cols) > 0 {
			errs = append(errs, kerr("rows.ops", "a truncate has no row, but topic names column %q: drop \"truncate\" or the column", cols[0]))
		}
	}
	for _, name := range sortedKeys(s.Headers) {
		if t := parse("headers."+name, s.Headers[name]); t != nil {
			r.headers = append(r.headers, namedTemplate{name: name, t: t})
		}
	}
	r.payloadSubject = parse("outbox.payload_subject", s.Outbox.PayloadSubject)
	r.ceSource = parse("cloudevents.source", s.CloudEvents.Source)
	r.ceType = parse("cloudevents.type", s.CloudEvents.Type)
	r.dlqTopic = s.DeadLetterTopic
	if r.dlqTopic == "" {
		name := m.opts.relayName
		if name == "" {
			name = "default"
		}
		r.dlqTopic = "cdcrelay.dlq." + name
	}
	return r, errs
}

// QualifyTable returns "schema.table", adding "public." when no schema is given.
func QualifyTable(t string) string {
	if t != "" && !strings.Contains(t, ".") {
		return "public." + t
	}
	return t
}

// Tables lists the mapped tables as "schema.table", in configuration order.
func (m *Mapper) Tables() []string { return append([]string(nil), m.order...) }

// Spec returns the normalized spec (defaults filled in) of a mapped table.
func (m *Mapper) Spec(table string) (Spec, bool) {
	r, ok := m.rules[table]
	if !ok {
		return Spec{}, false
	}
	return r.spec, true
}

// Map maps one change to its events, in the order they are to be published.
// A change of an unmapped table, or one its mapping filters out, maps to
// nothing. A change the mapping cannot carry is a *[RowError]; the caller
// decides with [Mapper.DeadLetter] what becomes of it.
func (m *Mapper) Map(c *replication.Change) ([]Event, error) {
	if c == nil || c.Relation == nil {
		return nil, nil
	}
	ri := m.relation(c.Relation)
	r := ri.rule
	if r == nil {
		return nil, nil
	}
	c = keyOnlyOld(c)
	v := &rowView{c: c, rel: c.Relation, idx: ri.idx, reg: ri.reg, traced: ri.traced}
	if probs := ri.probs; len(probs) > 0 {
		p := probs[0]
		return nil, &RowError{Table: r.spec.Table, Pos: c.Pos, Column: p.column,
			Reason: fmt.Sprintf("the table no longer fits the mapping: key %q: %s", p.key, p.msg)}
	}
	if ri.reg != nil && ri.reg.problem != "" {
		return nil, &RowError{Table: r.spec.Table, Pos: c.Pos, Reason: "the table has no Avro schema: " + ri.reg.problem}
	}
	var evs []Event
	var err error
	switch r.spec.Kind {
	case KindOutbox:
		evs, err = r.mapOutbox(v)
	case KindTable:
		evs, err = r.mapTable(v)
	case KindChangelog:
		evs, err = r.mapChangelog(v)
	}
	if err != nil {
		return nil, r.rowError(c, err)
	}
	return evs, nil
}

// rowError wraps err as the *RowError of change c.
func (r *rule) rowError(c *replication.Change, err error) *RowError {
	var re *RowError
	if errors.As(err, &re) {
		return re
	}
	e := &RowError{Table: r.spec.Table, Pos: c.Pos, Reason: err.Error()}
	var ce *colError
	if errors.As(err, &ce) {
		e.Column = ce.col
		e.Reason = strings.Replace(e.Reason, fmt.Sprintf("column %q: ", ce.col), "", 1)
	}
	return e
}

// CheckRelation checks a mapped table's live schema against its mapping:
// every column a template, a column key or a key list names must exist, and
// a table with REPLICA IDENTITY FULL and no primary key needs its key chosen. The daemon calls it
// when a Relation arrives (at start and after ALTER TABLE); setup and check
// call it with the schema they read. A relation of an unmapped table is fine.
// Errors name the mapping and the key, as [New]'s do.
func (m *Mapper) CheckRelation(rel *replication.Relation) error {
	if rel == nil {
		return nil
	}
	r, ok := m.rules[rel.QualifiedName()]
	if !ok {
		return nil
	}
	var errs []error
	for _, p := range r.checkRelation(rel, columnIndex(rel)) {
		errs = append(errs, &ConfigError{Index: r.index, Table: r.spec.Table, Key: p.key, Msg: p.msg})
	}
	return errors.Join(errs...)
}

type relProblem struct {
	key, column, msg string
}

func (r *rule) checkRelation(rel *replication.Relation, idx map[string]int) []relProblem {
	var probs []relProblem
	need := func(key, col string) {
		if col == "" {
			return
		}
		if _, ok := idx[col]; !ok {
			probs = append(probs, relProblem{key, col, fmt.Sprintf("column %q does not exist in %s", col, rel.QualifiedName())})
		}
	}
	needTime := func(key, col string) {
		i, ok := idx[col]
		if col == "" || !ok {
			return
		}
		if n := baseName(rel.Columns[i].Type); n != "timestamptz" && n != "timestamp" {
			probs = append(probs, relProblem{key, col, fmt.Sprintf("column %q is %s, not timestamptz or timestamp", col, n)})
		}
	}
	tmpl := func(key string, t *template) {
		for _, col := range t.columns() {
			need(key, col)
		}
	}
	tmpl("topic", r.topic)
	tmpl("key", r.key)
	for _, h := range r.headers {
		tmpl("headers."+h.name, h.t)
	}
	tmpl("outbox.payload_subject", r.payloadSubject)
	tmpl("cloudevents.source", r.ceSource)
	tmpl("cloudevents.type", r.ceType)
	r.checkTraceRelation(need)
	s := &r.spec
	switch s.Kind {
	case KindOutbox:
		o := &s.Outbox
		need("outbox.id_column", o.ID)
		need("outbox.aggregate_type_column", o.AggregateType)
		need("outbox.aggregate_id_column", o.AggregateID)
		need("outbox.type_column", o.Type)
		need("outbox.payload_column", o.Payload)
		need("outbox.timestamp_column", o.Timestamp)
		needTime("outbox.timestamp_column", o.Timestamp)
	case KindChangelog:
		c := &s.Changelog
		need("changelog.table_column", c.TableColumn)
		need("changelog.schema_column", c.SchemaColumn)
		need("changelog.op_column", c.OpColumn)
		need("changelog.old_column", c.OldColumn)
		need("changelog.new_column", c.NewColumn)
		need("changelog.type_column", c.TypeColumn)
		need("changelog.time_column", c.TimeColumn)
		needTime("changelog.time_column", c.TimeColumn)
		need("changelog.id_column", c.IDColumn)
	case KindTable:
		t := &s.Rows
		for _, col := range t.Include {
			need("rows.include_columns", col)
		}
		for _, col := range t.Exclude {
			need("rows.exclude_columns", col)
		}
		for _, col := range t.KeyColumns {
			need("rows.key_columns", col)
		}
		if slices.Contains(t.Ops, "delete") && rel.ReplicaIdentity != 'f' {
			// A delete carries only the replica identity's columns.
			for _, tk := range []struct {
				key string
				t   *template
			}{{"topic", r.topic}, {"key", r.key}} {
				for _, col := range tk.t.columns() {
					if i, ok := idx[col]; ok && !rel.Columns[i].Key {
						probs = append(probs, relProblem{tk.key, col, fmt.Sprintf(
							"column %q is not part of %s's replica identity, so a delete does not carry it: use key columns, drop \"delete\" from rows.ops or set REPLICA IDENTITY FULL", col, rel.QualifiedName())})
					}
				}
			}
		}
		if len(t.KeyColumns) == 0 && r.key == nil && rel.ReplicaIdentity == 'f' && len(rel.Columns) > 1 &&
			!slices.ContainsFunc(rel.Columns, func(c replication.Column) bool { return c.PrimaryKey }) {
			// With a primary key, the key is the primary key's columns.
			probs = append(probs, relProblem{"rows.key_columns", "",
				fmt.Sprintf("%s has REPLICA IDENTITY FULL, which marks every column as a key column, and no primary key: name the key with rows.key_columns (or key)", rel.QualifiedName())})
		}
	}
	return probs
}

// baseName is the type's name after domains are resolved.
func baseName(t *replication.Type) string {
	for i := 0; t != nil && t.Kind == 'd' && t.Base != nil && i < maxTypeDepth; i++ {
		t = t.Base
	}
	if t == nil {
		return "unknown"
	}
	return t.Name
}

func columnIndex(rel *replication.Relation) map[string]int {
	idx := make(map[string]int, len(rel.Columns))
	for i, col := range rel.Columns {
		idx[col.Name] = i
	}
	return idx
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
