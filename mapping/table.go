package mapping

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/cdcrelay/cdcrelay/replication"
)

// mapTable turns a business table's row change into an event with before and
// after images (json envelope), or the row alone (raw), keyed by the replica
// identity's columns, rows.key_columns or the key template. A delete is
// followed by a tombstone for its key (rows.tombstones, default true); an
// update that changes the key is preceded by a tombstone for the old key.
func (r *rule) mapTable(v *rowView) ([]Event, error) {
	c := v.c
	rel := c.Relation
	if !r.wantsOp(c.Op) {
		return nil, nil
	}
	op := c.Op.String()
	env := v.env(rel.Schema, rel.Table, op)
	b := &built{env: env, time: c.CommitTime, id: eventID(c.Pos), dataKind: dataJSON, rawKind: dataJSON}
	var err error
	if b.topic, err = expandTopic(r.topic, env); err != nil {
		return nil, fmt.Errorf("topic: %w", err)
	}

	var before, after []byte
	var unchanged []string
	avro := r.spec.Envelope == EnvelopeAvro
	if c.Op != replication.OpTruncate {
		sel := r.selection(rel)
		image := func(vals, fill []replication.Value) ([]byte, []string, error) {
			if avro {
				return appendAvroImage(nil, v.reg.cols, vals, fill)
			}
			return appendImage(nil, rel, vals, fill, sel)
		}
		if c.Old != nil {
			var u []string
			if before, u, err = image(c.Old, nil); err != nil {
				return nil, err
			}
			unchanged = append(unchanged, u...)
		}
		if c.Op != replication.OpDelete {
			var u []string
			if after, u, err = image(c.New, c.Old); err != nil {
				return nil, err
			}
			for _, col := range u {
				if !slices.Contains(unchanged, col) {
					unchanged = append(unchanged, col)
				}
			}
		}
		if b.key, err = r.tableKey(v, env.col); err != nil {
			return nil, fmt.Errorf("key: %w", err)
		}
	}
	if v.reg != nil {
		b.contract = v.reg.event
	}

	if avro {
		if r.spec.Schema.Value == SchemaValueRow {
			b.avro = after
			if c.Op == replication.OpDelete {
				b.avro = before
			}
		} else {
			a := appendAvroString(nil, b.id)
			a = appendAvroString(a, op)
			a = r.appendAvroSource(a, c, rel.Schema, rel.Table, "")
			for _, img := range [][]byte{before, after} {
				if img == nil {
					a = append(a, 0)
				} else {
					a = append(append(a, 2), img...)
				}
			}
			b.avro = appendAvroNames(a, unchanged)
		}
	} else {
		j := []byte(`{"id":`)
		j = appendStr(j, b.id)
		j = append(j, `,"op":`...)
		j = appendStr(j, op)
		j = append(j, `,"source":`...)
		j = r.appendSource(j, c, rel.Schema, rel.Table, "")
		j = append(j, `,"before":`...)
		j = appendOrNull(j, before)
		j = append(j, `,"after":`...)
		j = appendOrNull(j, after)
		if len(unchanged) > 0 {
			j = append(j, `,"unchanged_toast":`...)
			j = appendNames(j, unchanged)
		}
		b.json = append(j, '}')
		b.data = b.json
		if c.Op == replication.OpDelete {
			b.raw = appendOrNull(nil, before)
		} else {
			b.raw = appendOrNull(nil, after)
		}
	}
	b.rawHeaders = append(b.rawHeaders, Header{Key: "op", Value: []byte(op)})
	if len(unchanged) > 0 {
		b.rawHeaders = append(b.rawHeaders, Header{Key: "unchanged_toast", Value: appendNames(nil, unchanged)})
	}

	r.readTrace(v, b)
	ev, err := r.event(b)
	if err != nil {
		return nil, err
	}
	tombstones := *r.spec.Rows.Tombstones
	var tomb *Contract
	if v.reg != nil {
		tomb = v.reg.tomb
	}
	var evs []Event
	if c.Op == replication.OpUpdate && tombstones && b.key != nil {
		if old, ok := r.oldKey(v); ok && !bytes.Equal(old, b.key) {
			evs = append(evs, r.tombstone(b, old, tomb))
		}
	}
	evs = append(evs, ev)
	if c.Op == replication.OpDelete && tombstones && b.key != nil {
		evs = append(evs, r.tombstone(b, b.key, tomb))
	}
	return evs, nil
}

