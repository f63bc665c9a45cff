package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// minimal is the relay.toml of the README: it must work unchanged.
const minimal = `[relay]
name = "shop"                       # names the slot, publication, transactional.id, checkpoint

[postgres]
dsn = "postgres://cdcrelay@127.0.0.1:5432/shop"   # libpq URL or key=value; PG* env vars apply

[kafka]
brokers = ["127.0.0.1:9092"]

[[mapping]]
table = "public.outbox"
kind  = "outbox"                    # Debezium Outbox Event Router defaults
`

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	}
}

func parse(t *testing.T, text string, vars map[string]string) (*Config, error) {
	t.Helper()
	return ParseWithEnv("relay.toml", []byte(text), env(vars))
}

func mustParse(t *testing.T, text string, vars map[string]string) *Config {
	t.Helper()
	c, err := parse(t, text, vars)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return c
}

func TestMinimalDefaults(t *testing.T) {
	c := mustParse(t, minimal, nil)
	checks := []struct {
		name      string
		got, want any
	}{
		{"relay.log_level", c.Relay.LogLevel, "info"},
		{"relay.log_format", c.Relay.LogFormat, "text"},
		{"postgres.slot", c.Postgres.Slot, "cdcrelay_shop"},
		{"postgres.publication", c.Postgres.Publication, "cdcrelay_shop"},
		{"postgres.status_interval", c.Postgres.StatusInterval.Duration, 10 * time.Second},
		{"postgres.idle_checkpoint_interval", c.Postgres.IdleCheckpointInterval.Duration, 10 * time.Second},
		{"kafka.client_id", c.Kafka.ClientID, "cdcrelay-shop"},
		{"kafka.transactional_id", c.Kafka.TransactionalID, "cdcrelay-shop"},
		{"kafka.checkpoint_group", c.Kafka.CheckpointGroup, "cdcrelay-shop"},
		{"kafka.checkpoint_topic", c.Kafka.CheckpointTopic, "cdcrelay.checkpoints"},
		{"kafka.version", c.Kafka.Version, "3.6.0"},
		{"kafka.transaction_timeout", c.Kafka.TransactionTimeout.Duration, 60 * time.Second},
		{"kafka.request_timeout", c.Kafka.RequestTimeout.Duration, 30 * time.Second},
		{"kafka.epoch_per_transaction", *c.Kafka.EpochPerTransaction, true},
		{"kafka.topics.create", *c.Kafka.Topics.Create, true},
		{"kafka.topics.partitions", c.Kafka.Topics.Partitions, int32(1)},
		{"kafka.topics.replication_factor", c.Kafka.Topics.ReplicationFactor, int16(-1)},
		{"batch.max_events", c.Batch.MaxEvents, 5000},
		{"batch.max_bytes", c.Batch.MaxBytes, int64(8 << 20)},
		{"batch.linger", c.Batch.Linger.Duration, 20 * time.Millisecond},
		{"batch.read_ahead_bytes", c.Batch.ReadAheadBytes, int64(16 << 20)},
		{"metrics.listen", c.Metrics.Listen, ""},
		{"mapping count", len(c.Mappings), 1},
		{"mapping[1].table", c.Mappings[0].Table, "public.outbox"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestOverrides(t *testing.T) {
	c := mustParse(t, `
[relay]
name = "billing_2"
log_level = "debug"
log_format = "json"
[postgres]
dsn = "host=db user=relay dbname=billing"
slot = "my_slot"
publication = "My Publication"
status_interval = "2s"
[kafka]
brokers = ["k1:9092", "k2:9093"]
transactional_id = "txn"
version = "3.7.0"
epoch_per_transaction = false
[kafka.topics]
create = false
partitions = 12
replication_factor = 3
[batch]
linger = "0s"
max_events = 1
[metrics]
listen = "127.0.0.1:9187"
[[mapping]]
table = "outbox"
kind = "outbox"
topic = "events.{aggregatetype}"
[mapping.outbox]
payload_column = "body"
`, nil)
	if c.Postgres.Slot != "my_slot" || c.Postgres.Publication != "My Publication" {
		t.Errorf("slot/publication = %q/%q", c.Postgres.Slot, c.Postgres.Publication)
	}
	if c.Kafka.TransactionalID != "txn" || c.Kafka.ClientID != "cdcrelay-billing_2" {
		t.Errorf("ids: %q %q", c.Kafka.TransactionalID, c.Kafka.ClientID)
	}
	if *c.Kafka.EpochPerTransaction || *c.Kafka.Topics.Create {
		t.Error("explicit false was replaced by the default")
	}
	if c.Batch.Linger.Duration != 0 {
		t.Errorf("explicit linger 0s became %v", c.Batch.Linger)
	}
	if c.Postgres.StatusInterval.Duration != 2*time.Second {
		t.Errorf("status_interval = %v", c.Postgres.StatusInterval)
	}
	if c.Kafka.Topics.Partitions != 12 || c.Kafka.Topics.ReplicationFactor != 3 {
		t.Errorf("topics = %+v", c.Kafka.Topics)
	}
	if c.Mappings[0].Outbox.Payload != "body" || c.Mappings[0].Topic != "events.{aggregatetype}" {
		t.Errorf("mapping = %+v", c.Mappings[0])
	}
}

func TestEnvExpansion(t *testing.T) {
	c := mustParse(t, `
[relay]
name = "${NAME}"
[postgres]
dsn = "postgres://relay:${PGPASS}@${PGHOST:-localhost}:5432/shop"
[kafka]
brokers = ["${BROKER1}", "b2:9092"]
[kafka.sasl]
mechanism = "PLAIN"
username = "u"
password = "${KPASS}"
[[mapping]]
table = "public.outbox"
kind = "outbox"
topic = "t.{aggregatetype}.$${x}"
headers = { source = "${NAME}-relay" }
`, map[string]string{"NAME": "shop", "PGPASS": "s3cr3t", "BROKER1": "b1:9092", "KPASS": "kp"})
	if c.Relay.Name != "shop" || c.Postgres.Slot != "cdcrelay_shop" {
		t.Errorf("name %q slot %q", c.Relay.Name, c.Postgres.Slot)
	}
	if want := "postgres://relay:s3cr3t@localhost:5432/shop"; c.Postgres.DSN != want {
		t.Errorf("dsn = %q, want %q", c.Postgres.DSN, want)
	}
	if c.Kafka.Brokers[0] != "b1:9092" || c.Kafka.SASL.Password != "kp" {
		t.Errorf("brokers %v password %q", c.Kafka.Brokers, c.Kafka.SASL.Password)
	}
	if c.Mappings[0].Topic != "t.{aggregatetype}.${x}" {
		t.Errorf("topic = %q ($${ is a literal ${)", c.Mappings[0].Topic)
	}
	if c.Mappings[0].Headers["source"] != "shop-relay" {
		t.Errorf("headers = %v", c.Mappings[0].Headers)
	}
	r := c.Redacted()
	if strings.Contains(r.Postgres.DSN, "s3cr3t") || r.Kafka.SASL.Password == "kp" {
		t.Errorf("Redacted leaks: %q %q", r.Postgres.DSN, r.Kafka.SASL.Password)
	}
	if c.Postgres.DSN != "postgres://relay:s3cr3t@localhost:5432/shop" {
		t.Error("Redacted changed the original")
	}
}

func TestExpand(t *testing.T) {
	lookup := env(map[string]string{"A": "x", "EMPTY": ""})
	for in, want := range map[string]string{
		"plain":            "plain",
		"$A and $":         "$A and $",
		"${A}":             "x",
		"${A}${A}":         "xx",
		"$${A}":            "${A}",
		"${B:-dflt}":       "dflt",
		"${EMPTY:-dflt}":   "dflt",
		"${EMPTY}":         "",
		"a${A:-}b":         "axb",
		"{aggregatetype}":  "{aggregatetype}",
		"${A}:{col}:$${B}": "x:{col}:${B}",
	} {
		got, err := Expand(in, lookup)
		if err != nil || got != want {
			t.Errorf("Expand(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"${B}", "${A", "${}", "${1A}", "${A-B}"} {
		if got, err := Expand(in, lookup); err == nil {
			t.Errorf("Expand(%q) = %q, want an error", in, got)
		}
	}
}

func TestRedactDSN(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:secret@h:5432/db":                 "postgres://u:xxxxx@h:5432/db",
		"postgres://u@h/db":                             "postgres://u@h/db",
		"postgresql://u@h/db?password=secret&sslmode=x": "postgresql://u@h/db?password=xxxxx&sslmode=x",
		"host=h user=u password=secret dbname=d":        "host=h user=u password=xxxxx dbname=d",
		"host=h password = 'se cret' dbname=d":          "host=h password = xxxxx dbname=d",
		"host=h dbname=d":                               "host=h dbname=d",
		"postgres://u:sec@ret@h/db":                     "postgres://u:xxxxx@h/db",
	} {
		if got := RedactDSN(in); got != want {
			t.Errorf("RedactDSN(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestBadConfigs: every problem is an *Error naming the key and its line.
func TestBadConfigs(t *testing.T) {
	const (
		relay    = "[relay]\nname = \"shop\"\n"                                  // lines 1-2
		pg       = "[postgres]\ndsn = \"postgres://u@h/db\"\n"                   // 2 lines
		kafka    = "[kafka]\nbrokers = [\"127.0.0.1:9092\"]\n"                   // 2 lines
		mappings = "[[mapping]]\ntable = \"public.outbox\"\nkind = \"outbox\"\n" // 3 lines
	)
	cases := []struct {
		name string
		text string
		key  string
		line int
		msg  string
	}{
		{"unknown key", relay + "nmae = \"x\"\n" + pg + kafka + mappings, "relay.nmae", 3, `did you mean "name"`},
		{"unknown table", relay + pg + kafka + "[kafak]\nbrokers = []\n" + mappings, "kafak", 7, "unknown key"},
		{"unknown key in mapping 2", relay + pg + kafka + mappings + "[[mapping]]\ntable = \"b\"\nkind = \"outbox\"\n[mapping.outbox]\npayload_colum = \"p\"\n",
			"mapping[2].outbox.payload_colum", 14, `did you mean "payload_column"`},
		{"wrong type string for array", relay + pg + "[kafka]\nbrokers = \"127.0.0.1:9092\"\n" + mappings, "kafka.brokers", 6, "want an array of strings, found a string"},
		{"wrong type in mapping 2", relay + pg + kafka + mappings + "[[mapping]]\ntable = \"b\"\nkind = \"outbox\"\n[mapping.outbox]\npayload_column = 3\n",
			"mapping[2].outbox.payload_column", 14, "want a string, found an integer"},
		{"wrong element type", relay + pg + "[kafka]\nbrokers = [\"a:1\", 2]\n" + mappings, "kafka.brokers", 6, "found an array holding an integer"},
		{"wrong type bool", relay + pg + kafka + "epoch_per_transaction = \"yes\"\n" + mappings, "kafka.epoch_per_transaction", 7, "want a boolean"},
		{"integer for duration", relay + pg + "status_interval = 10\n" + kafka + mappings, "postgres.status_interval", 5, `want a duration string such as "10s"`},
		{"bad duration", relay + pg + "status_interval = \"10 seconds\"\n" + kafka + mappings, "postgres.status_interval", 5, "10 seconds"},
		{"negative duration", relay + pg + kafka + "request_timeout = \"-1s\"\n" + mappings, "kafka.request_timeout", 7, "positive"},
		{"integer overflow", relay + pg + kafka + "[kafka.topics]\npartitions = 99999999999\n" + mappings, "kafka.topics.partitions", 8, "cannot be stored"},
		{"table given a value", "relay = 3\n" + pg + kafka + mappings, "relay", 1, "want a table, found an integer"},
		{"mapping not an array", relay + pg + kafka + "[mapping]\ntable = \"t\"\n", "mapping", 7, "want an array of tables"},
		{"missing name", "[relay]\n" + pg + kafka + mappings, "relay.name", 1, "is required"},
		{"missing relay table", pg + kafka + mappings, "relay.name", 0, "is required"},
		{"empty name", "[relay]\nname = \"\"\n" + pg + kafka + mappings, "relay.name", 2, "must not be empty"},
		{"bad name", "[relay]\nname = \"Shop-1\"\n" + pg + kafka + mappings, "relay.name", 2, "lowercase letters, digits and underscores"},
		{"long name", "[relay]\nname = \"" + strings.Repeat("a", 55) + "\"\n" + pg + kafka + mappings, "relay.name", 2, "longer than 54"},
		{"bad log level", relay + "log_level = \"loud\"\n" + pg + kafka + mappings, "relay.log_level", 3, `"loud" is not one of`},
		{"missing dsn", relay + "[postgres]\n" + kafka + mappings, "postgres.dsn", 3, "is required"},
		{"bad dsn", relay + "[postgres]\ndsn = \"postgres://u:pw@h:notaport/db\"\n" + kafka + mappings, "postgres.dsn", 4, "not a valid libpq connection string"},
		{"bad slot", relay + pg + "slot = \"My-Slot\"\n" + kafka + mappings, "postgres.slot", 5, "replication slot name"},
		{"missing brokers", relay + pg + "[kafka]\n" + mappings, "kafka.brokers", 5, "is required"},
		{"empty brokers", relay + pg + "[kafka]\nbrokers = []\n" + mappings, "kafka.brokers", 6, "at least one broker"},
		{"brokers in one string", relay + pg + "[kafka]\nbrokers = [\"a:9092,b:9092\"]\n" + mappings, "kafka.brokers", 6, "one broker per element"},
		{"broker without port", relay + pg + "[kafka]\nbrokers = [\"kafka\"]\n" + mappings, "kafka.brokers", 6, "not host:port"},
		{"bad topic name", relay + pg + kafka + "checkpoint_topic = \"cp topic\"\n" + mappings, "kafka.checkpoint_topic", 7, "topic name"},
		{"old kafka version", relay + pg + kafka + "version = \"2.0.0\"\n" + mappings, "kafka.version", 7, "too old"},
		{"bad kafka version", relay + pg + kafka + "version = \"latest\"\n" + mappings, "kafka.version", 7, "not a Kafka version"},
		{"zero partitions", relay + pg + kafka + "[kafka.topics]\npartitions = 0\n" + mappings, "kafka.topics.partitions", 8, "at least 1"},
		{"bad replication factor", relay + pg + kafka + "[kafka.topics]\nreplication_factor = 0\n" + mappings, "kafka.topics.replication_factor", 8, "-1"},
		{"sasl without password", relay + pg + kafka + "[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\n" + mappings, "kafka.sasl.password", 7, "is required"},
		{"bad sasl mechanism", relay + pg + kafka + "[kafka.sasl]\nmechanism = \"GSSAPI\"\nusername = \"u\"\npassword = \"p\"\n" + mappings, "kafka.sasl.mechanism", 8, "not one of"},
		{"tls file missing", relay + pg + kafka + "[kafka.tls]\nenable = true\nca_file = \"/nonexistent/ca.pem\"\n" + mappings, "kafka.tls.ca_file", 9, "no such file"},
		{"tls not enabled", relay + pg + kafka + "[kafka.tls]\ninsecure_skip_verify = true\ncert_file = \"/etc/hostname\"\nkey_file = \"/etc/hostname\"\n" + mappings, "kafka.tls.cert_file", 9, "kafka.tls.enable is false"},
		{"bad metrics listen", relay + pg + kafka + "[metrics]\nlisten = \"localhost:http\"\n" + mappings, "metrics.listen", 8, "not host:port"},
		{"zero max events", relay + pg + kafka + "[batch]\nmax_events = 0\n" + mappings, "batch.max_events", 8, "at least 1"},
		{"no mapping", relay + pg + kafka, "mapping", 0, "at least one [[mapping]]"},
		{"duplicate mapping", relay + pg + kafka + mappings + "[[mapping]]\ntable = \"outbox\"\nkind = \"outbox\"\n", "mapping[2].table", 11, `already mapped by mapping[1] (line 8)`},
		{"mapping without table", relay + pg + kafka + "[[mapping]]\nkind = \"outbox\"\n", "mapping[1].table", 7, "is required"},
		{"bad mapping kind", relay + pg + kafka + "[[mapping]]\ntable = \"t\"\nkind = \"nope\"\n", "mapping[1].kind", 9, "nope"},
		{"unset variable", relay + "[postgres]\ndsn = \"postgres://u:${PG_PASSWORD}@h/db\"\n" + kafka + mappings, "postgres.dsn", 4, "PG_PASSWORD is not set"},
		{"unset variable in array", relay + pg + "[kafka]\nbrokers = [\"${BROKER}\"]\n" + mappings, "kafka.brokers", 6, "BROKER is not set"},
		{"unset variable in mapping", relay + pg + kafka + mappings + "topic = \"${TOPIC}\"\n", "mapping[1].topic", 10, "TOPIC is not set"},
		{"syntax error", relay + "[postgres\n" + kafka + mappings, "", 3, ""},
		{"duplicate key", relay + "name = \"again\"\n" + pg + kafka + mappings, "relay.name", 3, "already defined"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.text, nil)
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("got %v (%T), want a *config.Error", err, err)
			}
			for _, is := range ce.Issues {
				if is.Key == tc.key && is.Line == tc.line && strings.Contains(is.Msg, tc.msg) {
					if !strings.Contains(err.Error(), "relay.toml") {
						t.Errorf("error does not name the file: %v", err)
					}
					return
				}
			}
			t.Errorf("want an issue with key %q, line %d, message containing %q; got:\n%v", tc.key, tc.line, tc.msg, err)
		})
	}
}

func TestAllProblemsAtOnce(t *testing.T) {
	_, err := parse(t, "[relay]\nname = 1\nfoo = 2\n[kafka]\nbrokers = \"x\"\n", nil)
	var ce *Error
	if !errors.As(err, &ce) || len(ce.Issues) != 3 {
		t.Fatalf("want 3 issues, got %v", err)
	}
	want := "relay.toml: 3 problems:\n  relay.toml line 2: relay.name: want a string, found an integer\n"
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error text:\n%s\nwant prefix:\n%s", err, want)
	}
}

func TestSecretNotInErrors(t *testing.T) {
	for _, dsn := range []string{
		"postgres://u:hunter2@h:notaport/db",
		"host=h port=x password=hunter2",
		"postgres://u:hunter2@[::1/db",
	} {
		_, err := parse(t, "[relay]\nname = \"x\"\n[postgres]\ndsn = \""+dsn+"\"\n[kafka]\nbrokers=[\"k:1\"]\n[[mapping]]\ntable=\"t\"\nkind=\"outbox\"\n", nil)
		if err == nil {
			t.Fatalf("%s: want an error", dsn)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "relay.toml"))
	var ce *Error
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("got %v", err)
	}
}

// TestRepositoryExample: the annotated relay.toml at the repository root
// loads, and documents every key of the schema.
func TestRepositoryExample(t *testing.T) {
	path := filepath.Join("..", "..", "relay.toml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("no relay.toml yet: %v", err)
	}
	c, err := ParseWithEnv(path, data, env(map[string]string{"CDCRELAY_PG_DSN": "postgres://postgres@127.0.0.1:5433/shop", "CDCRELAY_KAFKA_BROKERS": "127.0.0.1:9093"}))
	if err != nil {
		t.Fatalf("relay.toml: %v", err)
	}
	if c.Postgres.DSN != "postgres://postgres@127.0.0.1:5433/shop" || c.Kafka.Brokers[0] != "127.0.0.1:9093" {
		t.Errorf("relay.toml does not take the addresses from the environment: %q %v", c.Postgres.DSN, c.Kafka.Brokers)
	}
	c, err = ParseWithEnv(path, data, env(nil))
	if err != nil {
		t.Fatalf("relay.toml without the environment: %v", err)
	}
	if c.Postgres.DSN != "postgres://cdcrelay@127.0.0.1:5432/shop" || c.Kafka.Brokers[0] != "127.0.0.1:9092" {
		t.Errorf("relay.toml's fallbacks: dsn %q brokers %v", c.Postgres.DSN, c.Kafka.Brokers)
	}
	// Every key is documented, as "key =" (commented out when it shows the
	// default). [[mapping]] keys beyond the basics live in docs/mapping.md.
	text := string(data)
	basics := map[string]bool{"table": true, "kind": true, "topic": true, "key": true, "headers": true,
		"envelope": true, "on_error": true, "dead_letter_topic": true}
	for _, key := range allKeys(reflectConfig, "") {
		last := key[strings.LastIndexByte(key, '.')+1:]
		if strings.HasPrefix(key, "mapping.") && !basics[last] {
			continue
		}
		if !strings.Contains(text, "\n"+last+" =") && !strings.Contains(text, "# "+last+" =") {
			t.Errorf("relay.toml does not document %s", key)
		}
	}
	for _, section := range []string{"[relay]", "[postgres]", "[kafka]", "[kafka.topics]", "[kafka.tls]", "[kafka.sasl]", "[batch]", "[metrics]", "[[mapping]]"} {
		if !strings.Contains(text, "\n"+section+"\n") {
			t.Errorf("relay.toml has no %s section", section)
		}
	}
}
