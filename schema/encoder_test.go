package schema

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/cdcrelay/cdcrelay/mapping"
)

const testAvro = `{"type":"record","name":"Value","namespace":"public.t","fields":[{"name":"id","type":"long"}]}`

func testSchema(text string) *mapping.Schema {
	return &mapping.Schema{Format: mapping.SchemaAvro, Text: text, Name: "public.t.Value", Fingerprint: [32]byte{byte(len(text))}}
}

// TestEncodeRegistersOnce: the first event registers its schema, the next
// ones find the id in the cache (no request), and every value is framed
// with that id.
func TestEncodeRegistersOnce(t *testing.T) {
	reg := srfake.New()
	defer reg.Close()
	var ops []string
	enc, err := New(Config{URL: reg.URL(), Observe: func(op string, err error) { ops = append(ops, op) }})
	if err != nil {
		t.Fatal(err)
	}
	s := testSchema(testAvro)
	for i := 0; i < 3; i++ {
		ev := &mapping.Event{Topic: "t", Value: []byte{0x54}, Contract: &mapping.Contract{Value: s, Table: "public.t", Compatibility: "BACKWARD"}}
		if err := enc.Encode(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
		id, body, err := (&sr.ConfluentHeader{}).DecodeID(ev.Value)
		if err != nil || id == 0 || string(body) != "\x54" || ev.Contract != nil {
			t.Fatalf("value %x: id %d, %v", ev.Value, id, err)
		}
	}
	if got := strings.Join(ops, ","); got != "config,register" {
		t.Errorf("requests %s, want one compatibility read (the fake registry is BACKWARD already) and one registration", got)
	}
	if c, _ := reg.GetSchema("t-value", 1); c.Schema.Schema != testAvro {
		t.Errorf("registered %+v", c)
	}
}

// TestEncodeUnavailable: a registry that does not answer is retried for
// RetryFor, then Encode says it is unavailable (the daemon retries the
// session) and the event is left as it was.
func TestEncodeUnavailable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	var failures int
	enc, _ := New(Config{URL: "http://" + addr, RetryFor: 500 * time.Millisecond, Observe: func(op string, err error) {
		if err != nil {
			failures++
		}
	}})
	ev := &mapping.Event{Topic: "t", Value: []byte{1}, Contract: &mapping.Contract{Value: testSchema(testAvro), Table: "public.t"}}
	start := time.Now()
	err = enc.Encode(context.Background(), ev)
	var ue *UnavailableError
	if !errors.As(err, &ue) {
		t.Fatalf("err = %v, want an UnavailableError", err)
	}
	if time.Since(start) < 500*time.Millisecond || failures < 2 {
		t.Errorf("gave up after %s and %d failed requests", time.Since(start), failures)
	}
	if ev.Contract == nil || len(ev.Value) != 1 {
		t.Errorf("the event was changed: %+v", ev)
	}
}

func TestSubjectName(t *testing.T) {
	s := testSchema(testAvro)
	for _, c := range []struct {
		strategy string
		key      bool
		want     string
	}{
		{TopicNameStrategy, false, "shop.orders-value"}, {TopicNameStrategy, true, "shop.orders-key"},
		{RecordNameStrategy, false, "public.t.Value"}, {TopicRecordNameStrategy, false, "shop.orders-public.t.Value"},
	} {
		if got := SubjectName(c.strategy, "shop.orders", s, c.key); got != c.want {
			t.Errorf("%s key=%v: %s, want %s", c.strategy, c.key, got, c.want)
		}
	}
}

// BenchmarkEncodeCached is the per-event cost of the wire format once the
// schema's id is known: a cache lookup and the framing copy.
func BenchmarkEncodeCached(b *testing.B) {
	reg := srfake.New()
	defer reg.Close()
	enc, _ := New(Config{URL: reg.URL()})
	s := testSchema(testAvro)
	body := make([]byte, 200)
	c := &mapping.Contract{Value: s, Table: "public.t"}
	if err := enc.Encode(context.Background(), &mapping.Event{Topic: "t", Value: body, Contract: c}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		ev := mapping.Event{Topic: "t", Value: body, Contract: c}
		if err := enc.Encode(context.Background(), &ev); err != nil {
			b.Fatal(err)
		}
	}
}
