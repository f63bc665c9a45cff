package replication

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ChunkReader reads a table's rows in primary-key order, one short query per
// chunk (no table lock, no snapshot held between chunks), in the same text
// form the stream delivers, so backfilled rows map exactly like streamed ones.
// It also writes the watermarks that place each chunk in the stream.
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
// the start), in primary-key order.
func (r *ChunkReader) Read(ctx context.Context, after []string, limit int) ([][]Value, error) {
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
