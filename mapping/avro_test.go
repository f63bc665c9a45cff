package mapping

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hamba/avro/v2"

	"github.com/cdcrelay/cdcrelay/replication"
)

// TestAvroValuesRoundTripThroughHamba writes every golden case with a text
// in its column's Avro type, as a nullable record field, and reads it back
// with hamba/avro's decoder (the library's reading of the schema, not
// ours), then writes that value again with hamba's encoder: the bytes must
// be the same. So the mapping's bytes are what the library makes of the
// value, for every type; the e2e test checks the values themselves.
func TestAvroValuesRoundTripThroughHamba(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(goldenDir, "types", "*.json"))
	n := 0
	for _, path := range files {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var f typeFile
		if err := json.Unmarshal(raw, &f); err != nil {
			t.Fatal(err)
		}
		typ := f.Type.typ()
		at := avroTypeOf(typ, -1)
		schemaText := string(appendAvroRecord(nil, "R", "t", []avroCol{{field: "v", name: "v", typ: at}}))
		sch, err := avro.Parse(schemaText)
		if err != nil {
			t.Fatalf("%s: schema %s: %v", path, schemaText, err)
		}
		for i, c := range f.Cases {
			if c.Null || c.Text == nil {
				continue
			}
			b, err := at.appendValue([]byte{2}, typ, []byte(*c.Text))
			if err != nil {
				if c.Error == "" && !bytes.HasPrefix(bytes.TrimSpace(c.Want), []byte("[[")) {
					t.Errorf("%s case %d %q: %v", filepath.Base(path), i, *c.Text, err)
				}
				continue
			}
			var v map[string]any
			if err := avro.Unmarshal(sch, b, &v); err != nil {
				t.Errorf("%s case %d %q: hamba cannot read %x: %v", filepath.Base(path), i, *c.Text, b, err)
				continue
			}
			again, err := avro.Marshal(sch, v)
			if err != nil {
				t.Errorf("%s case %d %q: hamba cannot write %v back: %v", filepath.Base(path), i, *c.Text, v, err)
				continue
			}
			if at.kind == avroArray || at.kind == avroMap {
				// hamba writes blocks with their byte size (a negative
				// count), which the spec allows too: compare what it reads.
				var v2 map[string]any
				if err := avro.Unmarshal(sch, again, &v2); err != nil || fmt.Sprint(v2) != fmt.Sprint(v) {
					t.Errorf("%s case %d %q: ours reads as %v, hamba's as %v (%v)", filepath.Base(path), i, *c.Text, v, v2, err)
				}
			} else if !bytes.Equal(again, b) {
				t.Errorf("%s case %d %q: our bytes %x, hamba's for the same value %x", filepath.Base(path), i, *c.Text, b, again)
			}
			n++
		}
	}
	t.Logf("%d values", n)
}

