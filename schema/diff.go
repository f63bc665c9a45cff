package schema

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/hamba/avro/v2"

	"github.com/cdcrelay/cdcrelay/mapping"
)

// Change is one difference between two versions of a table's schema, about
// one column (or, when Column is empty, the schema as a whole).
type Change struct {
	Column string
	What   string // "added", "dropped", "type string -> long"
}

func (c Change) String() string {
	if c.Column == "" {
		return c.What
	}
	return fmt.Sprintf("column %q %s", c.Column, c.What)
}

// Changes lists what differs between the row images of two versions of a
// schema the mapping derived (the row record of an Avro envelope, the
// properties of a JSON Schema's "after"), column by column. It names the
// columns behind a refusal; whether a change is compatible is the
// registry's call. Schemas it cannot read give no changes.
func Changes(format, oldText, newText string) []Change {
	var oldCols, newCols map[string]colInfo
	if format == mapping.SchemaJSON {
		oldCols, newCols = jsonRowColumns(oldText), jsonRowColumns(newText)
	} else {
		oldCols, newCols = avroRowColumns(oldText), avroRowColumns(newText)
	}
	if oldCols == nil || newCols == nil {
		return nil
	}
	var out []Change
	for _, name := range sortedNames(oldCols) {
		o := oldCols[name]
		n, ok := newCols[name]
		switch {
		case !ok:
			what := "dropped"
			if !o.nullable {
				what = "dropped (it was not nullable)"
			}
			out = append(out, Change{Column: o.column, What: what})
		case o.typ != n.typ:
			out = append(out, Change{Column: n.column, What: fmt.Sprintf("changed type from %s to %s", o.typ, n.typ)})
		case o.nullable && !n.nullable:
			out = append(out, Change{Column: n.column, What: "is no longer nullable"})
		}
	}
	for _, name := range sortedNames(newCols) {
		if _, ok := oldCols[name]; !ok {
			n := newCols[name]
			what := "added"
			if !n.nullable && !n.hasDefault {
				what = "added without a default"
			}
			out = append(out, Change{Column: n.column, What: what})
		}
	}
	return out
}

type colInfo struct {
	column     string // the Postgres column (the doc of an adjusted Avro name)
	typ        string
	nullable   bool
	hasDefault bool
}

func sortedNames(m map[string]colInfo) []string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// avroRowColumns reads the fields of the row record: the record in an
// envelope's "after" union, or the record itself (a row or key schema).
func avroRowColumns(text string) map[string]colInfo {
	s, err := avro.Parse(text)
	if err != nil {
		return nil
	}
	rec, ok := s.(*avro.RecordSchema)
	if !ok {
		return nil
	}
	for _, f := range rec.Fields() {
		if f.Name() != "after" {
			continue
		}
		if u, ok := f.Type().(*avro.UnionSchema); ok {
			for _, t := range u.Types() {
				if r, ok := t.(*avro.RefSchema); ok {
					t = r.Schema()
				}
				if r, ok := t.(*avro.RecordSchema); ok {
					rec = r
				}
			}
		}
	}
	cols := map[string]colInfo{}
	for _, f := range rec.Fields() {
		ci := colInfo{column: f.Name(), hasDefault: f.HasDefault()}
		if strings.HasPrefix(f.Doc(), "column ") {
			ci.column = strings.TrimPrefix(f.Doc(), "column ")
		}
		t := f.Type()
		if u, ok := t.(*avro.UnionSchema); ok && u.Nullable() {
			ci.nullable = true
			for _, b := range u.Types() {
				if b.Type() != avro.Null {
					t = b
				}
			}
		}
		ci.typ = avroTypeName(t)
		cols[f.Name()] = ci
	}
	return cols
}

func avroTypeName(t avro.Schema) string {
	if r, ok := t.(*avro.RefSchema); ok {
		t = r.Schema()
	}
	switch t := t.(type) {
	case *avro.PrimitiveSchema:
		if l := t.Logical(); l != nil {
			if d, ok := l.(*avro.DecimalLogicalSchema); ok {
				return fmt.Sprintf("decimal(%d,%d)", d.Precision(), d.Scale())
			}
			return string(l.Type())
		}
		return string(t.Type())
	case *avro.ArraySchema:
		items := t.Items()
		if u, ok := items.(*avro.UnionSchema); ok {
			for _, b := range u.Types() {
				if b.Type() != avro.Null {
					items = b
				}
			}
		}
		return "array of " + avroTypeName(items)
	case *avro.MapSchema:
		return "map"
	case avro.NamedSchema:
		return t.FullName()
	}
	return string(t.Type())
}

// jsonRowColumns reads the properties of the row object: "after"'s
// non-null branch in an envelope, else the top level's.
func jsonRowColumns(text string) map[string]colInfo {
	var doc map[string]any
	if err := json.Unmarshal([]byte(text), &doc); err != nil {
		return nil
	}
	obj := doc
	if props, ok := doc["properties"].(map[string]any); ok {
		if after, ok := props["after"].(map[string]any); ok {
			if one, ok := after["oneOf"].([]any); ok {
				for _, b := range one {
					if m, ok := b.(map[string]any); ok && m["type"] == "object" {
						obj = m
					}
				}
			}
		}
	}
	props, ok := obj["properties"].(map[string]any)
	if !ok {
		return nil
	}
	cols := map[string]colInfo{}
	for name, p := range props {
		m, _ := p.(map[string]any)
		ci := colInfo{column: name, hasDefault: true}
		var types []string
		switch t := m["type"].(type) {
		case string:
			types = []string{t}
		case []any:
			for _, x := range t {
				if s, ok := x.(string); ok {
					types = append(types, s)
				}
			}
		}
		var kept []string
		for _, t := range types {
			if t == "null" {
				ci.nullable = true
			} else {
				kept = append(kept, t)
			}
		}
		if len(types) == 0 {
			ci.nullable = true
			kept = []string{"any"}
		}
		ci.typ = strings.Join(kept, " or ")
		cols[name] = ci
	}
	return cols
}
