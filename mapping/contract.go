package mapping

import (
	"crypto/sha256"
	"fmt"
	"strconv"

	"github.com/cdcrelay/cdcrelay/replication"
)

// Contracts: the schemas of events published through a schema registry
// (envelopes "avro" and "json-schema", outbox payload_schema = "registry").
// The mapping derives them, purely, from the table's Relation and the
// mapping; package schema registers them and frames the bytes in the
// registry's wire format between Map and the Kafka send.

// Schema formats, as the Confluent API names them.
const (
	SchemaAvro = "AVRO"
	SchemaJSON = "JSON"
)

// Schema is one derived schema.
type Schema struct {
	Format string // SchemaAvro or SchemaJSON
	Text   string // the schema, as registered
	// Name is the record's full name ("public.orders.Envelope"), what the
	// subject naming strategies "record" and "topic_record" use.
	Name string
	// Fingerprint is the SHA-256 of Text: with the subject it keys the
	// registry lookups.
	Fingerprint [32]byte
}

func newSchema(format, name string, text []byte) *Schema {
	return &Schema{Format: format, Text: string(text), Name: name, Fingerprint: sha256.Sum256(text)}
}

// Contract says how an event's Key and Value relate to the schema registry.
// The mapping's schemas are shared by every event of a Relation: do not
// modify them.
type Contract struct {
	// Value is the schema Value is written in (Avro binary or JSON text);
	// nil for a tombstone, and with LookupSubject.
	Value *Schema
	// Key is the schema Key is written in; nil: the key is published as it
	// is (a key template's text).
	Key *Schema
	// LookupSubject is set for outbox payload_schema = "registry": Value is
	// the application's payload, to be checked against (JSON Schema) or
	// encoded in (Avro) the latest schema registered under this subject.
	LookupSubject string
	// PayloadColumn names the outbox payload column, for messages.
	PayloadColumn string
	// Compatibility is the level to set on the subjects of Key and Value
	// before registering ("" leaves the registry's setting alone).
	Compatibility string
	// Table is the mapped table, "schema.table".
	Table string
}

// avroCol is one column of a row record.
type avroCol struct {
	index   int // in the Relation's columns
	name    string
	field   string // the Avro field name
	typ     *avroType
	pg      *replication.Type
	notNull bool
}

// relContract is what the registry envelopes derive from one Relation.
type relContract struct {
	cols    []avroCol // the row image's columns
	keyCols []avroCol // the default key's columns (nil: a key template, or none)
	event   *Contract // value and key
	tomb    *Contract // key only
	problem string    // the relation cannot be carried (e.g. two columns, one Avro name)
}

// notNull tells the columns that can never be NULL. pgoutput does not say
// which columns are NOT NULL, so only the key's are taken to be: a primary
// key's columns, and an index replica identity's. Every other column is
// nullable in the derived schemas, which also keeps adding a column
// compatible under every level.
func notNull(rel *replication.Relation, col *replication.Column) bool {
	return col.PrimaryKey || col.Key && (rel.ReplicaIdentity == 'd' || rel.ReplicaIdentity == 'i')
}

// contractFor derives the schemas of rule r for rel.
func (r *rule) contractFor(rel *replication.Relation, idx map[string]int) *relContract {
	rc := &relContract{}
	mk := func(name string, keys []string) ([]avroCol, bool) {
		var cols []avroCol
		seen := map[string]string{}
		for i := range rel.Columns {
			if keys != nil {
				continue
			}
			if sel := r.selection(rel); sel != nil && !sel[i] {
				continue
			}
			cols = append(cols, r.avroCol(rel, i))
		}
		for _, k := range keys {
			if i, ok := idx[k]; ok {
				cols = append(cols, r.avroCol(rel, i))
			}
		}
		for _, c := range cols {
			if other, dup := seen[c.field]; dup && r.spec.Envelope == EnvelopeAvro {
				rc.problem = fmt.Sprintf("columns %q and %q of %s both become Avro field %q (%s)", other, c.name, rel.QualifiedName(), c.field, name)
				return nil, false
			}
			seen[c.field] = c.name
		}
		return cols, true
	}
	ns := avroNamespace(rel.Schema, rel.Table)
	s := &r.spec
	compat := s.Schema.Compatibility
	if compat == CompatibilityRegistry {
		compat = ""
	}
	rc.event = &Contract{Compatibility: compat, Table: s.Table}
	rc.tomb = &Contract{Compatibility: compat, Table: s.Table}
	var ok bool
	if s.Kind == KindTable {
		if rc.cols, ok = mk("the row", nil); !ok {
			return rc
		}
		if r.key == nil {
			if keys := r.keyColumns(rel); len(keys) > 0 {
				if rc.keyCols, ok = mk("the key", keys); !ok {
					return rc
				}
			}
		}
	}
	if s.Envelope == EnvelopeAvro {
		switch {
		case s.Kind == KindChangelog:
			rc.event.Value = newSchema(SchemaAvro, ns+".Envelope", r.changelogAvroSchema(ns))
		case s.Schema.Value == SchemaValueRow:
			rc.event.Value = newSchema(SchemaAvro, ns+".Value", appendAvroRecord(nil, "Value", ns, rc.cols))
		default:
			rc.event.Value = newSchema(SchemaAvro, ns+".Envelope", tableAvroSchema(ns, rc.cols))
		}
		if rc.keyCols != nil {
			rc.event.Key = newSchema(SchemaAvro, ns+".Key", appendAvroRecord(nil, "Key", ns, rc.keyCols))
		}
	} else {
		switch {
		case s.Kind == KindChangelog:
			rc.event.Value = newSchema(SchemaJSON, ns+".Envelope", r.changelogJSONSchema(ns))
		case s.Schema.Value == SchemaValueRow:
			rc.event.Value = newSchema(SchemaJSON, ns+".Value", jsonRowSchema(nil, ns+".Value", rc.cols, true))
		default:
			rc.event.Value = newSchema(SchemaJSON, ns+".Envelope", tableJSONSchema(ns, rc.cols))
		}
		if rc.keyCols != nil {
			rc.event.Key = newSchema(SchemaJSON, ns+".Key", jsonRowSchema(nil, ns+".Key", rc.keyCols, true))
		}
	}
	rc.tomb.Key = rc.event.Key
	return rc
}

