// Package mapping turns row changes into Kafka events, as relay.toml's
// [[mapping]] sections say. It does no I/O: a [Mapper] is built once from the
// configuration (and refuses a configuration it cannot honour), then maps each
// [replication.Change] to zero or more [Event]s.
//
// Three kinds of mapping exist: "outbox" (Debezium's Outbox Event Router
// semantics), "changelog" (a table filled by triggers) and "table" (a business
// table's row changes with before/after images).
package mapping
