package replication

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ChunkReader reads a table's rows in primary-key order, one short
// read-only transaction per chunk (no table lock, no snapshot held between
// chunks), in the same text form the stream delivers, so backfilled rows map
// exactly like streamed ones. Each chunk comes with the snapshot it was read
// in. It also writes the watermarks that place each chunk in the stream.
type ChunkReader struct {
	conn   *pgx.Conn
	types  *typeCache
	table  string // "schema.table", as configured
	ident  string // quoted identifier
	where  string
	rel    *Relation
	pkIdx  []int // indexes of the primary key columns in rel.Columns
	colSQL string
	pkSQL  string
}

// ErrNoPrimaryKey is returned for a table without a primary key: chunks are
// cut by primary key and stream changes are matched to chunk rows by it.
var ErrNoPrimaryKey = errors.New("table has no primary key")

// OpenChunkReader connects to the database and reads the table's shape.
// where, if not empty, is an SQL condition restricting the rows.
func OpenChunkReader(ctx context.Context, dsn, table, where string) (*ChunkReader, error) {
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres.dsn: %w", err)
	}
	for k, v := range textFormatParams {
		pc.RuntimeParams[k] = v
	}
	pc.RuntimeParams["application_name"] = "cdcrelay backfill"
	// The watermarks need to be in the WAL, not on a synchronous standby:
	// the stream delivers them once flushed here. Waiting for a slow (or
	// absent) standby would hold every chunk back for nothing.
	pc.RuntimeParams["synchronous_commit"] = "local"
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("backfill connection: %w", err)
	}
	r := &ChunkReader{conn: conn, types: newTypeCache(dsn), table: table, where: where}
	if err := r.load(ctx); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// textFormatParams pin the session settings that decide values' text form;
// the replication stream sets the same ones.
var textFormatParams = map[string]string{
	"timezone":           "UTC",
	"datestyle":          "ISO, YMD",
	"intervalstyle":      "postgres",
	"extra_float_digits": "1",
	"bytea_output":       "hex",
	"lc_monetary":        "C",
}

func (r *ChunkReader) load(ctx context.Context) error {
	rel, err := loadRelation(ctx, r.conn, r.types, r.table)
	if err != nil {
		return err
	}
	r.rel = rel
	r.ident = pgx.Identifier{rel.Schema, rel.Table}.Sanitize()
	r.pkIdx = nil
	var names, pks []string
	for i, c := range rel.Columns {
		names = append(names, pgx.Identifier{c.Name}.Sanitize())
		if c.PrimaryKey {
			r.pkIdx = append(r.pkIdx, i)
			pks = append(pks, pgx.Identifier{c.Name}.Sanitize())
		}
	}
	if len(r.pkIdx) == 0 {
		return fmt.Errorf("table %s: %w; backfill needs one to cut chunks and to match stream changes to rows", r.table, ErrNoPrimaryKey)
	}
	r.colSQL = strings.Join(names, ", ")
	r.pkSQL = strings.Join(pks, ", ")
	return nil
}

// LoadRelation reads a table's shape from the catalog as the stream would
// announce it: the published columns in order, their types, the replica
// identity's key columns and the primary key. table is "schema.table".
func LoadRelation(ctx context.Context, conn *pgx.Conn, table string) (*Relation, error) {
	tc := &typeCache{conn: conn, types: map[uint32]*Type{}}
	return loadRelation(ctx, conn, tc, table)
}

