package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/relay"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
	"github.com/cdcrelay/cdcrelay/sink"
)

// TestBackfillConsistentWithStream backfills a 200,000-row table while
// another connection updates, deletes and inserts rows of it, and SIGKILLs
// the relay three times on the way. For every key the last event must equal
// the row's final state (a delete ends in a delete and a tombstone), a
// backfilled row must never overtake a newer change of the same key, and no
// committed chunk may be published twice.
func TestBackfillConsistentWithStream(t *testing.T) {
	if testing.Short() {
		t.Skip("long test")
	}
	e := startChaosEnv(t, testenv.PostgresOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const name, db, rows = "bf", "bf", 200000
	if err := e.pg.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`CREATE TABLE items (id bigint PRIMARY KEY, version int NOT NULL, payload text NOT NULL)`,
		fmt.Sprintf(`INSERT INTO items SELECT g, 0, md5(g::text) FROM generate_series(1, %d) g`, rows),
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
	req, err := e2e.Start(e.bin, "", "backfill", "public.items", "--config", cfgPath, "--chunk-size", "2000", "--detach")
	if err != nil {
		t.Fatal(err)
	}
	if code, err := req.Wait(30 * time.Second); err != nil || code != 0 {
		t.Fatalf("backfill request: exit %d %v\n%s", code, err, req.Output())
	}

	// The concurrent writer: updates bump a row's version, deletes remove
	// rows, inserts add new ids; all while the backfill runs.
	writerCtx, stopWriter := context.WithCancel(ctx)
	writerDone := make(chan int)
	go func() {
		conn, err := pgx.Connect(ctx, e.pg.DSN(db))
		if err != nil {
			writerDone <- -1
			return
		}
		defer conn.Close(context.Background())
		rnd := rand.New(rand.NewSource(1))
		n, next := 0, rows+1
		for writerCtx.Err() == nil {
			var sql string
			switch k := rnd.Intn(10); {
			case k < 6:
				sql = fmt.Sprintf(`UPDATE items SET version = version + 1, payload = md5(random()::text) WHERE id = %d`, 1+rnd.Intn(rows))
			case k < 8:
				sql = fmt.Sprintf(`DELETE FROM items WHERE id = %d`, 1+rnd.Intn(rows))
			default:
				sql = fmt.Sprintf(`INSERT INTO items VALUES (%d, 0, 'new')`, next)
				next++
			}
			if _, err := conn.Exec(writerCtx, sql); err == nil {
				n++
			}
			time.Sleep(2 * time.Millisecond)
		}
		writerDone <- n
	}()

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
	// Kill the relay three times mid-backfill; after each restart the
	// committed cursor must carry on, not start over.
	var lastDone int64
	for kill := 0; kill < 3; kill++ {
		waitFor(t, 2*time.Minute, "backfill progress", func() bool { return state().Done > lastDone+10000 })
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
		time.Sleep(time.Second)
		if st := state(); st.Done < lastDone {
			t.Fatalf("after restart the backfill went back from %d to %d rows", lastDone, st.Done)
		}
	}
	waitFor(t, 5*time.Minute, "backfill done", func() bool { return state().Status == relay.BackfillDone })
	stopWriter()
	writes := <-writerDone
	defer p.Stop(10 * time.Second)
	final := state()
	t.Logf("backfill done: %d rows read; %d concurrent writes", final.Done, writes)

	// The table's final state.
	conn, err := pgx.Connect(ctx, e.pg.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	type row struct {
		version int
		payload string
	}
	want := map[string]row{}
	rs, _ := conn.Query(ctx, `SELECT id, version, payload FROM items`)
	for rs.Next() {
		var id int64
		var r row
		if err := rs.Scan(&id, &r.version, &r.payload); err != nil {
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
	// Wait until the relay's checkpoint passes the end of the writes.
	waitFor(t, 2*time.Minute, "relay caught up", func() bool {
		cp, ok, err := sink.LoadCheckpoint(ctx, &cfg.Kafka)
		return err == nil && ok && caughtUp(cp.LSN.String(), endLSN)
	})

	recs, err := e2e.ReadCommitted(ctx, e.brokers, []string{"bf.items"}, 1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	type ev struct {
		op      string
		version int
		payload string
		tomb    bool
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
			Op    string `json:"op"`
			After *struct {
				Version int    `json:"version"`
				Payload string `json:"payload"`
			} `json:"after"`
		}
		if err := json.Unmarshal(r.Value, &v); err != nil {
			t.Fatalf("value %q: %v", r.Value, err)
		}
		e := ev{op: v.Op}
		if v.After != nil {
			e.version, e.payload = v.After.Version, v.After.Payload
		}
		byKey[id] = append(byKey[id], e)
	}
	reads, overtakes, dupReads, wrong := 0, 0, 0, 0
	for id, evs := range byKey {
		maxVersion, nreads := -1, 0
		for _, e := range evs {
			if e.tomb || e.op == "delete" {
				continue
			}
			if e.op == "read" {
				nreads++
				if e.version < maxVersion {
					overtakes++ // a backfilled row older than a change already published
				}
			}
			maxVersion = max(maxVersion, e.version)
		}
		reads += nreads
		if nreads > 1 {
			dupReads++
		}
		last := evs[len(evs)-1]
		w, exists := want[id]
		switch {
		case !exists && !last.tomb:
			wrong++
			if wrong < 5 {
				t.Errorf("key %s: deleted, but its last event is %+v", id, last)
			}
		case exists && (last.tomb || last.version != w.version || last.payload != w.payload):
			wrong++
			if wrong < 5 {
				t.Errorf("key %s: last event %+v, row %+v", id, last, w)
			}
		}
	}
	for id := range want {
		if _, ok := byKey[id]; !ok {
			wrong++
			if wrong < 5 {
				t.Errorf("key %s: row exists but no event was published", id)
			}
		}
	}
	t.Logf("%d events, %d keys, %d read events", len(recs), len(byKey), reads)
	if overtakes > 0 {
		t.Errorf("%d backfill events overtook a newer change of their key", overtakes)
	}
	if dupReads > 0 {
		t.Errorf("%d keys were backfilled more than once (a committed chunk published twice)", dupReads)
	}
	if wrong > 0 {
		t.Errorf("%d keys end in a state other than the table's", wrong)
	}
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
