package config

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// The index records where every key of a relay.toml is, so that errors found
// after decoding (a missing field, a bad value, an unset ${VAR}) can name the
// key's line too, and so that keys of [[mapping]] sections carry their
// section's number: "mapping[2].outbox.payload_column". Sections of an array
// of tables are numbered from 1, as the mapping package numbers them.

// seg is one part of a key path; idx > 0 selects the idx-th element (from 1)
// of an array of tables or of inline tables.
type seg struct {
	name string
	idx  int
}

type entry struct {
	segs  []seg
	line  int
	col   int
	kind  unstable.Kind   // the value's kind; Table or ArrayTable for a section header
	elems []unstable.Kind // the kinds of an array value's elements
}

type index struct {
	entries []*entry
	byPath  map[string]*entry
}

var bareKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func pathString(segs []seg) string {
	var b strings.Builder
	for i, s := range segs {
		if i > 0 {
			b.WriteByte('.')
		}
		if bareKey.MatchString(s.name) {
			b.WriteString(s.name)
		} else {
			fmt.Fprintf(&b, "%q", s.name)
		}
		if s.idx > 0 {
			fmt.Fprintf(&b, "[%d]", s.idx)
		}
	}
	return b.String()
}

// barePath drops the element numbers: "mapping.outbox.payload_column".
func barePath(segs []seg) string {
	c := make([]seg, len(segs))
	for i, s := range segs {
		c[i] = seg{name: s.name}
	}
	return pathString(c)
}

// buildIndex parses data with go-toml's parser. It fails only on a syntax
// error, which the decoder then reports with its position.
func buildIndex(data []byte) (*index, error) {
	ix := &index{byPath: map[string]*entry{}}
	var p unstable.Parser
	p.Reset(data)
	arrays := map[string]int{} // path of an array of tables -> its length so far
	var table []seg            // the current [table] or [[array]] element

	// resolve turns header key parts into a path, stepping into the last
	// element of every array of tables on the way.
	resolve := func(parts []string) []seg {
		var out []seg
		for _, name := range parts {
			out = append(out, seg{name: name})
			if n, ok := arrays[pathString(out)]; ok {
				out[len(out)-1].idx = n
			}
		}
		return out
	}
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			parts, first := keyParts(e.Key())
			var segs []seg
			if e.Kind == unstable.Table {
				segs = resolve(parts)
			} else {
				segs = resolve(parts[:len(parts)-1])
				segs = append(segs, seg{name: parts[len(parts)-1]})
				k := pathString(segs)
				arrays[k]++
				segs[len(segs)-1].idx = arrays[k]
			}
			table = segs
			ix.add(&entry{segs: segs, kind: e.Kind}, &p, first)
		case unstable.KeyValue:
			ix.addKeyValue(&p, table, e)
		}
	}
	if err := p.Error(); err != nil {
		return nil, err
	}
	return ix, nil
}

func keyParts(it unstable.Iterator) ([]string, *unstable.Node) {
	var parts []string
	var first *unstable.Node
	for it.Next() {
		n := it.Node()
		if first == nil {
			first = n
		}
		parts = append(parts, string(n.Data))
	}
	return parts, first
}

func (ix *index) add(e *entry, p *unstable.Parser, at *unstable.Node) {
	if at != nil && at.Raw.Length > 0 {
		pos := p.Shape(at.Raw).Start
		e.line, e.col = pos.Line, pos.Column
	}
	ix.entries = append(ix.entries, e)
	ix.byPath[pathString(e.segs)] = e
}

func (ix *index) addKeyValue(p *unstable.Parser, table []seg, kv *unstable.Node) {
	parts, first := keyParts(kv.Key())
	segs := append([]seg(nil), table...)
	for _, name := range parts {
		segs = append(segs, seg{name: name})
	}
	ix.addValue(p, segs, kv.Value(), first)
}

func (ix *index) addValue(p *unstable.Parser, segs []seg, v *unstable.Node, at *unstable.Node) {
	e := &entry{segs: segs, kind: v.Kind}
	ix.add(e, p, at)
	switch v.Kind {
	case unstable.InlineTable:
		it := v.Children()
		for it.Next() {
			if c := it.Node(); c.Kind == unstable.KeyValue {
				ix.addKeyValue(p, segs, c)
			}
		}
	case unstable.Array:
		it := v.Children()
		i := 0
		for it.Next() {
			c := it.Node()
			if c.Kind == unstable.Comment {
				continue
			}
			i++
			e.elems = append(e.elems, c.Kind)
			if c.Kind == unstable.InlineTable {
				el := append(append([]seg(nil), segs[:len(segs)-1]...), seg{name: segs[len(segs)-1].name, idx: i})
				pos := at
				if c.Raw.Length > 0 {
					pos = c
				}
				ix.addValue(p, el, c, pos)
			}
		}
	}
}

// lookup finds a key by its path with element numbers ("mapping[2].topic").
func (ix *index) lookup(path string) (*entry, bool) {
	if ix == nil {
		return nil, false
	}
	e, ok := ix.byPath[path]
	return e, ok
}

// has reports whether the file sets the key.
func (ix *index) has(path string) bool {
	_, ok := ix.lookup(path)
	return ok
}

// line returns the key's line, or 0 when the file does not set it.
func (ix *index) line(path string) int {
	if e, ok := ix.lookup(path); ok {
		return e.line
	}
	return 0
}

// find resolves a decoder's key (no element numbers) at a line to the full
// path. It returns the bare path when no recorded key matches.
func (ix *index) find(key []string, line int) (string, *entry) {
	bare := pathString(segsOf(key))
	if ix != nil {
		var candidate *entry
		for _, e := range ix.entries {
			if barePath(e.segs) != bare {
				continue
			}
			if e.line == line {
				return pathString(e.segs), e
			}
			candidate = e
		}
		if candidate != nil && line == 0 {
			return pathString(candidate.segs), candidate
		}
		// Some errors (a key defined twice) name the key relative to its table.
		for _, e := range ix.entries {
			if e.line == line && strings.HasSuffix(barePath(e.segs), "."+bare) {
				return pathString(e.segs), e
			}
		}
	}
	return bare, nil
}

func segsOf(names []string) []seg {
	s := make([]seg, len(names))
	for i, n := range names {
		s[i] = seg{name: n}
	}
	return s
}

func kindName(k unstable.Kind) string {
	switch k {
	case unstable.String:
		return "a string"
	case unstable.Integer:
		return "an integer"
	case unstable.Float:
		return "a float"
	case unstable.Bool:
		return "a boolean"
	case unstable.Array:
		return "an array"
	case unstable.InlineTable, unstable.Table:
		return "a table"
	case unstable.ArrayTable:
		return "an array of tables"
	case unstable.LocalDate, unstable.LocalTime, unstable.LocalDateTime, unstable.DateTime:
		return "a date/time"
	}
	return k.String()
}
