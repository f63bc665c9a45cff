package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
)

// TestTLSAndSASLWithoutLeakingSecrets runs the relay against a Postgres that
// requires TLS (sslmode=verify-full with a CA generated here, a client
// certificate and a SCRAM password)
// and a Kafka broker whose client listener is SASL_SSL with mutual TLS, for
// each SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), with the
// passwords from ${VAR} and from password_file. The role is made from the
// output of `setup --print-grants`. Every byte the commands print - check,
// setup, run, status, and the errors of wrong passwords - is searched for the
// secrets.
func TestTLSAndSASLWithoutLeakingSecrets(t *testing.T) {
	const (
		pgSecret    = "pg-S3cret-7f3a91"
		plainSecret = "plain-S3cret-0c77e2"
		scram256    = "scram256-S3cret-51ab09"
		scram512    = "scram512-S3cret-d24c88"
		wrongSecret = "wrong-S3cret-9e1d30"
	)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin, err := e2e.Binary()
	if err != nil {
		t.Fatal(err)
	}
	certs, err := testenv.NewCerts(filepath.Join(dir, "pki"), "relay")
	if err != nil {
		t.Fatal(err)
	}

	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	// The relay's role must present a client certificate whose CN is its
	// name, and its password, over TLS.
	hba := strings.ReplaceAll(testenv.TLSOnlyHBA, "127.0.0.1/32  scram-sha-256", "127.0.0.1/32  scram-sha-256  clientcert=verify-full")
	if err := pg.EnableTLS(ctx, certs, hba); err != nil {
		t.Fatal(err)
	}
	opts := testenv.SASLSSLKafkaOptions(certs, true, map[string]string{"relay": plainSecret})
	kafka := testenv.NewKafka(t, opts)
	if err := kafka.AddSCRAMUser(ctx, "SCRAM-SHA-256", "relay256", scram256); err != nil {
		t.Fatal(err)
	}
	if err := kafka.AddSCRAMUser(ctx, "SCRAM-SHA-512", "relay512", scram512); err != nil {
		t.Fatal(err)
	}

	const db, name = "sec", "sec"
	if err := pg.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	if err := pg.ExecSQL(ctx, db, `CREATE TABLE outbox (id bigserial PRIMARY KEY, aggregatetype text NOT NULL,
		aggregateid text NOT NULL, type text NOT NULL, payload jsonb NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	secretFile := func(name, secret string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv("SEC_PG_PASSWORD", pgSecret)
	t.Setenv("SEC_KAFKA_PASSWORD", scram256)
	t.Setenv("SEC_PLAIN_PASSWORD", plainSecret)
	t.Setenv("SEC_WRONG_PASSWORD", wrongSecret)
	metricsAddr := freeLocalAddr(t)
	writeCfg := func(file, pgPassword, sasl string) string {
		text := fmt.Sprintf(`
[relay]
name = %q
[postgres]
dsn = "postgres://relay:%s@127.0.0.1:%d/%s?sslmode=verify-full&sslrootcert=%s&sslcert=%s&sslkey=%s&connect_timeout=5"
status_interval = "1s"
idle_checkpoint_interval = "1s"
[kafka]
brokers = [%q]
request_timeout = "10s"
[kafka.tls]
enable = true
ca_file = %q
cert_file = %q
key_file = %q
[kafka.sasl]
%s
[metrics]
listen = %q
[[mapping]]
table = "public.outbox"
kind = "outbox"
topic = "sec.events"
`, name, pgPassword, pg.Port(), db, certs.CAFile, certs.ClientCertFile, certs.ClientKeyFile, kafka.Brokers()[0], certs.CAFile, certs.ClientCertFile, certs.ClientKeyFile, sasl, metricsAddr)
		p := filepath.Join(dir, file)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	scram256Cfg := writeCfg("scram256.toml", "${SEC_PG_PASSWORD}", `mechanism = "SCRAM-SHA-256"
username = "relay256"
password = "${SEC_KAFKA_PASSWORD}"`)
	scram512Cfg := writeCfg("scram512.toml", "${SEC_PG_PASSWORD}", fmt.Sprintf(`mechanism = "SCRAM-SHA-512"
username = "relay512"
password_file = %q`, secretFile("kafka512.pw", scram512)))
	plainCfg := writeCfg("plain.toml", "${SEC_PG_PASSWORD}", `mechanism = "PLAIN"
username = "relay"
password = "${SEC_PLAIN_PASSWORD}"`)
	wrongKafkaCfg := writeCfg("wrong-kafka.toml", "${SEC_PG_PASSWORD}", `mechanism = "SCRAM-SHA-512"
username = "relay512"
password = "${SEC_WRONG_PASSWORD}"`)
	wrongPGCfg := writeCfg("wrong-pg.toml", "${SEC_WRONG_PASSWORD}", `mechanism = "PLAIN"
username = "relay"
password = "${SEC_PLAIN_PASSWORD}"`)

	var all strings.Builder
	cli := func(wantCode int, args ...string) string {
		t.Helper()
		code, out, errOut := run(t, args...)
		all.WriteString(out + errOut)
		if wantCode >= 0 && code != wantCode {
			t.Fatalf("%q: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", args, code, wantCode, out, errOut)
		}
		return out + errOut
	}

	// The role, its grants and the publication, from --print-grants, run by
	// the superuser with the placeholder password replaced.
	grants := cli(exitOK, "setup", "--print-grants", "--config", scram256Cfg)
	if strings.Contains(grants, pgSecret) {
		t.Fatalf("--print-grants printed the DSN's password")
	}
	sql := strings.Replace(grants, "choose-a-password", pgSecret, 1)
	if err := pg.ExecSQL(ctx, db, sql); err != nil {
		t.Fatalf("the SQL of --print-grants: %v\n%s", err, grants)
	}
	var super, repl bool
	conn, err := pg.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(ctx, `SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = 'relay'`).Scan(&super, &repl); err != nil || super || !repl {
		t.Fatalf("role relay: super %v, replication %v, %v", super, repl, err)
	}

	// Plain TCP, and TLS without the client certificate, are refused for the
	// role: the server really requires them.
	for _, q := range []string{"sslmode=disable", "sslmode=verify-full&sslrootcert=" + certs.CAFile} {
		if c, err := pgx.Connect(ctx, fmt.Sprintf("postgres://relay:%s@127.0.0.1:%d/%s?%s", pgSecret, pg.Port(), db, q)); err == nil {
			c.Close(ctx)
			t.Fatalf("a connection as relay with %s was accepted", q)
		}
	}
	// And the broker's client listener speaks only SASL_SSL.
	plainCfgSarama := sarama.NewConfig()
	plainCfgSarama.Net.DialTimeout = 3 * time.Second
	plainCfgSarama.Net.ReadTimeout = 3 * time.Second
	plainCfgSarama.Metadata.Retry.Max = 0
	if c, err := sarama.NewClient(kafka.Brokers(), plainCfgSarama); err == nil {
		c.Close()
		t.Fatalf("a plaintext Kafka client was accepted on the SASL_SSL listener")
	}

	// The relay's own setup, as the least-privileged role over TLS: the slot
	// and the topics.
	out := cli(exitOK, "setup", "--config", scram256Cfg)
	if !strings.Contains(out, "pg_create_logical_replication_slot") {
		t.Errorf("setup as relay:\n%s", out)
	}
	for _, cfg := range []string{scram256Cfg, scram512Cfg, plainCfg} {
		out := cli(exitOK, "check", "--config", cfg)
		if !strings.Contains(out, "Ready.") {
			t.Errorf("check %s:\n%s", filepath.Base(cfg), out)
		}
	}
	cli(-1, "check", "--config", scram256Cfg, "--print-config")

	// Wrong passwords fail with errors that do not carry them.
	out = cli(exitFailure, "check", "--config", wrongKafkaCfg)
	if !strings.Contains(strings.ToLower(out), "sasl") && !strings.Contains(strings.ToLower(out), "authentication") {
		t.Errorf("check with a wrong Kafka password does not say why:\n%s", out)
	}
	t.Logf("check with a wrong Kafka password: %s", grepLine(out, "FAIL"))
	out = cli(exitFailure, "check", "--config", wrongPGCfg)
	if !strings.Contains(out, "password authentication failed") {
		t.Errorf("check with a wrong Postgres password does not say why:\n%s", out)
	}
	t.Logf("check with a wrong Postgres password: %s", grepLine(out, "FAIL"))
	cli(exitFailure, "status", "--config", wrongPGCfg)
	cli(exitFailure, "status", "--config", wrongKafkaCfg, "--output", "json")

	// Run over TLS + SCRAM-SHA-512 (password_file), publish, and read back.
	logPath := filepath.Join(dir, "relay.log")
	p, err := e2e.Start(bin, logPath, "run", "--config", scram512Cfg, "--log-level", "debug")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	const rows = 200
	if err := pg.ExecSQL(ctx, db, fmt.Sprintf(`INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
		SELECT 'order', 'agg-' || (i %% 7), 'OrderPlaced', jsonb_build_object('i', i) FROM generate_series(1, %d) i`, rows)); err != nil {
		t.Fatal(err)
	}
	recs, err := e2e.ReadCommitted(ctx, kafka.InternalBrokers(), []string{"sec.events"}, rows, 3*time.Second)
	if err != nil {
		t.Fatalf("%v\nrelay output:\n%s", err, p.Output())
	}
	if len(recs) != rows {
		t.Errorf("%d events, want %d", len(recs), rows)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		out = cli(exitOK, "status", "--config", scram256Cfg)
		if strings.Contains(out, "yes, streaming") || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	for _, want := range []string{`active\s+yes`, `Kafka checkpoint`, `last commit\s+20`, `ready\s+yes, streaming`, `backfills\s+none running`} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("status of the running relay: no %q in\n%s", want, out)
		}
	}
	cli(exitOK, "status", "--config", plainCfg, "--output", "json")
	if err := p.Stop(15 * time.Second); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
	all.WriteString(p.Output())
	// The servers' logs are not the relay's output, but a secret there would
	// mean the relay sent it somewhere it should not (application_name, say).
	for _, f := range []string{pg.LogFile(), kafka.LogFile()} {
		b, _ := os.ReadFile(f)
		if strings.Contains(string(b), pgSecret) || strings.Contains(string(b), scram512) {
			t.Errorf("a secret appears in %s", f)
		}
	}

	text := all.String()
	for _, secret := range []string{pgSecret, plainSecret, scram256, scram512, wrongSecret} {
		if i := strings.Index(text, secret); i >= 0 {
			t.Errorf("secret %q appears in the output: ...%s...", secret, text[max(0, i-200):min(len(text), i+100)])
		}
	}
	t.Logf("searched %d bytes of output of setup, check, run and status (TLS to Postgres with verify-full and a client certificate; SASL_SSL with mutual TLS; PLAIN, SCRAM-SHA-256, SCRAM-SHA-512): no secret", len(text))
}

// grepLine is the first line of s that contains sub.
func grepLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

func freeLocalAddr(t *testing.T) string {
	t.Helper()
	ports, err := testenv.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0])
}
