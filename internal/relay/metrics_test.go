package relay_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
)

// scrape reads a Prometheus text page into series -> value; a series is
// "name" or "name{labels}" as printed.
func scrape(addr string) (map[string]float64, error) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("/metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// sum adds the values of every series of metric name.
func sum(m map[string]float64, name string) float64 {
	var s float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

// httpStatus is the status code of GET http://addr/path, 0 when unreachable.
func httpStatus(addr, path string) int {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ports, err := testenv.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0])
}

// eventually polls cond every 250ms until it holds or d passes.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// startWriter writes outbox transactions of 1..20 rows every 50ms until
// stop is closed; done receives its error.
func startWriter(ctx context.Context, t *testing.T, e *chaosEnv, db string) (w *outboxWriter, stop func() error) {
	t.Helper()
	conn, err := pgx.Connect(ctx, e.pg.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	w = &outboxWriter{dsn: e.pg.DSN(db), conn: conn, aggregates: 8, seq: map[string]int{}}
	quit := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		rnd := rand.New(rand.NewSource(time.Now().UnixNano()))
		for {
			select {
			case <-quit:
				done <- nil
				return
			case <-time.After(50 * time.Millisecond):
			}
			if err := w.txn(ctx, 1+rnd.Intn(20), rnd); err != nil {
				done <- err
				return
			}
		}
	}()
	return w, func() error {
		close(quit)
		err := <-done
		w.conn.Close(context.Background())
		return err
	}
}

