package testenv

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestSharedPostgres(t *testing.T) {
	ctx := testContext(t, time.Minute)
	dsn := NewDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var walLevel, db string
	if err := conn.QueryRow(ctx, "SELECT current_setting('wal_level'), current_database()").Scan(&walLevel, &db); err != nil {
		t.Fatal(err)
	}
	if walLevel != "logical" {
		t.Errorf("wal_level = %q, want logical", walLevel)
	}
	if !strings.HasPrefix(db, "db_testsharedpostgres_") {
		t.Errorf("database %q is not named after the test", db)
	}
	// A logical slot in the test's database; NewDatabase's cleanup drops it.
	if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot('s1', 'pgoutput')"); err != nil {
		t.Fatal(err)
	}
}

// The replication protocol is allowed too (pg_hba "replication" lines).
func TestSharedPostgresReplicationConnection(t *testing.T) {
	ctx := testContext(t, time.Minute)
	conn, err := pgconn.Connect(ctx, NewDatabase(t)+"&replication=database")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	res, err := conn.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 {
		t.Fatalf("IDENTIFY_SYSTEM: %+v", res)
	}
}

func TestPrivatePostgresRestart(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	pg := NewPostgres(t, PostgresOptions{WALSenderTimeout: 5 * time.Second})
	if v, err := pg.Show(ctx, "wal_level"); err != nil || v != "logical" {
		t.Fatalf("wal_level = %q, %v", v, err)
	}
	if v, err := pg.Show(ctx, "wal_sender_timeout"); err != nil || v != "5s" {
		t.Fatalf("wal_sender_timeout = %q, %v", v, err)
	}
	if v, err := pg.Show(ctx, "max_replication_slots"); err != nil || v != "32" {
		t.Fatalf("max_replication_slots = %q, %v", v, err)
	}
	if err := pg.CreateDatabase(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if err := pg.ExecSQL(ctx, "app", "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := pg.ExecSQL(ctx, "app", "SELECT pg_create_logical_replication_slot('slot1', 'pgoutput')"); err != nil {
		t.Fatal(err)
	}
	count := func() (n int) {
		t.Helper()
		conn, err := pg.Connect(ctx, "app")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if err := conn.QueryRow(ctx, "SELECT (SELECT count(*) FROM t) + (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'slot1')").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// A crash (immediate shutdown) keeps committed rows and the slot.
	if err := pg.Restart(ctx, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(readFile(t, pg.LogFile()), "database system was interrupted") {
		t.Error("no crash recovery in the log after Restart(immediate)")
	}
	if n := count(); n != 2 {
		t.Fatalf("after Restart(immediate): row + slot = %d, want 2", n)
	}
	if err := pg.Restart(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := pg.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if pg.Running(ctx) {
		t.Fatal("running after Stop")
	}
	if err := pg.Stop(ctx); err != nil {
		t.Fatalf("Stop when stopped: %v", err)
	}
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Fatalf("after Stop and Start: row + slot = %d, want 2", n)
	}
}

func TestPostgresWALLevelReplica(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	pg := NewPostgres(t, PostgresOptions{WALLevelReplica: true})
	if v, err := pg.Show(ctx, "wal_level"); err != nil || v != "replica" {
		t.Fatalf("wal_level = %q, %v", v, err)
	}
	err := pg.ExecSQL(ctx, "postgres", "SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
	if err == nil || !strings.Contains(err.Error(), "wal_level") {
		t.Fatalf("logical slot with wal_level=replica: %v, want an error about wal_level", err)
	}
	if err := pg.SetSettings(ctx, map[string]string{"wal_level": "logical"}); err != nil {
		t.Fatal(err)
	}
	if v, err := pg.Show(ctx, "wal_level"); err != nil || v != "logical" {
		t.Fatalf("after SetSettings: wal_level = %q, %v", v, err)
	}
}

// StopServers (devenv down) finds and stops a server that nobody closed.
func TestStopServersFindsLeftovers(t *testing.T) {
	if _, err := PostgresBinDir(); err != nil {
		unavailable(t, "%v", err)
	}
	ctx := testContext(t, 3*time.Minute)
	root := filepath.Join(TempRoot(), UniqueName(t, "root"))
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { RemoveServerDirs(root) })
	pg, err := StartPostgres(ctx, PostgresOptions{ParentDir: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	servers := FindServers(root)
	if len(servers) != 1 || servers[0].Kind != "postgres" || servers[0].Dir != pg.DataDir() {
		t.Fatalf("FindServers = %+v, want the postgres in %s", servers, pg.DataDir())
	}
	stopped := StopServers(ctx, root)
	if len(stopped) != 1 || stopped[0].Err != nil {
		t.Fatalf("StopServers = %+v", stopped)
	}
	if pg.Running(ctx) {
		t.Fatal("postgres still running after StopServers")
	}
	if s := FindServers(root); len(s) != 0 {
		t.Fatalf("FindServers after StopServers = %+v", s)
	}
}

func TestUniqueName(t *testing.T) {
	a, b := UniqueName(t, "topic"), UniqueName(t, "topic")
	if a == b {
		t.Fatalf("two names alike: %s", a)
	}
	if !strings.HasPrefix(a, "topic_testuniquename_") {
		t.Errorf("name %q", a)
	}
	t.Run("Sub/Test With-Odd.Chars and a very long name that goes on and on and on", func(t *testing.T) {
		n := UniqueName(t, "")
		if len(n) > 63 || strings.Trim(n, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" || n[0] < 'a' || n[0] > 'z' {
			t.Errorf("name %q is not a plain identifier of at most 63 bytes", n)
		}
	})
}

func TestWithDatabase(t *testing.T) {
	got, err := withDatabase("postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "db_x")
	if want := "postgres://postgres@127.0.0.1:5432/db_x?sslmode=disable"; err != nil || got != want {
		t.Fatalf("got %q, %v; want %q", got, err, want)
	}
	if _, err := withDatabase("host=x dbname=y", "z"); err == nil {
		t.Fatal("keyword/value DSN accepted")
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A server directory that the Postgres OS user could not reach under its parent
// goes to the temp dir, with a symlink in the parent that FindServers and
// RemoveServerDirs follow.
func TestNewServerDirUnreachableParent(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "private") // t.TempDir is mode 0700
	dir, link, err := newServerDir(parent, "pg-", "someone-else")
	if err != nil {
		t.Fatal(err)
	}
	if link == "" || strings.HasPrefix(dir, parent) || !searchableByOthers(dir[:strings.LastIndexByte(dir, '/')]) {
		t.Fatalf("dir %s, link %q: want a dir outside %s and a link in it", dir, link, parent)
	}
	if got := serverDirLinks(parent); len(got) != 1 || got[0] != dir {
		t.Fatalf("serverDirLinks = %v, want [%s]", got, dir)
	}
	if err := RemoveServerDirs(parent); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s survived RemoveServerDirs: %v", dir, err)
	}
}
