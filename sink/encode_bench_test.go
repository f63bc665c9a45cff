package sink

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cdcrelay/cdcrelay/mapping"
)

func benchEvent() *mapping.Event {
	return &mapping.Event{
		Topic:     "outbox.event.order",
		Key:       []byte("agg-17"),
		Value:     []byte(`{"seq":12345,"data":"` + strings.Repeat("a1b2c3d4", 20) + `"}`),
		Headers:   []mapping.Header{{Key: "id", Value: []byte("123456789")}, {Key: "type", Value: []byte("OrderPlaced")}},
		Timestamp: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

// BenchmarkProducerMessage is the per-event cost in Txn.Send before sarama.
func BenchmarkProducerMessage(b *testing.B) {
	ev := benchEvent()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if m := producerMessage(ev); m.Topic == "" {
			b.Fatal("no topic")
		}
	}
}

// BenchmarkCheckpointEncode is the per-commit checkpoint metadata.
func BenchmarkCheckpointEncode(b *testing.B) {
	cp := Checkpoint{LSN: 0x16B374D848, TxLSN: 0x16B374D000, TxNext: 4999, Seq: 123456}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := json.Marshal(cp); err != nil {
			b.Fatal(err)
		}
	}
}
