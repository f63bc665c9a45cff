package tracing

import (
	"context"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

// Batch holds the spans of the Kafka transaction a session has open. It
// belongs to the session's committer goroutine (not safe for concurrent
// use); the spans it ends go to the Tracer's export queue.
type Batch struct {
	t *Tracer

	pending    eventSpan // the span of the event being sent
	hasPending bool
	spans      []eventSpan // the events in the open transaction, in Send order

	names   map[string]string // topic -> "send <topic>"
	lastRel *replication.Relation
	relName string
	lastLSN replication.LSN
	lsnText string
}

// eventSpan is what a span needs once the transaction committed; nothing
// of the event's value is kept.
type eventSpan struct {
	span  trace.Span
	topic string
	key   []byte
	id    string
	corr  string
	table string
	lsn   replication.LSN
	tomb  bool
}

// NewBatch returns the per-session span state.
func (t *Tracer) NewBatch() *Batch {
	return &Batch{t: t, names: map[string]string{}}
}

// Attribute keys of the messaging and database conventions, and our own.
const (
	attrMessagingSystem = attribute.Key("messaging.system")
	attrOperationName   = attribute.Key("messaging.operation.name")
	attrOperationType   = attribute.Key("messaging.operation.type")
	attrDestination     = attribute.Key("messaging.destination.name")
	attrPartition       = attribute.Key("messaging.destination.partition.id")
	attrKey             = attribute.Key("messaging.kafka.message.key")
	attrTombstone       = attribute.Key("messaging.kafka.message.tombstone")
	attrOffset          = attribute.Key("messaging.kafka.offset")
	attrMessageID       = attribute.Key("messaging.message.id")
	attrConversationID  = attribute.Key("messaging.message.conversation_id")
	attrBatchCount      = attribute.Key("messaging.batch.message_count")
	attrDBSystem        = attribute.Key("db.system.name")
	attrDBCollection    = attribute.Key("db.collection.name")
	// AttrSourceLSN is the commit LSN of the source transaction ("16/B374D848").
	AttrSourceLSN = attribute.Key("cdcrelay.source.lsn")
	// AttrTxnSeq is the checkpoint sequence of the Kafka transaction (on
	// the commit span).
	AttrTxnSeq = attribute.Key("cdcrelay.kafka.transaction.seq")
	// AttrCheckpointLSN is the position a commit made durable.
	AttrCheckpointLSN = attribute.Key("cdcrelay.checkpoint.lsn")
)

var (
	kafka      = attrMessagingSystem.String("kafka")
	sendName   = attrOperationName.String("send")
	sendType   = attrOperationType.String("send")
	postgresql = attrDBSystem.String("postgresql")
)

// Start begins the span of ev, an event of change c about to be sent (a
// dead letter or a tombstone too). A row without a trace context starts a
// new trace, and ev gets its traceparent header. The span counts only once
// [Batch.Sent] confirms the event went into the transaction; a second Start
// before that replaces it (an oversized event replaced by its dead letter).
func (b *Batch) Start(ev *mapping.Event, c *replication.Change) {
	now := time.Now()
	start := now
	if c != nil && !c.CommitTime.IsZero() && c.CommitTime.Before(now) {
		// The span starts when the source transaction committed, by the
		// database's clock; one ahead of ours would make the span end
		// before it starts.
		start = c.CommitTime
	}
	ctx := context.Background()
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer), trace.WithTimestamp(start)}
	if ev.Trace.Valid() {
		sc := trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: ev.Trace.TraceID, SpanID: ev.Trace.SpanID, TraceFlags: trace.TraceFlags(ev.Trace.Flags), Remote: true,
		})
		if ev.Trace.State != "" {
			if ts, err := trace.ParseTraceState(ev.Trace.State); err == nil {
				sc = sc.WithTraceState(ts)
			}
		}
		// A child of the row's context, so the relay's work shows in the
		// service's trace, and a link to it, the message's creation
		// context as the messaging conventions have "send" spans do.
		ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
	}
	name, ok := b.names[ev.Topic]
	if !ok {
		name = "send " + ev.Topic
		b.names[ev.Topic] = name
	}
	_, span := b.t.tracer.Start(ctx, name, opts...)
	if !ev.Trace.Valid() {
		// The relay's own trace: consumers continue from this span.
		sc := span.SpanContext()
		ev.Headers = append(ev.Headers, mapping.Header{Key: mapping.HeaderTraceparent,
			Value: mapping.FormatTraceparent(sc.TraceID(), sc.SpanID(), byte(sc.TraceFlags()))})
	}
	b.pending = eventSpan{span: span, topic: ev.Topic, key: ev.Key, id: ev.ID, corr: ev.CorrelationID, tomb: ev.Value == nil}
	if c != nil {
		b.pending.lsn = c.Pos.CommitLSN
		if c.Relation != nil {
			if c.Relation != b.lastRel {
				b.lastRel, b.relName = c.Relation, c.Relation.QualifiedName()
			}
			b.pending.table = b.relName
		}
	}
	b.hasPending = true
}

