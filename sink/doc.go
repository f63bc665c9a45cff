// Package sink is the Kafka side of cdcrelay, built on sarama.
//
// A [Writer] publishes events in Kafka transactions; each transaction also
// commits a [Checkpoint] (the source position the events reach) as the
// transactional offset metadata of the relay's consumer group, so events and
// position become visible together or not at all. [Writer.Checkpoint] reads it
// back, seeing only committed transactions.
package sink