func loadRelation(ctx context.Context, conn *pgx.Conn, types *typeCache, table string) (*Relation, error) {
	schema, name, ok := strings.Cut(table, ".")
	if !ok {
		schema, name = "public", table
	}
	var oid uint32
	var ident string
	err := conn.QueryRow(ctx, `SELECT c.oid, c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, schema, name).Scan(&oid, &ident)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("table %s does not exist", table)
	}
	if err != nil {
		return nil, fmt.Errorf("table %s: %w", table, err)
	}
	rows, err := conn.Query(ctx, `
		SELECT a.attname, a.atttypid, coalesce(a.attnum = ANY(i.indkey), false), a.atttypmod
		FROM pg_attribute a
		LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		ORDER BY a.attnum`, oid)
	if err != nil {
		return nil, fmt.Errorf("columns of %s: %w", table, err)
	}
	type col struct {
		name   string
		oid    uint32
		pk     bool
		typmod int32
	}
	cols, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (col, error) {
		var c col
		err := row.Scan(&c.name, &c.oid, &c.pk, &c.typmod)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("columns of %s: %w", table, err)
	}
	rel := &Relation{ID: oid, Schema: schema, Table: name, ReplicaIdentity: ident[0]}
	for _, c := range cols {
		t, err := types.get(ctx, c.oid)
		if err != nil {
			return nil, fmt.Errorf("table %s column %s: %w", table, c.name, err)
		}
		// pgoutput marks the replica identity's columns as key columns:
		// every column under FULL, else those of the primary key (or index).
		key := c.pk || ident == "f"
		rel.Columns = append(rel.Columns, Column{Name: c.name, Type: t, Key: key, PrimaryKey: c.pk, TypeModifier: c.typmod})
	}
	return rel, nil
}

// Refresh re-reads the table's shape (after ALTER TABLE, say).
func (r *ChunkReader) Refresh(ctx context.Context) error { return r.load(ctx) }

// Relation is the table's shape as of OpenChunkReader or the last Refresh.
func (r *ChunkReader) Relation() *Relation { return r.rel }

// Estimate is the number of rows to backfill: an exact count for tables
// below a million rows (by the planner's statistics), else the statistics.
func (r *ChunkReader) Estimate(ctx context.Context) (int64, error) {
	var est float64
	if err := r.conn.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE oid = $1`, r.rel.ID).Scan(&est); err != nil {
		return 0, err
	}
	if est >= 1e6 && r.where == "" {
		return int64(est), nil
	}
	var n int64
	err := r.conn.QueryRow(ctx, `SELECT count(*) FROM `+r.ident+r.whereSQL(false)).Scan(&n)
	return n, err
}

func (r *ChunkReader) whereSQL(and bool) string {
	if r.where == "" {
		return ""
	}
	if and {
		return " AND (" + r.where + ")"
	}
	return " WHERE (" + r.where + ")"
}

// Read returns up to limit rows whose primary key follows after (nil: from
// the start), in primary-key order, in a snapshot of its own.
func (r *ChunkReader) Read(ctx context.Context, after []string, limit int) ([][]Value, error) {
	return r.readRows(ctx, after, limit)
}

// Chunk is the outcome of [ChunkReader.ReadChunk].
type Chunk struct {
	// Snapshot is the one the rows were read in: a row holds the changes of
	// exactly the transactions visible in it.
	Snapshot Snapshot
	Rows     [][]Value
}

