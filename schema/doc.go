// Package schema publishes events through a schema registry: it registers
// the schemas that package mapping derives (envelopes "avro" and
// "json-schema"), checks outbox payloads against the schema an application
// registered (outbox payload_schema = "registry"), and writes keys and
// values in the Confluent wire format (a zero byte, the schema id as four
// big-endian bytes, then the Avro binary or JSON text).
//
// It speaks the Confluent Schema Registry API (through
// github.com/twmb/franz-go/pkg/sr), which Confluent Schema Registry,
// Redpanda and Apicurio Registry (at /apis/ccompat/v7) serve.
//
// An [Encoder] is built once per relay by [New] and used by the daemon
// between mapping and the Kafka send ([Encoder.Encode]), so a schema is
// registered before the Kafka transaction that carries its first event
// commits. Registering is idempotent: a schema registered by a relay that
// died before its transaction committed is found again, with the same id,
// by the next one. Lookups are cached per (subject, schema fingerprint).
//
// Errors say what to do about them:
//
//   - [*IncompatibleError]: the registry refused a new version of a table's
//     schema under the subject's compatibility level (an ALTER TABLE the
//     consumers cannot follow). Nothing of it was published.
//   - [*PayloadError]: an outbox payload does not fit its subject's schema:
//     a row error, which the mapping's on_error decides.
//   - [*UnavailableError]: the registry could not be reached (or answered
//     5xx) for longer than [Config.RetryFor]; the daemon retries as it
//     retries a Kafka outage. No event goes out without its schema.
//
// Files: encoder.go (Encoder, subjects, caches), registry.go (requests
// and retries), payload.go (outbox payloads: JSON Schema validation, JSON to
// Avro), diff.go (what changed between two versions, for messages).
package schema
