package sink

import "github.com/IBM/sarama"

// Delivery is where a committed event landed.
type Delivery struct {
	Partition int32
	// Offset is the record's offset, -1 when the broker's answer did not
	// say (a retried batch it had written already: DUPLICATE_SEQUENCE_NUMBER).
	Offset int64
}

// RecordDeliveries keeps every transaction's messages until it commits, so
// that [Txn.Deliveries] can tell each event's partition and offset (for
// tracing). Without it nothing is kept.
func RecordDeliveries() WriterOption {
	return func(o *writerOptions) { o.deliveries = true }
}

// queued counts a message that is in the producer's hands.
func (t *Txn) queued(msg *sarama.ProducerMessage) {
	t.sent++
	if t.w.deliveries {
		t.msgs = append(t.msgs, msg)
	}
}

// Deliveries returns the partition and offset of each event sent in the
// transaction, in the order of Send, once Commit has succeeded; nil before
// that or without [RecordDeliveries].
//
// sarama writes a message's Partition (partitioner) and Offset (produce
// response) on the message itself, from its own goroutines, and marks the
// message done on its in-flight WaitGroup afterwards; CommitTxn waits on
// that WaitGroup before it ends the transaction. So once Commit returned
// nil, every field is written and the Wait orders those writes before
// these reads. Return.Successes stays off: no channel to drain on the hot
// path, with tracing on or off.
func (t *Txn) Deliveries() []Delivery {
	if !t.committed || len(t.msgs) == 0 {
		return nil
	}
	d := make([]Delivery, len(t.msgs))
	for i, m := range t.msgs {
		d[i] = Delivery{Partition: m.Partition, Offset: m.Offset}
	}
	return d
}
