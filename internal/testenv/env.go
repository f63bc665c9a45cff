package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Environment variables read (and, by devenv, written) by this package.
const (
	EnvPostgresDSN    = "CDCRELAY_TEST_PG_DSN"
	EnvKafkaBrokers   = "CDCRELAY_TEST_KAFKA_BROKERS"
	EnvRequireServers = "CDCRELAY_TEST_REQUIRE_SERVERS"
	EnvKafkaJars      = "CDCRELAY_KAFKA_JARS"
	EnvPostgresBin    = "CDCRELAY_PG_BIN"
	EnvDir            = "CDCRELAY_TESTENV_DIR"
	EnvRegistryURL    = "CDCRELAY_TEST_REGISTRY_URL"
	EnvRegistryDist   = "CDCRELAY_REGISTRY_DIST"
	// EnvPostgresMatrix lists one shared server per major version of the
	// test matrix, "MAJOR=DSN" separated by spaces (set by make test).
	EnvPostgresMatrix = "CDCRELAY_TEST_PG_MATRIX"
)

// unavailable ends a test that cannot get a server: it fails when
// CDCRELAY_TEST_REQUIRE_SERVERS=1 (make test, CI), and is skipped otherwise.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(EnvRequireServers) == "1" {
		t.Fatalf("%s (%s=1: servers are required; run the tests with `make test`)", msg, EnvRequireServers)
	}
	t.Skipf("%s; skipping (`make test` starts the servers)", msg)
}

// PostgresDSN returns the superuser DSN of the shared Postgres server
// ($CDCRELAY_TEST_PG_DSN, database "postgres"). Most tests want [NewDatabase].
func PostgresDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(EnvPostgresDSN)
	if dsn == "" {
		unavailable(t, "%s is not set: no shared Postgres", EnvPostgresDSN)
	}
	return dsn
}

// NewDatabase creates a database with a unique name on the shared Postgres
// server and returns its superuser DSN. At the end of the test the database is
// dropped, after terminating its connections and dropping its replication
// slots (slots pin WAL on a server that every package shares).
func NewDatabase(t testing.TB) string {
	t.Helper()
	return NewDatabaseOn(t, PostgresDSN(t))
}

// NewDatabaseOn is [NewDatabase] on the server of the superuser DSN admin,
// e.g. one of [PostgresMatrix].
func NewDatabaseOn(t testing.TB, admin string) string {
	t.Helper()
	name := UniqueName(t, "db")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := execAdmin(ctx, admin, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("testenv: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := dropDatabase(ctx, admin, name); err != nil {
			t.Logf("testenv: drop database %s: %v", name, err)
		}
	})
	dsn, err := withDatabase(admin, name)
	if err != nil {
		t.Fatalf("testenv: %s: %v", EnvPostgresDSN, err)
	}
	return dsn
}

// withDatabase replaces the database of a postgres:// URL.
func withDatabase(dsn, db string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("not a postgres:// URL: %q", dsn)
	}
	u.Path = "/" + db
	u.RawPath = ""
	return u.String(), nil
}

