package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
)

// badConfigHeader is lines 1-8 of every bad configuration below: a valid
// [relay], [postgres] and [kafka] whose servers are the tripwire, so a
// connection attempt would be counted.
func badConfigHeader(tw *tripwire) string {
	return fmt.Sprintf(`[relay]
name = "shop"

[postgres]
dsn = "postgres://cdcrelay@%s/shop"

[kafka]
brokers = ["%s"]
`, tw.addr, tw.addr)
}

const outboxMapping = `[[mapping]]
table = "public.outbox"
kind = "outbox"
`

// TestBadConfigsThroughTheBinary runs `cdcrelay check --config bad.toml` with
// the built binary for each of many distinct bad relay.toml files: each must
// exit 2 with a message naming the key and, where the key is in the file, its
// line, and must not try to reach Postgres or Kafka.
func TestBadConfigsThroughTheBinary(t *testing.T) {
	bin, err := e2e.Binary()
	if err != nil {
		t.Fatal(err)
	}
	tw := newTripwire(t)
	h := badConfigHeader(tw)
	cases := []struct {
		name string
		text string   // the whole file
		want []string // substrings of stderr
	}{
		{"toml syntax: unterminated string", h + "[batch]\nlinger = \"10ms\n" + outboxMapping,
			[]string{"line 10", "new lines"}},
		{"key defined twice", h + "[batch]\nlinger = \"10ms\"\nlinger = \"20ms\"\n" + outboxMapping,
			[]string{"line 11: batch.linger", "already defined"}},
		{"unknown key in a mapping subsection", h + outboxMapping + "[mapping.outbox]\npayload_col = \"body\"\n",
			[]string{"line 13: mapping[1].outbox.payload_col: unknown key", "payload_column"}},
		{"wrong type: brokers as a string", strings.Replace(h, `brokers = ["`+tw.addr+`"]`, `brokers = "`+tw.addr+`"`, 1) + outboxMapping,
			[]string{"line 8: kafka.brokers", "want an array of strings"}},
		{"bad duration", h + "[batch]\nlinger = \"10 parsecs\"\n" + outboxMapping,
			[]string{"line 10: batch.linger", "parsecs"}},
		{"max_events zero", h + "[batch]\nmax_events = 0\n" + outboxMapping,
			[]string{"line 10: batch.max_events", "at least 1"}},
		{"relay name with capitals and a dash", strings.Replace(h, `name = "shop"`, `name = "Shop-1"`, 1) + outboxMapping,
			[]string{"line 2: relay.name", "lowercase"}},
		{"relay name too long", strings.Replace(h, `name = "shop"`, `name = "`+strings.Repeat("a", 55)+`"`, 1) + outboxMapping,
			[]string{"line 2: relay.name", "longer than 54"}},
		{"log level", strings.Replace(h, "name = \"shop\"\n", "name = \"shop\"\nlog_level = \"loud\"\n", 1) + outboxMapping,
			[]string{"line 3: relay.log_level", `"loud"`}},
		{"unset environment variable", strings.Replace(h, "dsn = \"postgres://cdcrelay@"+tw.addr+"/shop\"", `dsn = "${CDCRELAY_TEST_BADCONFIG_UNSET}"`, 1) + outboxMapping,
			[]string{"line 5: postgres.dsn", "CDCRELAY_TEST_BADCONFIG_UNSET is not set"}},
		{"sasl mechanism", h + "[kafka.sasl]\nmechanism = \"GSSAPI\"\nusername = \"u\"\npassword = \"p\"\n" + outboxMapping,
			[]string{"line 10: kafka.sasl.mechanism", `"GSSAPI"`}},
		{"sasl password and password_file", h + "[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"p\"\npassword_file = \"/nonexistent/pw\"\n" + outboxMapping,
			[]string{"line 13: kafka.sasl.password_file", "not both"}},
		{"tls cert without key", h + "[kafka.tls]\nenable = true\ncert_file = \"/nonexistent/c.pem\"\n" + outboxMapping,
			[]string{"kafka.tls.key_file", "set both or neither"}},
		{"kafka version", strings.Replace(h, "brokers = [", "version = \"0.10.0\"\nbrokers = [", 1) + outboxMapping,
			[]string{"line 8: kafka.version", `"0.10.0"`}},
		{"metrics listen without port", h + "[metrics]\nlisten = \"nonsense\"\n" + outboxMapping,
			[]string{"line 10: metrics.listen", "no port"}},
		{"no mapping", h,
			[]string{"mapping", "at least one [[mapping]]"}},
		{"mapping without table", h + "[[mapping]]\nkind = \"outbox\"\n",
			[]string{"line 9: mapping[1].table", "is required"}},
		{"mapping kind", h + "[[mapping]]\ntable = \"public.outbox\"\nkind = \"queue\"\n",
			[]string{"line 11: mapping[1].kind", `"queue"`}},
		{"table mapped twice", h + outboxMapping + "[[mapping]]\ntable = \"outbox\"\nkind = \"outbox\"\n",
			[]string{"line 13: mapping[2].table", "already mapped by mapping[1] (line 10)"}},
		{"envelope", h + outboxMapping + "envelope = \"avro\"\n",
			[]string{"line 12: mapping[1].envelope", `"avro"`}},
		{"on_error", h + outboxMapping + "on_error = \"ignore\"\n",
			[]string{"line 12: mapping[1].on_error", `"ignore"`}},
		{"dead_letter_topic with on_error stop", h + outboxMapping + "dead_letter_topic = \"dlq\"\n",
			[]string{"line 12: mapping[1].dead_letter_topic", `on_error is "stop"`}},
		{"malformed topic template", h + outboxMapping + "topic = \"outbox.{aggregatetype\"\n",
			[]string{"line 12: mapping[1].topic", "unclosed '{'"}},
		{"invalid literal topic name", h + outboxMapping + "topic = \"bad topic!\"\n",
			[]string{"line 12: mapping[1].topic", "bad topic!"}},
		{"header the mapping writes itself", h + outboxMapping + "headers = { id = \"{aggregateid}\" }\n",
			[]string{"line 12: mapping[1].headers.id", "set by the mapping itself"}},
		{"outbox on_update", h + outboxMapping + "[mapping.outbox]\non_update = \"ignore\"\n",
			[]string{"line 13: mapping[1].outbox.on_update", `"ignore"`}},
		{"rows section on an outbox", h + outboxMapping + "[mapping.rows]\nops = [\"insert\"]\n",
			[]string{"line 12: mapping[1].rows", `does not apply to kind "outbox"`}},
		{"key and key_columns", h + "[[mapping]]\ntable = \"public.orders\"\nkind = \"table\"\nkey = \"{id}\"\n[mapping.rows]\nkey_columns = [\"id\"]\n",
			[]string{"line 14: mapping[1].rows.key_columns", "cannot be combined with key"}},
		{"include and exclude columns", h + "[[mapping]]\ntable = \"public.orders\"\nkind = \"table\"\n[mapping.rows]\ninclude_columns = [\"a\"]\nexclude_columns = [\"b\"]\n",
			[]string{"line 14: mapping[1].rows.exclude_columns", "include_columns"}},
		{"unknown op", h + "[[mapping]]\ntable = \"public.orders\"\nkind = \"table\"\n[mapping.rows]\nops = [\"insert\", \"upsert\"]\n",
			[]string{"line 13: mapping[1].rows.ops", `"upsert"`}},
		{"truncate with the raw envelope", h + "[[mapping]]\ntable = \"public.orders\"\nkind = \"table\"\nenvelope = \"raw\"\n[mapping.rows]\nops = [\"truncate\"]\n",
			[]string{"line 14: mapping[1].rows.ops", `envelope "raw"`}},
		{"changelog key and key_fields", h + "[[mapping]]\ntable = \"audit.log\"\nkind = \"changelog\"\nkey = \"{id}\"\n[mapping.changelog]\nkey_fields = [\"id\"]\n",
			[]string{"line 14: mapping[1].changelog.key_fields", "cannot be combined with key"}},
	}
	dir := t.TempDir()
	seen := map[string]bool{}
	for i, tc := range cases {
		if seen[tc.text] {
			t.Fatalf("case %q repeats another case's file", tc.name)
		}
		seen[tc.text] = true
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("bad%02d.toml", i))
			if err := os.WriteFile(path, []byte(tc.text), 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "check", "--config", path)
			cmd.Env = append(os.Environ(), "CDCRELAY_CONFIG=")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			start := time.Now()
			err := cmd.Run()
			took := time.Since(start)
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != exitUsage {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, exitUsage, stdout.String(), stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr does not contain %q:\n%s", w, stderr.String())
				}
			}
			if !strings.Contains(stderr.String(), filepath.Base(path)) {
				t.Errorf("stderr does not name the file %s:\n%s", filepath.Base(path), stderr.String())
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout is not empty: %s", stdout.String())
			}
			if took > 5*time.Second {
				t.Errorf("took %v: did it try to connect?", took)
			}
		})
	}
	if len(cases) < 15 {
		t.Errorf("only %d bad configurations", len(cases))
	}
	if n := tw.conns.Load(); n != 0 {
		t.Errorf("%d connection attempts for bad configurations", n)
	}
}

