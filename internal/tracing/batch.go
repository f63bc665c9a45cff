package tracing

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"math/rand/v2"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

// Batch holds the spans-to-be of the Kafka transaction a session has open.
// It belongs to the session's committer goroutine (not safe for concurrent
// use).
//
// The committer's share is kept small, because it is the relay's hot path:
// Start only chooses the span's ids (and, for a trace the relay starts, the
// sampling decision, which the traceparent header must carry) and notes
// what the span will say. The SDK's spans are made, ended and exported on
// the Tracer's goroutines, after the Kafka commit, from those notes; the
// span ids the header named are handed to the SDK by its IDGenerator.
type Batch struct {
	t   *Tracer
	rnd *rand.Rand

	pending    pendingSpan
	hasPending bool
	sent       int           // events sent in the open transaction
	spans      []pendingSpan // the sampled events sent, in Send order

	lastRel *replication.Relation
	relName string
}

// pendingSpan is what a span will need once the transaction committed;
// nothing of the event's value is kept.
type pendingSpan struct {
	sc     trace.SpanContext // the span's own ids and flags
	parent trace.SpanContext // the row's context; invalid for a trace the relay starts
	start  time.Time
	sent   int // index among the transaction's sent events (for its delivery)
	topic  string
	key    []byte
	id     string
	corr   string
	table  string
	lsn    replication.LSN
	tomb   bool
}

// NewBatch returns the per-session span state.
func (t *Tracer) NewBatch() *Batch {
	var seed [32]byte
	_, _ = crand.Read(seed[:])
	return &Batch{t: t, rnd: rand.New(rand.NewChaCha8(seed))}
}

func (b *Batch) newSpanID() trace.SpanID {
	var id trace.SpanID
	for id == (trace.SpanID{}) {
		binary.BigEndian.PutUint64(id[:], b.rnd.Uint64())
	}
	return id
}

func (b *Batch) newTraceID() trace.TraceID {
	var id trace.TraceID
	for id == (trace.TraceID{}) {
		binary.BigEndian.PutUint64(id[:8], b.rnd.Uint64())
		binary.BigEndian.PutUint64(id[8:], b.rnd.Uint64())
	}
	return id
}

// Start notes the span of ev, an event of change c about to be sent (a
// dead letter or a tombstone too). A row without a trace context starts a
// new trace, sampled by the ratio, and ev gets its traceparent header. The
// span counts only once [Batch.Sent] confirms the event went into the
// transaction; a second Start before that replaces it (an oversized event
// replaced by its dead letter).
func (b *Batch) Start(ev *mapping.Event, c *replication.Change) {
	b.hasPending = false
	var p pendingSpan
	if ev.Trace.Valid() {
		p.parent = trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: ev.Trace.TraceID, SpanID: ev.Trace.SpanID, TraceFlags: trace.TraceFlags(ev.Trace.Flags), Remote: true,
		})
		if !p.parent.IsSampled() {
			return // not sampled upstream: not recorded here either
		}
		p.sc = trace.NewSpanContext(trace.SpanContextConfig{TraceID: ev.Trace.TraceID, SpanID: b.newSpanID(), TraceFlags: trace.FlagsSampled})
		if ev.Trace.State != "" {
			if ts, err := trace.ParseTraceState(ev.Trace.State); err == nil {
				p.parent = p.parent.WithTraceState(ts)
			}
		}
	} else {
		tid, sid := b.newTraceID(), b.newSpanID()
		var flags trace.TraceFlags
		if b.t.rootSampler.ShouldSample(sdktrace.SamplingParameters{ParentContext: context.Background(), TraceID: tid}).Decision == sdktrace.RecordAndSample {
			flags = trace.FlagsSampled
		}
		// The relay's own trace: consumers continue from this span, sampled
		// or not.
		ev.Headers = append(ev.Headers, mapping.Header{Key: mapping.HeaderTraceparent,
			Value: mapping.FormatTraceparent(tid, sid, byte(flags))})
		if !flags.IsSampled() {
			return
		}
		p.sc = trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: flags})
	}
	p.start = time.Now()
	if c != nil && !c.CommitTime.IsZero() && c.CommitTime.Before(p.start) {
		// The span starts when the source transaction committed, by the
		// database's clock; one ahead of ours would make the span end
		// before it starts.
		p.start = c.CommitTime
	}
	p.sent, p.topic, p.key, p.id, p.corr, p.tomb = b.sent, ev.Topic, ev.Key, ev.ID, ev.CorrelationID, ev.Value == nil
	if c != nil {
		p.lsn = c.Pos.CommitLSN
		if c.Relation != nil {
			if c.Relation != b.lastRel {
				b.lastRel, b.relName = c.Relation, c.Relation.QualifiedName()
			}
			p.table = b.relName
		}
	}
	b.pending, b.hasPending = p, true
}

// Sent confirms that the event of the last Start is in the transaction.
func (b *Batch) Sent() {
	if b.hasPending {
		b.spans = append(b.spans, b.pending)
		b.pending, b.hasPending = pendingSpan{}, false
	}
	b.sent++
}