// ReadChunk is [ChunkReader.Read] in a REPEATABLE READ, READ ONLY
// transaction whose first statement takes pg_current_snapshot(), so the
// snapshot returned is the one the rows were read in.
func (r *ChunkReader) ReadChunk(ctx context.Context, after []string, limit int) (Chunk, error) {
	pc := r.conn.PgConn()
	// BEGIN and the first statement in one round trip: the transaction's
	// snapshot is taken by that statement, and pg_current_snapshot() returns
	// the active snapshot, which is it.
	res, err := pc.Exec(ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT pg_current_snapshot()::text`).ReadAll()
	if err != nil {
		r.rollback()
		return Chunk{}, fmt.Errorf("backfill %s: begin chunk: %w", r.table, err)
	}
	var c Chunk
	if len(res) != 2 || len(res[1].Rows) != 1 {
		r.rollback()
		return Chunk{}, fmt.Errorf("backfill %s: begin chunk: unexpected reply", r.table)
	}
	if c.Snapshot, err = ParseSnapshot(string(res[1].Rows[0][0])); err != nil {
		r.rollback()
		return Chunk{}, fmt.Errorf("backfill %s: %w", r.table, err)
	}
	if c.Rows, err = r.readRows(ctx, after, limit); err != nil {
		r.rollback()
		return Chunk{}, err
	}
	if err := pc.Exec(ctx, `COMMIT`).Close(); err != nil {
		return Chunk{}, fmt.Errorf("backfill %s: end chunk: %w", r.table, err)
	}
	return c, nil
}

// rollback ends a chunk's transaction after a failure; a connection whose
// rollback fails is broken and the next statement says so.
func (r *ChunkReader) rollback() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = r.conn.PgConn().Exec(ctx, `ROLLBACK`).Close()
}

// CurrentSnapshot returns pg_current_snapshot() of a statement of its own.
func (r *ChunkReader) CurrentSnapshot(ctx context.Context) (Snapshot, error) {
	var s string
	if err := r.conn.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&s); err != nil {
		return Snapshot{}, fmt.Errorf("backfill %s: current snapshot: %w", r.table, err)
	}
	return ParseSnapshot(s)
}

// SyncRepWaiters returns the xids of the transactions whose commit waits
// for a synchronous standby (wait event SyncRep): committed - the commit
// record is flushed and pg_xact updated - but still in the proc array, so
// invisible to new snapshots. pg_xact_status() cannot tell these apart from
// open transactions: it reports "in progress" while the proc array lists
// them. seen is false when other roles' wait events are hidden from the
// connection's role (it needs pg_read_all_stats) while synchronous
// replication is configured: then waiters cannot be told apart.
func (r *ChunkReader) SyncRepWaiters(ctx context.Context) (xids []uint32, seen bool, err error) {
	var syncNames string
	if err := r.conn.QueryRow(ctx, `SELECT current_setting('synchronous_standby_names'),
			(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')`).Scan(&syncNames, &seen); err != nil {
		return nil, false, fmt.Errorf("backfill %s: synchronous replication settings: %w", r.table, err)
	}
	if syncNames == "" {
		return nil, true, nil // no synchronous standby: no commit waits
	}
	rows, err := r.conn.Query(ctx, `SELECT backend_xid::text FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND backend_xid IS NOT NULL`)
	if err != nil {
		return nil, seen, fmt.Errorf("backfill %s: sessions waiting for a synchronous standby: %w", r.table, err)
	}
	xids, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (uint32, error) {
		var s string
		if err := row.Scan(&s); err != nil {
			return 0, err
		}
		x, err := strconv.ParseUint(s, 10, 32)
		return uint32(x), err
	})
	if err != nil {
		return nil, seen, fmt.Errorf("backfill %s: sessions waiting for a synchronous standby: %w", r.table, err)
	}
	return xids, seen, nil
}

// Backend describes the session running a transaction, for the log line
// that says what a chunk waits for.
type Backend struct {
	XID   uint64
	PID   int64  // 0: no session found (e.g. a prepared transaction)
	App   string // application_name
	Wait  string // wait_event_type:wait_event, e.g. "IPC:SyncRep"
	State string
	Since time.Duration // since the session's last state change
	// Prepared is the gid of a prepared (two-phase) transaction.
	Prepared string
}

// Backends looks up the sessions running xids (pg_stat_activity, and
// pg_prepared_xacts for two-phase transactions).
func (r *ChunkReader) Backends(ctx context.Context, xids []uint64) ([]Backend, error) {
	var out []Backend
	for _, x := range xids {
		b := Backend{XID: x}
		short := strconv.FormatUint(x&0xFFFFFFFF, 10) // the xid type of both views is 32-bit
		var since float64
		err := r.conn.QueryRow(ctx, `
			SELECT pid, coalesce(application_name, ''), coalesce(wait_event_type || ':' || wait_event, ''), coalesce(state, ''),
			       coalesce(extract(epoch FROM clock_timestamp() - state_change), 0)::float8
			FROM pg_stat_activity WHERE backend_xid::text = $1`, short).Scan(&b.PID, &b.App, &b.Wait, &b.State, &since)
		b.Since = time.Duration(since * float64(time.Second))
		if errors.Is(err, pgx.ErrNoRows) {
			err = r.conn.QueryRow(ctx, `SELECT gid FROM pg_prepared_xacts WHERE transaction::text = $1`, short).Scan(&b.Prepared)
			if errors.Is(err, pgx.ErrNoRows) {
				err = nil
			}
		}
		if err != nil {
			return out, fmt.Errorf("backfill %s: sessions of transactions: %w", r.table, err)
		}
		out = append(out, b)
	}
	return out, nil
}

