package replication_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cdcrelay/cdcrelay/internal/testenv"
	"github.com/cdcrelay/cdcrelay/replication"
)

const schemaSQL = `
CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype text, aggregateid text, type text, payload jsonb);
CREATE TABLE orders (id bigint PRIMARY KEY, status text);
CREATE TABLE nokey (a int, b text);
CREATE TABLE full_ident (id int PRIMARY KEY, v text);
ALTER TABLE full_ident REPLICA IDENTITY FULL;
CREATE VIEW order_view AS SELECT * FROM orders;
`

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// freshDB returns a new database with the test tables, and a connection to it.
func freshDB(t *testing.T) (string, *pgx.Conn) {
	t.Helper()
	dsn := testenv.NewDatabase(t)
	conn := connect(t, dsn)
	if _, err := conn.Exec(context.Background(), schemaSQL); err != nil {
		t.Fatalf("schema: %v", err)
	}
	return dsn, conn
}

func outboxPlan(t *testing.T, tables ...replication.TablePlan) replication.Plan {
	name := testenv.UniqueName(t, "cdc")
	if len(tables) == 0 {
		tables = []replication.TablePlan{{Table: "public.outbox", Ops: []replication.Op{replication.OpInsert}}}
	}
	return replication.Plan{Slot: name, Publication: name, Tables: tables}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func find(r *replication.Report, name, subject string) (replication.CheckResult, bool) {
	for _, c := range r.Checks {
		if c.Name == name && c.Subject == subject {
			return c, true
		}
	}
	return replication.CheckResult{}, false
}

func wantCheck(t *testing.T, r *replication.Report, name, subject string, status replication.CheckStatus, fix string) {
	t.Helper()
	c, ok := find(r, name, subject)
	if !ok {
		t.Fatalf("no check %s (%s) in %+v", name, subject, r.Checks)
	}
	if c.Status != status {
		t.Fatalf("check %s (%s) = %s: %s; want %s", name, subject, c.Status, c.Detail, status)
	}
	if fix != "" && !strings.Contains(c.Fix, fix) {
		t.Fatalf("check %s (%s): fix %q does not contain %q", name, subject, c.Fix, fix)
	}
}

func publicationTables(t *testing.T, conn *pgx.Conn, pub string) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1`, pub)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return tables
}

func TestSetupFreshDatabaseThenNothingToChange(t *testing.T) {
	ctx := ctxT(t)
	_, conn := freshDB(t)
	plan := outboxPlan(t)

	before, err := replication.Check(ctx, conn, plan)
	if err != nil {
		t.Fatal(err)
	}
	wantCheck(t, before, "wal_level", "", replication.CheckOK, "")
	wantCheck(t, before, "slot", plan.Slot, replication.CheckFail, "cdcrelay setup")
	wantCheck(t, before, "publication", plan.Publication, replication.CheckFail, "CREATE PUBLICATION")

	res, err := replication.Setup(ctx, conn, plan, false)
	if err != nil {
		t.Fatalf("setup: %v", err)
	}
	if !res.Applied || len(res.Statements) != 2 {
		t.Fatalf("setup result %+v, want 2 statements applied", res)
	}
	if !strings.HasPrefix(res.Statements[0], "CREATE PUBLICATION") || !strings.Contains(res.Statements[1], "pg_create_logical_replication_slot") {
		t.Errorf("statements (publication first, then slot): %q", res.Statements)
	}
	if got := publicationTables(t, conn, plan.Publication); !slices.Equal(got, []string{"public.outbox"}) {
		t.Errorf("publication tables = %v", got)
	}
	si, err := replication.SlotStatus(ctx, conn, plan.Slot)
	if err != nil {
		t.Fatal(err)
	}
	if !si.Exists || si.Plugin != "pgoutput" || si.Type != "logical" || si.Active {
		t.Errorf("slot = %+v", si)
	}

	again, err := replication.Setup(ctx, conn, plan, false)
	if err != nil {
		t.Fatalf("second setup: %v", err)
	}
	if again.Applied || len(again.Statements) != 0 {
		t.Errorf("second setup changed something: %+v", again)
	}

	after, err := replication.Check(ctx, conn, plan)
	if err != nil {
		t.Fatal(err)
	}
	if !after.OK() {
		t.Errorf("check after setup: %+v", after.Failures())
	}
	wantCheck(t, after, "publication", plan.Publication, replication.CheckOK, "")
	wantCheck(t, after, "slot", plan.Slot, replication.CheckOK, "")
}

func TestSetupDryRunChangesNothing(t *testing.T) {
	ctx := ctxT(t)
	_, conn := freshDB(t)
	plan := outboxPlan(t)
	res, err := replication.Setup(ctx, conn, plan, true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Applied || len(res.Statements) != 2 {
		t.Fatalf("dry run = %+v", res)
	}
	want := `CREATE PUBLICATION "` + plan.Publication + `" FOR TABLE "public"."outbox"`
	if res.Statements[0] != want {
		t.Errorf("statement %q, want %q", res.Statements[0], want)
	}
	if si, _ := replication.SlotStatus(ctx, conn, plan.Slot); si.Exists {
		t.Error("dry run created the slot")
	}
	if pi, _ := replication.PublicationStatus(ctx, conn, plan.Publication); pi.Exists {
		t.Error("dry run created the publication")
	}
}

func TestSetupAltersPublicationToMatch(t *testing.T) {
	ctx := ctxT(t)
	_, conn := freshDB(t)
	plan := outboxPlan(t,
		replication.TablePlan{Table: "public.outbox", Ops: []replication.Op{replication.OpInsert}},
		replication.TablePlan{Table: "public.full_ident", Ops: []replication.Op{replication.OpInsert, replication.OpUpdate}})
	if _, err := conn.Exec(ctx, `CREATE PUBLICATION "`+plan.Publication+`" FOR TABLE orders, outbox WITH (publish = 'insert')`); err != nil {
		t.Fatal(err)
	}
	rep, err := replication.Check(ctx, conn, plan)
	if err != nil {
		t.Fatal(err)
	}
	wantCheck(t, rep, "publication", plan.Publication, replication.CheckFail, "ALTER PUBLICATION")

	res, err := replication.Setup(ctx, conn, plan, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Statements) != 3 { // SET TABLE, SET (publish), slot
		t.Errorf("statements = %q", res.Statements)
	}
	if got := publicationTables(t, conn, plan.Publication); !slices.Equal(got, []string{"public.full_ident", "public.outbox"}) {
		t.Errorf("publication tables = %v", got)
	}
	again, err := replication.Setup(ctx, conn, plan, false)
	if err != nil || len(again.Statements) != 0 {
		t.Errorf("second setup: %v, %q", err, again.Statements)
	}
}

func TestSetupRefusesWithoutLogicalWALLevel(t *testing.T) {
	ctx := ctxT(t)
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{WALLevelReplica: true})
	conn := connect(t, pg.DSN("postgres"))
	if _, err := conn.Exec(ctx, schemaSQL); err != nil {
		t.Fatal(err)
	}
	plan := outboxPlan(t)
	res, err := replication.Setup(ctx, conn, plan, false)
	var pe *replication.PrerequisiteError
	if !errors.As(err, &pe) {
		t.Fatalf("setup: %v, want a PrerequisiteError", err)
	}
	if !strings.Contains(err.Error(), "wal_level") {
		t.Errorf("error %q does not name wal_level", err)
	}
	wantCheck(t, res.Report, "wal_level", "", replication.CheckFail, "ALTER SYSTEM SET wal_level = logical")
	if c, _ := find(res.Report, "wal_level", ""); !strings.Contains(c.Fix, "restart") {
		t.Errorf("fix %q does not say to restart", c.Fix)
	}
	if res.Applied {
		t.Error("applied despite the failed prerequisite")
	}
	if pi, _ := replication.PublicationStatus(ctx, conn, plan.Publication); pi.Exists {
		t.Error("the publication was created despite the failed prerequisite")
	}
}

func TestSetupMissingTable(t *testing.T) {
	ctx := ctxT(t)
	_, conn := freshDB(t)
	plan := outboxPlan(t,
		replication.TablePlan{Table: "public.outbox", Ops: []replication.Op{replication.OpInsert}},
		replication.TablePlan{Table: "public.Outbox2", Ops: []replication.Op{replication.OpInsert}},
		replication.TablePlan{Table: "public.order_view", Ops: []replication.Op{replication.OpInsert}})
	res, err := replication.Setup(ctx, conn, plan, false)
	var pe *replication.PrerequisiteError
	if !errors.As(err, &pe) {
		t.Fatalf("setup: %v, want a PrerequisiteError", err)
	}
	wantCheck(t, res.Report, "table", "public.Outbox2", replication.CheckFail, `table = "public.Outbox2"`)
	wantCheck(t, res.Report, "table", "public.order_view", replication.CheckFail, "")
	wantCheck(t, res.Report, "table", "public.outbox", replication.CheckOK, "")
	if si, _ := replication.SlotStatus(ctx, conn, plan.Slot); si.Exists {
		t.Error("slot created despite a missing table")
	}
}

func TestReplicaIdentity(t *testing.T) {
	ctx := ctxT(t)
	_, conn := freshDB(t)
	all := []replication.Op{replication.OpInsert, replication.OpUpdate, replication.OpDelete}
	plan := outboxPlan(t,
		replication.TablePlan{Table: "public.nokey", Ops: []replication.Op{replication.OpInsert}},
		replication.TablePlan{Table: "public.orders", Ops: all, BeforeImages: true},
		replication.TablePlan{Table: "public.full_ident", Ops: all, BeforeImages: true},
		replication.TablePlan{Table: "public.outbox", Ops: []replication.Op{replication.OpInsert}})
	rep, err := replication.Check(ctx, conn, plan)
	if err != nil {
		t.Fatal(err)
	}
	wantCheck(t, rep, "replica_identity", "public.nokey", replication.CheckFail, `ALTER TABLE "public"."nokey" REPLICA IDENTITY FULL`)
	wantCheck(t, rep, "replica_identity", "public.orders", replication.CheckWarn, `ALTER TABLE "public"."orders" REPLICA IDENTITY FULL`)
	wantCheck(t, rep, "replica_identity", "public.full_ident", replication.CheckOK, "")
	wantCheck(t, rep, "replica_identity", "public.outbox", replication.CheckOK, "")
}

// TestMissingPrivileges: a role without REPLICATION and without SELECT on a
// mapped table gets both failures, each with the GRANT or ALTER ROLE to run.
func TestMissingPrivileges(t *testing.T) {
	ctx := ctxT(t)
	dsn, admin := freshDB(t)
	role := testenv.UniqueName(t, "role")
	if _, err := admin.Exec(ctx, `CREATE ROLE `+role+` LOGIN`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = admin.Exec(ctx, `DROP OWNED BY `+role)
		a := connect(t, testenv.PostgresDSN(t))
		_, _ = a.Exec(ctx, `DROP ROLE IF EXISTS `+role)
	})
	if _, err := admin.Exec(ctx, `GRANT SELECT ON orders TO `+role); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(dsn)
	u.User = url.User(role)
	conn := connect(t, u.String())
	plan := outboxPlan(t,
		replication.TablePlan{Table: "public.outbox", Ops: []replication.Op{replication.OpInsert}},
		replication.TablePlan{Table: "public.orders", Ops: []replication.Op{replication.OpInsert}})

	rep, err := replication.Check(ctx, conn, plan)
	if err != nil {
		t.Fatal(err)
	}
	wantCheck(t, rep, "replication_role", role, replication.CheckFail, "ALTER ROLE "+`"`+role+`"`+" WITH REPLICATION")
	wantCheck(t, rep, "select_privilege", "public.outbox", replication.CheckFail, `GRANT SELECT ON "public"."outbox" TO "`+role+`"`)
	wantCheck(t, rep, "select_privilege", "public.orders", replication.CheckOK, "")

	// Setup as this role: it may not create the publication either.
	res, err := replication.Setup(ctx, conn, plan, false)
	var pe *replication.PrerequisiteError
	if !errors.As(err, &pe) {
		t.Fatalf("setup: %v, want a PrerequisiteError", err)
	}
	wantCheck(t, res.Report, "publication_privileges", plan.Publication, replication.CheckFail, "CREATE PUBLICATION")

	// With REPLICATION and SELECT granted, the read-only checks pass except
	// for what setup creates.
	if _, err := admin.Exec(ctx, `ALTER ROLE `+role+` WITH REPLICATION; GRANT SELECT ON outbox TO `+role); err != nil {
		t.Fatal(err)
	}
	rep, err = replication.Check(ctx, conn, plan)
	if err != nil {
		t.Fatal(err)
	}
	wantCheck(t, rep, "replication_role", role, replication.CheckOK, "")
	wantCheck(t, rep, "select_privilege", "public.outbox", replication.CheckOK, "")
}

func TestSlotWithWrongPlugin(t *testing.T) {
	ctx := ctxT(t)
	_, conn := freshDB(t)
	plan := outboxPlan(t)
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'test_decoding')`, plan.Slot); err != nil {
		t.Fatal(err)
	}
	res, err := replication.Setup(ctx, conn, plan, false)
	if !errors.As(err, new(*replication.PrerequisiteError)) {
		t.Fatalf("setup: %v", err)
	}
	wantCheck(t, res.Report, "slot", plan.Slot, replication.CheckFail, "pg_drop_replication_slot('"+plan.Slot+"')")
}

