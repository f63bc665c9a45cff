package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/relay"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
	"github.com/cdcrelay/cdcrelay/sink"
)

// TestBackfillConsistentWithStream backfills a table while writers aim at
// the rows the backfill is about to read, and SIGKILLs the relay three
// times on the way. The folded topic (last event per key wins, a delete or a
// tombstone removes the key) must equal the table in every column; no "read"
// event may follow a newer change of its key; no deleted key may come back;
// no committed chunk may be published twice.
//
// The race it aims at: a transaction's commit record is in the WAL (and
// streamed to the relay) before the transaction is visible to new snapshots.
// The gap is made wide and deterministic with a synchronous standby that
// never connects: a writer with synchronous_commit = on flushes its commit
// record, the stream delivers its change, and the commit then waits in
// SyncRep, still invisible, until the test cancels the wait. Such a pending
// change is placed ahead of the backfill's cursor (on the boundary rows of
// the next chunks, too) and released once the cursor has passed it, so a
// chunk that reads the old row while the stream has already published the
// new one is certain to happen. Ordinary writers on three more connections
// add many small transactions, half of them just ahead of the cursor.
func TestBackfillConsistentWithStream(t *testing.T) {
	if testing.Short() {
		t.Skip("long test")
	}
	e := startChaosEnv(t, testenv.PostgresOptions{Settings: map[string]string{
		"synchronous_standby_names": "'cdcrelay_absent_standby'",
		// Everyone else commits without waiting for the absent standby.
		"synchronous_commit": "local",
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const name, db, rows, chunk = "bf", "bf", 40000, 400
	if err := e.pg.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`CREATE TABLE items (id bigint PRIMARY KEY, version int NOT NULL, payload text NOT NULL, writer text NOT NULL)`,
		fmt.Sprintf(`INSERT INTO items SELECT g, 0, md5(g::text), 'initial' FROM generate_series(1, %d) g`, rows),
		`ANALYZE items`,
		`CREATE PUBLICATION cdcrelay_bf FOR TABLE items`,
		`SELECT pg_create_logical_replication_slot('cdcrelay_bf', 'pgoutput')`,
	} {
		if err := e.pg.ExecSQL(ctx, db, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	for topic, parts := range map[string]int32{"cdcrelay.checkpoints": 1, "bf.items": 4} {
		if err := e2e.CreateTopic(e.brokers, topic, parts, topic == "cdcrelay.checkpoints"); err != nil {
			t.Fatal(err)
		}
	}
	cfgPath := e.config(t, name, db, `
[[mapping]]
table = "public.items"
kind = "table"
topic = "bf.items"
envelope = "json"
`)
	logPath := filepath.Join(e.dir, "bf.log")
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("relay log (tail):\n%s", tail(string(b), 15000))
		}
	}()
	p, err := e2e.Start(e.bin, logPath, "run", "--config", cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Stop(10 * time.Second) }()

	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Kafka.Brokers = e.brokers // the test reads around the proxy
	state := func() relay.BackfillState {
		cp, ok, err := sink.LoadCheckpoint(ctx, &cfg.Kafka)
		if err != nil || !ok {
			return relay.BackfillState{}
		}
		st, _ := relay.BackfillStates(cp)
		return st["public.items"]
	}
	// The cursor as scripts see it: the primary key of the last row of the
	// last published chunk, polled from the checkpoint.
	var cursor atomic.Int64
	pollCtx, stopPoll := context.WithCancel(ctx)
	var pollWG sync.WaitGroup
	pollWG.Add(1)
	go func() {
		defer pollWG.Done()
		for pollCtx.Err() == nil {
			if st := state(); len(st.Cursor) == 1 {
				if n, err := strconv.ParseInt(st.Cursor[0], 10, 64); err == nil {
					cursor.Store(n)
				}
			}
			time.Sleep(30 * time.Millisecond)
		}
	}()

	req, err := e2e.Start(e.bin, "", "backfill", "public.items", "--config", cfgPath,
		"--chunk-size", strconv.Itoa(chunk), "--max-rate", "4000", "--detach")
	if err != nil {
		t.Fatal(err)
	}
	if code, err := req.Wait(30 * time.Second); err != nil || code != 0 {
		t.Fatalf("backfill request: exit %d %v\n%s", code, err, req.Output())
	}

	writerCtx, stopWriters := context.WithCancel(ctx)
	var writers sync.WaitGroup
	var nextID atomic.Int64
	nextID.Store(rows + 1)
	var writes, gapsHeld, gapsPassed atomic.Int64
	// Ordinary writers: many small transactions; rows a pending commit
	// holds locked are skipped, not waited for.
	for w := 0; w < 3; w++ {
		writers.Add(1)
		go func() {
			defer writers.Done()
			conn, err := pgx.Connect(ctx, e.pg.DSN(db))
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close(context.Background())
			rnd := rand.New(rand.NewSource(int64(w)))
			who := fmt.Sprintf("w%d", w)
			for writerCtx.Err() == nil {
				id := int64(1 + rnd.Intn(rows))
				if rnd.Intn(2) == 0 {
					id = cursor.Load() + 1 + int64(rnd.Intn(3*chunk))
				}
				var sql string
				args := []any{id, who}
				switch k := rnd.Intn(10); {
				case k < 6:
					sql = `UPDATE items SET version = version + 1, payload = md5(random()::text), writer = $2
						WHERE id = (SELECT id FROM items WHERE id = $1 FOR UPDATE SKIP LOCKED)`
				case k < 8:
					sql = `DELETE FROM items WHERE id = (SELECT id FROM items WHERE id = $1 FOR UPDATE SKIP LOCKED) AND $2 <> ''`
				default:
					sql = `INSERT INTO items VALUES ($1, 0, 'new', $2)`
					args[0] = nextID.Add(1)
				}
				if _, err := conn.Exec(writerCtx, sql, args...); err == nil {
					writes.Add(1)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	// Gap writers: a change whose commit is streamed but not yet visible,
	// aimed ahead of the cursor and held until the cursor has passed it.
	for w := 0; w < 2; w++ {
		writers.Add(1)
		go func() {
			defer writers.Done()
			rnd := rand.New(rand.NewSource(int64(100 + w)))
			who := fmt.Sprintf("gap%d", w)
			for writerCtx.Err() == nil {
				cur := cursor.Load()
				var id int64
				switch m := int64(1 + rnd.Intn(3)); rnd.Intn(3) {
				case 0: // the first row of a coming chunk
					id = cur + (m-1)*chunk + 1
				case 1: // the last row of a coming chunk
					id = cur + m*chunk
				default:
					id = cur + 1 + int64(rnd.Intn(3*chunk))
				}
				held, passed, err := pendingCommit(writerCtx, e.pg.DSN(db), id, rnd.Intn(4) == 0, who, &cursor)
				if err != nil && writerCtx.Err() == nil {
					t.Errorf("gap writer: %v", err)
					return
				}
				if held {
					gapsHeld.Add(1)
					writes.Add(1)
				}
				if passed {
					gapsPassed.Add(1)
				}
			}
		}()
	}

	// Kill the relay three times mid-backfill; after each restart the
	// committed cursor must carry on, not start over.
	var lastDone int64
	for kill := 0; kill < 3; kill++ {
		waitFor(t, 2*time.Minute, "backfill progress", func() bool { return state().Done > lastDone+rows/5 })
		p.Kill()
		st := state()
		if st.Status != relay.BackfillRunning {
			t.Fatalf("kill %d: backfill already %s at %d rows; the table is too small for this test", kill, st.Status, st.Done)
		}
		lastDone = st.Done
		t.Logf("kill %d at %d/%d rows", kill+1, st.Done, st.Total)
		if p, err = e2e.Start(e.bin, logPath, "run", "--config", cfgPath); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 2*time.Minute, "backfill done", func() bool {
		st := state()
		if st.Done < lastDone {
			t.Fatalf("after a restart the backfill went back from %d to %d rows", lastDone, st.Done)
		}
		return st.Status == relay.BackfillDone
	})
	stopWriters()
	writers.Wait()
	stopPoll()
	pollWG.Wait()
	t.Logf("backfill done: %d rows read; %d concurrent writes; %d commits held invisible ahead of the cursor, %d of them passed by it while held",
		state().Done, writes.Load(), gapsHeld.Load(), gapsPassed.Load())
	if b, err := os.ReadFile(logPath); err == nil {
		t.Logf("relay log: %d warnings of a chunk held back by a commit waiting for the standby",
			strings.Count(string(b), "backfill chunk held back"))
	}
	if gapsPassed.Load() < 5 {
		t.Errorf("only %d held commits were passed by the cursor: the test did not exercise the race", gapsPassed.Load())
	}

	// The table's final state, every column.
	conn, err := pgx.Connect(ctx, e.pg.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	want := map[string]itemRow{}
	rs, _ := conn.Query(ctx, `SELECT id, version, payload, writer FROM items`)
	for rs.Next() {
		var id int64
		var r itemRow
		if err := rs.Scan(&id, &r.Version, &r.Payload, &r.Writer); err != nil {
			t.Fatal(err)
		}
		want[fmt.Sprint(id)] = r
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	var endLSN string
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&endLSN); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Minute, "relay caught up", func() bool {
		cp, ok, err := sink.LoadCheckpoint(ctx, &cfg.Kafka)
		return err == nil && ok && caughtUp(cp.LSN.String(), endLSN)
	})
	recs, err := e2e.ReadCommitted(ctx, e.brokers, []string{"bf.items"}, 1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	checkFolded(t, recs, want)
}

type itemRow struct {
	Version int    `json:"version"`
	Payload string `json:"payload"`
	Writer  string `json:"writer"`
}

// checkFolded folds the topic per key and compares it with the table.
func checkFolded(t *testing.T, recs []e2e.Record, want map[string]itemRow) {
	t.Helper()
	type ev struct {
		op   string
		row  *itemRow
		tomb bool
	}
	byKey := map[string][]ev{}
	for _, r := range recs {
		var k struct {
			ID json.Number `json:"id"`
		}
		if err := json.Unmarshal(r.Key, &k); err != nil {
			t.Fatalf("key %q: %v", r.Key, err)
		}
		id := k.ID.String()
		if r.Value == nil {
			byKey[id] = append(byKey[id], ev{tomb: true})
			continue
		}
		var v struct {
			Op    string   `json:"op"`
			After *itemRow `json:"after"`
		}
		if err := json.Unmarshal(r.Value, &v); err != nil {
			t.Fatalf("value %q: %v", r.Value, err)
		}
		byKey[id] = append(byKey[id], ev{op: v.Op, row: v.After})
	}
	reads, overtakes, resurrected, dupReads, wrong := 0, 0, 0, 0, 0
	report := func(n *int, format string, args ...any) {
		*n++
		if *n <= 5 {
			t.Errorf(format, args...)
		}
	}
	for id, evs := range byKey {
		maxVersion, nreads, deleted := -1, 0, false
		var live *itemRow
		for i, e := range evs {
			switch {
			case e.tomb || e.op == "delete":
				deleted, live = true, nil
				continue
			case deleted:
				// Ids are never re-inserted: whatever follows a delete is a
				// backfilled row coming back.
				report(&resurrected, "key %s: event %d (%s %+v) follows its delete", id, i, e.op, e.row)
			}
			if e.row == nil {
				t.Fatalf("key %s: %s event without an after image", id, e.op)
			}
			if e.op == "read" {
				nreads++
				if e.row.Version < maxVersion {
					report(&overtakes, "key %s: read of version %d follows version %d", id, e.row.Version, maxVersion)
				}
			}
			maxVersion = max(maxVersion, e.row.Version)
			live = e.row
		}
		reads += nreads
		if nreads > 1 {
			report(&dupReads, "key %s: backfilled %d times", id, nreads)
		}
		w, exists := want[id]
		switch {
		case !exists && live != nil:
			report(&wrong, "key %s: deleted in the table, but the topic ends with %+v", id, *live)
		case exists && live == nil:
			report(&wrong, "key %s: the topic ends deleted, the table has %+v", id, w)
		case exists && *live != w:
			report(&wrong, "key %s: the topic ends with %+v, the table has %+v", id, *live, w)
		}
	}
	for id, w := range want {
		if _, ok := byKey[id]; !ok {
			report(&wrong, "key %s: row %+v exists but no event was published", id, w)
		}
	}
	t.Logf("%d events, %d keys, %d read events; %d overtakes, %d resurrected, %d read twice, %d keys wrong",
		len(recs), len(byKey), reads, overtakes, resurrected, dupReads, wrong)
}

// pendingCommit changes row id (an update, or a delete) on a session with
// synchronous_commit = on, so that its commit record is written and streamed
// while the commit waits for the absent synchronous standby, invisible to
// new snapshots. It releases the wait (pg_cancel_backend: the transaction is
// committed locally and becomes visible) once the backfill's cursor has
// passed id, or after a few seconds. held tells whether the change reached
// that state; passed whether the cursor passed id while it was held.
func pendingCommit(ctx context.Context, dsn string, id int64, del bool, who string, cursor *atomic.Int64) (held, passed bool, err error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return false, false, err
	}
	defer conn.Close(context.Background())
	ctl, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return false, false, err
	}
	defer ctl.Close(context.Background())
	if _, err := conn.Exec(ctx, `SET synchronous_commit = on`); err != nil {
		return false, false, err
	}
	sql := `UPDATE items SET version = version + 1, payload = md5(random()::text), writer = $2
		WHERE id = (SELECT id FROM items WHERE id = $1 FOR UPDATE SKIP LOCKED)`
	if del {
		sql = `DELETE FROM items WHERE id = (SELECT id FROM items WHERE id = $1 FOR UPDATE SKIP LOCKED) AND $2 <> ''`
	}
	pid := conn.PgConn().PID()
	done := make(chan error, 1)
	go func() {
		// Not ctx: once its commit record is written the statement can only
		// end committed; release() below ends the wait.
		_, err := conn.Exec(context.Background(), sql, id, who)
		done <- err
	}()
	release := func() error {
		if _, err := ctl.Exec(context.Background(), `SELECT pg_cancel_backend($1)`, int64(pid)); err != nil {
			return err
		}
		err := <-done
		var pgErr interface{ SQLState() string }
		if errors.As(err, &pgErr) {
			return nil // a cancel that reached the statement before its commit: rolled back
		}
		return err
	}
	// Wait for the commit to sit in SyncRep (its record is flushed), or for
	// the statement to end without writing (row gone or locked).
	for {
		select {
		case err := <-done:
			return false, false, err
		case <-time.After(2 * time.Millisecond):
		}
		var waiting bool
		if err := ctl.QueryRow(context.Background(), `SELECT coalesce(wait_event = 'SyncRep', false) FROM pg_stat_activity WHERE pid = $1`, int64(pid)).Scan(&waiting); err != nil {
			return false, false, errors.Join(err, release())
		}
		if waiting {
			break
		}
		if ctx.Err() != nil {
			return false, false, release()
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if cursor.Load() >= id {
			passed = true
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true, passed, release()
}

// caughtUp compares two LSNs in text form.
func caughtUp(have, want string) bool {
	parse := func(s string) (hi, lo uint64) {
		a, b, _ := strings.Cut(s, "/")
		fmt.Sscanf(a, "%X", &hi)
		fmt.Sscanf(b, "%X", &lo)
		return
	}
	h1, l1 := parse(have)
	h2, l2 := parse(want)
	return h1 > h2 || h1 == h2 && l1 >= l2
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
