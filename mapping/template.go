package mapping

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cdcrelay/cdcrelay/replication"
)

// A template is text with placeholders, parsed once by [New]:
//
//	{name}      the column "name" of the row, as Postgres's text
//	{schema}    the source table's schema
//	{table}     the source table's name
//	{op}        insert, update, delete, truncate or read
//	{col:name}  the column "name", even when it is called schema, table or op
//	{{ and }}   a literal brace
type template struct {
	raw  string
	segs []segment
}

type segment struct {
	lit    string // literal text, when col and v are empty
	col    string // a column
	v      string // a reserved variable: schema, table, op
	isText bool
}

var reservedVars = map[string]struct{}{"schema": {}, "table": {}, "op": {}}

func parseTemplate(s string) (*template, error) {
	t := &template{raw: s}
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			t.segs = append(t.segs, segment{lit: lit.String(), isText: true})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '{':
			if i+1 < len(s) && s[i+1] == '{' {
				lit.WriteByte('{')
				i++
				continue
			}
			j := strings.IndexByte(s[i+1:], '}')
			if j < 0 {
				return nil, fmt.Errorf("unclosed '{' at offset %d in %q", i, s)
			}
			name := s[i+1 : i+1+j]
			if strings.ContainsRune(name, '{') {
				return nil, fmt.Errorf("'{' inside a placeholder at offset %d in %q", i, s)
			}
			flush()
			switch {
			case strings.HasPrefix(name, "col:"):
				col := name[len("col:"):]
				if col == "" {
					return nil, fmt.Errorf("empty column name in {col:} in %q", s)
				}
				t.segs = append(t.segs, segment{col: col})
			case name == "":
				return nil, fmt.Errorf("empty placeholder {} in %q (write {{}} for literal braces)", s)
			default:
				if _, ok := reservedVars[name]; ok {
					t.segs = append(t.segs, segment{v: name})
				} else {
					t.segs = append(t.segs, segment{col: name})
				}
			}
			i += j + 1
		case '}':
			if i+1 < len(s) && s[i+1] == '}' {
				lit.WriteByte('}')
				i++
				continue
			}
			return nil, fmt.Errorf("unmatched '}' at offset %d in %q (write }} for a literal brace)", i, s)
		default:
			lit.WriteByte(c)
		}
	}
	flush()
	return t, nil
}

// columns lists the columns the template reads.
func (t *template) columns() []string {
	if t == nil {
		return nil
	}
	var cols []string
	for _, s := range t.segs {
		if s.col != "" {
			cols = append(cols, s.col)
		}
	}
	return cols
}

// literal reports whether the template has no placeholders.
func (t *template) literal() (string, bool) {
	var b strings.Builder
	for _, s := range t.segs {
		if !s.isText {
			return "", false
		}
		b.WriteString(s.lit)
	}
	return b.String(), true
}

// tmplEnv is what a template is expanded against.
type tmplEnv struct {
	schema, table, op string
	col               func(name string) (replication.Value, error)
}

// errTemplateNull is returned when a placeholder's column is NULL.
var errTemplateNull = errors.New("value is NULL")

// expand fills the template. A NULL column is errTemplateNull wrapped in a
// *colError; a column that is absent or unchanged-and-unknown is a *colError.
func (t *template) expand(env *tmplEnv) (string, error) {
	if len(t.segs) == 1 && t.segs[0].isText {
		return t.segs[0].lit, nil
	}
	var b strings.Builder
	for _, s := range t.segs {
		switch {
		case s.isText:
			b.WriteString(s.lit)
		case s.v == "schema":
			b.WriteString(env.schema)
		case s.v == "table":
			b.WriteString(env.table)
		case s.v == "op":
			b.WriteString(env.op)
		default:
			v, err := env.col(s.col)
			if err != nil {
				return "", err
			}
			if v.Kind == replication.ValueNull {
				return "", &colError{col: s.col, err: errTemplateNull}
			}
			b.Write(v.Text)
		}
	}
	return b.String(), nil
}

// colError is a problem with one column of a row.
type colError struct {
	col string
	err error
}

func (e *colError) Error() string { return fmt.Sprintf("column %q: %v", e.col, e.err) }
func (e *colError) Unwrap() error { return e.err }

// expandTopic expands a topic template and checks that the result is a
// valid Kafka topic name: a name made from row values (outbox.event.{aggregatetype}
// with "Order Items!") is a row error naming the column, not a produce
// request that the broker refuses on every retry.
func expandTopic(t *template, env *tmplEnv) (string, error) {
	topic, err := t.expand(env)
	if err != nil {
		return "", err
	}
	if msg := topicNameProblem(topic); msg != "" {
		err := fmt.Errorf("%q (template %q) is not a valid Kafka topic name: %s", topic, t.raw, msg)
		if cols := t.columns(); len(cols) > 0 {
			return "", &colError{col: cols[0], err: err}
		}
		return "", err
	}
	return topic, nil
}

// topicNameProblem tells what is wrong with a topic name, "" if nothing.
func topicNameProblem(t string) string {
	switch {
	case t == "":
		return "it is empty"
	case t == "." || t == "..":
		return "it is . or .."
	case len(t) > 249:
		return fmt.Sprintf("it is %d characters long; Kafka allows 249", len(t))
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return "a topic name may only contain ASCII letters, digits, '.', '_' and '-'"
		}
	}
	return ""
}
