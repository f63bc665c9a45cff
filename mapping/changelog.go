package mapping

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/cdcrelay/cdcrelay/replication"
)

// mapChangelog maps a row inserted by a trigger into a change table (one row
// per change of some source table: its name, the operation, the old and new
// row as JSON, optionally a type, a time and an id) to an event about the
// source table. Like an outbox, the change table is insert-only: deletes of
// its rows (clean-up) are ignored and updates follow changelog.on_update.
//
// In every template of a changelog mapping, {schema}, {table} and {op} are
// the SOURCE table's schema and name and the operation, read from the row;
// {column} is a column of the change table.
func (r *rule) mapChangelog(v *rowView) ([]Event, error) {
	c := v.c
	cl := &r.spec.Changelog
	switch c.Op {
	case replication.OpInsert, replication.OpRead:
	case replication.OpUpdate:
		return nil, r.onUpdate(c, cl.OnUpdate, "changelog.on_update")
	default:
		return nil, nil
	}
	text := func(col, what string) (string, error) {
		val, err := v.current(col)
		if err != nil {
			return "", err
		}
		if val.Kind != replication.ValueText {
			return "", &colError{col: col, err: fmt.Errorf("the %s is NULL", what)}
		}
		if !utf8.Valid(val.Text) {
			return "", &colError{col: col, err: fmt.Errorf("the %s is not valid UTF-8", what)}
		}
		return string(val.Text), nil
	}
	srcTable, err := text(cl.TableColumn, "source table")
	if err != nil {
		return nil, err
	}
	srcSchema := c.Relation.Schema
	if s, t, ok := strings.Cut(srcTable, "."); ok {
		srcSchema, srcTable = s, t
	}
	if cl.SchemaColumn != "" {
		if srcSchema, err = text(cl.SchemaColumn, "source schema"); err != nil {
			return nil, err
		}
	}
	rawOp, err := text(cl.OpColumn, "operation")
	if err != nil {
		return nil, err
	}
	op, ok := changelogOp(rawOp)
	if !ok {
		return nil, &colError{col: cl.OpColumn, err: fmt.Errorf("operation %q is not INSERT, UPDATE, DELETE or TRUNCATE", rawOp)}
	}
	image := func(col string) ([]byte, error) {
		val, err := v.current(col)
		if err != nil {
			return nil, err
		}
		if val.Kind == replication.ValueNull {
			return nil, nil
		}
		var buf bytes.Buffer
		if !utf8.Valid(val.Text) || json.Compact(&buf, val.Text) != nil {
			return nil, &colError{col: col, err: errors.New("value is not valid JSON")}
		}
		return buf.Bytes(), nil
	}
	before, err := image(cl.OldColumn)
	if err != nil {
		return nil, err
	}
	after, err := image(cl.NewColumn)
	if err != nil {
		return nil, err
	}

	env := v.env(srcSchema, srcTable, op)
	b := &built{env: env, time: c.CommitTime, id: eventID(c.Pos), dataKind: dataJSON, rawKind: dataJSON}
	if cl.IDColumn != "" {
		if b.id, err = text(cl.IDColumn, "event id"); err != nil {
			return nil, err
		}
	}
	var typ replication.Value
	if cl.TypeColumn != "" {
		if typ, err = v.current(cl.TypeColumn); err != nil {
			return nil, err
		}
		if typ.Kind == replication.ValueText {
			if !utf8.Valid(typ.Text) {
				return nil, &colError{col: cl.TypeColumn, err: errors.New("the event type is not valid UTF-8")}
			}
			b.typ = string(typ.Text)
			b.headers = append(b.headers, Header{Key: "type", Value: typ.Text})
		}
	}
	if b.typ == "" {
		b.typ = srcSchema + "." + srcTable + "." + op
	}
	var evTime []byte // the time column's JSON, when set
	if cl.TimeColumn != "" {
		tv, err := v.current(cl.TimeColumn)
		if err != nil {
			return nil, err
		}
		if tv.Kind == replication.ValueText {
			t, err := parseEventTime(v.colType(cl.TimeColumn), tv.Text)
			if err != nil {
				return nil, &colError{col: cl.TimeColumn, err: err}
			}
			if !t.IsZero() {
				b.time = t
			}
			if evTime, err = EncodeValue(nil, v.colType(cl.TimeColumn), tv.Text); err != nil {
				return nil, &colError{col: cl.TimeColumn, err: err}
			}
		}
	}

	if b.topic, err = expandTopic(r.topic, env); err != nil {
		var ce *colError
		if !errors.As(err, &ce) {
			// {schema}/{table} come from the source table's column.
			err = &colError{col: cl.TableColumn, err: err}
		}
		return nil, fmt.Errorf("topic: %w", err)
	}
	img, imgCol := after, cl.NewColumn
	if op == "delete" {
		img, imgCol = before, cl.OldColumn
	}
	switch {
	case r.key != nil:
		k, err := r.key.expand(env)
		if err != nil {
			return nil, fmt.Errorf("key: %w", err)
		}
		b.key = []byte(k)
	case len(cl.KeyFields) > 0 && op != "truncate":
		if b.key, err = jsonKey(img, cl.KeyFields); err != nil {
			return nil, &colError{col: imgCol, err: fmt.Errorf("changelog.key_fields: %w", err)}
		}
	}

	j := []byte(`{"id":`)
	j = appendStr(j, b.id)
	j = append(j, `,"op":`...)
	j = appendStr(j, op)
	if cl.TypeColumn != "" {
		j = append(j, `,"type":`...)
		j = appendOrNull(j, appendTextOrNil(typ))
	}
	if cl.TimeColumn != "" {
		j = append(j, `,"time":`...)
		j = appendOrNull(j, evTime)
	}
	j = append(j, `,"source":`...)
	j = r.appendSource(j, c, srcSchema, srcTable, c.Relation.QualifiedName())
	j = append(j, `,"before":`...)
	j = appendOrNull(j, before)
	j = append(j, `,"after":`...)
	j = appendOrNull(j, after)
	b.json = append(j, '}')
	b.data = b.json
	b.raw = appendOrNull(nil, img)
	b.rawHeaders = append(b.rawHeaders, Header{Key: "op", Value: []byte(op)})
	if v.reg != nil {
		b.contract = v.reg.event
	}
	if r.spec.Envelope == EnvelopeAvro {
		a := appendAvroString(nil, b.id)
		a = appendAvroString(a, op)
		if cl.TypeColumn != "" {
			if typ.Kind == replication.ValueText {
				a = appendAvroBytes(append(a, 2), typ.Text)
			} else {
				a = append(a, 0)
			}
		}
		if cl.TimeColumn != "" {
			if evTime != nil {
				// A JSON string of ASCII without escapes.
				a = appendAvroBytes(append(a, 2), evTime[1:len(evTime)-1])
			} else {
				a = append(a, 0)
			}
		}
		a = r.appendAvroSource(a, c, srcSchema, srcTable, c.Relation.QualifiedName())
		a = appendAvroNullable(a, before)
		b.avro = appendAvroNullable(a, after)
	}

	r.readTrace(v, b)
	ev, err := r.event(b)
	if err != nil {
		return nil, err
	}
	evs := []Event{ev}
	if op == "delete" && *cl.Tombstones && b.key != nil {
		evs = append(evs, r.tombstone(b, b.key, nil))
	}
	return evs, nil
}

