package config

import (
	"encoding"
	"reflect"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// checkShape compares every key of the file with the schema: unknown keys and
// values of the wrong type are reported all at once, each with its line. The
// decoder would stop at the first one, and it reports some (a number given
// for a duration) without a position.
func checkShape(ix *index) []Issue {
	var issues []Issue
	root := reflectConfig
	for _, e := range ix.entries {
		path := pathString(e.segs)
		last := e.segs[len(e.segs)-1]
		t, bad := resolveType(root, e.segs)
		if bad >= 0 {
			// Report an unknown table once, not once per key inside it.
			if bad < len(e.segs)-1 && ix.has(pathString(e.segs[:bad+1])) {
				continue
			}
			issues = append(issues, Issue{Key: path, Line: e.line, Msg: unknownMsg(t, e.segs, bad)})
			continue
		}
		if last.idx > 0 {
			// An element of an array of tables, or an inline table in an array.
			if deref(t).Kind() != reflect.Slice {
				issues = append(issues, Issue{Key: path, Line: e.line, Msg: "want " + describe(t) + ", found an array of tables"})
				continue
			}
			t = deref(t).Elem()
			if e.kind == unstable.ArrayTable {
				// The header [[name]] opens one element: a table.
				e = &entry{segs: e.segs, line: e.line, kind: unstable.Table}
			}
		}
		if msg := mismatch(t, e); msg != "" {
			issues = append(issues, Issue{Key: path, Line: e.line, Msg: msg})
		}
	}
	return issues
}

// resolveType walks the schema along segs, stepping into the element of every
// array on the way except for the last segment. It returns the type of the last
// segment, or the index of the first segment the schema does not know (then the
// type is that of the enclosing table).
func resolveType(root reflect.Type, segs []seg) (reflect.Type, int) {
	t := root
	for i, s := range segs {
		d := deref(t)
		switch d.Kind() {
		case reflect.Struct:
			if isText(d) {
				return t, i
			}
			f, ok := fieldByTag(d, s.name)
			if !ok {
				return t, i
			}
			t = f.Type
		case reflect.Map:
			t = d.Elem()
		default:
			return t, i
		}
		if s.idx > 0 && i < len(segs)-1 {
			if deref(t).Kind() != reflect.Slice {
				return t, i
			}
			t = deref(t).Elem()
		}
	}
	return t, -1
}

func unknownMsg(parent reflect.Type, segs []seg, bad int) string {
	d := deref(parent)
	if d.Kind() == reflect.Struct && !isText(d) {
		known := knownKeys(d)
		where := "the top level"
		if bad > 0 {
			where = "[" + barePath(segs[:bad]) + "]"
		}
		msg := "unknown key"
		if s := closest(segs[bad].name, known); s != "" {
			msg += "; did you mean " + quote(s) + "?"
		}
		return msg + " (" + where + " has: " + strings.Join(known, ", ") + ")"
	}
	return pathString(segs[:bad]) + " is " + describe(parent) + ", it has no key " + quote(segs[bad].name)
}

func quote(s string) string { return `"` + s + `"` }

func knownKeys(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		if name := tagName(t.Field(i)); name != "" {
			keys = append(keys, name)
		}
	}
	return keys
}

func fieldByTag(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if tagName(f) == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func tagName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	tag := f.Tag.Get("toml")
	name, _, _ := strings.Cut(tag, ",")
	if name == "-" {
		return ""
	}
	if name == "" {
		return f.Name
	}
	return name
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

var textUnmarshaler = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()

func isText(t reflect.Type) bool {
	return t.Implements(textUnmarshaler) || reflect.PointerTo(t).Implements(textUnmarshaler)
}

// mismatch says what is wrong when the value's kind does not suit type t.
func mismatch(t reflect.Type, e *entry) string {
	if ok := suits(t, e.kind); !ok {
		return "want " + describe(t) + ", found " + kindName(e.kind)
	}
	if e.kind == unstable.Array {
		elem := deref(t).Elem()
		for _, k := range e.elems {
			if k == unstable.InlineTable {
				continue // checked as its own entry
			}
			if !suits(elem, k) {
				return "want " + describe(t) + ", found an array holding " + kindName(k)
			}
		}
	}
	return ""
}

func suits(t reflect.Type, k unstable.Kind) bool {
	d := deref(t)
	if isText(d) {
		return k == unstable.String
	}
	switch k {
	case unstable.String:
		return d.Kind() == reflect.String
	case unstable.Integer:
		switch d.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
			reflect.Float32, reflect.Float64:
			return true
		}
	case unstable.Float:
		return d.Kind() == reflect.Float32 || d.Kind() == reflect.Float64
	case unstable.Bool:
		return d.Kind() == reflect.Bool
	case unstable.Array:
		return d.Kind() == reflect.Slice
	case unstable.Table, unstable.InlineTable:
		return d.Kind() == reflect.Struct || d.Kind() == reflect.Map
	case unstable.ArrayTable:
		return d.Kind() == reflect.Slice
	}
	return false
}

var (
	durationType  = reflect.TypeOf(Duration{})
	reflectConfig = reflect.TypeOf(Config{})
)

func describe(t reflect.Type) string {
	d := deref(t)
	if d == durationType {
		return `a duration string such as "10s" or "250ms"`
	}
	if isText(d) {
		return "a string"
	}
	switch d.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean (true or false)"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice:
		e := deref(d.Elem())
		if e.Kind() == reflect.Struct && !isText(e) {
			return "an array of tables"
		}
		return "an array of " + strings.TrimPrefix(strings.TrimPrefix(describe(e), "a "), "an ") + "s"
	case reflect.Struct, reflect.Map:
		return "a table"
	}
	return d.String()
}

// closest returns the known key nearest to name, if it is a plausible typo.
func closest(name string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(name, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// allKeys lists the dotted keys of the schema under prefix, for documentation
// checks. Tables of arbitrary keys (maps) are listed as their own key.
func allKeys(t reflect.Type, prefix string) []string {
	var keys []string
	d := deref(t)
	if d.Kind() == reflect.Slice {
		d = deref(d.Elem())
	}
	if d.Kind() != reflect.Struct || isText(d) {
		return nil
	}
	for i := 0; i < d.NumField(); i++ {
		name := tagName(d.Field(i))
		if name == "" {
			continue
		}
		key := name
		if prefix != "" {
			key = prefix + "." + name
		}
		sub := allKeys(d.Field(i).Type, key)
		if len(sub) == 0 {
			keys = append(keys, key)
		}
		keys = append(keys, sub...)
	}
	return keys
}
