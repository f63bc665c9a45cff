package mapping

// Spec is one [[mapping]] section of relay.toml. Every field is documented in
// the repository's annotated relay.toml; keep the two in step.
type Spec struct {
	// Table is the source table, "schema.table" ("public" when no schema is given).
	Table string `toml:"table"`
	// Kind is "outbox", "changelog" or "table".
	Kind string `toml:"kind"`
	// Topic is a template for the destination topic: {column}, {schema}, {table}, {op}.
	Topic string `toml:"topic"`
	// Key is a template for the record key. Empty: the kind's default.
	Key string `toml:"key"`
	// Headers maps header names to templates.
	Headers map[string]string `toml:"headers"`
	// Envelope is "raw", "json", "cloudevents-binary" or "cloudevents-structured".
	Envelope string `toml:"envelope"`
	// OnError is "dead-letter" or "stop": what happens to a row that cannot be
	// mapped or an event larger than the topic accepts.
	OnError string `toml:"on_error"`
	// DeadLetterTopic receives rejected rows when OnError is "dead-letter".
	DeadLetterTopic string `toml:"dead_letter_topic"`

	Outbox    OutboxSpec    `toml:"outbox"`
	Changelog ChangelogSpec `toml:"changelog"`
	Rows      TableSpec     `toml:"rows"`
}

// OutboxSpec names the columns of an outbox table (Debezium's Outbox Event
// Router defaults).
type OutboxSpec struct {
	ID            string `toml:"id_column"`
	AggregateType string `toml:"aggregate_type_column"`
	AggregateID   string `toml:"aggregate_id_column"`
	Type          string `toml:"type_column"`
	Payload       string `toml:"payload_column"`
	Timestamp     string `toml:"timestamp_column"`
	// OnUpdate is "warn" (skip the row, log it) or "error" (follow OnError).
	OnUpdate string `toml:"on_update"`
}

// ChangelogSpec names the columns of a trigger-written change table.
type ChangelogSpec struct {
	TableColumn string `toml:"table_column"`
	OpColumn    string `toml:"op_column"`
	OldColumn   string `toml:"old_column"`
	NewColumn   string `toml:"new_column"`
	TypeColumn  string `toml:"type_column"`
	TimeColumn  string `toml:"time_column"`
	IDColumn    string `toml:"id_column"`
}

// TableSpec says which changes of a business table become events and how.
type TableSpec struct {
	Ops        []string `toml:"ops"`
	Include    []string `toml:"include_columns"`
	Exclude    []string `toml:"exclude_columns"`
	KeyColumns []string `toml:"key_columns"`
	Tombstones *bool    `toml:"tombstones"`
}
