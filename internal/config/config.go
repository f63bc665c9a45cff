// Package config is relay.toml: its schema, its defaults and its validation.
//
// Parsing is strict: an unknown key, a wrong type, a missing required field or
// a duplicate mapping is an error naming the key and its line, reported before
// any connection is attempted. "${VAR}" in any string value is replaced from the
// environment.
package config

import (
	"time"

	"github.com/cdcrelay/cdcrelay/mapping"
)

// Config is the whole of relay.toml.
type Config struct {
	Relay    Relay    `toml:"relay"`
	Postgres Postgres `toml:"postgres"`
	Kafka    Kafka    `toml:"kafka"`
	Batch    Batch    `toml:"batch"`
	Metrics  Metrics  `toml:"metrics"`
	Tracing  Tracing  `toml:"tracing"`
	// SchemaRegistry is used by the "avro" and "json-schema" envelopes and
	// outbox payload_schema = "registry" (registry.go).
	SchemaRegistry SchemaRegistry `toml:"schema_registry"`
	Mappings       []mapping.Spec `toml:"mapping"`
}

// Relay names this relay; the name derives the slot, the publication, the
// Kafka transactional.id and the checkpoint.
type Relay struct {
	// Name is lowercase letters, digits and underscores (at most 54), so the
	// derived slot name is valid.
	Name      string `toml:"name"`
	LogLevel  string `toml:"log_level"`  // debug, info (default), warn, error
	LogFormat string `toml:"log_format"` // text (default) or json
}

// Postgres is the source database.
type Postgres struct {
	// DSN is a libpq URL or key=value string; PG* environment variables and
	// ~/.pgpass apply as in libpq. Required.
	DSN         string `toml:"dsn"`
	Slot        string `toml:"slot"`        // default "cdcrelay_<name>"
	Publication string `toml:"publication"` // default "cdcrelay_<name>"
	// StatusInterval is how often the relay reports its durable position to
	// the server even when nothing happens (well below wal_sender_timeout).
	StatusInterval Duration `toml:"status_interval"` // default 10s
	// IdleCheckpointInterval: while the mapped tables are quiet, the relay
	// checkpoints the server's WAL position this often so the slot can advance.
	IdleCheckpointInterval Duration `toml:"idle_checkpoint_interval"` // default 10s
	// FailoverSlot makes the slot a failover slot on PostgreSQL 17 and later
	// (synchronized to standbys with sync_replication_slots = on, so it
	// survives a failover); ignored on older servers. Default true.
	FailoverSlot *bool `toml:"failover_slot"`
	// StandbyDSNs are the primary's physical standbys, for check and status
	// to verify that the slot will be there after a failover. Empty: the
	// other hosts of a multi-host DSN.
	StandbyDSNs []string `toml:"standby_dsns"`
}

// Kafka is the destination cluster and how the relay writes to it.
type Kafka struct {
	Brokers  []string `toml:"brokers"`
	ClientID string   `toml:"client_id"` // default "cdcrelay-<name>"
	// TransactionalID defaults to "cdcrelay-<name>". Two relays with the same
	// id fence each other: the newer one wins.
	TransactionalID string `toml:"transactional_id"`
	// CheckpointGroup is the consumer group whose transactional offset
	// metadata holds the checkpoint. Default "cdcrelay-<name>".
	CheckpointGroup string `toml:"checkpoint_group"`
	// CheckpointTopic is the topic-partition the checkpoint offset is committed
	// for (the record itself lives in __consumer_offsets). Default "cdcrelay.checkpoints".
	CheckpointTopic string `toml:"checkpoint_topic"`
	// Version is the Kafka protocol version sarama speaks; default "3.6.0".
	Version string `toml:"version"`
	// TransactionTimeout bounds a Kafka transaction (transaction.timeout.ms);
	// it is also how long a dead relay can block read_committed consumers, and
	// how long a send or commit is waited for before the session gives up.
	TransactionTimeout Duration `toml:"transaction_timeout"` // default 60s
	// RequestTimeout is the network read timeout (request.timeout.ms).
	RequestTimeout Duration `toml:"request_timeout"` // default 30s
	// EpochPerTransaction re-initialises the producer after every commit so
	// that no late request of an earlier transaction can touch a later one
	// (see README, "Late transaction requests"). Default true.
	EpochPerTransaction *bool  `toml:"epoch_per_transaction"`
	Topics              Topics `toml:"topics"`
	TLS                 TLS    `toml:"tls"`
	SASL                SASL   `toml:"sasl"`
}

// Topics controls topic creation by `cdcrelay setup`.
type Topics struct {
	Create            *bool `toml:"create"`             // default true
	Partitions        int32 `toml:"partitions"`         // default 1
	ReplicationFactor int16 `toml:"replication_factor"` // default -1 (broker default)
}

// TLS is the Kafka client's TLS configuration.
type TLS struct {
	Enable             bool   `toml:"enable"`
	CAFile             string `toml:"ca_file"`
	CertFile           string `toml:"cert_file"`
	KeyFile            string `toml:"key_file"`
	InsecureSkipVerify bool   `toml:"insecure_skip_verify"`
}

// SASL is the Kafka client's SASL configuration.
type SASL struct {
	Mechanism    string `toml:"mechanism"` // PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
	Username     string `toml:"username"`
	Password     string `toml:"password"`
	PasswordFile string `toml:"password_file"`
}

// Batch shapes Kafka transactions.
type Batch struct {
	// MaxEvents and MaxBytes cut a Kafka transaction, even inside a large
	// Postgres transaction (the checkpoint then names the position inside it).
	MaxEvents int   `toml:"max_events"` // default 5000
	MaxBytes  int64 `toml:"max_bytes"`  // default 8 MiB
	// Linger is how long a Kafka transaction stays open for more Postgres
	// transactions to join it, counted from when its first change reached
	// the relay.
	Linger Duration `toml:"linger"` // default 20ms
	// ReadAheadBytes bounds the decoded changes buffered while a commit is in flight.
	ReadAheadBytes int64 `toml:"read_ahead_bytes"` // default 16 MiB
}

// Metrics is the Prometheus and health endpoint.
type Metrics struct {
	Listen string `toml:"listen"` // e.g. "127.0.0.1:9187"; empty disables
}

// Duration is a time.Duration written as a string ("10s", "250ms") in TOML.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }
