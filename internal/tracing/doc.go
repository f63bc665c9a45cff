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
// Tracing never holds up publishing. The daemon sees a [Batch] per
// session: [Batch.Start] before an event is sent (it picks the span's ids,
// which a traceparent header may need, and notes the span's facts),
// [Batch.Sent] once the event is in the transaction, and [Batch.Committed]
// or [Batch.Discard] when the transaction ends. Only then, on the Tracer's
// own goroutine, are the SDK's spans made and ended (the ids reach the SDK
// through its IDGenerator); a second goroutine exports them in batches,
// each export bounded by a timeout. Spans that find a queue full, or whose
// export failed, are dropped and counted (cdcrelay_tracing_spans_dropped_total).
// The SDK's own batch processor does not tell how many it dropped, which
// is why the export queue is ours.
//
// Files: config.go (Config, OTLP exporter from relay.toml and OTEL_*
// variables), tracer.go (Tracer: provider, sampler, span goroutine,
// metrics), batch.go (the spans of one Kafka transaction, and how they are
// made), queue.go (the export queue).
package tracing
