package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier is the part of a pgx connection (or pool) that the administrative
// functions use: [Check], [Setup], [Teardown], [SlotStatus]. They need an
// ordinary connection, not a replication one.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Plan is what a relay needs from its database: a pgoutput slot, and a
// publication of exactly the mapped tables.
type Plan struct {
	Slot        string
	Publication string
	Tables      []TablePlan
	// FailoverSlot asks for a failover slot where the server has them
	// (PostgreSQL 17 and later): one that standbys with
	// sync_replication_slots = on keep a synchronized copy of.
	FailoverSlot bool
	// ReplicationDSN is the connection string for what only a replication
	// connection can do (ALTER_REPLICATION_SLOT, to make an existing slot a
	// failover slot). Empty: setup reports that statement without running it.
	ReplicationDSN string
}

// TablePlan is one mapped table and the changes its mapping uses.
type TablePlan struct {
	// Table is "schema.table", names as they are in the catalog (case matters).
	Table string
	// Ops are the operations the mapping turns into events.
	Ops []Op
	// BeforeImages: the mapping publishes the row as it was before an update
	// or a delete, which is complete only with REPLICA IDENTITY FULL.
	BeforeImages bool
}

func (t TablePlan) uses(op Op) bool { return slices.Contains(t.Ops, op) }

// CheckStatus is the outcome of one check.
type CheckStatus string

const (
	CheckOK   CheckStatus = "ok"
	CheckWarn CheckStatus = "warn" // works, but the operator should know
	CheckFail CheckStatus = "fail" // the relay cannot work until it is fixed
)

// CheckResult is one verified prerequisite.
type CheckResult struct {
	// Name identifies the check: "server_version", "wal_level",
	// "max_replication_slots", "max_wal_senders", "replication_role", "table",
	// "select_privilege", "replica_identity", "publication",
	// "publication_privileges", "slot".
	Name    string      `json:"name"`
	Subject string      `json:"subject,omitempty"` // the table, publication or slot concerned
	Status  CheckStatus `json:"status"`
	Detail  string      `json:"detail"`        // what was found
	Fix     string      `json:"fix,omitempty"` // how to fix it, with the exact commands
}

// Report is the outcome of [Check] or of the checks that [Setup] runs first.
type Report struct {
	Checks []CheckResult `json:"checks"`
}

// OK reports whether no check failed (warnings allowed).
func (r *Report) OK() bool { return len(r.Failures()) == 0 }

// Failures returns the failed checks.
func (r *Report) Failures() []CheckResult {
	var out []CheckResult
	for _, c := range r.Checks {
		if c.Status == CheckFail {
			out = append(out, c)
		}
	}
	return out
}

func (r *Report) add(name, subject string, status CheckStatus, detail, fix string) {
	r.Checks = append(r.Checks, CheckResult{Name: name, Subject: subject, Status: status, Detail: detail, Fix: fix})
}

// PrerequisiteError is returned by [Setup] when a prerequisite fails; nothing
// was changed. Report lists every check, with the fixes.
type PrerequisiteError struct {
	Report *Report
}

func (e *PrerequisiteError) Error() string {
	f := e.Report.Failures()
	names := make([]string, len(f))
	for i, c := range f {
		names[i] = c.Name
		if c.Subject != "" {
			names[i] += " (" + c.Subject + ")"
		}
	}
	return fmt.Sprintf("%d prerequisite(s) not met: %s", len(f), strings.Join(names, ", "))
}

// Check verifies, without changing anything, that the database is ready for
// the relay: the server's settings, the role's privileges, the mapped tables
// and their replica identity, and that the publication and the slot exist as
// [Setup] makes them. Failed checks are in the report, with their fixes; the
// error is for a failure to run the checks at all.
func Check(ctx context.Context, db Querier, plan Plan) (*Report, error) {
	st, err := inspect(ctx, db, plan)
	if err != nil {
		return nil, err
	}
	r := &Report{}
	st.checkServer(r)
	st.checkTables(r)
	st.checkPublication(r, false)
	st.checkSlot(r, false)
	return r, nil
}