func (r *rule) wantsOp(op replication.Op) bool {
	ops := r.spec.Rows.Ops
	if op == replication.OpRead && slices.Contains(ops, "insert") {
		return true
	}
	return slices.Contains(ops, op.String())
}

// selection is the include/exclude filter as a mask over the columns; nil
// selects all.
func (r *rule) selection(rel *replication.Relation) []bool {
	t := &r.spec.Rows
	if len(t.Include) == 0 && len(t.Exclude) == 0 {
		return nil
	}
	sel := make([]bool, len(rel.Columns))
	for i, col := range rel.Columns {
		if len(t.Include) > 0 {
			sel[i] = slices.Contains(t.Include, col.Name)
		} else {
			sel[i] = !slices.Contains(t.Exclude, col.Name)
		}
	}
	return sel
}

// keyColumns are rows.key_columns, else the replica identity's columns.
func (r *rule) keyColumns(rel *replication.Relation) []string {
	if len(r.spec.Rows.KeyColumns) > 0 {
		return r.spec.Rows.KeyColumns
	}
	var cols []string
	if rel.ReplicaIdentity == 'f' {
		// FULL marks every column as a replica identity column; the
		// primary key still identifies the row.
		for _, col := range rel.Columns {
			if col.PrimaryKey {
				cols = append(cols, col.Name)
			}
		}
		return cols
	}
	for _, col := range rel.Columns {
		if col.Key {
			cols = append(cols, col.Name)
		}
	}
	return cols
}

// tableKey is the record key: the key template, else a JSON object of the
// key columns ({"id":42}), else no key.
func (r *rule) tableKey(v *rowView, value func(string) (replication.Value, error)) ([]byte, error) {
	if r.key != nil {
		k, err := r.key.expand(&tmplEnv{schema: v.rel.Schema, table: v.rel.Table, op: v.c.Op.String(), col: value})
		return []byte(k), err
	}
	cols := r.keyColumns(v.rel)
	if len(cols) == 0 {
		return nil, nil
	}
	if v.reg != nil && r.spec.Envelope == EnvelopeAvro {
		return avroKey(v.reg.keyCols, value)
	}
	k := []byte{'{'}
	for i, col := range cols {
		val, err := value(col)
		if err != nil {
			return nil, err
		}
		if i > 0 {
			k = append(k, ',')
		}
		k = appendStr(k, col)
		k = append(k, ':')
		if val.Kind == replication.ValueNull {
			k = append(k, "null"...)
		} else if k, err = EncodeValue(k, v.colType(col), val.Text); err != nil {
			return nil, &colError{col: col, err: err}
		}
	}
	return append(k, '}'), nil
}

// oldKey is an update's key before the change, when the old image has it.
func (r *rule) oldKey(v *rowView) ([]byte, bool) {
	if v.c.Old == nil {
		return nil, false
	}
	k, err := r.tableKey(v, func(col string) (replication.Value, error) {
		val, ok := v.old(col)
		if !ok {
			return val, errAbsent
		}
		return val, nil
	})
	return k, err == nil && k != nil
}

func appendOrNull(dst, obj []byte) []byte {
	if obj == nil {
		return append(dst, "null"...)
	}
	return append(dst, obj...)
}

// avroKey writes the key columns' values as the Avro key record.
func avroKey(cols []avroCol, value func(string) (replication.Value, error)) ([]byte, error) {
	var k []byte
	for i := range cols {
		c := &cols[i]
		val, err := value(c.name)
		if err != nil {
			return nil, err
		}
		switch {
		case val.Kind == replication.ValueText:
			if !c.notNull {
				k = append(k, 2)
			}
			if k, err = c.typ.appendValue(k, c.pg, val.Text); err != nil {
				return nil, &colError{col: c.name, err: err}
			}
		case c.notNull:
			return nil, &colError{col: c.name, err: fmt.Errorf("the key column is NULL, but the key schema's field %q cannot be null", c.field)}
		default:
			k = append(k, 0)
		}
	}
	return k, nil
}
