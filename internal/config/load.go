package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Load reads, expands, completes and validates the configuration file at path.
// Any problem is returned as an [*Error] listing every issue found, each naming
// its key and line. Load never connects to anything.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		msg := err.Error()
		if errors.Is(err, os.ErrNotExist) {
			msg = "no such file (give the configuration with --config or CDCRELAY_CONFIG)"
		}
		return nil, &Error{File: path, Issues: []Issue{{Msg: msg}}}
	}
	return Parse(path, data)
}

// Parse is [Load] for a configuration already in memory; name is used in
// error messages. ${VAR} is looked up in the process environment.
func Parse(name string, data []byte) (*Config, error) {
	return ParseWithEnv(name, data, os.LookupEnv)
}

// ParseWithEnv is [Parse] with the environment given by lookup.
func ParseWithEnv(name string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	fail := func(issues ...Issue) error { return &Error{File: name, Issues: issues} }

	ix, perr := buildIndex(data)
	if perr == nil {
		if issues := checkShape(ix); len(issues) > 0 {
			return nil, fail(issues...)
		}
	}
	var cfg Config
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return nil, fail(decodeIssues(err, ix)...)
	}
	if perr != nil { // the decoder accepted what the parser refused: not expected
		return nil, fail(Issue{Msg: perr.Error()})
	}
	if issues := expandEnv(&cfg, ix, lookup); len(issues) > 0 {
		return nil, fail(issues...)
	}
	applyDefaults(&cfg, ix)
	if issues := validate(&cfg, ix); len(issues) > 0 {
		return nil, fail(issues...)
	}
	return &cfg, nil
}

// decodeIssues turns go-toml's errors into issues with full key paths.
func decodeIssues(err error, ix *index) []Issue {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var issues []Issue
		for i := range strict.Errors {
			issues = append(issues, decodeIssue(&strict.Errors[i], ix, "unknown key"))
		}
		return issues
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		return []Issue{decodeIssue(de, ix, "")}
	}
	return []Issue{{Msg: err.Error()}}
}

func decodeIssue(de *toml.DecodeError, ix *index, msg string) Issue {
	line, _ := de.Position()
	if msg == "" {
		msg = strings.TrimPrefix(de.Error(), "toml: ")
	}
	if len(de.Key()) == 0 {
		return Issue{Line: line, Msg: msg}
	}
	path, _ := ix.find(de.Key(), line)
	if strings.HasPrefix(msg, "cannot decode TOML") {
		// "cannot decode TOML string into struct field config.Kafka.Brokers of type []string"
		if t, bad := resolveType(reflectConfig, segsOfPath(ix, path)); bad < 0 {
			if e, ok := ix.lookup(path); ok {
				msg = "want " + describe(t) + ", found " + kindName(e.kind)
			}
		}
	}
	return Issue{Key: path, Line: line, Msg: msg}
}

func segsOfPath(ix *index, path string) []seg {
	if e, ok := ix.lookup(path); ok {
		return e.segs
	}
	return nil
}

// Defaults. Keep them in step with the comments in config.go and relay.toml.
const (
	DefaultCheckpointTopic        = "cdcrelay.checkpoints"
	DefaultKafkaVersion           = "3.6.0"
	DefaultStatusInterval         = "10s"
	DefaultIdleCheckpointInterval = "10s"
	DefaultTransactionTimeout     = "60s"
	DefaultRequestTimeout         = "30s"
	DefaultMaxEvents              = 5000
	DefaultMaxBytes               = 8 << 20
	DefaultLinger                 = "20ms"
	DefaultReadAheadBytes         = 16 << 20
)

// SlotName is the default replication slot and publication name for a relay
// name: "cdcrelay_<name>".
func SlotName(name string) string { return "cdcrelay_" + name }

// KafkaID is the default client.id, transactional.id and checkpoint group for
// a relay name: "cdcrelay-<name>".
func KafkaID(name string) string { return "cdcrelay-" + name }

func applyDefaults(c *Config, ix *index) {
	str := func(p *string, key, v string) {
		if !ix.has(key) && *p == "" {
			*p = v
		}
	}
	dur := func(d *Duration, key, v string) {
		if !ix.has(key) {
			_ = d.UnmarshalText([]byte(v))
		}
	}
	boolean := func(p **bool, v bool) {
		if *p == nil {
			*p = &v
		}
	}
	name := c.Relay.Name
	str(&c.Relay.LogLevel, "relay.log_level", "info")
	str(&c.Relay.LogFormat, "relay.log_format", "text")

	str(&c.Postgres.Slot, "postgres.slot", SlotName(name))
	str(&c.Postgres.Publication, "postgres.publication", SlotName(name))
	dur(&c.Postgres.StatusInterval, "postgres.status_interval", DefaultStatusInterval)
	dur(&c.Postgres.IdleCheckpointInterval, "postgres.idle_checkpoint_interval", DefaultIdleCheckpointInterval)
	boolean(&c.Postgres.FailoverSlot, true)
	c.Postgres.DSN = FollowPrimary(c.Postgres.DSN)

	k := &c.Kafka
	str(&k.ClientID, "kafka.client_id", KafkaID(name))
	str(&k.TransactionalID, "kafka.transactional_id", KafkaID(name))
	str(&k.CheckpointGroup, "kafka.checkpoint_group", KafkaID(name))
	str(&k.CheckpointTopic, "kafka.checkpoint_topic", DefaultCheckpointTopic)
	str(&k.Version, "kafka.version", DefaultKafkaVersion)
	dur(&k.TransactionTimeout, "kafka.transaction_timeout", DefaultTransactionTimeout)
	dur(&k.RequestTimeout, "kafka.request_timeout", DefaultRequestTimeout)
	boolean(&k.EpochPerTransaction, true)
	boolean(&k.Topics.Create, true)
	if !ix.has("kafka.topics.partitions") {
		k.Topics.Partitions = 1
	}
	if !ix.has("kafka.topics.replication_factor") {
		k.Topics.ReplicationFactor = -1
	}

	b := &c.Batch
	if !ix.has("batch.max_events") {
		b.MaxEvents = DefaultMaxEvents
	}
	if !ix.has("batch.max_bytes") {
		b.MaxBytes = DefaultMaxBytes
	}
	dur(&b.Linger, "batch.linger", DefaultLinger)
	if !ix.has("batch.read_ahead_bytes") {
		b.ReadAheadBytes = DefaultReadAheadBytes
	}
	applyRegistryDefaults(c, ix)

	boolean(&c.Tracing.Enabled, ix.hasSection("tracing"))
}

