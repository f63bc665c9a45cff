// Package tracing makes OpenTelemetry spans of the relay's own work and
// exports them over OTLP ([tracing] in relay.toml; off by default).
//
// Per published event there is one PRODUCER span "send <topic>", from the
// source transaction's commit time to the Kafka commit that made the event
// visible, with the messaging conventions' attributes (destination,
// partition, offset, key, message id), db.system.name = postgresql and the
// source position. It is a child of the trace context the row carried (see
// [mapping.TraceContext]) and links to it, the message's creation context in
// the conventions' words; a row without one gets a new trace, sampled by the
// configured ratio, and the relay writes that trace's traceparent header so
// consumers can continue it. Per Kafka transaction there is one CLIENT span
// "commit" with the batch's size, as long as the commit took.
//
// Spans are ended only after the Kafka transaction committed: a transaction
// that failed or was abandoned ends none, so a transaction that is replayed
// after a restart (and skipped, being in the checkpoint) produces no second
// span, and one that is retried produces exactly one per event. (A relay
// killed between the commit and the export loses that batch's spans: spans
// are at most once, never duplicated.)
//
// Export never holds up publishing: ended spans go to a bounded queue, a
// goroutine exports them in batches with a timeout, and spans that find the
// queue full or whose export failed are dropped and counted
// (cdcrelay_tracing_spans_dropped_total). The SDK's own batch processor
// does not tell how many it dropped, which is why the queue is ours.
//
// The daemon sees a [Batch] per session: [Batch.Start] before an event is
// sent, [Batch.Sent] once it is in the transaction, [Batch.Committed] or
// [Batch.Discard] when the transaction ends.
//
// Files: config.go (Config, OTLP exporter from relay.toml and OTEL_*
// variables), tracer.go (Tracer: provider, sampler, metrics), batch.go (the
// spans of one Kafka transaction), queue.go (the export queue).
package tracing