func execAdmin(ctx context.Context, dsn, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

func dropDatabase(ctx context.Context, admin, name string) error {
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	// A slot can be dropped only when no walsender uses it, and a database
	// only when it has no slots: end the sessions, then drop the slots
	// (retrying while the walsenders exit), then the database.
	for {
		_, err = conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = $1 AND pid <> pg_backend_pid()`, name)
		if err == nil {
			_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
				WHERE database = $1`, name)
		}
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

// KafkaBrokers returns the bootstrap list of the shared Kafka broker
// ($CDCRELAY_TEST_KAFKA_BROKERS). Tests share it: name topics with [UniqueName]
// and create them with [CreateTopic] (auto-creation is off).
func KafkaBrokers(t testing.TB) []string {
	t.Helper()
	v := os.Getenv(EnvKafkaBrokers)
	var brokers []string
	for _, b := range strings.Split(v, ",") {
		if b = strings.TrimSpace(b); b != "" {
			brokers = append(brokers, b)
		}
	}
	if len(brokers) == 0 {
		unavailable(t, "%s is not set: no shared Kafka", EnvKafkaBrokers)
	}
	return brokers
}

// NewPostgres starts a private Postgres cluster for one test, stopped and removed
// at the end of it. Use it when the test restarts or reconfigures the server.
func NewPostgres(t testing.TB, opts PostgresOptions) *Postgres {
	t.Helper()
	if _, err := PostgresBinDir(); err != nil {
		unavailable(t, "%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := StartPostgres(ctx, opts)
	if err != nil {
		t.Fatalf("testenv: start postgres: %v", err)
	}
	t.Cleanup(func() {
		if err := pg.Close(); err != nil {
			t.Logf("testenv: close postgres: %v", err)
		}
	})
	return pg
}

// NewKafka starts a private Kafka broker for one test, killed and removed at
// the end of it. Use it when the test restarts the broker or needs a proxy in
// front of it (see [KafkaOptions.Proxy]). A broker takes some seconds to start.
func NewKafka(t testing.TB, opts KafkaOptions) *Kafka {
	t.Helper()
	if opts.JarDir == "" {
		if _, err := KafkaJarDir(); err != nil {
			unavailable(t, "%v", err)
		}
	}
	if _, err := javaPath(); err != nil {
		unavailable(t, "%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	k, err := StartKafka(ctx, opts)
	if err != nil {
		t.Fatalf("testenv: start kafka: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("testenv: kafka log tail (%s):\n%s", k.LogFile(), tailFile(k.LogFile(), 4096))
		}
		if err := k.Close(); err != nil {
			t.Logf("testenv: close kafka: %v", err)
		}
	})
	return k
}

// UniqueName returns a name derived from the test's name and prefix, with a
// random suffix: lower-case letters, digits and '_', at most 63 bytes, starting
// with a letter. It is valid unquoted as a Postgres database, slot or
// publication name, and as a Kafka topic or transactional id.
func UniqueName(t testing.TB, prefix string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(prefix + "_" + t.Name()) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			if s := b.String(); s != "" && s[len(s)-1] != '_' {
				b.WriteByte('_')
			}
		}
	}
	base := strings.TrimRight(b.String(), "_")
	if base == "" || base[0] < 'a' || base[0] > 'z' {
		base = "t_" + base
	}
	if len(base) > 50 {
		base = strings.TrimRight(base[:50], "_")
	}
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	return base + "_" + hex.EncodeToString(suffix[:])
}

// RegistryURL returns the Confluent-compatible API of the shared schema
// registry ($CDCRELAY_TEST_REGISTRY_URL, an Apicurio Registry that `make
// test` starts). Tests share it: name subjects after unique topics.
func RegistryURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(EnvRegistryURL)
	if u == "" {
		unavailable(t, "%s is not set: no shared schema registry", EnvRegistryURL)
	}
	return u
}

// NewRegistry starts a private schema registry for one test, killed and
// removed at the end of it. Most tests want the shared one ([RegistryURL]);
// put a [Proxy] in front of either to inject faults.
func NewRegistry(t testing.TB, opts RegistryOptions) *Registry {
	t.Helper()
	if opts.DistDir == "" {
		if _, err := RegistryDistDir(); err != nil {
			unavailable(t, "%v", err)
		}
	}
	if _, err := RegistryJava(); err != nil {
		unavailable(t, "%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := StartRegistry(ctx, opts)
	if err != nil {
		t.Fatalf("testenv: start registry: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("testenv: registry log tail (%s):\n%s", r.LogFile(), tailFile(r.LogFile(), 4096))
		}
		if err := r.Close(); err != nil {
			t.Logf("testenv: close registry: %v", err)
		}
	})
	return r
}

// MatrixServer is the shared server of one major version of the test matrix.
type MatrixServer struct {
	Major int
	DSN   string // superuser DSN, database "postgres"
}

// Name is "pg14", "pg15", ...: a subtest's name.
func (m MatrixServer) Name() string { return fmt.Sprintf("pg%d", m.Major) }

// PostgresMatrix returns the shared servers of the test matrix
// ($CDCRELAY_TEST_PG_MATRIX: one per major version, 14 to 18, the shared
// server of [PostgresDSN] among them), ordered by major version. Tests of
// what must work on every supported version run once per server, in
// parallel subtests, each in a database of its own ([NewDatabaseOn]).
func PostgresMatrix(t testing.TB) []MatrixServer {
	t.Helper()
	v := os.Getenv(EnvPostgresMatrix)
	servers, err := parseMatrix(v)
	if err != nil {
		t.Fatalf("testenv: %s: %v", EnvPostgresMatrix, err)
	}
	if len(servers) == 0 {
		unavailable(t, "%s is not set: no server matrix", EnvPostgresMatrix)
	}
	return servers
}

func parseMatrix(v string) ([]MatrixServer, error) {
	var out []MatrixServer
	for _, f := range strings.Fields(v) {
		major, dsn, ok := strings.Cut(f, "=")
		n, err := strconv.Atoi(major)
		if !ok || err != nil || dsn == "" {
			return nil, fmt.Errorf("%q: want MAJOR=DSN", f)
		}
		out = append(out, MatrixServer{Major: n, DSN: dsn})
	}
	slices.SortFunc(out, func(a, b MatrixServer) int { return a.Major - b.Major })
	return out, nil
}

// FormatMatrix is the value of $CDCRELAY_TEST_PG_MATRIX for servers.
func FormatMatrix(servers []MatrixServer) string {
	parts := make([]string, len(servers))
	for i, s := range servers {
		parts[i] = fmt.Sprintf("%d=%s", s.Major, s.DSN)
	}
	return strings.Join(parts, " ")
}