var (
	relayName = regexp.MustCompile(`^[a-z0-9_]+$`)
	slotName  = regexp.MustCompile(`^[a-z0-9_]+$`)
	topicName = regexp.MustCompile(`^[a-zA-Z0-9._-]+$`)
)

// maxNameLen keeps "cdcrelay_<name>" within Postgres's 63-byte identifiers.
const maxNameLen = 63 - len("cdcrelay_")

type validator struct {
	ix     *index
	issues []Issue
}

func (v *validator) add(key, format string, args ...any) {
	v.issues = append(v.issues, Issue{Key: key, Line: v.lineOf(key), Msg: fmt.Sprintf(format, args...)})
}

// lineOf is the key's line or, for a key missing from the file, the line of
// its table's header, if the file has one.
func (v *validator) lineOf(key string) int {
	for k := key; k != ""; {
		if l := v.ix.line(k); l > 0 {
			return l
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

func (v *validator) required(key, val, hint string) bool {
	if val != "" {
		return true
	}
	if v.ix.has(key) {
		v.add(key, "must not be empty%s", hint)
	} else {
		v.add(key, "is required%s", hint)
	}
	return false
}

func validate(c *Config, ix *index) []Issue {
	v := &validator{ix: ix}

	// [relay]
	if v.required("relay.name", c.Relay.Name, ` (e.g. name = "shop"; it names the slot, the publication and the transactional.id)`) {
		switch {
		case !relayName.MatchString(c.Relay.Name):
			v.add("relay.name", "%q: use only lowercase letters, digits and underscores (it becomes part of the slot name)", c.Relay.Name)
		case len(c.Relay.Name) > maxNameLen:
			v.add("relay.name", "%q is longer than %d characters (the slot name %q would exceed Postgres's 63)", c.Relay.Name, maxNameLen, SlotName(c.Relay.Name))
		}
	}
	oneOf(v, "relay.log_level", c.Relay.LogLevel, "debug", "info", "warn", "error")
	oneOf(v, "relay.log_format", c.Relay.LogFormat, "text", "json")

	// [postgres]
	validatePostgres(v, &c.Postgres)

	// [kafka]
	validateKafka(v, &c.Kafka)

	// [batch]
	b := &c.Batch
	if b.MaxEvents < 1 {
		v.add("batch.max_events", "must be at least 1, got %d", b.MaxEvents)
	}
	if b.MaxBytes < 1 {
		v.add("batch.max_bytes", "must be at least 1, got %d", b.MaxBytes)
	}
	if b.Linger.Duration < 0 {
		v.add("batch.linger", "must not be negative, got %s", b.Linger.Duration)
	}
	if b.ReadAheadBytes < 1 {
		v.add("batch.read_ahead_bytes", "must be at least 1, got %d", b.ReadAheadBytes)
	}

	// [metrics]
	if l := c.Metrics.Listen; l != "" {
		if _, port, err := splitHostPort(l); err != nil {
			v.add("metrics.listen", "%q is not host:port: %v", l, err)
		} else if port < 0 {
			v.add("metrics.listen", "%q has no port", l)
		}
	}

	// [schema_registry]
	validateRegistry(v, c)
	// [tracing]
	validateTracing(v, c)

	// [[mapping]]
	validateMappings(v, c)
	return v.issues
}

func oneOf(v *validator, key, val string, allowed ...string) {
	for _, a := range allowed {
		if val == a {
			return
		}
	}
	v.add(key, "%q is not one of %s", val, quoteAll(allowed))
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

func positive(v *validator, key string, d Duration) {
	if d.Duration <= 0 {
		v.add(key, "must be a positive duration, got %q", d.Duration.String())
	}
}

func splitHostPort(s string) (string, int, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return s, -1, nil
	}
	host, p := s[:i], s[i+1:]
	if strings.HasPrefix(host, "[") != strings.HasSuffix(host, "]") {
		return "", 0, errors.New("unbalanced brackets")
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 0 || n > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from 0 to 65535", p)
	}
	return strings.Trim(host, "[]"), n, nil
}