// TestAvroDecimal: numeric(p,s) is Avro's decimal with the column's scale
// and precision (the type modifier), read back exactly by hamba; a value
// Avro's decimal cannot hold is a row error, and numeric without a scale
// is a string.
func TestAvroDecimal(t *testing.T) {
	numeric := &replication.Type{Name: "numeric", Kind: 'b'}
	typmod := func(p, s int) int32 { return int32(p<<16|s) + 4 }
	at := avroTypeOf(numeric, typmod(30, 3))
	if at.kind != avroDecimal || at.precision != 30 || at.scale != 3 {
		t.Fatalf("numeric(30,3): %+v", at)
	}
	sch := avro.MustParse(string(at.appendSchema(nil)))
	for _, c := range []struct{ text, want string }{
		{"0.000", "0"}, {"1.500", "3/2"}, {"-1.500", "-3/2"}, {"12345.678", "12345678/1000"},
		{"-0.001", "-1/1000"}, {"127.000", "127"}, {"128.000", "128"}, {"-128.000", "-128"}, {"-129.000", "-129"},
		{"123456789012345678901234567.891", "123456789012345678901234567891/1000"},
		{"-123456789012345678901234567.891", "-123456789012345678901234567891/1000"},
		{"42", "42"}, // fewer fraction digits than the scale
	} {
		b, err := at.appendValue(nil, numeric, []byte(c.text))
		if err != nil {
			t.Errorf("%s: %v", c.text, err)
			continue
		}
		var r *big.Rat
		if err := avro.Unmarshal(sch, b, &r); err != nil {
			t.Errorf("%s: %v", c.text, err)
			continue
		}
		want, _ := new(big.Rat).SetString(c.want)
		if r.Cmp(want) != 0 {
			t.Errorf("%s: hamba reads %s, want %s", c.text, r.RatString(), want.RatString())
		}
		if again, _ := avro.Marshal(sch, r); !bytes.Equal(again, b) {
			t.Errorf("%s: our bytes %x, hamba's %x", c.text, b, again)
		}
	}
	for _, bad := range []string{"NaN", "1.2345"} {
		if _, err := at.appendValue(nil, numeric, []byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
	if at := avroTypeOf(numeric, -1); at.kind != avroString {
		t.Errorf("numeric without a scale: %+v, want a string", at)
	}
	if at := avroTypeOf(numeric, int32(5<<16|0xfffe)+4); at.kind != avroString { // numeric(5,-2)
		t.Errorf("numeric with a negative scale: %+v, want a string", at)
	}
}

// TestAvroRefusesMultiDimensionalArrays: Postgres does not fix an array
// column's dimensions, Avro's array type does: a multi-dimensional value is
// a row error naming the reason, not a silently flattened array.
func TestAvroRefusesMultiDimensionalArrays(t *testing.T) {
	typ := &replication.Type{Name: "_int4", Kind: 'b', Elem: &replication.Type{Name: "int4", Kind: 'b'}}
	at := avroTypeOf(typ, -1)
	_, err := at.appendValue(nil, typ, []byte("{{1,2},{3,4}}"))
	if err == nil || !strings.Contains(err.Error(), "multi-dimensional") {
		t.Fatalf("err = %v", err)
	}
}

// TestAvroEnvelopeMatchesHamba maps a row change with envelope "avro" and
// reads the event with hamba under the derived schema: the fields are the
// json envelope's.
func TestAvroEnvelopeMatchesHamba(t *testing.T) {
	m, err := New([]Spec{{Table: "orders", Kind: "table", Envelope: EnvelopeAvro}}, WithDatabase("shop"))
	if err != nil {
		t.Fatal(err)
	}
	rel := ordersRel()
	c := change(replication.OpUpdate, rel, []replication.Value{text("42"), text("eu-west"), {Kind: replication.ValueUnchanged}},
		[]replication.Value{text("41"), {}, {}})
	evs, err := m.Map(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Value != nil || evs[1].Contract == nil || evs[1].Contract.Value == nil || evs[1].Contract.Key == nil {
		t.Fatalf("events %+v", evs)
	}
	ev := evs[1]
	sch := avro.MustParse(ev.Contract.Value.Text)
	var env map[string]any
	if err := avro.Unmarshal(sch, ev.Value, &env); err != nil {
		t.Fatal(err)
	}
	// hamba reads a union's value as {branch name: value}.
	after := env["after"].(map[string]any)["public.orders.Value"].(map[string]any)
	before := env["before"].(map[string]any)["public.orders.Value"].(map[string]any)
	if env["op"] != "update" || after["id"] != int64(42) || after["region"] != "eu-west" || after["doc"] != nil ||
		before["id"] != int64(41) || before["region"] != nil {
		t.Errorf("envelope %v", env)
	}
	if u := env["unchanged_toast"].([]any); len(u) != 1 || u[0] != "doc" {
		t.Errorf("unchanged_toast %v", env["unchanged_toast"])
	}
	if src := env["source"].(map[string]any); src["db"] != "shop" || src["table"] != "orders" {
		t.Errorf("source %v", src)
	}
	var key map[string]any
	if err := avro.Unmarshal(avro.MustParse(ev.Contract.Key.Text), ev.Key, &key); err != nil || key["id"] != int64(42) {
		t.Errorf("key %v: %v", key, err)
	}
	// The old key's tombstone carries the key schema, and nothing else.
	if tomb := evs[0]; tomb.Contract == nil || tomb.Contract.Key == nil || tomb.Contract.Value != nil {
		t.Errorf("tombstone %+v", tomb)
	}
}

// TestAvroName adjusts column names to Avro's rules, and two columns that
// end up with one name make the table's rows errors.
func TestAvroName(t *testing.T) {
	for in, want := range map[string]string{"id": "id", "Order Total": "Order_Total", "1st": "_1st", "a-b": "a_b", "": "_"} {
		if got := avroName(in); got != want {
			t.Errorf("avroName(%q) = %q, want %q", in, got, want)
		}
	}
	m, err := New([]Spec{{Table: "t", Kind: "table", Envelope: EnvelopeAvro}})
	if err != nil {
		t.Fatal(err)
	}
	rel := &replication.Relation{Schema: "public", Table: "t", ReplicaIdentity: 'd', Columns: []replication.Column{
		{Name: "id", Type: tInt8, Key: true, PrimaryKey: true}, {Name: "a-b", Type: tText}, {Name: "a_b", Type: tText}}}
	_, err = m.Map(change(replication.OpInsert, rel, []replication.Value{text("1"), text("x"), text("y")}, nil))
	var re *RowError
	if !errors.As(err, &re) || !strings.Contains(re.Reason, `columns "a-b" and "a_b" of public.t both become Avro field "a_b"`) {
		t.Fatalf("err = %v", err)
	}
}
