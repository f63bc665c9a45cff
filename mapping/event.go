package mapping

// Event is one Kafka record to publish.
type Event struct {
	Topic string
	// Key selects the partition (murmur2, as Kafka's Java client). Nil means no key.
	Key []byte
	// Value nil is a tombstone.
	Value   []byte
	Headers []Header
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
