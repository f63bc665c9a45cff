package replication

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
)

func benchRelation() *Relation {
	t := func(n string) *Type { return &Type{Name: n, Kind: 'b'} }
	return &Relation{ID: 16385, Schema: "public", Table: "outbox", ReplicaIdentity: 'd', Columns: []Column{
		{Name: "id", Type: t("int8"), Key: true, PrimaryKey: true},
		{Name: "aggregatetype", Type: t("text")},
		{Name: "aggregateid", Type: t("text")},
		{Name: "type", Type: t("text")},
		{Name: "payload", Type: t("jsonb")},
	}}
}

// tuple encodes pgoutput TupleData; a nil entry is NULL, "\x00u" unchanged TOAST.
func tuple(cols ...[]byte) []byte {
	var b bytes.Buffer
	_ = binary.Write(&b, binary.BigEndian, uint16(len(cols)))
	for _, c := range cols {
		switch {
		case c == nil:
			b.WriteByte('n')
		case string(c) == "\x00u":
			b.WriteByte('u')
		default:
			b.WriteByte('t')
			_ = binary.Write(&b, binary.BigEndian, uint32(len(c)))
			b.Write(c)
		}
	}
	return b.Bytes()
}

func rowMessage(kind byte, rel uint32, parts ...any) []byte {
	var b bytes.Buffer
	b.WriteByte(kind)
	_ = binary.Write(&b, binary.BigEndian, rel)
	for _, p := range parts {
		switch p := p.(type) {
		case byte:
			b.WriteByte(p)
		case []byte:
			b.Write(p)
		}
	}
	return b.Bytes()
}

func outboxInsert(payloadBytes int) []byte {
	payload := fmt.Sprintf(`{"seq": 12345, "data": "%s"}`, strings.Repeat("a1b2c3d4", payloadBytes/8))
	return rowMessage('I', 16385, byte('N'), tuple([]byte("123456789"), []byte("order"), []byte("agg-17"), []byte("OrderPlaced"), []byte(payload)))
}

// viaPglogrepl is the path decodeRow replaced: pglogrepl.Parse, then values().
func viaPglogrepl(s *Stream, data []byte) (*Change, error) {
	lm, err := pglogrepl.Parse(data)
	if err != nil {
		return nil, err
	}
	switch m := lm.(type) {
	case *pglogrepl.InsertMessage:
		return s.change(OpInsert, m.RelationID, nil, m.Tuple, false)
	case *pglogrepl.UpdateMessage:
		return s.change(OpUpdate, m.RelationID, m.OldTuple, m.NewTuple, m.OldTupleType == pglogrepl.UpdateMessageTupleTypeKey)
	case *pglogrepl.DeleteMessage:
		return s.change(OpDelete, m.RelationID, m.OldTuple, nil, m.OldTupleType == pglogrepl.DeleteMessageTupleTypeKey)
	}
	return nil, fmt.Errorf("not a row message")
}

func newBenchStream() *Stream {
	rel := benchRelation()
	return &Stream{relations: map[uint32]*Relation{rel.ID: rel}, begin: Begin{CommitLSN: 0x16B374D848, XID: 7}}
}

// TestDecodeRowMatchesPglogrepl checks the fast decoder against the
// pglogrepl path it replaced, on inserts, updates and deletes with NULL,
// unchanged-TOAST and missing trailing columns.
func TestDecodeRowMatchesPglogrepl(t *testing.T) {
	key := tuple([]byte("42"))
	// pgoutput's 'K' tuple: every column, the non-key ones as NULL.
	keyNulls := tuple([]byte("42"), nil, nil, nil, nil)
	full := tuple([]byte("42"), []byte("order"), nil, []byte("T"), []byte(`{"a":1}`))
	toast := tuple([]byte("42"), []byte("order"), []byte("agg"), []byte("T"), []byte("\x00u"))
	msgs := map[string][]byte{
		"insert":           outboxInsert(200),
		"insert-null":      rowMessage('I', 16385, byte('N'), full),
		"insert-short":     rowMessage('I', 16385, byte('N'), tuple([]byte("1"), []byte("x"))),
		"update":           rowMessage('U', 16385, byte('N'), toast),
		"update-key":       rowMessage('U', 16385, byte('K'), key, byte('N'), full),
		"update-old":       rowMessage('U', 16385, byte('O'), full, byte('N'), toast),
		"delete-key":       rowMessage('D', 16385, byte('K'), key),
		"delete-key-nulls": rowMessage('D', 16385, byte('K'), keyNulls),
		"update-key-nulls": rowMessage('U', 16385, byte('K'), keyNulls, byte('N'), full),
		"delete-old":       rowMessage('D', 16385, byte('O'), full),
		"insert-empty-str": rowMessage('I', 16385, byte('N'), tuple([]byte(""), []byte("x"))),
	}
	for name, msg := range msgs {
		a, b := newBenchStream(), newBenchStream()
		want, werr := viaPglogrepl(a, msg)
		got, gerr := b.decodeRow(msg)
		if (werr != nil) != (gerr != nil) {
			t.Fatalf("%s: errors differ: pglogrepl %v, decodeRow %v", name, werr, gerr)
		}
		if !reflect.DeepEqual(normalize(want), normalize(got)) {
			t.Errorf("%s:\npglogrepl %+v\ndecodeRow %+v", name, want, got)
		}
	}
	// Errors: more columns than the relation has, a binary value, truncation.
	six := tuple([]byte("1"), []byte("2"), []byte("3"), []byte("4"), []byte("5"), []byte("6"))
	bin := append(tuple([]byte("1")), 0)
	bin[2] = 'b'
	for name, msg := range map[string][]byte{
		"too-many-columns": rowMessage('I', 16385, byte('N'), six),
		"binary":           rowMessage('I', 16385, byte('N'), bin[:len(bin)-1]),
		"unknown-relation": rowMessage('I', 99, byte('N'), full),
		"truncated":        rowMessage('I', 16385, byte('N'), full[:len(full)-3]),
	} {
		if _, err := newBenchStream().decodeRow(msg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// normalize makes empty and nil Text equal (pglogrepl allocates a zero-length slice).
func normalize(c *Change) *Change {
	if c == nil {
		return nil
	}
	cp := *c
	fix := func(vs []Value) []Value {
		out := make([]Value, len(vs))
		for i, v := range vs {
			out[i] = Value{Kind: v.Kind, Text: append([]byte{}, v.Text...)}
		}
		return out
	}
	if cp.New != nil {
		cp.New = fix(cp.New)
	}
	if cp.Old != nil {
		cp.Old = fix(cp.Old)
	}
	return &cp
}

func benchmarkDecode(b *testing.B, payload int, fast bool) {
	s := newBenchStream()
	msg := outboxInsert(payload)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		var err error
		if fast {
			_, err = s.decodeRow(msg)
		} else {
			_, err = viaPglogrepl(s, msg)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeInsert: the decoder the stream uses for row changes.
func BenchmarkDecodeInsert(b *testing.B) {
	b.Run("200B/decodeRow", func(b *testing.B) { benchmarkDecode(b, 200, true) })
	b.Run("200B/pglogrepl", func(b *testing.B) { benchmarkDecode(b, 200, false) })
	b.Run("4KB/decodeRow", func(b *testing.B) { benchmarkDecode(b, 4096, true) })
	b.Run("4KB/pglogrepl", func(b *testing.B) { benchmarkDecode(b, 4096, false) })
}