// Sent confirms that the event of the last Start is in the transaction.
func (b *Batch) Sent() {
	if b.hasPending {
		b.spans = append(b.spans, b.pending)
		b.pending, b.hasPending = eventSpan{}, false
	}
}

// Committed ends the transaction's spans: the Kafka commit, from started
// to committed, made the events visible. deliveries are the transaction's
// ([sink.Txn.Deliveries]: partitions and offsets in Send order), seq and
// lsn the checkpoint it carried.
func (b *Batch) Committed(deliveries []sink.Delivery, seq int64, lsn replication.LSN, started, committed time.Time) {
	b.pending, b.hasPending = eventSpan{}, false
	if len(b.spans) == 0 {
		return // a checkpoint alone: no events, no spans
	}
	end := trace.WithTimestamp(committed)
	var attrs []attribute.KeyValue
	for i := range b.spans {
		s := &b.spans[i]
		if !s.span.IsRecording() {
			continue
		}
		// Kept to what a reader of the trace needs: every attribute costs
		// its share of the export on every event.
		attrs = append(attrs[:0], kafka, sendName, sendType, attrDestination.String(s.topic))
		if i < len(deliveries) {
			d := deliveries[i]
			attrs = append(attrs, attrPartition.String(strconv.Itoa(int(d.Partition))))
			if d.Offset >= 0 {
				attrs = append(attrs, attrOffset.Int64(d.Offset))
			}
		}
		if s.key != nil {
			attrs = append(attrs, attrKey.String(string(s.key)))
		}
		if s.tomb {
			attrs = append(attrs, attrTombstone.Bool(true))
		}
		if s.id != "" {
			attrs = append(attrs, attrMessageID.String(s.id))
		}
		if s.corr != "" {
			attrs = append(attrs, attrConversationID.String(s.corr))
		}
		attrs = append(attrs, postgresql)
		if s.table != "" {
			attrs = append(attrs, attrDBCollection.String(s.table))
		}
		if s.lsn != 0 {
			if s.lsn != b.lastLSN {
				b.lastLSN, b.lsnText = s.lsn, s.lsn.String()
			}
			attrs = append(attrs, AttrSourceLSN.String(b.lsnText))
		}
		s.span.SetAttributes(attrs...)
		s.span.End(end)
	}
	_, span := b.t.tracer.Start(context.Background(), "commit",
		trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(started))
	if span.IsRecording() {
		span.SetAttributes(kafka, attrOperationName.String("commit"), attrBatchCount.Int(len(b.spans)),
			AttrTxnSeq.Int64(seq), AttrCheckpointLSN.String(lsn.String()))
	}
	span.End(end)
	clear(b.spans)
	b.spans = b.spans[:0]
	b.t.q.nudge()
}

// Discard forgets the transaction's spans without ending them: it failed
// or was abandoned, its events were never visible, and none is exported.
func (b *Batch) Discard() {
	b.pending, b.hasPending = eventSpan{}, false
	clear(b.spans)
	b.spans = b.spans[:0]
}