// changelogOp reads a trigger's operation: TG_OP's words, their initials or
// Debezium's letters, in any case.
func changelogOp(s string) (string, bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "insert", "i", "c", "create":
		return "insert", true
	case "update", "u":
		return "update", true
	case "delete", "d":
		return "delete", true
	case "truncate", "t":
		return "truncate", true
	}
	return "", false
}

// jsonKey builds {"field":value,...} from fields of a JSON object, in the
// order the fields are listed.
func jsonKey(obj []byte, fields []string) ([]byte, error) {
	if obj == nil {
		return nil, errors.New("the row image is NULL")
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		return nil, errors.New("the row image is not a JSON object")
	}
	k := []byte{'{'}
	for i, f := range fields {
		val, ok := m[f]
		if !ok {
			return nil, fmt.Errorf("field %q is missing from the row image", f)
		}
		if i > 0 {
			k = append(k, ',')
		}
		k = appendStr(k, f)
		k = append(k, ':')
		var buf bytes.Buffer
		if err := json.Compact(&buf, val); err != nil {
			return nil, err
		}
		k = append(k, buf.Bytes()...)
	}
	return append(k, '}'), nil
}

// appendTextOrNil is a text value as a JSON string, nil for NULL.
func appendTextOrNil(v replication.Value) []byte {
	if v.Kind != replication.ValueText {
		return nil
	}
	return appendStr(nil, string(v.Text))
}
