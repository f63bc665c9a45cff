package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/schema"
)

// SchemaRegistry is the schema registry that the envelopes "avro" and
// "json-schema" and outbox payload_schema = "registry" publish through. The
// relay speaks the Confluent Schema Registry API (Confluent, Redpanda, and
// Apicurio Registry at /apis/ccompat/v7).
type SchemaRegistry struct {
	// URL is the registry's base URL, e.g. "http://registry:8081" or, for
	// Apicurio, "http://registry:8080/apis/ccompat/v7". Required when a
	// mapping needs it.
	URL string `toml:"url"`
	// SubjectNameStrategy names the subjects as the Java serializers do:
	// "topic" (TopicNameStrategy, "<topic>-key" / "<topic>-value", default),
	// "record" (RecordNameStrategy, the record's full name) or
	// "topic_record" (TopicRecordNameStrategy, "<topic>-<record name>").
	SubjectNameStrategy string `toml:"subject_name_strategy"`
	// RequestTimeout bounds one request to the registry. Default 10s.
	RequestTimeout Duration `toml:"request_timeout"`
	// Username and Password: HTTP basic authentication (both or neither).
	Username string `toml:"username"`
	Password string `toml:"password"`
	// TLS for an https URL.
	TLS RegistryTLS `toml:"tls"`
}

// RegistryTLS is the registry client's TLS; an https URL turns it on.
type RegistryTLS struct {
	CAFile             string `toml:"ca_file"`   // PEM CA bundle; empty: the system's roots
	CertFile           string `toml:"cert_file"` // client certificate (mutual TLS) ...
	KeyFile            string `toml:"key_file"`  // ... and its key
	InsecureSkipVerify bool   `toml:"insecure_skip_verify"`
}

// Subject naming strategies, as relay.toml spells them.
const (
	SubjectTopic       = "topic"
	SubjectRecord      = "record"
	SubjectTopicRecord = "topic_record"
)

// DefaultRegistryRequestTimeout is schema_registry.request_timeout's default.
const DefaultRegistryRequestTimeout = "10s"

func applyRegistryDefaults(c *Config, ix *index) {
	r := &c.SchemaRegistry
	if !ix.has("schema_registry.subject_name_strategy") && r.SubjectNameStrategy == "" {
		r.SubjectNameStrategy = SubjectTopic
	}
	if !ix.has("schema_registry.request_timeout") {
		_ = r.RequestTimeout.UnmarshalText([]byte(DefaultRegistryRequestTimeout))
	}
}

// NeedsSchemaRegistry reports whether a mapping publishes through the
// registry (and which one first, for messages).
func (c *Config) NeedsSchemaRegistry() (string, bool) {
	for _, m := range c.Mappings {
		switch {
		case m.Envelope == mapping.EnvelopeAvro, m.Envelope == mapping.EnvelopeJSONSchema:
			return mapping.QualifyTable(m.Table) + " (envelope " + m.Envelope + ")", true
		case m.Outbox.PayloadSchema == mapping.PayloadSchemaRegistry:
			return mapping.QualifyTable(m.Table) + " (outbox.payload_schema " + m.Outbox.PayloadSchema + ")", true
		}
	}
	return "", false
}

func validateRegistry(v *validator, c *Config) {
	r := &c.SchemaRegistry
	who, needed := c.NeedsSchemaRegistry()
	if r.URL == "" {
		if needed {
			v.add("schema_registry.url", "is required: mapping %s publishes through a schema registry (e.g. url = \"http://registry:8081\")", who)
		}
	} else if u, err := url.Parse(r.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		v.add("schema_registry.url", "%q is not an http:// or https:// URL", RedactURL(r.URL))
	} else if u.User != nil {
		v.add("schema_registry.url", "carries credentials: give them as schema_registry.username and password")
	} else if u.Scheme == "http" {
		for _, f := range []struct{ key, val string }{{"schema_registry.tls.ca_file", r.TLS.CAFile}, {"schema_registry.tls.cert_file", r.TLS.CertFile}, {"schema_registry.tls.key_file", r.TLS.KeyFile}} {
			if f.val != "" {
				v.add(f.key, "is set but schema_registry.url is http://, not https://")
			}
		}
	}
	oneOf(v, "schema_registry.subject_name_strategy", r.SubjectNameStrategy, SubjectTopic, SubjectRecord, SubjectTopicRecord)
	positive(v, "schema_registry.request_timeout", r.RequestTimeout)
	if (r.Username == "") != (r.Password == "") {
		key := "schema_registry.password"
		if r.Username == "" {
			key = "schema_registry.username"
		}
		v.add(key, "schema_registry.username and schema_registry.password go together: set both or neither")
	}
	if (r.TLS.CertFile == "") != (r.TLS.KeyFile == "") {
		v.add("schema_registry.tls.key_file", "schema_registry.tls.cert_file and key_file go together: set both or neither")
	}
	for _, f := range []struct{ key, val string }{{"schema_registry.tls.ca_file", r.TLS.CAFile}, {"schema_registry.tls.cert_file", r.TLS.CertFile}, {"schema_registry.tls.key_file", r.TLS.KeyFile}} {
		fileExists(v, f.key, f.val)
	}
}

// RedactURL masks the password of a URL's user info.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), Mask)
	}
	return u.String()
}

// ClientConfig is the registry client's configuration for package schema
// (the TLS files read).
func (r *SchemaRegistry) ClientConfig() (schema.Config, error) {
	sc := schema.Config{
		URL: r.URL, Username: r.Username, Password: r.Password,
		Timeout: r.RequestTimeout.Duration, SubjectNameStrategy: r.SubjectNameStrategy,
	}
	t := &r.TLS
	if strings.HasPrefix(r.URL, "https://") {
		tc := &tls.Config{InsecureSkipVerify: t.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
		if t.CAFile != "" {
			pem, err := os.ReadFile(t.CAFile)
			if err != nil {
				return sc, fmt.Errorf("schema_registry.tls.ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return sc, fmt.Errorf("schema_registry.tls.ca_file %s: no PEM certificate found", t.CAFile)
			}
			tc.RootCAs = pool
		}
		if t.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
			if err != nil {
				return sc, fmt.Errorf("schema_registry.tls.cert_file/key_file: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		sc.TLS = tc
	}
	return sc, nil
}
