package mapping

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cdcrelay/cdcrelay/replication"
)

// RowError is a change that its mapping cannot turn into an event. It names
// the table, the position and, where one is to blame, the column.
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

// Mapper maps changes of the configured tables to events.
type Mapper struct {
	rules map[string]*rule // by "schema.table"
	order []string
}

type rule struct {
	spec Spec
}

// New validates specs and builds a Mapper. Errors name the mapping by its
// table and the offending key.
func New(specs []Spec) (*Mapper, error) {
	m := &Mapper{rules: map[string]*rule{}}
	var errs []error
	for i := range specs {
		s := specs[i]
		s.Table = QualifyTable(s.Table)
		if err := s.normalize(); err != nil {
			errs = append(errs, fmt.Errorf("mapping %d (table %q): %w", i+1, specs[i].Table, err))
			continue
		}
		if _, dup := m.rules[s.Table]; dup {
			errs = append(errs, fmt.Errorf("mapping %d: table %q is mapped twice", i+1, s.Table))
			continue
		}
		m.rules[s.Table] = &rule{spec: s}
		m.order = append(m.order, s.Table)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
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

// Spec returns the normalized spec of a mapped table.
func (m *Mapper) Spec(table string) (Spec, bool) {
	r, ok := m.rules[table]
	if !ok {
		return Spec{}, false
	}
	return r.spec, true
}

// Map maps one change. A change of an unmapped table maps to nothing.
func (m *Mapper) Map(c *replication.Change) ([]Event, error) {
	r, ok := m.rules[c.Relation.QualifiedName()]
	if !ok {
		return nil, nil
	}
	switch r.spec.Kind {
	case "outbox":
		return r.mapOutbox(c)
	}
	return nil, &RowError{Table: r.spec.Table, Pos: c.Pos, Reason: "mapping kind " + r.spec.Kind + " is not implemented"}
}

func (s *Spec) normalize() error {
	if s.Table == "" {
		return errors.New("key \"table\" is required")
	}
	if s.OnError == "" {
		s.OnError = "stop"
	}
	switch s.OnError {
	case "stop", "dead-letter":
	default:
		return fmt.Errorf("key \"on_error\": %q is not one of \"stop\", \"dead-letter\"", s.OnError)
	}
	switch s.Kind {
	case "outbox":
		o := &s.Outbox
		def := func(p *string, v string) {
			if *p == "" {
				*p = v
			}
		}
		def(&o.ID, "id")
		def(&o.AggregateType, "aggregatetype")
		def(&o.AggregateID, "aggregateid")
		def(&o.Type, "type")
		def(&o.Payload, "payload")
		def(&o.OnUpdate, "warn")
		def(&s.Topic, "outbox.event.{"+o.AggregateType+"}")
		def(&s.Key, "{"+o.AggregateID+"}")
		def(&s.Envelope, "raw")
	case "":
		return errors.New("key \"kind\" is required (\"outbox\", \"changelog\" or \"table\")")
	default:
		return fmt.Errorf("key \"kind\": %q is not one of \"outbox\", \"changelog\", \"table\"", s.Kind)
	}
	return nil
}
