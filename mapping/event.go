package mapping

import "time"

// Event is one Kafka record to publish.
type Event struct {
	Topic string
	// Key selects the partition (murmur2, as Kafka's Java client). Nil means no key.
	Key []byte
	// Value nil is a tombstone.
	Value   []byte
	Headers []Header
	// Timestamp is the event's time, for the record's CreateTime: the commit
	// time, or the outbox timestamp_column / changelog time_column. Zero when
	// unknown (the producer then stamps the record).
	Timestamp time.Time
	// Contract, when set, says that Key and Value still have to be put in
	// the schema registry's wire format (envelopes "avro" and
	// "json-schema", outbox payload_schema = "registry"): package schema's
	// encoder does that before the event is sent.
	Contract *Contract

	// ID is the event's id (the outbox id column, the changelog id column,
	// or the change's position); "" for tombstones and dead letters.
	ID string
	// Trace is the W3C trace context the row carried (its traceparent and
	// tracestate headers are among Headers); zero when it carried none.
	Trace TraceContext
	// CorrelationID is the value of the mapping's correlation id (also a
	// header), "" when it has none.
	CorrelationID string
}

// Header is a Kafka record header.
type Header struct {
	Key   string
	Value []byte
}

// Size is the event's approximate size on the wire, for batching limits.
func (e *Event) Size() int {
	n := len(e.Topic) + len(e.Key) + len(e.Value) + 32
	for _, h := range e.Headers {
		n += len(h.Key) + len(h.Value) + 8
	}
	return n
}

// Header returns the value of the first header named key.
func (e *Event) Header(key string) ([]byte, bool) {
	for _, h := range e.Headers {
		if h.Key == key {
			return h.Value, true
		}
	}
	return nil, false
}
