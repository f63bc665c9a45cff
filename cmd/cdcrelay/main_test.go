package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// run executes the command line and returns its exit status and output.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	code = execute(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "relay.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// tripwire is a TCP listener that counts connection attempts: pointed to by
// the DSN and the brokers of a bad configuration, it proves that nothing was
// contacted.
type tripwire struct {
	addr  string
	conns atomic.Int32
}

func newTripwire(t *testing.T) *tripwire {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tw := &tripwire{addr: l.Addr().String()}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tw.conns.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return tw
}

func (tw *tripwire) config(extra string) string {
	return fmt.Sprintf(`[relay]
name = "shop"

[postgres]
dsn = "postgres://cdcrelay@%s/shop"

[kafka]
brokers = ["%s"]
%s
[[mapping]]
table = "public.outbox"
kind  = "outbox"
`, tw.addr, tw.addr, extra)
}

func TestHelpListsTheCommands(t *testing.T) {
	code, out, _ := run(t, "--help")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	for _, c := range []string{"setup", "run", "backfill", "status", "check", "teardown", "version", "completion"} {
		if !strings.Contains(out, "\n  "+c+" ") {
			t.Errorf("--help does not list %q:\n%s", c, out)
		}
	}
	for _, c := range []string{"setup", "run", "backfill", "status", "check", "teardown", "version"} {
		code, out, _ := run(t, c, "--help")
		if code != exitOK || !strings.Contains(out, "Usage:") || !strings.Contains(out, "--config") {
			t.Errorf("%s --help: exit %d\n%s", c, code, out)
		}
		if c != "version" && !strings.Contains(out, "Examples:") {
			t.Errorf("%s --help has no examples", c)
		}
	}
}

// TestCheckBadConfigExits2WithoutConnecting is the acceptance check:
// an unknown key or a wrong type exits 2, naming the key and its line, before
// any connection is attempted.
func TestCheckBadConfigExits2WithoutConnecting(t *testing.T) {
	tw := newTripwire(t)
	cases := []struct {
		name, extra, want string
	}{
		{"unknown key", "tranactional_id = \"x\"\n", "line 9: kafka.tranactional_id: unknown key"},
		{"wrong type", "request_timeout = 30\n", "line 9: kafka.request_timeout: want a duration"},
		{"unset variable", "client_id = \"${CDCRELAY_TEST_UNSET_VARIABLE}\"\n", "line 9: kafka.client_id: environment variable CDCRELAY_TEST_UNSET_VARIABLE is not set"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tw.config(tc.extra))
			start := time.Now()
			code, out, errOut := run(t, "check", "--config", path)
			if code != exitUsage {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, exitUsage, out, errOut)
			}
			if !strings.Contains(errOut, tc.want) {
				t.Errorf("stderr %q does not contain %q", errOut, tc.want)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %v: did it try to connect?", d)
			}
		})
	}
	if n := tw.conns.Load(); n != 0 {
		t.Errorf("%d connection attempts for a bad configuration", n)
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	tw := newTripwire(t)
	good := writeConfig(t, tw.config(""))
	for _, args := range [][]string{
		{"--no-such-flag"},
		{"check", "--no-such-flag"},
		{"nonsense"},
		{"check", "extra-argument", "--config", good},
		{"status", "--output", "yaml", "--config", good},
		{"teardown", "--config", good}, // without --yes
		{"backfill", "--config", good}, // without TABLE
		{"check", "--config", filepath.Join(t.TempDir(), "missing.toml")},
		{"check", "--config", good, "--log-level", "loud"},
	} {
		code, out, errOut := run(t, args...)
		if code != exitUsage {
			t.Errorf("%q: exit %d, want %d\nstdout: %s\nstderr: %s", args, code, exitUsage, out, errOut)
		}
		if errOut == "" {
			t.Errorf("%q: nothing on stderr", args)
		}
	}
	if n := tw.conns.Load(); n != 0 {
		t.Errorf("%d connection attempts", n)
	}
}

func TestTeardownWithoutYesExplains(t *testing.T) {
	tw := newTripwire(t)
	_, _, errOut := run(t, "teardown", "--config", writeConfig(t, tw.config("")))
	for _, want := range []string{"cdcrelay_shop", "--yes"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr %q does not mention %q", errOut, want)
		}
	}
}

