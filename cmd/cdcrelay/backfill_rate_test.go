package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/internal/relay"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
)

// TestBackfillMaxRateOnIdleDatabase: `backfill --max-rate` delivers the rate
// asked for (within 10%) while nothing else is written, so no stream event
// comes to wake the relay between chunks; and the command, writing to a
// pipe, prints plain progress lines.
func TestBackfillMaxRateOnIdleDatabase(t *testing.T) {
	t.Parallel()
	dsn := testenv.NewDatabase(t)
	brokers := testenv.KafkaBrokers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const rows, rate = 1200, 200.0
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, fmt.Sprintf(`CREATE TABLE items (id bigint PRIMARY KEY, payload text);
		INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, %d) g; ANALYZE items`, rows)); err != nil {
		t.Fatal(err)
	}
	name := testenv.UniqueName(t, "r")
	name = name[:min(len(name), 40)]
	path := writeConfig(t, fmt.Sprintf(`
[relay]
name = %q
[postgres]
dsn = %q
[kafka]
brokers = [%q]
checkpoint_topic = "%s.checkpoints"
[[mapping]]
table = "public.items"
kind = "table"
topic = "%s.items"
`, name, dsn, brokers[0], name, name))
	if code, out, errOut := run(t, "setup", "--config", path); code != 0 {
		t.Fatalf("setup: exit %d\n%s%s", code, out, errOut)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	ran := make(chan int, 1)
	go func() {
		var out, errb strings.Builder
		ran <- execute(runCtx, []string{"run", "--config", path}, &out, &errb)
	}()
	defer func() {
		stopRun()
		<-ran
	}()

	// --chunk-size 500 alone would read 500 rows every 2.5 s.
	code, out, errOut := run(t, "backfill", "public.items", "--max-rate", fmt.Sprint(rate), "--chunk-size", "500", "--config", path)
	if code != 0 {
		t.Fatalf("backfill: exit %d\n%s%s", code, out, errOut)
	}
	if strings.Contains(errOut, "\r") || !strings.Contains(errOut, "backfill public.items: ") {
		t.Errorf("progress written to a pipe: want plain lines, got\n%q", errOut)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	states, err := backfillStates(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	st := states["public.items"]
	if st.Status != relay.BackfillDone || st.Done != rows {
		t.Fatalf("backfill state %+v", st)
	}
	got := float64(st.Done) / st.Finished.Sub(st.Started).Seconds()
	t.Logf("%d rows in %s: %.1f rows/s for --max-rate %g\n%s%s", st.Done, st.Finished.Sub(st.Started), got, rate, errOut, out)
	if got < 0.9*rate || got > 1.1*rate {
		t.Errorf("backfill ran at %.1f rows/s, asked for %g", got, rate)
	}
}
