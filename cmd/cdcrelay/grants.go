package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/config"
)

// printGrants writes the SQL that gives the relay's role (the user of
// postgres.dsn) exactly what `cdcrelay run` needs, and no more. It connects
// to nothing.
func printGrants(w io.Writer, cfg *config.Config, p *plan) error {
	role, db := "cdcrelay", ""
	if pc, err := pgx.ParseConfig(cfg.Postgres.DSN); err == nil {
		if pc.User != "" {
			role = pc.User
		}
		db = pc.Database
	}
	if db == "" {
		db = role
	}
	qr, qdb := ident(role), ident(db)
	var tables, schemas []string
	seen := map[string]bool{}
	for _, t := range p.repl.Tables {
		schema, name, ok := strings.Cut(t.Table, ".")
		if !ok {
			schema, name = "public", t.Table
		}
		tables = append(tables, ident(schema)+"."+ident(name))
		if !seen[schema] {
			seen[schema] = true
			schemas = append(schemas, ident(schema))
		}
	}
	fmt.Fprintf(w, `-- Least privilege for cdcrelay %q on database %s, as role %s (the user of postgres.dsn).
-- Run as a superuser, or as a role with CREATEROLE that owns the mapped tables.

-- 1. The role: LOGIN and REPLICATION (to stream from a logical slot), nothing else.
--    Not a superuser; no pg_signal_backend (the relay only ends stale sessions of
--    its own role); no ownership of the tables. Choose the password yourself, or
--    set it with \password %s in psql and drop the PASSWORD clause.
CREATE ROLE %s WITH LOGIN REPLICATION PASSWORD 'choose-a-password';
GRANT CONNECT ON DATABASE %s TO %s;

-- 2. Read the mapped tables (the checks and backfill read them; the stream
--    itself needs only REPLICATION).
`, cfg.Relay.Name, qdb, qr, qr, qr, qdb, qr)
	for _, s := range schemas {
		fmt.Fprintf(w, "GRANT USAGE ON SCHEMA %s TO %s;\n", s, qr)
	}
	for _, t := range tables {
		fmt.Fprintf(w, "GRANT SELECT ON TABLE %s TO %s;\n", t, qr)
	}
	fmt.Fprintf(w, `
-- 3. The publication. CREATE PUBLICATION ... FOR TABLE needs CREATE on the
--    database and ownership of the tables, so let the tables' owner create it
--    once (add WITH (publish_via_partition_root = true) for partitioned tables):
CREATE PUBLICATION %s FOR TABLE %s;
--    (Alternatively grant CREATE ON DATABASE %s and membership in the tables'
--    owner role to %s and let `+"`cdcrelay setup`"+` create it; that is more than
--    the relay needs while it runs.)

-- 4. Then, as %s: `+"`cdcrelay setup`"+` creates the replication slot
--    %s (REPLICATION is enough) and the Kafka topics, and finds the
--    publication above already in place; `+"`cdcrelay check`"+` verifies all of it.
--
-- Require TLS for the role in pg_hba.conf, e.g.
--    hostssl  %s  %s  0.0.0.0/0  scram-sha-256
--    hostssl  replication  %s  0.0.0.0/0  scram-sha-256
-- and connect with sslmode=verify-full (sslrootcert=/path/to/ca.crt) in postgres.dsn.
`, ident(cfg.Postgres.Publication), strings.Join(tables, ", "), qdb, qr, qr,
		ident(cfg.Postgres.Slot), db, role, role)
	return nil
}

func ident(s string) string { return pgx.Identifier{s}.Sanitize() }
