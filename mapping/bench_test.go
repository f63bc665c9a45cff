package mapping

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cdcrelay/cdcrelay/replication"
)

// benchOutboxChange is an outbox row as the stream decodes it: a jsonb
// payload in Postgres's text form (", " and ": " separators) of about n bytes.
func benchOutboxChange(n int) *replication.Change {
	rel := &replication.Relation{Schema: "public", Table: "outbox", ReplicaIdentity: 'd', Columns: []replication.Column{
		{Name: "id", Type: tInt8, Key: true},
		{Name: "aggregatetype", Type: tText},
		{Name: "aggregateid", Type: tText},
		{Name: "type", Type: tText},
		{Name: "payload", Type: tJSONB},
	}}
	payload := fmt.Sprintf(`{"seq": 12345, "data": "%s"}`, strings.Repeat("a1b2c3d4", n/8))
	return change(replication.OpInsert, rel, []replication.Value{
		text("123456789"), text("order"), text("agg-17"), text("OrderPlaced"), text(payload)}, nil)
}

func benchmarkMap(b *testing.B, spec Spec, payload int) {
	m, err := New([]Spec{spec})
	if err != nil {
		b.Fatal(err)
	}
	c := benchOutboxChange(payload)
	b.ReportAllocs()
	b.SetBytes(int64(len(c.New[4].Text)))
	for i := 0; i < b.N; i++ {
		evs, err := m.Map(c)
		if err != nil || len(evs) != 1 {
			b.Fatal(err, len(evs))
		}
	}
}

// BenchmarkMapOutbox is the relay's per-row mapping cost for the outbox
// (make bench's workloads), with the default and the JSON envelope.
func BenchmarkMapOutbox(b *testing.B) {
	for _, n := range []int{200, 4096} {
		b.Run(fmt.Sprintf("default/%dB", n), func(b *testing.B) {
			benchmarkMap(b, Spec{Table: "outbox", Kind: "outbox"}, n)
		})
		b.Run(fmt.Sprintf("json/%dB", n), func(b *testing.B) {
			benchmarkMap(b, Spec{Table: "outbox", Kind: "outbox", Envelope: EnvelopeJSON}, n)
		})
	}
}

// BenchmarkEncodeJSONB is the jsonb value encoding (compactServerJSON).
func BenchmarkEncodeJSONB(b *testing.B) {
	for _, n := range []int{200, 4096} {
		v := []byte(fmt.Sprintf(`{"seq": 12345, "data": "%s", "tags": ["a", "b"], "n": 1.5}`, strings.Repeat("a1b2c3d4", n/8)))
		b.Run(fmt.Sprintf("%dB", n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(v)))
			var dst []byte
			for i := 0; i < b.N; i++ {
				var err error
				if dst, err = EncodeValue(dst[:0], tJSONB, v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMapTable is a plain table row (int8, text, jsonb) in the default envelope.
func BenchmarkMapTable(b *testing.B) {
	m, err := New([]Spec{{Table: "orders", Kind: "table"}})
	if err != nil {
		b.Fatal(err)
	}
	c := change(replication.OpInsert, ordersRel(), []replication.Value{text("42"), text("eu-west"), text(`{"total": 12.5, "items": [1, 2, 3]}`)}, nil)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := m.Map(c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMapTableEnvelope compares the envelopes of a table row (int8,
// text, jsonb): "avro" must cost no more than "json" (the framing with the
// schema id, in package schema, adds one small copy).
func BenchmarkMapTableEnvelope(b *testing.B) {
	for _, env := range []string{EnvelopeJSON, EnvelopeAvro, EnvelopeJSONSchema} {
		b.Run(env, func(b *testing.B) {
			m, err := New([]Spec{{Table: "orders", Kind: "table", Envelope: env}}, WithDatabase("shop"))
			if err != nil {
				b.Fatal(err)
			}
			c := change(replication.OpInsert, ordersRel(), []replication.Value{text("42"), text("eu-west"), text(`{"total": 12.5, "items": [1, 2, 3]}`)}, nil)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := m.Map(c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
