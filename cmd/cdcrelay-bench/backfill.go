package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/relay"
	"github.com/cdcrelay/cdcrelay/sink"
)

// runBackfill measures `cdcrelay backfill` on rows that exist before the
// relay starts: a table mapping (default envelope) over a table of n rows of
// ~200 B, from the request to the checkpoint that records the backfill done
// (committed with its last chunk's events). There is no WAL to compare with:
// the limit column stays empty.
func runBackfill(ctx context.Context, o *options, n int) (result, error) {
	r := result{name: "backfill", events: n}
	id := strconv.FormatInt(time.Now().UnixNano()/1e6, 36)
	name := "bench_backfill_" + id
	table := "bf_" + id
	topic := "public." + table
	b := &bench{o: o, name: name, db: name, refSlot: "ref_" + name}
	admin, err := pgx.Connect(ctx, o.pgDSN)
	if err != nil {
		return r, err
	}
	_, err = admin.Exec(ctx, "CREATE DATABASE "+b.db)
	admin.Close(context.Background())
	if err != nil {
		return r, err
	}
	if b.dsn, err = dbDSN(o.pgDSN, b.db); err != nil {
		return r, err
	}
	if b.conn, err = pgx.Connect(ctx, b.dsn); err != nil {
		return r, err
	}
	defer b.close(context.Background())
	t0 := time.Now()
	for _, sql := range []string{
		fmt.Sprintf(`CREATE TABLE %s (id bigint PRIMARY KEY, aggregateid text NOT NULL, payload jsonb NOT NULL)`, table),
		fmt.Sprintf(`INSERT INTO %s SELECT i, 'agg-' || (i %% 64), jsonb_build_object('seq', i, 'data',
			(SELECT string_agg(md5(i::text || '/' || k::text), '') FROM generate_series(1, 5) k))
			FROM generate_series(1, %d) i`, table, n),
		fmt.Sprintf(`CREATE PUBLICATION cdcrelay_%s FOR TABLE %s`, name, table),
		fmt.Sprintf(`SELECT pg_create_logical_replication_slot('cdcrelay_%s', 'pgoutput')`, name),
	} {
		if _, err := b.conn.Exec(ctx, sql); err != nil {
			return r, fmt.Errorf("%s: %w", firstLine(sql), err)
		}
	}
	r.writeSecs = since(t0)
	fmt.Printf("wrote %d rows in %.1fs (before the slot: nothing to stream)\n", n, r.writeSecs)
	if err := createTopic(o.brokers, topic, o.partitions); err != nil {
		return r, err
	}
	cfg := fmt.Sprintf(`[relay]
name = %q
log_level = %q

[postgres]
dsn = %q

[kafka]
brokers = [%s]

[[mapping]]
table = "public.%s"
kind = "table"
`, name, o.logLevel, b.dsn, quoteList(o.brokers), table)
	if o.extraTOML != "" {
		cfg += "\n" + o.extraTOML + "\n"
	}
	b.cfgPath = filepath.Join(o.workDir, name+".toml")
	if err := os.WriteFile(b.cfgPath, []byte(cfg), 0o600); err != nil {
		return r, err
	}
	watch, err := newCheckpointWatch(o.brokers, "cdcrelay-"+name)
	if err != nil {
		return r, err
	}
	defer watch.close()
	proc, err := startRelay(o, b)
	if err != nil {
		return r, err
	}
	defer func() {
		if !proc.exited() {
			proc.stop()
		}
	}()
	asked := time.Now()
	out, err := exec.CommandContext(ctx, o.relayBin, "backfill", "public."+table, "--detach", "--config", b.cfgPath).CombinedOutput()
	if err != nil {
		return r, fmt.Errorf("cdcrelay backfill: %v: %s", err, strings.TrimSpace(string(out)))
	}
	key := "public." + table
	deadline := time.Now().Add(time.Duration(float64(10*time.Minute) * max(o.scale, 0.2)))
	var done time.Time
	for done.IsZero() {
		if time.Now().After(deadline) {
			return r, fmt.Errorf("backfill not done within the deadline\nrelay output (tail):\n%s", tail(proc.output(), 3000))
		}
		if proc.exited() {
			return r, fmt.Errorf("relay exited: %s", tail(proc.output(), 3000))
		}
		pctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
		cp, ok, err := sink.ReadCheckpoint(pctx, watch.client, watch.group, "cdcrelay.checkpoints")
		cancel()
		if err == nil && ok {
			states, err := relay.BackfillStates(cp)
			if err == nil {
				st := states[key]
				switch st.Status {
				case relay.BackfillDone:
					done = time.Now()
				case relay.BackfillFailed, relay.BackfillCancelled:
					return r, fmt.Errorf("backfill %s: %s", st.Status, st.Error)
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.relaySecs = done.Sub(asked).Seconds()
	u, err := proc.stop()
	if err != nil {
		fmt.Printf("relay stop: %v\n", err)
	}
	r.cpuSecs, r.peakRSSMB = u.cpu, u.maxRSSMB
	if err := countEvents(ctx, o.brokers, topic, n); err != nil {
		return r, err
	}
	fmt.Printf("backfill: %d rows in %.2fs from the request (%.0f rows/s), relay CPU %.2fs (whole run), peak RSS %.1f MB\n",
		n, r.relaySecs, float64(n)/r.relaySecs, r.cpuSecs, r.peakRSSMB)
	return r, nil
}