// TestCheckFindsMappingColumnsMissingFromTheTable: a mapping whose templates
// name a column the table does not have is a configuration error that only
// the live schema reveals. Issue 4: "a template that names a missing column
// is a configuration error at start, not a runtime surprise". mapping's
// Mapper.CheckRelation reports it, but `cdcrelay check` (and setup, and run)
// never call it: check says "Ready." and the rows later fail one by one.
func TestCheckFindsMappingColumnsMissingFromTheTable(t *testing.T) {
	dsn := testenv.NewDatabase(t)
	brokers := testenv.KafkaBrokers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `CREATE TABLE items (id bigint PRIMARY KEY, name text)`); err != nil {
		t.Fatal(err)
	}
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	name := "t" + hex.EncodeToString(suffix[:])
	path := writeConfig(t, fmt.Sprintf(`
[relay]
name = %q
[postgres]
dsn = %q
[kafka]
brokers = [%q]
checkpoint_topic = "%s.checkpoints"
[[mapping]]
table = "public.items"
kind = "table"
topic = "%s.items"
key = "{region}-{id}"
headers = { tenant = "{tenant_id}" }
`, name, dsn, brokers[0], name, name))
	if code, out, errOut := run(t, "setup", "--config", path); code != exitOK {
		t.Logf("setup: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, errOut := run(t, "check", "--config", path)
	t.Logf("check: exit %d\n%s%s", code, out, errOut)
	if code == exitOK {
		t.Errorf("check passed (exit 0) although mapping public.items names columns region (key) and tenant_id (headers.tenant) that public.items does not have")
	}
	for _, want := range []string{`"region"`, `"tenant_id"`} {
		if !strings.Contains(out+errOut, want) {
			t.Errorf("check does not name the missing column %s", want)
		}
	}
}
