package config

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cdcrelay/cdcrelay/mapping"
)

func validatePostgres(v *validator, p *Postgres) {
	if v.required("postgres.dsn", p.DSN, ` (a libpq URL such as "postgres://cdcrelay@127.0.0.1:5432/shop", or "postgres://" to take everything from PG* variables)`) {
		if _, err := pgconn.ParseConfig(p.DSN); err != nil {
			v.add("postgres.dsn", "is not a valid libpq connection string: %s", scrub(err.Error(), p.DSN))
		} else if attrs := targetSessionAttrs(p.DSN); len(dsnHosts(p.DSN)) > 1 && attrs != "primary" && attrs != "read-write" {
			v.add("postgres.dsn", "names several hosts with target_session_attrs=%s: the relay must reach the primary; "+
				"use target_session_attrs=primary (the default with several hosts) or read-write", attrs)
		}
	}
	for i, dsn := range p.StandbyDSNs {
		key := fmt.Sprintf("postgres.standby_dsns[%d]", i)
		if _, err := pgconn.ParseConfig(dsn); err != nil {
			v.add(key, "is not a valid libpq connection string: %s", scrub(err.Error(), dsn))
		}
	}
	if v.required("postgres.slot", p.Slot, "") {
		if !slotName.MatchString(p.Slot) || len(p.Slot) > 63 {
			v.add("postgres.slot", "%q: a replication slot name is 1 to 63 lowercase letters, digits and underscores", p.Slot)
		}
	}
	if v.required("postgres.publication", p.Publication, "") && len(p.Publication) > 63 {
		v.add("postgres.publication", "%q is longer than 63 bytes", p.Publication)
	}
	positive(v, "postgres.status_interval", p.StatusInterval)
	positive(v, "postgres.idle_checkpoint_interval", p.IdleCheckpointInterval)
}