// TestMetricsLagWhileKafkaPaused scrapes /metrics of a running relay while
// rows are written: with Kafka held by the proxy, the replication lag (bytes
// and seconds) must rise and /readyz turn 503; after Resume both lags must
// fall back and /readyz be 200 again, and a read_committed consumer must see
// every row exactly once.
func TestMetricsLagWhileKafkaPaused(t *testing.T) {
	e := startChaosEnv(t, testenv.PostgresOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const name, db = "metrics", "metrics"
	e.setupOutbox(t, ctx, db, name, 2)
	addr := freeAddr(t)
	cfgPath := e.config(t, name, db, fmt.Sprintf(`
[metrics]
listen = %q

[[mapping]]
table = "public.outbox"
kind = "outbox"
`, addr))
	logPath := filepath.Join(e.dir, "relay.log")
	dumpLogOnFailure(t, logPath)

	p, err := e2e.Start(e.bin, logPath, "run", "--config", cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	if !eventually(30*time.Second, func() bool { return httpStatus(addr, "/readyz") == 200 }) {
		t.Fatalf("/readyz not 200 within 30s (status %d)", httpStatus(addr, "/readyz"))
	}
	if got := httpStatus(addr, "/healthz"); got != 200 {
		t.Fatalf("/healthz: %d", got)
	}
	w, stopWriter := startWriter(ctx, t, e, db)

	var m map[string]float64
	if !eventually(40*time.Second, func() bool {
		m, err = scrape(addr)
		_, hasLag := m["cdcrelay_replication_lag_bytes"]
		_, hasSlot := m["cdcrelay_slot_retained_wal_bytes"]
		return err == nil && hasLag && hasSlot && sum(m, "cdcrelay_events_published_total") > 0
	}) {
		t.Fatalf("no lag, slot and event series after 40s (err %v):\n%v", err, m)
	}
	for _, series := range []string{
		`cdcrelay_events_published_total{topic="outbox.event.order"}`,
		"cdcrelay_kafka_transactions_committed_total",
		"cdcrelay_kafka_commit_duration_seconds_count",
		"cdcrelay_replication_lag_seconds",
		`cdcrelay_slot_wal_status{status="reserved"}`,
		"cdcrelay_slot_active",
		"cdcrelay_ready",
	} {
		if _, ok := m[series]; !ok {
			t.Errorf("/metrics has no %s", series)
		}
	}
	before := struct{ bytes, secs float64 }{m["cdcrelay_replication_lag_bytes"], m["cdcrelay_replication_lag_seconds"]}
	t.Logf("streaming: lag %.0f bytes, %.2f s; %v events, %v transactions", before.bytes, before.secs,
		sum(m, "cdcrelay_events_published_total"), m["cdcrelay_kafka_transactions_committed_total"])

	// Kafka unreachable while the writes go on.
	e.kProxy.Pause()
	t.Log("kafka paused")
	pausedAt := time.Now()
	var peakBytes, peakSecs float64
	sawNotReady := false
	for time.Since(pausedAt) < 45*time.Second {
		time.Sleep(time.Second)
		if m, err = scrape(addr); err != nil {
			t.Fatalf("scrape while paused: %v", err)
		}
		peakBytes = max(peakBytes, m["cdcrelay_replication_lag_bytes"])
		peakSecs = max(peakSecs, m["cdcrelay_replication_lag_seconds"])
		if httpStatus(addr, "/readyz") == http.StatusServiceUnavailable {
			sawNotReady = true
		}
	}
	t.Logf("after %s paused: lag peaked at %.0f bytes, %.1f s; reconnects %v, failed transactions %v, ready seen false: %v",
		time.Since(pausedAt).Round(time.Second), peakBytes, peakSecs, m["cdcrelay_reconnects_total"],
		m["cdcrelay_kafka_transactions_failed_total"], sawNotReady)
	if peakBytes <= before.bytes+8192 {
		t.Errorf("lag in bytes did not rise while Kafka was paused: %.0f before, peak %.0f", before.bytes, peakBytes)
	}
	if peakSecs < 30 {
		t.Errorf("lag in seconds did not rise while Kafka was paused: %.1f before, peak %.1f", before.secs, peakSecs)
	}
	if !sawNotReady {
		t.Errorf("/readyz stayed 200 while Kafka was paused for 45s")
	}

	e.kProxy.Resume()
	resumedAt := time.Now()
	t.Log("kafka resumed")
	var fell time.Duration
	if !eventually(90*time.Second, func() bool {
		m, err = scrape(addr)
		if err != nil {
			return false
		}
		b, okB := m["cdcrelay_replication_lag_bytes"]
		s, okS := m["cdcrelay_replication_lag_seconds"]
		fell = time.Since(resumedAt)
		return okB && okS && b < peakBytes/4 && s < 5 && httpStatus(addr, "/readyz") == 200
	}) {
		t.Fatalf("lag did not fall within 90s of Resume: %.0f bytes, %.1f s, /readyz %d",
			m["cdcrelay_replication_lag_bytes"], m["cdcrelay_replication_lag_seconds"], httpStatus(addr, "/readyz"))
	}
	t.Logf("%s after Resume: lag %.0f bytes, %.2f s, ready again", fell.Round(100*time.Millisecond),
		m["cdcrelay_replication_lag_bytes"], m["cdcrelay_replication_lag_seconds"])
	if m["cdcrelay_reconnects_total"] < 1 && m["cdcrelay_kafka_transactions_failed_total"] < 1 {
		t.Errorf("neither a reconnect nor a failed transaction counted across the pause")
	}

	if err := stopWriter(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	total := int(w.committed.Load())
	recs, err := e2e.ReadCommitted(ctx, e.brokers, []string{"outbox.event.order"}, total, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	checkOutboxEvents(t, recs, total, w.seq)
	t.Logf("%d rows, each published once", total)
	if err := p.Stop(10 * time.Second); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
}

// TestSIGHUPReloadsLogLevel: a running relay at log_level "info" logs no
// debug lines; after relay.toml says "debug" and SIGHUP it does, and it names
// a changed setting that needs a restart instead of applying it.
func TestSIGHUPReloadsLogLevel(t *testing.T) {
	e := startChaosEnv(t, testenv.PostgresOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const name, db = "hup", "hup"
	e.setupOutbox(t, ctx, db, name, 1)
	mapping := `
[[mapping]]
table = "public.outbox"
kind = "outbox"
`
	cfgPath := e.config(t, name, db, mapping)
	logPath := filepath.Join(e.dir, "relay.log")
	dumpLogOnFailure(t, logPath)
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(e.bin, "run", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
	}()
	readLog := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	if !eventually(30*time.Second, func() bool { return strings.Contains(readLog(), "msg=streaming") }) {
		t.Fatalf("relay not streaming after 30s")
	}
	_, stopWriter := startWriter(ctx, t, e, db)
	defer stopWriter()
	time.Sleep(3 * time.Second)
	if strings.Contains(readLog(), "level=DEBUG") {
		t.Fatalf("debug lines at log_level info")
	}

	// Same file with log_level debug and a batch setting changed.
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(b), `log_level = "info"`, `log_level = "debug"`, 1)
	text = strings.Replace(text, `max_events = 2000`, `max_events = 1000`, 1)
	if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !eventually(15*time.Second, func() bool {
		l := readLog()
		return strings.Contains(l, "level=DEBUG") && strings.Contains(l, `msg=committed`)
	}) {
		t.Fatalf("no debug lines after SIGHUP")
	}
	l := readLog()
	if !strings.Contains(l, "SIGHUP: log level changed") || !strings.Contains(l, "need a restart") || !strings.Contains(l, "[batch]") {
		t.Errorf("SIGHUP did not report the level change and the [batch] change that needs a restart")
	}
	select {
	case err := <-exited:
		t.Fatalf("relay exited on SIGHUP: %v", err)
	default:
	}

	// Back to info: the debug lines stop.
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !eventually(10*time.Second, func() bool { return strings.Count(readLog(), "SIGHUP: log level changed") == 2 }) {
		t.Fatalf("second SIGHUP not applied")
	}
	time.Sleep(500 * time.Millisecond)
	n := strings.Count(readLog(), "level=DEBUG")
	time.Sleep(3 * time.Second)
	if m := strings.Count(readLog(), "level=DEBUG"); m != n {
		t.Errorf("%d debug lines after the level went back to info", m-n)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("relay did not stop after SIGTERM")
	}
}

func dumpLogOnFailure(t *testing.T, logPath string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		b, _ := os.ReadFile(logPath)
		s := string(b)
		if len(s) > 20000 {
			s = s[len(s)-20000:]
		}
		t.Logf("relay log (tail) %s:\n%s", logPath, s)
	})
}
