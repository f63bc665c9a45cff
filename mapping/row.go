package mapping

import (
	"errors"
	"fmt"

	"github.com/cdcrelay/cdcrelay/replication"
)

// rowView is one change seen through the relation it arrived with: the
// mapping follows ALTER TABLE because it looks columns up by name in the
// change's own Relation, every time.
type rowView struct {
	c   *replication.Change
	rel *replication.Relation
	idx map[string]int
	reg *relContract // envelopes "avro" and "json-schema"
	// traced: the relation has a trace column of the mapping (readTrace).
	traced bool
}

// keyOnlyOld returns c with the columns that its old row did not carry
// marked absent. Under REPLICA IDENTITY DEFAULT or USING INDEX pgoutput sends
// the old row (of a delete, or of an update that changed the key) as a
// key-only tuple ('K') whose other columns arrive as NULL ('n'): they are not
// NULL, they are not part of the image. Left as NULL they would make a before
// image claim NULLs, and "fill" an unchanged TOAST value of the new row with
// NULL. Under FULL the old row is whole ('O') and c is returned as is.
func keyOnlyOld(c *replication.Change) *replication.Change {
	if c == nil || c.Old == nil || c.Relation == nil {
		return c
	}
	if ri := c.Relation.ReplicaIdentity; ri != 'd' && ri != 'i' {
		return c
	}
	var old []replication.Value
	for i, col := range c.Relation.Columns {
		if i >= len(c.Old) {
			break
		}
		if !col.Key && c.Old[i].Kind != replication.ValueAbsent {
			if old == nil {
				old = append([]replication.Value(nil), c.Old...)
			}
			old[i] = replication.Value{}
		}
	}
	if old == nil {
		return c
	}
	cc := *c
	cc.Old = old
	return &cc
}

var (
	errAbsent    = errors.New("value is not part of the row image the stream sent")
	errUnchanged = errors.New("value is an unchanged TOASTed value that the stream did not send (set REPLICA IDENTITY FULL to have it)")
)

// at returns value i of image vals, ValueAbsent past its end.
func at(vals []replication.Value, i int) replication.Value {
	if i < len(vals) {
		return vals[i]
	}
	return replication.Value{}
}

// current returns col's value in the row as it is after the change: New's
// for an insert, update or read, with an unchanged TOAST value filled from
// Old when Old has it; Old's for a delete.
func (v *rowView) current(col string) (replication.Value, error) {
	i, ok := v.idx[col]
	if !ok {
		return replication.Value{}, &colError{col: col, err: fmt.Errorf("no such column in %s", v.rel.QualifiedName())}
	}
	var val replication.Value
	if v.c.Op == replication.OpDelete {
		val = at(v.c.Old, i)
	} else {
		val = filled(at(v.c.New, i), at(v.c.Old, i))
	}
	switch val.Kind {
	case replication.ValueText, replication.ValueNull:
		return val, nil
	case replication.ValueUnchanged:
		return val, &colError{col: col, err: errUnchanged}
	}
	return val, &colError{col: col, err: errAbsent}
}

// old returns col's value in the old image, if the stream sent it.
func (v *rowView) old(col string) (replication.Value, bool) {
	i, ok := v.idx[col]
	if !ok {
		return replication.Value{}, false
	}
	val := at(v.c.Old, i)
	return val, val.Kind == replication.ValueText || val.Kind == replication.ValueNull
}

// filled replaces an unchanged TOAST value with the old image's value, which
// is the same value (REPLICA IDENTITY FULL sends it).
func filled(val, old replication.Value) replication.Value {
	if val.Kind == replication.ValueUnchanged && (old.Kind == replication.ValueText || old.Kind == replication.ValueNull) {
		return old
	}
	return val
}

// colType is col's type, nil if unknown.
func (v *rowView) colType(col string) *replication.Type {
	if i, ok := v.idx[col]; ok {
		return v.rel.Columns[i].Type
	}
	return nil
}

// env is the template environment of this change.
func (v *rowView) env(schema, table, op string) *tmplEnv {
	return &tmplEnv{schema: schema, table: table, op: op, col: v.current}
}

// appendImage writes a row image as a JSON object of the selected columns,
// in the table's column order. An unchanged TOAST value is taken from fill
// when fill has it; otherwise it is left out of the object and its column
// returned in unchanged. Absent values (the non-key columns of an old image
// under REPLICA IDENTITY DEFAULT) are left out.
func appendImage(dst []byte, rel *replication.Relation, vals, fill []replication.Value, sel []bool) (_ []byte, unchanged []string, err error) {
	dst = append(dst, '{')
	n := 0
	for i, col := range rel.Columns {
		if sel != nil && !sel[i] {
			continue
		}
		val := filled(at(vals, i), at(fill, i))
		switch val.Kind {
		case replication.ValueAbsent:
			continue
		case replication.ValueUnchanged:
			unchanged = append(unchanged, col.Name)
			continue
		}
		if n > 0 {
			dst = append(dst, ',')
		}
		n++
		dst = appendStr(dst, col.Name)
		dst = append(dst, ':')
		if val.Kind == replication.ValueNull {
			dst = append(dst, "null"...)
			continue
		}
		if dst, err = EncodeValue(dst, col.Type, val.Text); err != nil {
			return dst, nil, &colError{col: col.Name, err: err}
		}
	}
	return append(dst, '}'), unchanged, nil
}
