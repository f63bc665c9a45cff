package replication

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// dbState is what inspect learns about the server, the role, the mapped
// tables, the publication and the slot. The checks only read it.
type dbState struct {
	plan Plan

	versionNum  int
	version     string
	walLevel    string
	maxSlots    int
	usedSlots   int
	maxSenders  int
	usedSenders int
	user        string
	super       bool
	replication bool // rolreplication, or membership of rds_replication
	database    string
	canCreate   bool // CREATE on the database

	// Physical replication as the primary sees it (for the failover checks).
	standbys int // rows of pg_stat_replication other than logical walsenders

	tables []tableState
	pub    *pubState // nil: no such publication
	slot   *SlotInfo

	pubStmts  []string // what setup runs to make the publication match
	slotStmts []string
}

type tableState struct {
	plan        TablePlan
	schema      string
	name        string
	exists      bool
	relkind     string // r: table, p: partitioned table, v, m, f, ...
	identity    string // relreplident: d, n, f, i
	hasPK       bool
	hasRIIndex  bool
	schemaUsage bool
	selectPriv  bool
	owner       bool
}

type pubState struct {
	allTables                        bool
	insert, update, delete, truncate bool
	viaRoot                          bool
	owner                            bool
	tables                           map[string]bool // "schema.table"
	filtered                         []string        // tables with a row filter or a column list
	schemas                          []string        // FOR TABLES IN SCHEMA
}

const minVersion = 140000

func inspect(ctx context.Context, db Querier, plan Plan) (*dbState, error) {
	st := &dbState{plan: plan}
	err := db.QueryRow(ctx, `
		SELECT current_setting('server_version_num')::int, current_setting('server_version'),
		       current_setting('wal_level'),
		       current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots)::int,
		       current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication)::int,
		       current_user, r.rolsuper,
		       r.rolreplication OR CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication')
		                           THEN pg_has_role(current_user, 'rds_replication', 'MEMBER') ELSE false END,
		       current_database(), has_database_privilege(current_database(), 'CREATE')
		FROM pg_roles r WHERE r.rolname = current_user`).Scan(
		&st.versionNum, &st.version, &st.walLevel,
		&st.maxSlots, &st.usedSlots, &st.maxSenders, &st.usedSenders,
		&st.user, &st.super, &st.replication, &st.database, &st.canCreate)
	if err != nil {
		return nil, fmt.Errorf("read server settings: %w", err)
	}
	if st.versionNum < minVersion {
		return st, nil
	}
	if err := db.QueryRow(ctx, `SELECT count(*)::int FROM pg_stat_replication s
		WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots r WHERE r.active_pid = s.pid AND r.slot_type = 'logical')`).Scan(&st.standbys); err != nil {
		return nil, fmt.Errorf("read pg_stat_replication: %w", err)
	}
	for _, tp := range plan.Tables {
		ts, err := inspectTable(ctx, db, tp)
		if err != nil {
			return nil, err
		}
		st.tables = append(st.tables, ts)
	}
	if st.pub, err = inspectPublication(ctx, db, plan.Publication, st.versionNum); err != nil {
		return nil, err
	}
	if st.slot, err = SlotStatus(ctx, db, plan.Slot); err != nil {
		return nil, err
	}
	return st, nil
}