// Committed hands the transaction's spans to the Tracer: the Kafka commit,
// from started to committed, made the events visible. deliveries are the
// transaction's ([sink.Txn.Deliveries]: partitions and offsets in Send
// order), seq and lsn the checkpoint it carried. It never blocks: when the
// Tracer is behind by more than its queue, the spans are dropped (counted).
func (b *Batch) Committed(deliveries []sink.Delivery, seq int64, lsn replication.LSN, started, committed time.Time) {
	events := b.sent
	b.pending, b.hasPending, b.sent = pendingSpan{}, false, 0
	if events == 0 {
		return // a checkpoint alone: no events, no spans
	}
	b.t.submit(&committedTxn{spans: b.spans, events: events, deliveries: deliveries, seq: seq, lsn: lsn, started: started, committed: committed})
	b.spans = make([]pendingSpan, 0, cap(b.spans)) // those are the Tracer's now; the next transaction is likely as large
}

// Discard forgets the transaction's spans: it failed or was abandoned, its
// events were never visible, and no span of it is made.
func (b *Batch) Discard() {
	b.pending, b.hasPending, b.sent = pendingSpan{}, false, 0
	clear(b.spans)
	b.spans = b.spans[:0]
}

// committedTxn is one committed Kafka transaction's spans-to-be.
type committedTxn struct {
	spans              []pendingSpan
	events             int
	deliveries         []sink.Delivery
	seq                int64
	lsn                replication.LSN
	started, committed time.Time
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

// spanMaker makes the SDK's spans of committed transactions; it runs on
// the Tracer's span goroutine only.
type spanMaker struct {
	tracer  trace.Tracer
	names   map[string]string // topic -> "send <topic>"
	attrs   []attribute.KeyValue
	lastLSN replication.LSN
	lsnText string
}

func (m *spanMaker) make(txn *committedTxn) {
	end := trace.WithTimestamp(txn.committed)
	for i := range txn.spans {
		s := &txn.spans[i]
		name, ok := m.names[s.topic]
		if !ok {
			name = "send " + s.topic
			m.names[s.topic] = name
		}
		ctx := withSpanContext(context.Background(), s.sc)
		opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer), trace.WithTimestamp(s.start)}
		if s.parent.IsValid() {
			// A child of the row's context, so the relay's work shows in
			// the service's trace, and a link to it: the message's creation
			// context, which the messaging conventions have "send" spans
			// link to.
			ctx = trace.ContextWithRemoteSpanContext(ctx, s.parent)
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: s.parent}))
		}
		_, span := m.tracer.Start(ctx, name, opts...)
		// Kept to what a reader of the trace needs: every attribute costs
		// its share of the export on every event.
		a := append(m.attrs[:0], kafka, sendName, sendType, attrDestination.String(s.topic))
		if s.sent < len(txn.deliveries) {
			d := txn.deliveries[s.sent]
			a = append(a, attrPartition.String(strconv.Itoa(int(d.Partition))))
			if d.Offset >= 0 {
				a = append(a, attrOffset.Int64(d.Offset))
			}
		}
		if s.key != nil {
			a = append(a, attrKey.String(string(s.key)))
		}
		if s.tomb {
			a = append(a, attrTombstone.Bool(true))
		}
		if s.id != "" {
			a = append(a, attrMessageID.String(s.id))
		}
		if s.corr != "" {
			a = append(a, attrConversationID.String(s.corr))
		}
		a = append(a, postgresql)
		if s.table != "" {
			a = append(a, attrDBCollection.String(s.table))
		}
		if s.lsn != 0 {
			if s.lsn != m.lastLSN {
				m.lastLSN, m.lsnText = s.lsn, s.lsn.String()
			}
			a = append(a, AttrSourceLSN.String(m.lsnText))
		}
		span.SetAttributes(a...)
		span.End(end)
		m.attrs = a
	}
	_, span := m.tracer.Start(context.Background(), "commit",
		trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(txn.started))
	if span.IsRecording() {
		span.SetAttributes(kafka, attrOperationName.String("commit"), attrBatchCount.Int(txn.events),
			AttrTxnSeq.Int64(txn.seq), AttrCheckpointLSN.String(txn.lsn.String()))
	}
	span.End(end)
}

// The span ids that Start chose (and a traceparent header may name) reach
// the SDK through the context: presetIDs returns them to the provider.
type presetKey struct{}

func withSpanContext(ctx context.Context, sc trace.SpanContext) context.Context {
	return context.WithValue(ctx, presetKey{}, sc)
}

// presetIDs is the provider's IDGenerator: the ids in the context when
// there are, random ones otherwise (the commit spans).
type presetIDs struct{}

func (presetIDs) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if sc, ok := ctx.Value(presetKey{}).(trace.SpanContext); ok {
		return sc.TraceID(), sc.SpanID()
	}
	var tid trace.TraceID
	for tid == (trace.TraceID{}) {
		binary.BigEndian.PutUint64(tid[:8], rand.Uint64())
		binary.BigEndian.PutUint64(tid[8:], rand.Uint64())
	}
	return tid, presetIDs{}.NewSpanID(ctx, tid)
}

func (presetIDs) NewSpanID(ctx context.Context, _ trace.TraceID) trace.SpanID {
	if sc, ok := ctx.Value(presetKey{}).(trace.SpanContext); ok {
		return sc.SpanID()
	}
	var sid trace.SpanID
	for sid == (trace.SpanID{}) {
		binary.BigEndian.PutUint64(sid[:], rand.Uint64())
	}
	return sid
}
