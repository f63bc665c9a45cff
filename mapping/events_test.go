package mapping

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/jackc/pglogrepl"
	"github.com/pelletier/go-toml/v2"
)

// eventFile is one file of testdata/golden/events: a mapping, the relation,
// changes in stream order and, for each, the events (or the row error).
type eventFile struct {
	Comment  string        `json:"comment,omitempty"`
	Options  *fileOptions  `json:"options,omitempty"`
	Mapping  string        `json:"mapping"` // the [[mapping]] section's body, TOML as in relay.toml
	Relation fileRelation  `json:"relation"`
	Changes  []*fileChange `json:"changes"`
}

type fileOptions struct {
	RelayName string `json:"relay_name,omitempty"`
	Database  string `json:"database,omitempty"`
}

type fileRelation struct {
	Schema          string       `json:"schema"`
	Table           string       `json:"table"`
	ReplicaIdentity string       `json:"replica_identity,omitempty"` // d (default), f, i, n
	Columns         []fileColumn `json:"columns"`
}

type fileColumn struct {
	Name string      `json:"name"`
	Type *goldenType `json:"type"`
	Key  bool        `json:"key,omitempty"`
}

type fileChange struct {
	Comment    string                     `json:"comment,omitempty"`
	Op         string                     `json:"op"`
	LSN        string                     `json:"lsn"`
	Index      int                        `json:"index"`
	XID        uint32                     `json:"xid"`
	CommitTime string                     `json:"commit_time"`
	New        map[string]json.RawMessage `json:"new,omitempty"` // text, null, or {"unchanged": true}
	Old        map[string]json.RawMessage `json:"old,omitempty"`
	Events     []*fileEvent               `json:"events"`
	Error      string                     `json:"error,omitempty"`
	Warning    string                     `json:"warning,omitempty"`
}

type fileEvent struct {
	Topic     string          `json:"topic"`
	Key       json.RawMessage `json:"key"` // a string, or null
	Headers   [][2]string     `json:"headers,omitempty"`
	Value     json.RawMessage `json:"value"` // JSON inline, else a string, {"base64": ...}, or null (tombstone)
	Timestamp string          `json:"timestamp,omitempty"`
}

var opNames = map[string]replication.Op{
	"insert": replication.OpInsert, "update": replication.OpUpdate, "delete": replication.OpDelete,
	"truncate": replication.OpTruncate, "read": replication.OpRead,
}

func (f *eventFile) relation() *replication.Relation {
	rel := &replication.Relation{Schema: f.Relation.Schema, Table: f.Relation.Table, ReplicaIdentity: 'd'}
	if f.Relation.ReplicaIdentity != "" {
		rel.ReplicaIdentity = f.Relation.ReplicaIdentity[0]
	}
	for _, c := range f.Relation.Columns {
		rel.Columns = append(rel.Columns, replication.Column{Name: c.Name, Type: c.Type.typ(), Key: c.Key})
	}
	return rel
}

func rowOfFile(t *testing.T, rel *replication.Relation, m map[string]json.RawMessage) []replication.Value {
	if m == nil {
		return nil
	}
	vals := make([]replication.Value, len(rel.Columns))
	seen := 0
	for i, col := range rel.Columns {
		raw, ok := m[col.Name]
		if !ok {
			continue
		}
		seen++
		var s string
		var u struct{ Unchanged bool }
		switch {
		case string(raw) == "null":
			vals[i] = replication.Value{Kind: replication.ValueNull}
		case json.Unmarshal(raw, &u) == nil && u.Unchanged:
			vals[i] = replication.Value{Kind: replication.ValueUnchanged}
		case json.Unmarshal(raw, &s) == nil:
			vals[i] = replication.Value{Kind: replication.ValueText, Text: []byte(s)}
		default:
			t.Fatalf("column %s: bad value %s", col.Name, raw)
		}
	}
	if seen != len(m) {
		t.Fatalf("row names a column the relation lacks: %v", m)
	}
	return vals
}

func (c *fileChange) change(t *testing.T, rel *replication.Relation) *replication.Change {
	op, ok := opNames[c.Op]
	if !ok {
		t.Fatalf("bad op %q", c.Op)
	}
	lsn, err := pglogrepl.ParseLSN(c.LSN)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := time.Parse(time.RFC3339Nano, c.CommitTime)
	if err != nil {
		t.Fatal(err)
	}
	return &replication.Change{Op: op, Relation: rel, New: rowOfFile(t, rel, c.New), Old: rowOfFile(t, rel, c.Old),
		Pos: replication.Pos{CommitLSN: lsn, Index: c.Index}, XID: c.XID, CommitTime: ct}
}

func toFileEvent(ev Event) *fileEvent {
	fe := &fileEvent{Topic: ev.Topic, Key: json.RawMessage("null"), Value: json.RawMessage("null")}
	if ev.Key != nil {
		fe.Key = printable(ev.Key)
	}
	for _, h := range ev.Headers {
		fe.Headers = append(fe.Headers, [2]string{h.Key, string(h.Value)})
	}
	if ev.Value != nil {
		fe.Value = printable(ev.Value)
		if json.Valid(ev.Value) {
			var buf bytes.Buffer
			if err := json.Compact(&buf, ev.Value); err == nil && bytes.Equal(buf.Bytes(), ev.Value) {
				fe.Value = json.RawMessage(ev.Value)
			}
		}
	}
	if !ev.Timestamp.IsZero() {
		fe.Timestamp = ev.Timestamp.UTC().Format(time.RFC3339Nano)
	}
	return fe
}