func TestConfigFromEnvironment(t *testing.T) {
	tw := newTripwire(t)
	t.Setenv(envConfig, writeConfig(t, tw.config("")))
	code, out, errOut := run(t, "check", "--config-only")
	if code != exitOK || !strings.Contains(out, `relay "shop"`) {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	// --config wins over the environment.
	code, _, errOut = run(t, "check", "--config-only", "--config", filepath.Join(t.TempDir(), "nope.toml"))
	if code != exitUsage || !strings.Contains(errOut, "nope.toml") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if n := tw.conns.Load(); n != 0 {
		t.Errorf("--config-only made %d connection attempts", n)
	}
}

func TestCheckJSONConfigOnly(t *testing.T) {
	tw := newTripwire(t)
	code, out, _ := run(t, "check", "--config-only", "-o", "json", "--config", writeConfig(t, tw.config("")))
	if code != exitOK || !strings.Contains(out, `"ok": true`) || !strings.Contains(out, `"section": "configuration"`) {
		t.Fatalf("exit %d: %s", code, out)
	}
}

func TestUnreachableServersExit1(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // a closed port: connections are refused
	cfg := strings.ReplaceAll(newTripwireConfig(addr), "\n[[mapping]]", "request_timeout = \"2s\"\n[[mapping]]")
	code, out, errOut := run(t, "check", "--config", writeConfig(t, cfg))
	if code != exitFailure {
		t.Fatalf("exit %d, want %d\n%s\n%s", code, exitFailure, out, errOut)
	}
	if !strings.Contains(out, "FAIL") || !strings.Contains(out, "connect") {
		t.Errorf("output does not report the failed connections:\n%s", out)
	}
}

func newTripwireConfig(addr string) string {
	tw := &tripwire{addr: addr}
	return tw.config("")
}

// A backfill of a table no mapping names is a usage error, reported before
// any connection (the tripwire counts them).
func TestBackfillRefusesUnmappedTable(t *testing.T) {
	tw := newTripwire(t)
	code, _, errOut := run(t, "backfill", "public.orders", "--chunk-size", "500", "--max-rate", "100", "--where", "id > 1", "--detach", "--config", writeConfig(t, tw.config("")))
	if code != exitUsage || !strings.Contains(errOut, "public.orders is not mapped") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if n := tw.conns.Load(); n != 0 {
		t.Fatalf("%d connection attempts; want none", n)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := run(t, "version")
	if code != exitOK || !strings.HasPrefix(out, "cdcrelay dev\n") || !strings.Contains(out, "go1.") {
		t.Fatalf("exit %d: %s", code, out)
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		code, out, errOut := run(t, "completion", shell)
		if code != exitOK || len(out) < 100 {
			t.Errorf("completion %s: exit %d, %d bytes: %s", shell, code, len(out), errOut)
		}
	}
	// Dynamic completion of a flag's values.
	code, out, _ := run(t, "__complete", "status", "--output", "")
	if code != exitOK || !strings.Contains(out, "json") {
		t.Errorf("__complete: exit %d: %s", code, out)
	}
}

func TestPrintConfigMasksSecrets(t *testing.T) {
	tw := newTripwire(t)
	t.Setenv("CDCRELAY_TEST_SASL_PASSWORD", "sasl-secret-1")
	cfg := strings.Replace(tw.config("[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"${CDCRELAY_TEST_SASL_PASSWORD}\"\n"),
		"postgres://cdcrelay@", "postgres://cdcrelay:pg-secret-2@", 1)
	code, out, errOut := run(t, "check", "--print-config", "--config", writeConfig(t, cfg))
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"slot = 'cdcrelay_shop'", "transactional_id = 'cdcrelay-shop'", "topic = 'outbox.event.{aggregatetype}'", "cdcrelay:xxxxx@"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	if strings.Contains(out, "sasl-secret-1") || strings.Contains(out, "pg-secret-2") {
		t.Errorf("a secret is printed:\n%s", out)
	}
	if n := tw.conns.Load(); n != 0 {
		t.Errorf("--print-config made %d connection attempts", n)
	}
}