// streamFrom makes the slot active: a replication connection streaming from it.
func streamFrom(t *testing.T, dsn, slot, publication string) *pgconn.PgConn {
	t.Helper()
	ctx := ctxT(t)
	u, _ := url.Parse(dsn)
	q := u.Query()
	q.Set("replication", "database")
	u.RawQuery = q.Encode()
	rc, err := pgconn.Connect(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close(context.Background()) })
	err = pglogrepl.StartReplication(ctx, rc, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + publication + "'"}})
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func TestTeardown(t *testing.T) {
	ctx := ctxT(t)
	dsn, conn := freshDB(t)
	plan := outboxPlan(t)
	if _, err := replication.Setup(ctx, conn, plan, false); err != nil {
		t.Fatal(err)
	}

	// An active slot is refused, naming the backend.
	rc := streamFrom(t, dsn, plan.Slot, plan.Publication)
	var si *replication.SlotInfo
	for deadline := time.Now().Add(10 * time.Second); ; {
		var err error
		if si, err = replication.SlotStatus(ctx, conn, plan.Slot); err != nil {
			t.Fatal(err)
		}
		if si.Active || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !si.Active || si.ActivePID == 0 {
		t.Fatalf("slot not active: %+v", si)
	}
	_, err := replication.Teardown(ctx, conn, plan.Slot, plan.Publication, false)
	var ae *replication.SlotActiveError
	if !errors.As(err, &ae) || ae.PID != si.ActivePID {
		t.Fatalf("teardown of an active slot: %v, want SlotActiveError with pid %d", err, si.ActivePID)
	}
	if !strings.Contains(err.Error(), "pg_terminate_backend") {
		t.Errorf("error %q gives no way out", err)
	}
	rc.Close(ctx)
	for deadline := time.Now().Add(10 * time.Second); si.Active && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if si, err = replication.SlotStatus(ctx, conn, plan.Slot); err != nil {
			t.Fatal(err)
		}
	}

	dry, err := replication.Teardown(ctx, conn, plan.Slot, plan.Publication, true)
	if err != nil || len(dry) != 2 {
		t.Fatalf("dry-run teardown: %q, %v", dry, err)
	}
	stmts, err := replication.Teardown(ctx, conn, plan.Slot, plan.Publication, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(stmts) != 2 || !strings.Contains(stmts[0], "pg_drop_replication_slot") || !strings.HasPrefix(stmts[1], "DROP PUBLICATION") {
		t.Errorf("teardown statements %q", stmts)
	}
	if si, _ := replication.SlotStatus(ctx, conn, plan.Slot); si.Exists {
		t.Error("slot still exists")
	}
	if pi, _ := replication.PublicationStatus(ctx, conn, plan.Publication); pi.Exists {
		t.Error("publication still exists")
	}
	if again, err := replication.Teardown(ctx, conn, plan.Slot, plan.Publication, false); err != nil || len(again) != 0 {
		t.Errorf("second teardown: %q, %v", again, err)
	}
}

func TestSlotStatusJSON(t *testing.T) {
	ctx := ctxT(t)
	_, conn := freshDB(t)
	plan := outboxPlan(t)
	missing, err := replication.SlotStatus(ctx, conn, plan.Slot)
	if err != nil || missing.Exists {
		t.Fatalf("missing slot: %+v, %v", missing, err)
	}
	if _, err := replication.Setup(ctx, conn, plan, false); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 1000) g`); err != nil {
		t.Fatal(err)
	}
	si, err := replication.SlotStatus(ctx, conn, plan.Slot)
	if err != nil {
		t.Fatal(err)
	}
	if si.RetainedWALBytes <= 0 || si.LagBytes <= 0 || si.CurrentLSN <= si.RestartLSN {
		t.Errorf("retained %d lag %d current %s restart %s: want WAL retained after writes", si.RetainedWALBytes, si.LagBytes, si.CurrentLSN, si.RestartLSN)
	}
	b, err := json.Marshal(si)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"slot", "exists", "active", "active_pid", "confirmed_flush_lsn", "restart_lsn",
		"current_wal_lsn", "retained_wal_bytes", "lag_bytes", "wal_status", "safe_wal_size", "plugin"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON has no %q: %s", k, b)
		}
	}
	if m["exists"] != true || m["active"] != false || m["active_pid"] != nil || m["plugin"] != "pgoutput" || m["wal_status"] != "reserved" {
		t.Errorf("JSON = %s", b)
	}
	if lsn, _ := m["confirmed_flush_lsn"].(string); !strings.Contains(lsn, "/") {
		t.Errorf("confirmed_flush_lsn %q is not in Postgres's text form", lsn)
	}
}
