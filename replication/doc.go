// Package replication is the Postgres side of cdcrelay.
//
// It prepares a database for the relay (prerequisite checks, the publication and
// the pgoutput slot, see [Setup] and [Check]), reports the slot's state ([SlotStatus]),
// and turns the logical replication stream into typed, positioned messages
// ([Stream], [Begin], [Change], [Commit], [Keepalive]).
//
// The package never decides what is durable: [Stream.Ack] is called by the daemon
// with positions that are already committed in Kafka, and the stream reports them
// to the server in its status updates.
package replication
