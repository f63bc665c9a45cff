package config

import (
	"strings"
	"testing"
)

const avroTable = `[relay]
name = "shop"
[postgres]
dsn = "postgres://cdcrelay@127.0.0.1:5432/shop"
[kafka]
brokers = ["127.0.0.1:9092"]
`

func TestSchemaRegistryConfig(t *testing.T) {
	c := mustParse(t, avroTable+`
[schema_registry]
url = "https://registry:8081"
username = "relay"
password = "${REG_PW}"
[[mapping]]
table = "orders"
kind = "table"
envelope = "avro"
`, map[string]string{"REG_PW": "s3cret"})
	r := c.SchemaRegistry
	if r.SubjectNameStrategy != SubjectTopic || r.RequestTimeout.Seconds() != 10 || r.Password != "s3cret" {
		t.Errorf("defaults: %+v", r)
	}
	if c.Redacted().SchemaRegistry.Password != Mask {
		t.Errorf("the registry password is not masked")
	}
	sc, err := r.ClientConfig()
	if err != nil || sc.TLS == nil || sc.Username != "relay" {
		t.Errorf("client config %+v: %v", sc, err)
	}
	if who, ok := c.NeedsSchemaRegistry(); !ok || !strings.Contains(who, "public.orders") {
		t.Errorf("NeedsSchemaRegistry = %q, %v", who, ok)
	}
}

func TestSchemaRegistryConfigErrors(t *testing.T) {
	for _, c := range []struct{ text, key, msg string }{
		{`[[mapping]]
table = "orders"
kind = "table"
envelope = "json-schema"
`, "schema_registry.url", "is required: mapping public.orders (envelope json-schema)"},
		{`[[mapping]]
table = "outbox"
kind = "outbox"
[mapping.outbox]
payload_schema = "registry"
`, "schema_registry.url", "is required"},
		{`[schema_registry]
url = "registry:8081"
[[mapping]]
table = "outbox"
kind = "outbox"
`, "schema_registry.url", "is not an http:// or https:// URL"},
		{`[schema_registry]
url = "http://r:8081"
subject_name_strategy = "topicname"
[[mapping]]
table = "outbox"
kind = "outbox"
`, "schema_registry.subject_name_strategy", `"topicname" is not one of`},
		{`[schema_registry]
url = "http://r:8081"
username = "u"
[[mapping]]
table = "outbox"
kind = "outbox"
`, "schema_registry.password", "go together"},
		{`[schema_registry]
url = "http://r:8081"
[[mapping]]
table = "orders"
kind = "table"
envelope = "avro"
[mapping.schema]
compatibility = "SOMETIMES"
`, "mapping[1].schema.compatibility", `"SOMETIMES" is not one of`},
		{`[schema_registry]
url = "http://r:8081"
[[mapping]]
table = "log"
kind = "changelog"
envelope = "avro"
[mapping.schema]
value = "row"
`, "mapping[1].schema.value", `"row" is for kind "table"`},
		{`[[mapping]]
table = "orders"
kind = "table"
[mapping.schema]
value = "row"
`, "mapping[1].schema", `only used with envelope "avro" or "json-schema"`},
	} {
		_, err := parse(t, avroTable+c.text, nil)
		if err == nil || !strings.Contains(err.Error(), c.key) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error %v, want %s: %s", c.text, err, c.key, c.msg)
		}
	}
}