func (r *rule) avroCol(rel *replication.Relation, i int) avroCol {
	col := &rel.Columns[i]
	return avroCol{index: i, name: col.Name, field: avroName(col.Name), typ: avroTypeOf(col.Type, col.TypeModifier),
		pg: col.Type, notNull: notNull(rel, col)}
}

// appendAvroRecord writes a record schema of cols.
func appendAvroRecord(b []byte, name, ns string, cols []avroCol) []byte {
	b = append(b, `{"type":"record","name":`...)
	b = strconv.AppendQuote(b, name)
	b = append(b, `,"namespace":`...)
	b = strconv.AppendQuote(b, ns)
	b = append(b, `,"fields":[`...)
	for i, c := range cols {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"name":`...)
		b = strconv.AppendQuote(b, c.field)
		b = append(b, `,"type":`...)
		if c.notNull {
			b = c.typ.appendSchema(b)
		} else {
			b = append(b, `["null",`...)
			b = c.typ.appendSchema(b)
			b = append(b, `],"default":null`...)
		}
		if c.field != c.name {
			b = append(b, `,"doc":`...)
			b = strconv.AppendQuote(b, "column "+c.name)
		}
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

// avroSourceSchema is the envelope's source record; changelog adds the
// change table's name.
func avroSourceSchema(b []byte, changelog bool) []byte {
	b = append(b, `{"type":"record","name":"Source","fields":[`+
		`{"name":"db","type":["null","string"],"default":null},`+
		`{"name":"schema","type":"string"},{"name":"table","type":"string"},`...)
	if changelog {
		b = append(b, `{"name":"changelog","type":"string"},`...)
	}
	return append(b, `{"name":"lsn","type":"string"},{"name":"index","type":"int"},{"name":"txid","type":"long"},`+
		`{"name":"commit_time","type":["null",{"type":"long","logicalType":"timestamp-micros"}],"default":null}]}`...)
}

// tableAvroSchema is the change envelope of a table, as the json envelope's
// fields: id, op, source, before, after, unchanged_toast.
func tableAvroSchema(ns string, cols []avroCol) []byte {
	b := []byte(`{"type":"record","name":"Envelope","namespace":`)
	b = strconv.AppendQuote(b, ns)
	b = append(b, `,"fields":[{"name":"id","type":"string"},{"name":"op","type":"string"},{"name":"source","type":`...)
	b = avroSourceSchema(b, false)
	b = append(b, `},{"name":"before","type":["null",`...)
	b = appendAvroRecord(b, "Value", ns, cols)
	b = append(b, `],"default":null},{"name":"after","type":["null","Value"],"default":null},`+
		`{"name":"unchanged_toast","type":{"type":"array","items":"string"},"default":[]}]}`...)
	return b
}

// changelogAvroSchema is a changelog's change envelope: the row images are
// the trigger's JSON, strings of it.
func (r *rule) changelogAvroSchema(ns string) []byte {
	cl := &r.spec.Changelog
	b := []byte(`{"type":"record","name":"Envelope","namespace":`)
	b = strconv.AppendQuote(b, ns)
	b = append(b, `,"fields":[{"name":"id","type":"string"},{"name":"op","type":"string"},`...)
	if cl.TypeColumn != "" {
		b = append(b, `{"name":"type","type":["null","string"],"default":null},`...)
	}
	if cl.TimeColumn != "" {
		b = append(b, `{"name":"time","type":["null","string"],"default":null},`...)
	}
	b = append(b, `{"name":"source","type":`...)
	b = avroSourceSchema(b, true)
	b = append(b, `},{"name":"before","type":["null","string"],"default":null},`+
		`{"name":"after","type":["null","string"],"default":null}]}`...)
	return b
}

// appendAvroImage writes a row image as the row record of cols. A value the
// image lacks (an unchanged TOAST value, a column a key-only old row does
// not carry) is null; unchanged TOAST columns are returned in unchanged, as
// the JSON envelope lists them.
func appendAvroImage(dst []byte, cols []avroCol, vals, fill []replication.Value) (_ []byte, unchanged []string, err error) {
	for i := range cols {
		c := &cols[i]
		val := filled(at(vals, c.index), at(fill, c.index))
		switch val.Kind {
		case replication.ValueText:
			if !c.notNull {
				dst = append(dst, 2) // union branch 1
			}
			if dst, err = c.typ.appendValue(dst, c.pg, val.Text); err != nil {
				return dst, nil, &colError{col: c.name, err: err}
			}
			continue
		case replication.ValueUnchanged:
			unchanged = append(unchanged, c.name)
		}
		if c.notNull {
			why := "is NULL"
			switch val.Kind {
			case replication.ValueUnchanged:
				why = "is an unchanged TOASTed value the stream did not send"
			case replication.ValueAbsent:
				why = "is not part of the row image the stream sent"
			}
			return dst, nil, &colError{col: c.name, err: fmt.Errorf("the value %s, but the schema's field %q cannot be null", why, c.field)}
		}
		dst = append(dst, 0) // null
	}
	return dst, unchanged, nil
}

// appendAvroSource writes the source record.
func (r *rule) appendAvroSource(dst []byte, c *replication.Change, schema, table, via string) []byte {
	if db := r.m.opts.database; db != "" {
		dst = append(dst, 2)
		dst = appendAvroString(dst, db)
	} else {
		dst = append(dst, 0)
	}
	dst = appendAvroString(dst, schema)
	dst = appendAvroString(dst, table)
	if via != "" {
		dst = appendAvroString(dst, via)
	}
	dst = appendAvroString(dst, c.Pos.CommitLSN.String())
	dst = appendVarint(dst, int64(c.Pos.Index))
	dst = appendVarint(dst, int64(c.XID))
	if c.CommitTime.IsZero() {
		return append(dst, 0)
	}
	return appendVarint(append(dst, 2), c.CommitTime.UnixMicro())
}

// appendAvroString writes a Go string (valid UTF-8 is the caller's duty:
// names, LSNs, ids that came through UTF-8 checks).
func appendAvroString(dst []byte, s string) []byte {
	dst = appendVarint(dst, int64(len(s)))
	return append(dst, s...)
}

// appendAvroNullable writes an optional JSON text as ["null","string"].
func appendAvroNullable(dst []byte, json []byte) []byte {
	if json == nil {
		return append(dst, 0)
	}
	return appendAvroBytes(append(dst, 2), json)
}

// appendAvroNames writes an array of strings.
func appendAvroNames(dst []byte, names []string) []byte {
	if len(names) > 0 {
		dst = appendVarint(dst, int64(len(names)))
		for _, n := range names {
			dst = appendAvroString(dst, n)
		}
	}
	return append(dst, 0)
}

// TableContract returns the contract that events of rel (a mapped table's
// current shape, as replication.LoadRelation reads it) would carry, and
// their topic when it does not depend on row values ("" otherwise), for
// `cdcrelay check` to compare with the registry. It returns nil for a
// table that is not mapped or whose envelope does not use the registry.
func (m *Mapper) TableContract(rel *replication.Relation) (c *Contract, topic string, err error) {
	r, ok := m.rules[rel.QualifiedName()]
	if !ok || !r.spec.registryEnvelope() {
		return nil, "", nil
	}
	rc := r.contractFor(rel, columnIndex(rel))
	if rc.problem != "" {
		return nil, "", fmt.Errorf("mapping %q: %s", r.spec.Table, rc.problem)
	}
	if r.topic != nil && len(r.topic.columns()) == 0 && r.spec.Kind == KindTable {
		topic, _ = r.topic.expand(&tmplEnv{schema: rel.Schema, table: rel.Table, op: "insert",
			col: func(string) (replication.Value, error) { return replication.Value{}, errAbsent }})
	}
	return rc.event, topic, nil
}