func validateKafka(v *validator, k *Kafka) {
	if len(k.Brokers) == 0 {
		if v.ix.has("kafka.brokers") {
			v.add("kafka.brokers", `must list at least one broker (e.g. brokers = ["127.0.0.1:9092"])`)
		} else {
			v.add("kafka.brokers", `is required (e.g. brokers = ["127.0.0.1:9092"])`)
		}
	}
	for _, b := range k.Brokers {
		host, port, err := splitHostPort(b)
		switch {
		case strings.ContainsAny(b, ", \t"):
			v.add("kafka.brokers", "%q: write one broker per element: brokers = [\"a:9092\", \"b:9092\"]", b)
		case err != nil:
			v.add("kafka.brokers", "%q is not host:port: %v", b, err)
		case host == "" || port <= 0:
			v.add("kafka.brokers", "%q is not host:port (e.g. \"kafka-1:9092\")", b)
		}
	}
	v.required("kafka.client_id", k.ClientID, "")
	v.required("kafka.transactional_id", k.TransactionalID, "")
	v.required("kafka.checkpoint_group", k.CheckpointGroup, "")
	if v.required("kafka.checkpoint_topic", k.CheckpointTopic, "") {
		if msg := checkTopicName(k.CheckpointTopic); msg != "" {
			v.add("kafka.checkpoint_topic", "%s", msg)
		}
	}
	if v.required("kafka.version", k.Version, "") {
		ver, err := sarama.ParseKafkaVersion(k.Version)
		switch {
		case err != nil:
			v.add("kafka.version", "%q is not a Kafka version such as \"3.6.0\"", k.Version)
		case !ver.IsAtLeast(sarama.V2_5_0_0):
			v.add("kafka.version", "%q is too old: transactions as cdcrelay uses them need at least \"2.5.0\"", k.Version)
		}
	}
	positive(v, "kafka.transaction_timeout", k.TransactionTimeout)
	positive(v, "kafka.request_timeout", k.RequestTimeout)
	if k.Topics.Partitions < 1 {
		v.add("kafka.topics.partitions", "must be at least 1, got %d", k.Topics.Partitions)
	}
	if rf := k.Topics.ReplicationFactor; rf != -1 && rf < 1 {
		v.add("kafka.topics.replication_factor", "must be -1 (the broker's default.replication.factor) or at least 1, got %d", rf)
	}

	t := &k.TLS
	files := []struct{ key, val string }{{"kafka.tls.ca_file", t.CAFile}, {"kafka.tls.cert_file", t.CertFile}, {"kafka.tls.key_file", t.KeyFile}}
	if !t.Enable {
		for _, f := range files {
			if f.val != "" {
				v.add(f.key, "is set but kafka.tls.enable is false (set enable = true to use TLS)")
			}
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		key := "kafka.tls.key_file"
		if t.CertFile == "" {
			key = "kafka.tls.cert_file"
		}
		v.add(key, "kafka.tls.cert_file and kafka.tls.key_file go together: set both or neither")
	}
	for _, f := range files {
		fileExists(v, f.key, f.val)
	}

	s := &k.SASL
	if s.Mechanism == "" {
		if s.Username != "" || s.Password != "" || s.PasswordFile != "" {
			v.add("kafka.sasl.mechanism", `is required when kafka.sasl credentials are set ("PLAIN", "SCRAM-SHA-256" or "SCRAM-SHA-512")`)
		}
		return
	}
	switch strings.ToUpper(s.Mechanism) {
	case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
	default:
		v.add("kafka.sasl.mechanism", "%q is not one of \"PLAIN\", \"SCRAM-SHA-256\", \"SCRAM-SHA-512\"", s.Mechanism)
	}
	v.required("kafka.sasl.username", s.Username, "")
	switch {
	case s.Password != "" && s.PasswordFile != "":
		v.add("kafka.sasl.password_file", "set kafka.sasl.password or kafka.sasl.password_file, not both")
	case s.Password == "" && s.PasswordFile == "":
		v.add("kafka.sasl.password", `is required (or password_file); write password = "${KAFKA_PASSWORD}" to keep it out of the file`)
	}
	fileExists(v, "kafka.sasl.password_file", s.PasswordFile)
}

func fileExists(v *validator, key, path string) {
	if path == "" {
		return
	}
	if _, err := os.Stat(path); err != nil {
		v.add(key, "%s", err.Error())
	}
}

// checkTopicName applies Kafka's rules for topic names.
func checkTopicName(t string) string {
	switch {
	case t == "." || t == "..":
		return fmt.Sprintf("%q is not a valid topic name", t)
	case len(t) > 249:
		return fmt.Sprintf("topic name %q is longer than 249 characters", t)
	case !topicName.MatchString(t):
		return fmt.Sprintf("%q: a topic name uses only ASCII letters, digits, '.', '_' and '-'", t)
	}
	return ""
}

func validateMappings(v *validator, c *Config) {
	if len(c.Mappings) == 0 {
		v.add("mapping", "at least one [[mapping]] section is required (e.g. table = \"public.outbox\", kind = \"outbox\")")
		return
	}
	first := map[string]int{}
	dup := map[int]bool{}
	for i, m := range c.Mappings {
		t := mapping.QualifyTable(m.Table)
		if t == "" {
			continue
		}
		if j, ok := first[t]; ok {
			key := fmt.Sprintf("mapping[%d].table", i+1)
			prev := fmt.Sprintf("mapping[%d]", j+1)
			where := ""
			if l := v.lineOf(prev + ".table"); l > 0 {
				where = fmt.Sprintf(" (line %d)", l)
			}
			v.add(key, "table %q is already mapped by %s%s; a table has one mapping", t, prev, where)
			dup[i+1] = true
			continue
		}
		first[t] = i
	}
	_, err := mapping.New(c.Mappings, mapping.WithRelayName(c.Relay.Name))
	if err == nil {
		return
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		var me *mapping.ConfigError
		if !errors.As(e, &me) {
			v.add("mapping", "%s", e.Error())
			continue
		}
		if dup[me.Index] && me.Key == "table" && strings.Contains(me.Msg, "twice") {
			continue // reported above, with both lines
		}
		key := fmt.Sprintf("mapping[%d]", me.Index)
		if me.Key != "" {
			key += "." + me.Key
		}
		msg := me.Msg
		if me.Table != "" && me.Key != "table" {
			msg += fmt.Sprintf(" (table %s)", me.Table)
		}
		v.add(key, "%s", msg)
	}
}