// printable is b as a JSON string, or {"base64": ...} when b is not UTF-8.
func printable(b []byte) json.RawMessage {
	if !utf8.Valid(b) {
		return json.RawMessage(`{"base64":"` + base64.StdEncoding.EncodeToString(b) + `"}`)
	}
	return appendValidString(nil, b)
}

func TestGoldenEvents(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(goldenDir, "events", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden event files: %v", err)
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".json"), func(t *testing.T) {
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var f eventFile
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&f); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			var doc struct {
				Mapping []Spec `toml:"mapping"`
			}
			tdec := toml.NewDecoder(strings.NewReader("[[mapping]]\n" + f.Mapping))
			tdec.DisallowUnknownFields()
			if err := tdec.Decode(&doc); err != nil {
				t.Fatalf("%s: mapping: %v", path, err)
			}
			spec := doc.Mapping[0]
			var opts []Option
			var warnings []string
			opts = append(opts, WithWarnFunc(func(e *RowError) { warnings = append(warnings, e.Error()) }))
			if o := f.Options; o != nil {
				opts = append(opts, WithRelayName(o.RelayName), WithDatabase(o.Database))
			}
			m, err := New([]Spec{spec}, opts...)
			if err != nil {
				t.Fatal(err)
			}
			rel := f.relation()
			if err := m.CheckRelation(rel); err != nil {
				t.Fatalf("CheckRelation: %v", err)
			}
			for i, c := range f.Changes {
				warnings = nil
				evs, err := m.Map(c.change(t, rel))
				var got []*fileEvent
				for _, ev := range evs {
					got = append(got, toFileEvent(ev))
				}
				gotErr, gotWarn := "", strings.Join(warnings, "; ")
				if err != nil {
					gotErr = err.Error()
				}
				if *update {
					c.Events, c.Error, c.Warning = got, gotErr, gotWarn
					continue
				}
				if gotErr != c.Error || gotWarn != c.Warning {
					t.Errorf("change %d (%s): error %q warning %q, want %q and %q", i, c.Op, gotErr, gotWarn, c.Error, c.Warning)
				}
				if g, w := mustJSON(got), mustJSON(c.Events); g != w && len(got)+len(c.Events) > 0 {
					t.Errorf("change %d (%s):\n got %s\nwant %s", i, c.Op, g, w)
				}
			}
			if *update {
				if err := os.WriteFile(path, writeEventFile(&f), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func mustJSON(v any) string {
	var buf bytes.Buffer
	e := json.NewEncoder(&buf)
	e.SetEscapeHTML(false)
	if err := e.Encode(v); err != nil {
		panic(err)
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// writeEventFile writes an event file readably: one column, one change
// field and one event per line.
func writeEventFile(f *eventFile) []byte {
	var b strings.Builder
	b.WriteString("{\n")
	if f.Comment != "" {
		b.WriteString(`  "comment": ` + mustJSON(f.Comment) + ",\n")
	}
	if f.Options != nil {
		b.WriteString(`  "options": ` + mustJSON(f.Options) + ",\n")
	}
	b.WriteString(`  "mapping": ` + mustJSON(f.Mapping) + ",\n")
	r := f.Relation
	b.WriteString(`  "relation": {"schema": ` + mustJSON(r.Schema) + `, "table": ` + mustJSON(r.Table))
	if r.ReplicaIdentity != "" {
		b.WriteString(`, "replica_identity": ` + mustJSON(r.ReplicaIdentity))
	}
	b.WriteString(", \"columns\": [\n")
	for i, c := range r.Columns {
		b.WriteString("    " + mustJSON(c) + sep(i, len(r.Columns)) + "\n")
	}
	b.WriteString("  ]},\n  \"changes\": [\n")
	for i, c := range f.Changes {
		b.WriteString("    {\n")
		var lines []string
		if c.Comment != "" {
			lines = append(lines, `"comment": `+mustJSON(c.Comment))
		}
		lines = append(lines, `"op": `+mustJSON(c.Op)+`, "lsn": `+mustJSON(c.LSN)+`, "index": `+mustJSON(c.Index)+
			`, "xid": `+mustJSON(c.XID)+`, "commit_time": `+mustJSON(c.CommitTime))
		if c.Old != nil {
			lines = append(lines, `"old": `+mustJSON(orderedRow(f.Relation, c.Old)))
		}
		if c.New != nil {
			lines = append(lines, `"new": `+mustJSON(orderedRow(f.Relation, c.New)))
		}
		if c.Error != "" {
			lines = append(lines, `"error": `+mustJSON(c.Error))
		}
		if c.Warning != "" {
			lines = append(lines, `"warning": `+mustJSON(c.Warning))
		}
		ev := `"events": [`
		for j, e := range c.Events {
			ev += "\n        " + mustJSON(e) + sep(j, len(c.Events))
		}
		if len(c.Events) > 0 {
			ev += "\n      "
		}
		lines = append(lines, ev+"]")
		for j, l := range lines {
			b.WriteString("      " + l + sep(j, len(lines)) + "\n")
		}
		b.WriteString("    }" + sep(i, len(f.Changes)) + "\n")
	}
	b.WriteString("  ]\n}\n")
	return []byte(b.String())
}

// orderedRow keeps a row's columns in the relation's order.
func orderedRow(r fileRelation, m map[string]json.RawMessage) json.RawMessage {
	var b []byte
	b = append(b, '{')
	n := 0
	for _, c := range r.Columns {
		v, ok := m[c.Name]
		if !ok {
			continue
		}
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = appendStr(b, c.Name)
		b = append(b, ':')
		b = append(b, v...)
	}
	return append(b, '}')
}

func sep(i, n int) string {
	if i < n-1 {
		return ","
	}
	return ""
}