// SetupResult says what [Setup] did, or would do.
type SetupResult struct {
	Report *Report `json:"report"`
	// Statements are the SQL statements run, in order, or, for a dry run or
	// when a prerequisite failed, the ones that would run. Empty: the
	// database already matched the plan.
	Statements []string `json:"statements"`
	Applied    bool     `json:"applied"`
}

// Setup verifies the prerequisites, then creates the publication for exactly
// the planned tables (or alters an existing one to match) and the pgoutput
// slot. It is idempotent: when everything matches it runs nothing. With dryRun
// it only returns the statements. A failed prerequisite is a
// [*PrerequisiteError] and changes nothing.
//
// The publication is created before the slot: pgoutput reads the publication
// from the catalog as of each change's position, so a slot created first would
// decode its first changes before the publication existed and fail.
func Setup(ctx context.Context, db Querier, plan Plan, dryRun bool) (*SetupResult, error) {
	st, err := inspect(ctx, db, plan)
	if err != nil {
		return nil, err
	}
	r := &Report{}
	st.checkServer(r)
	st.checkTables(r)
	st.checkPublication(r, true)
	st.checkSlot(r, true)
	res := &SetupResult{Report: r, Statements: st.statements()}
	if !r.OK() {
		return res, &PrerequisiteError{Report: r}
	}
	if dryRun || len(res.Statements) == 0 {
		return res, nil
	}
	for _, s := range res.Statements {
		if isReplicationCommand(s) {
			if err := runReplicationCommand(ctx, plan, s); err != nil {
				return res, err
			}
			continue
		}
		if _, err := db.Exec(ctx, s); err != nil {
			return res, fmt.Errorf("setup: %s: %w", s, err)
		}
	}
	res.Applied = true
	return res, nil
}

// SlotActiveError: the slot is in use by a walsender (a running relay, or
// another client), so it cannot be dropped.
type SlotActiveError struct {
	Slot string
	PID  int32
}

func (e *SlotActiveError) Error() string {
	return fmt.Sprintf("replication slot %s is in use by backend pid %d (a running cdcrelay?): stop that relay first, "+
		"or end the session with SELECT pg_terminate_backend(%d)", e.Slot, e.PID, e.PID)
}

// Teardown drops the slot, then the publication, of a relay. Missing ones are
// skipped (an empty list of statements: nothing to do). An active slot is
// refused with a [*SlotActiveError]. With dryRun it only returns the
// statements.
func Teardown(ctx context.Context, db Querier, slot, publication string, dryRun bool) ([]string, error) {
	si, err := SlotStatus(ctx, db, slot)
	if err != nil {
		return nil, err
	}
	var stmts []string
	if si.Exists {
		if si.Database != "" && si.Database != si.currentDB {
			return nil, fmt.Errorf("replication slot %s belongs to database %s, not %s: connect to %s to drop it", slot, si.Database, si.currentDB, si.Database)
		}
		if si.Active {
			return nil, &SlotActiveError{Slot: slot, PID: si.ActivePID}
		}
		stmts = append(stmts, "SELECT pg_drop_replication_slot("+quoteLiteral(slot)+")")
	}
	var pubExists bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, publication).Scan(&pubExists); err != nil {
		return nil, fmt.Errorf("read publication %s: %w", publication, err)
	}
	if pubExists {
		stmts = append(stmts, "DROP PUBLICATION "+quoteIdent(publication))
	}
	if dryRun {
		return stmts, nil
	}
	for _, s := range stmts {
		if _, err := db.Exec(ctx, s); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "55006" { // object_in_use: became active meanwhile
				return nil, fmt.Errorf("teardown: %s: %w (a relay started meanwhile?)", s, err)
			}
			return nil, fmt.Errorf("teardown: %s: %w", s, err)
		}
	}
	return stmts, nil
}

func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// quoteTable quotes "schema.table" as an identifier pair.
func quoteTable(t string) string {
	schema, name := splitTable(t)
	return pgx.Identifier{schema, name}.Sanitize()
}

// splitTable splits "schema.table" at the first dot; no dot means "public".
func splitTable(t string) (schema, name string) {
	if s, n, ok := strings.Cut(t, "."); ok {
		return s, n
	}
	return "public", t
}