func (r *ChunkReader) readRows(ctx context.Context, after []string, limit int) ([][]Value, error) {
	var sql strings.Builder
	fmt.Fprintf(&sql, "SELECT %s FROM %s", r.colSQL, r.ident)
	params := make([][]byte, 0, len(after))
	if after != nil {
		ph := make([]string, len(after))
		for i, v := range after {
			ph[i] = fmt.Sprintf("$%d", i+1)
			params = append(params, []byte(v))
		}
		fmt.Fprintf(&sql, " WHERE (%s) > (%s)%s", r.pkSQL, strings.Join(ph, ", "), r.whereSQL(true))
	} else {
		sql.WriteString(r.whereSQL(false))
	}
	fmt.Fprintf(&sql, " ORDER BY %s LIMIT %d", r.pkSQL, limit)
	// Text in, text out: values keep exactly the form the stream sends.
	res := r.conn.PgConn().ExecParams(ctx, sql.String(), params, nil, nil, nil)
	var out [][]Value
	for res.NextRow() {
		raw := res.Values()
		row := make([]Value, len(raw))
		for i, v := range raw {
			if v == nil {
				row[i] = Value{Kind: ValueNull}
			} else {
				row[i] = Value{Kind: ValueText, Text: append([]byte(nil), v...)}
			}
		}
		out = append(out, row)
	}
	if _, err := res.Close(); err != nil {
		return nil, fmt.Errorf("backfill %s: read chunk: %w", r.table, err)
	}
	return out, nil
}

// Key is the primary key of a row read by Read, as text values.
func (r *ChunkReader) Key(row []Value) []string {
	k := make([]string, len(r.pkIdx))
	for i, idx := range r.pkIdx {
		k[i] = string(row[idx].Text)
	}
	return k
}

// Watermark writes a transactional logical message into the WAL; the
// stream delivers it in commit order among the changes.
func (r *ChunkReader) Watermark(ctx context.Context, prefix string, content []byte) error {
	_, err := r.conn.Exec(ctx, `SELECT pg_logical_emit_message(true, $1, $2::text)`, prefix, string(content))
	if err != nil {
		return fmt.Errorf("backfill %s: write watermark: %w", r.table, err)
	}
	return nil
}

// Close ends the connection.
func (r *ChunkReader) Close() {
	_ = r.conn.Close(context.Background())
	r.types.close()
}

// KeyOfChange returns the primary key values of a change's row, both the new
// and (when the key changed or the row was deleted) the old one. pk names
// the key columns in the order Key returns them.
func KeyOfChange(c *Change, pk []string) (keys [][]string) {
	for _, img := range [][]Value{c.New, c.Old} {
		if img == nil {
			continue
		}
		k := make([]string, 0, len(pk))
		for _, name := range pk {
			for i, col := range c.Relation.Columns {
				if col.Name == name && i < len(img) && img[i].Kind == ValueText {
					k = append(k, string(img[i].Text))
				}
			}
		}
		if len(k) == len(pk) {
			keys = append(keys, k)
		}
	}
	return keys
}

// PrimaryKeyNames lists the primary key columns of the reader's table.
func (r *ChunkReader) PrimaryKeyNames() []string {
	names := make([]string, len(r.pkIdx))
	for i, idx := range r.pkIdx {
		names[i] = r.rel.Columns[idx].Name
	}
	return names
}

// EmitMessage writes a transactional logical message on an ordinary
// connection (the CLI asks the running relay for a backfill this way).
func EmitMessage(ctx context.Context, conn *pgconn.PgConn, prefix string, content []byte) error {
	res := conn.ExecParams(ctx, `SELECT pg_logical_emit_message(true, $1, $2::text)`, [][]byte{[]byte(prefix), content}, nil, nil, nil)
	_, err := res.Close()
	return err
}