func inspectTable(ctx context.Context, db Querier, tp TablePlan) (tableState, error) {
	ts := tableState{plan: tp}
	ts.schema, ts.name = splitTable(tp.Table)
	err := db.QueryRow(ctx, `
		SELECT c.relkind::text, c.relreplident::text,
		       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
		       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident),
		       has_schema_privilege(n.oid, 'USAGE'), has_table_privilege(c.oid, 'SELECT'),
		       pg_has_role(c.relowner, 'USAGE')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, ts.schema, ts.name).Scan(
		&ts.relkind, &ts.identity, &ts.hasPK, &ts.hasRIIndex, &ts.schemaUsage, &ts.selectPriv, &ts.owner)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return ts, nil
	case err != nil:
		return ts, fmt.Errorf("read table %s: %w", tp.Table, err)
	}
	ts.exists = true
	return ts, nil
}

func inspectPublication(ctx context.Context, db Querier, name string, versionNum int) (*pubState, error) {
	p := &pubState{tables: map[string]bool{}}
	var oid uint32
	err := db.QueryRow(ctx, `
		SELECT oid, puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot,
		       pg_has_role(pubowner, 'USAGE')
		FROM pg_publication WHERE pubname = $1`, name).Scan(
		&oid, &p.allTables, &p.insert, &p.update, &p.delete, &p.truncate, &p.viaRoot, &p.owner)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read publication %s: %w", name, err)
	}
	filtered := "false"
	if versionNum >= 150000 {
		filtered = "(pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL)"
	}
	rows, err := db.Query(ctx, `
		SELECT n.nspname, c.relname, `+filtered+`
		FROM pg_publication_rel pr JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE pr.prpubid = $1`, oid)
	if err != nil {
		return nil, fmt.Errorf("read tables of publication %s: %w", name, err)
	}
	for rows.Next() {
		var schema, table string
		var f bool
		if err := rows.Scan(&schema, &table, &f); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read tables of publication %s: %w", name, err)
		}
		p.tables[schema+"."+table] = true
		if f {
			p.filtered = append(p.filtered, schema+"."+table)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read tables of publication %s: %w", name, err)
	}
	if versionNum >= 150000 {
		rows, err := db.Query(ctx, `
			SELECT n.nspname FROM pg_publication_namespace pn JOIN pg_namespace n ON n.oid = pn.pnnspid
			WHERE pn.pnpubid = $1 ORDER BY 1`, oid)
		if err != nil {
			return nil, fmt.Errorf("read schemas of publication %s: %w", name, err)
		}
		p.schemas, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("read schemas of publication %s: %w", name, err)
		}
	}
	return p, nil
}

const restartHint = "then restart PostgreSQL (e.g. `pg_ctl restart -D <data directory>` or `systemctl restart postgresql`)"

func (st *dbState) checkServer(r *Report) {
	switch {
	case st.versionNum < minVersion:
		r.add("server_version", "", CheckFail, fmt.Sprintf("PostgreSQL %s is too old", st.version), "cdcrelay needs PostgreSQL 14 or newer")
	default:
		r.add("server_version", "", CheckOK, "PostgreSQL "+st.version, "")
	}

	if st.walLevel == "logical" {
		r.add("wal_level", "", CheckOK, "wal_level = logical", "")
	} else {
		r.add("wal_level", "", CheckFail,
			fmt.Sprintf("wal_level = %s; logical decoding needs wal_level = logical", st.walLevel),
			"as a superuser: ALTER SYSTEM SET wal_level = logical; "+restartHint+
				" (managed services: Amazon RDS/Aurora rds.logical_replication = 1, Cloud SQL cloudsql.logical_decoding = on, Azure wal_level = LOGICAL)")
	}

	needSlot := 0
	if st.slot == nil || !st.slot.Exists {
		needSlot = 1
	}
	slotDetail := fmt.Sprintf("%d of max_replication_slots = %d in use", st.usedSlots, st.maxSlots)
	if st.maxSlots-st.usedSlots < needSlot {
		r.add("max_replication_slots", "", CheckFail, slotDetail+"; the relay needs one more",
			fmt.Sprintf("as a superuser: ALTER SYSTEM SET max_replication_slots = %d; %s (or drop an unused slot: SELECT slot_name, active FROM pg_replication_slots)",
				max(st.usedSlots+needSlot, 10), restartHint))
	} else {
		r.add("max_replication_slots", "", CheckOK, slotDetail, "")
	}

	needSender := 1
	if st.slot != nil && st.slot.Active {
		needSender = 0 // the relay streaming from it already has its walsender
	}
	senderDetail := fmt.Sprintf("%d of max_wal_senders = %d in use", st.usedSenders, st.maxSenders)
	if st.maxSenders-st.usedSenders < needSender {
		r.add("max_wal_senders", "", CheckFail, senderDetail+"; the relay needs one more",
			fmt.Sprintf("as a superuser: ALTER SYSTEM SET max_wal_senders = %d; %s", max(st.usedSenders+needSender, 10), restartHint))
	} else {
		r.add("max_wal_senders", "", CheckOK, senderDetail, "")
	}

	switch {
	case st.super:
		r.add("replication_role", st.user, CheckOK, fmt.Sprintf("role %s is a superuser", st.user), "")
	case st.replication:
		r.add("replication_role", st.user, CheckOK, fmt.Sprintf("role %s has REPLICATION", st.user), "")
	default:
		r.add("replication_role", st.user, CheckFail,
			fmt.Sprintf("role %s has neither REPLICATION nor SUPERUSER: it cannot stream from a slot", st.user),
			fmt.Sprintf("as a superuser: ALTER ROLE %s WITH REPLICATION; (Amazon RDS: GRANT rds_replication TO %s;)", quoteIdent(st.user), quoteIdent(st.user)))
	}
}

func (st *dbState) checkTables(r *Report) {
	if st.versionNum < minVersion {
		return
	}
	for _, t := range st.tables {
		name := t.plan.Table
		q := quoteTable(name)
		if !t.exists {
			r.add("table", name, CheckFail,
				fmt.Sprintf("table %s does not exist in database %s (names are case-sensitive)", name, st.database),
				fmt.Sprintf("create it, or correct table = %q in its [[mapping]]", name))
			continue
		}
		switch t.relkind {
		case "r":
			r.add("table", name, CheckOK, "table "+name+" exists", "")
		case "p":
			r.add("table", name, CheckOK, "partitioned table "+name+" exists (published through its root)", "")
		default:
			r.add("table", name, CheckFail,
				fmt.Sprintf("%s is a %s, not a table: it cannot be published", name, relkindName(t.relkind)),
				"map the table it reads from instead")
			continue
		}

		if t.schemaUsage && t.selectPriv {
			r.add("select_privilege", name, CheckOK, fmt.Sprintf("role %s can read %s", st.user, name), "")
		} else {
			var fix []string
			if !t.schemaUsage {
				fix = append(fix, fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s;", quoteIdent(t.schema), quoteIdent(st.user)))
			}
			if !t.selectPriv {
				fix = append(fix, fmt.Sprintf("GRANT SELECT ON %s TO %s;", q, quoteIdent(st.user)))
			}
			r.add("select_privilege", name, CheckFail,
				fmt.Sprintf("role %s lacks SELECT on %s (or USAGE on schema %s)", st.user, name, t.schema),
				"as the table's owner: "+strings.Join(fix, " "))
		}

		st.checkIdentity(r, t)
	}
}

func relkindName(k string) string {
	switch k {
	case "v":
		return "view"
	case "m":
		return "materialized view"
	case "f":
		return "foreign table"
	case "S":
		return "sequence"
	case "i", "I":
		return "index"
	case "c":
		return "composite type"
	case "t":
		return "TOAST table"
	}
	return "relation of kind " + k
}

// checkIdentity: a published table without a usable replica identity makes
// the application's UPDATE and DELETE on it fail ("cannot update table ...
// because it does not have a replica identity and publishes updates"), so it
// must not be added. A mapping that publishes before images needs FULL.
func (st *dbState) checkIdentity(r *Report, t tableState) {
	name := t.plan.Table
	q := quoteTable(name)
	var what string
	switch {
	case t.identity == "f":
		r.add("replica_identity", name, CheckOK, name+" has REPLICA IDENTITY FULL: old rows carry every column", "")
		return
	case t.identity == "d" && t.hasPK:
		what = name + " has REPLICA IDENTITY DEFAULT (the primary key)"
	case t.identity == "i" && t.hasRIIndex:
		what = name + " has REPLICA IDENTITY USING INDEX"
	case t.identity == "n":
		r.add("replica_identity", name, CheckFail,
			fmt.Sprintf("%s has REPLICA IDENTITY NOTHING: once published, UPDATE and DELETE on it fail", name),
			fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY DEFAULT; (with a primary key) or ALTER TABLE %s REPLICA IDENTITY FULL;", q, q))
		return
	default:
		detail := fmt.Sprintf("%s has no primary key and REPLICA IDENTITY DEFAULT: once published, UPDATE and DELETE on it fail", name)
		if t.identity == "i" {
			detail = fmt.Sprintf("%s has REPLICA IDENTITY USING INDEX but the index is gone: once published, UPDATE and DELETE on it fail", name)
		}
		r.add("replica_identity", name, CheckFail, detail,
			fmt.Sprintf("add a primary key (ALTER TABLE %s ADD PRIMARY KEY (...);) or ALTER TABLE %s REPLICA IDENTITY FULL;", q, q))
		return
	}
	if t.plan.BeforeImages && (t.plan.uses(OpUpdate) || t.plan.uses(OpDelete)) {
		r.add("replica_identity", name, CheckWarn,
			what+": the mapping publishes before images of updates and deletes, and they will hold only the key columns",
			fmt.Sprintf("for complete before images: ALTER TABLE %s REPLICA IDENTITY FULL;", q))
		return
	}
	r.add("replica_identity", name, CheckOK, what, "")
}

// wantTables are the planned tables that exist, as "schema.table".
func (st *dbState) wantTables() []string {
	var out []string
	for _, t := range st.tables {
		if t.exists {
			out = append(out, t.schema+"."+t.name)
		}
	}
	return out
}

func (st *dbState) needsViaRoot() bool {
	for _, t := range st.tables {
		if t.exists && t.relkind == "p" {
			return true
		}
	}
	return false
}

func tableList(tables []string) string {
	q := make([]string, len(tables))
	for i, t := range tables {
		q[i] = quoteTable(t)
	}
	return strings.Join(q, ", ")
}

// checkPublication compares the publication with the plan and plans the
// statements that make it match. In setup mode a missing or different
// publication is what setup is for; in check mode it is a failure.
func (st *dbState) checkPublication(r *Report, setup bool) {
	if st.versionNum < minVersion {
		return
	}
	name := st.plan.Publication
	qp := quoteIdent(name)
	want := st.wantTables()
	if len(want) == 0 {
		return // every table failed its check
	}
	var diffs []string
	switch p := st.pub; {
	case p == nil:
		s := "CREATE PUBLICATION " + qp + " FOR TABLE " + tableList(want)
		if st.needsViaRoot() {
			s += " WITH (publish_via_partition_root = true)"
		}
		st.pubStmts = append(st.pubStmts, s)
	case p.allTables:
		r.add("publication", name, CheckWarn,
			fmt.Sprintf("publication %s is FOR ALL TABLES: it publishes every table (the relay uses only the mapped ones); setup leaves it as it is", name),
			fmt.Sprintf("to publish only the mapped tables: DROP PUBLICATION %s; then run `cdcrelay setup`", qp))
		return
	default:
		var missing, extra []string
		for _, t := range want {
			if !p.tables[t] {
				missing = append(missing, t)
			}
		}
		for _, t := range slices.Sorted(maps.Keys(p.tables)) {
			if !slices.Contains(want, t) {
				extra = append(extra, t)
			}
		}
		if len(missing) > 0 {
			diffs = append(diffs, "it lacks "+strings.Join(missing, ", "))
		}
		if len(extra) > 0 {
			diffs = append(diffs, "it also publishes "+strings.Join(extra, ", "))
		}
		if len(p.filtered) > 0 {
			diffs = append(diffs, "it has a row filter or column list on "+strings.Join(p.filtered, ", "))
		}
		if len(p.schemas) > 0 {
			diffs = append(diffs, "it publishes all tables of schema "+strings.Join(p.schemas, ", "))
		}
		if len(missing)+len(extra)+len(p.filtered)+len(p.schemas) > 0 {
			st.pubStmts = append(st.pubStmts, "ALTER PUBLICATION "+qp+" SET TABLE "+tableList(want))
		}
		if !(p.insert && p.update && p.delete && p.truncate) {
			diffs = append(diffs, "it does not publish every operation")
			st.pubStmts = append(st.pubStmts, "ALTER PUBLICATION "+qp+" SET (publish = 'insert, update, delete, truncate')")
		}
		if st.needsViaRoot() && !p.viaRoot {
			diffs = append(diffs, "it does not publish partitions through their root")
			st.pubStmts = append(st.pubStmts, "ALTER PUBLICATION "+qp+" SET (publish_via_partition_root = true)")
		}
	}

	if len(st.pubStmts) == 0 {
		r.add("publication", name, CheckOK, fmt.Sprintf("publication %s publishes exactly %s", name, strings.Join(want, ", ")), "")
		return
	}
	detail := fmt.Sprintf("publication %s does not match the mapping: %s", name, strings.Join(diffs, "; "))
	if st.pub == nil {
		detail = fmt.Sprintf("publication %s does not exist", name)
	}
	if !setup {
		r.add("publication", name, CheckFail, detail,
			"run `cdcrelay setup`, which runs: "+strings.Join(st.pubStmts, "; "))
		return
	}
	if st.pub == nil {
		r.add("publication", name, CheckOK, detail+" yet (setup creates it)", "")
	} else {
		r.add("publication", name, CheckOK, detail+" (setup alters it)", "")
	}
	// CREATE PUBLICATION ... FOR TABLE needs CREATE on the database and
	// ownership of the tables; ALTER needs ownership of the publication too.
	if st.super {
		return
	}
	var lack []string
	if st.pub == nil && !st.canCreate {
		lack = append(lack, "CREATE on database "+st.database)
	}
	if st.pub != nil && !st.pub.owner {
		lack = append(lack, "ownership of publication "+name)
	}
	for _, t := range st.tables {
		if t.exists && !t.owner {
			lack = append(lack, "ownership of "+t.plan.Table)
		}
	}
	if len(lack) > 0 {
		r.add("publication_privileges", name, CheckFail,
			fmt.Sprintf("role %s cannot change publication %s: it lacks %s", st.user, name, strings.Join(lack, ", ")),
			"run `cdcrelay setup` with a DSN of the tables' owner or of a superuser, or have one of them run: "+strings.Join(st.pubStmts, "; "))
	}
}

func (st *dbState) checkSlot(r *Report, setup bool) {
	if st.versionNum < minVersion {
		return
	}
	name := st.plan.Slot
	s := st.slot
	create := "SELECT pg_create_logical_replication_slot(" + quoteLiteral(name) + ", 'pgoutput')"
	if st.failoverSlots() {
		create = "SELECT pg_create_logical_replication_slot(" + quoteLiteral(name) + ", 'pgoutput', failover => true)"
	}
	drop := "SELECT pg_drop_replication_slot(" + quoteLiteral(name) + ")"
	switch {
	case !s.Exists:
		st.slotStmts = append(st.slotStmts, create)
		if setup {
			r.add("slot", name, CheckOK, fmt.Sprintf("replication slot %s does not exist yet (setup creates it)", name), "")
		} else {
			r.add("slot", name, CheckFail, fmt.Sprintf("replication slot %s does not exist", name), "run `cdcrelay setup`, which runs: "+create)
		}
	case s.Type != "logical":
		r.add("slot", name, CheckFail, fmt.Sprintf("replication slot %s is a %s slot, not a logical one", name, s.Type),
			fmt.Sprintf("set postgres.slot to another name, or drop this slot if nothing uses it: %s", drop))
	case s.Database != st.database:
		r.add("slot", name, CheckFail, fmt.Sprintf("replication slot %s belongs to database %s, not %s", name, s.Database, st.database),
			"set postgres.slot to another name, or drop the slot in database "+s.Database+" if nothing uses it: "+drop)
	case s.Plugin != "pgoutput":
		r.add("slot", name, CheckFail, fmt.Sprintf("replication slot %s uses the output plugin %s; cdcrelay needs pgoutput", name, s.Plugin),
			fmt.Sprintf("set postgres.slot to another name, or drop this slot if nothing uses it: %s; then run `cdcrelay setup`", drop))
	case s.Invalidated():
		why := "wal_status = lost: WAL it needed was removed"
		if s.InvalidationReason != "" && s.InvalidationReason != "wal_removed" {
			why = "invalidation_reason = " + s.InvalidationReason
		}
		r.add("slot", name, CheckFail,
			fmt.Sprintf("replication slot %s is invalidated (%s): changes since %s were never published", name, why, s.ConfirmedFlushLSN),
			"recover: `cdcrelay teardown --yes`, `cdcrelay setup`, start the relay, then `cdcrelay backfill` each mapped table (and consider raising max_slot_wal_keep_size)")
	case s.WALStatus == "unreserved":
		r.add("slot", name, CheckWarn,
			fmt.Sprintf("replication slot %s retains more WAL than max_slot_wal_keep_size allows (wal_status = unreserved): it will be invalidated at the next checkpoint unless the relay catches up", name),
			"start the relay now (`cdcrelay run`), or raise max_slot_wal_keep_size")
	case s.Active:
		r.add("slot", name, CheckOK, fmt.Sprintf("replication slot %s exists (pgoutput) and is in use by backend pid %d", name, s.ActivePID), "")
	default:
		r.add("slot", name, CheckOK, fmt.Sprintf("replication slot %s exists (pgoutput), confirmed up to %s", name, s.ConfirmedFlushLSN), "")
	}
	st.checkFailoverSlot(r, setup)
}

func (st *dbState) statements() []string {
	return append(append([]string(nil), st.pubStmts...), st.slotStmts...)
}
