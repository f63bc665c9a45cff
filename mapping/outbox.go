package mapping

import (
	"strings"

	"github.com/cdcrelay/cdcrelay/replication"
)

// mapOutbox follows Debezium's Outbox Event Router: inserts become events,
// deletes are ignored (so "insert then delete in one transaction" keeps the
// table empty), updates are skipped or refused by configuration.
func (r *rule) mapOutbox(c *replication.Change) ([]Event, error) {
	switch c.Op {
	case replication.OpInsert, replication.OpRead:
	case replication.OpUpdate:
		if r.spec.Outbox.OnUpdate == "error" {
			return nil, &RowError{Table: r.spec.Table, Pos: c.Pos, Reason: "outbox rows must not be updated (outbox.on_update = \"error\")"}
		}
		return nil, nil
	default:
		return nil, nil
	}
	row, err := rowOf(c)
	if err != nil {
		return nil, err
	}
	topic, err := r.expand(r.spec.Topic, c, row)
	if err != nil {
		return nil, err
	}
	key, err := r.expand(r.spec.Key, c, row)
	if err != nil {
		return nil, err
	}
	o := r.spec.Outbox
	ev := Event{Topic: topic, Key: []byte(key)}
	if v, ok := row[o.Payload]; ok && v.Kind == replication.ValueText {
		ev.Value = v.Text
	}
	if v, ok := row[o.ID]; ok && v.Kind == replication.ValueText {
		ev.Headers = append(ev.Headers, Header{Key: "id", Value: v.Text})
	}
	if v, ok := row[o.Type]; ok && v.Kind == replication.ValueText {
		ev.Headers = append(ev.Headers, Header{Key: "type", Value: v.Text})
	}
	return []Event{ev}, nil
}

func rowOf(c *replication.Change) (map[string]replication.Value, error) {
	row := make(map[string]replication.Value, len(c.Relation.Columns))
	for i, col := range c.Relation.Columns {
		if i < len(c.New) {
			row[col.Name] = c.New[i]
		}
	}
	return row, nil
}

// expand fills a {column} / {schema} / {table} / {op} template.
func (r *rule) expand(tmpl string, c *replication.Change, row map[string]replication.Value) (string, error) {
	if !strings.Contains(tmpl, "{") {
		return tmpl, nil
	}
	var b strings.Builder
	for {
		i := strings.IndexByte(tmpl, '{')
		if i < 0 {
			b.WriteString(tmpl)
			return b.String(), nil
		}
		j := strings.IndexByte(tmpl[i:], '}')
		if j < 0 {
			b.WriteString(tmpl)
			return b.String(), nil
		}
		b.WriteString(tmpl[:i])
		name := tmpl[i+1 : i+j]
		switch name {
		case "schema":
			b.WriteString(c.Relation.Schema)
		case "table":
			b.WriteString(c.Relation.Table)
		case "op":
			b.WriteString(c.Op.String())
		default:
			v, ok := row[name]
			if !ok {
				return "", &RowError{Table: r.spec.Table, Pos: c.Pos, Column: name, Reason: "template names a column the table does not have"}
			}
			if v.Kind != replication.ValueText {
				return "", &RowError{Table: r.spec.Table, Pos: c.Pos, Column: name, Reason: "template column is NULL"}
			}
			b.Write(v.Text)
		}
		tmpl = tmpl[i+j+1:]
	}
}
