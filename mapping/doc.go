// Package mapping turns row changes into Kafka events, as relay.toml's
// [[mapping]] sections say. It does no I/O: a [Mapper] is built once from the
// configuration by [New] (which refuses a configuration it cannot honour,
// with [ConfigError]s naming the section and key), checked against each
// table's live schema by [Mapper.CheckRelation], then maps each
// [replication.Change] to zero or more [Event]s with [Mapper.Map].
//
// Three kinds of mapping exist: "outbox" (Debezium's Outbox Event Router
// semantics), "changelog" (a table filled by triggers) and "table" (a business
// table's row changes with before/after images). Six envelopes: "raw", "json",
// "cloudevents-binary", "cloudevents-structured", and "avro" and
// "json-schema", whose events carry a [Contract]: the schemas the mapping
// derived from the table's Relation, which package schema registers and
// frames the bytes with (the Avro binary is written here, from Postgres's
// text, as the JSON is).
//
// Values are encoded from Postgres's text output to JSON exactly
// ([EncodeValue]): nothing is rounded, and an unchanged TOAST value is never
// emitted as null. A change that cannot be carried is a [RowError]; the
// daemon turns it into a dead-letter record ([Mapper.DeadLetter],
// [Mapper.DeadLetterOversized]) or stops, as the mapping's on_error says.
//
// docs/mapping.md documents every key, envelope and encoding rule;
// testdata/golden pins them.
//
// Files: spec.go (the relay.toml schema, defaults, validation), mapper.go
// (New, Map, CheckRelation), template.go, encode.go / temporal.go /
// composite.go (value encoding), row.go (row images, unchanged TOAST),
// outbox.go / table.go / changelog.go (the kinds), envelope.go, deadletter.go,
// contract.go / avro.go / jsonschema.go (the schema registry envelopes).
package mapping
