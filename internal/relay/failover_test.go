package relay_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
)

// TestStandbyTakesOverAfterSIGKILL runs two relays with the same
// configuration, the second with --standby, while rows are written. The
// standby must not be ready while it waits; when the active relay is
// SIGKILLed, the standby must be streaming and committing again within 10
// seconds. Then the roles swap once more (the killed relay comes back as the
// standby, the new active one is killed). A read_committed consumer must see
// every row exactly once, in order per aggregate.
func TestStandbyTakesOverAfterSIGKILL(t *testing.T) {
	e := startChaosEnv(t, testenv.PostgresOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const name, db = "ha", "ha"
	e.setupOutbox(t, ctx, db, name, 3)
	// One relay.toml per host: the same relay, each its own metrics address.
	addrs := [2]string{freeAddr(t), freeAddr(t)}
	var cfgs [2]string
	for i := range cfgs {
		path := e.config(t, name, db, fmt.Sprintf(`
[metrics]
listen = %q

[[mapping]]
table = "public.outbox"
kind = "outbox"
`, addrs[i]))
		cfgs[i] = filepath.Join(e.dir, fmt.Sprintf("host%d.toml", i))
		if err := os.Rename(path, cfgs[i]); err != nil {
			t.Fatal(err)
		}
	}
	logs := [2]string{filepath.Join(e.dir, "host0.log"), filepath.Join(e.dir, "host1.log")}
	dumpLogOnFailure(t, logs[0])
	dumpLogOnFailure(t, logs[1])
	start := func(i int, standby bool) *e2e.Process {
		args := []string{"run", "--config", cfgs[i]}
		if standby {
			args = append(args, "--standby")
		}
		p, err := e2e.Start(e.bin, logs[i], args...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Kill)
		return p
	}

	procs := [2]*e2e.Process{start(0, false), nil}
	if !eventually(30*time.Second, func() bool { return httpStatus(addrs[0], "/readyz") == 200 }) {
		t.Fatalf("relay 0 not ready after 30s:\n%s", procs[0].Output())
	}
	w, stopWriter := startWriter(ctx, t, e, db)
	procs[1] = start(1, true)

	var takeovers []time.Duration
	active := 0
	for round := 1; round <= 2; round++ {
		standby := 1 - active
		// The standby waits, alive but not ready.
		if !eventually(20*time.Second, func() bool {
			return strings.Contains(procs[standby].Output(), "standby: another relay is active")
		}) {
			t.Fatalf("round %d: relay %d does not say it waits as a standby:\n%s", round, standby, procs[standby].Output())
		}
		time.Sleep(3 * time.Second) // writes flow through the active relay
		if got := httpStatus(addrs[standby], "/readyz"); got != 503 {
			t.Errorf("round %d: waiting standby /readyz = %d, want 503", round, got)
		}
		if got := httpStatus(addrs[standby], "/healthz"); got != 200 {
			t.Errorf("round %d: waiting standby /healthz = %d, want 200", round, got)
		}
		if got := httpStatus(addrs[active], "/readyz"); got != 200 {
			t.Errorf("round %d: active relay /readyz = %d, want 200", round, got)
		}
		if procs[standby].Exited() {
			t.Fatalf("round %d: standby exited:\n%s", round, procs[standby].Output())
		}
		m0, err := scrape(addrs[standby])
		if err != nil {
			t.Fatal(err)
		}
		committedBefore := m0["cdcrelay_kafka_transactions_committed_total"]

		procs[active].Kill()
		killed := time.Now()
		var ready, committing time.Duration
		if !eventually(30*time.Second, func() bool {
			if ready == 0 && httpStatus(addrs[standby], "/readyz") == 200 {
				ready = time.Since(killed)
			}
			m, err := scrape(addrs[standby])
			if err == nil && m["cdcrelay_kafka_transactions_committed_total"] > committedBefore {
				committing = time.Since(killed)
				return ready != 0
			}
			return false
		}) {
			t.Fatalf("round %d: standby did not take over within 30s of the SIGKILL:\n%s", round, procs[standby].Output())
		}
		t.Logf("round %d: relay %d SIGKILLed; standby %d ready after %s, first commit after %s",
			round, active, standby, ready.Round(10*time.Millisecond), committing.Round(10*time.Millisecond))
		takeovers = append(takeovers, committing)
		if committing > 10*time.Second {
			t.Errorf("round %d: takeover took %s, more than 10s", round, committing.Round(10*time.Millisecond))
		}
		// The killed relay comes back, as the standby now.
		procs[active] = start(active, true)
		active = standby
	}
	time.Sleep(2 * time.Second)
	if err := stopWriter(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	total := int(w.committed.Load())
	recs, err := e2e.ReadCommitted(ctx, e.brokers, []string{"outbox.event.order"}, total, 6*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	checkOutboxEvents(t, recs, total, w.seq)
	t.Logf("takeovers: %v; %d rows written across them, each seen once by a read_committed consumer", takeovers, total)
	for _, p := range procs {
		if err := p.Stop(15 * time.Second); err != nil {
			t.Errorf("SIGTERM: %v", err)
		}
	}
}

// TestStandbyTakesOverFromAFrozenRelay: the active relay is frozen
// (SIGSTOP), as a hung host or a network partition leaves it: its
// connections stay open and it holds the lock, silently. The standby must
// take the lease over once the holder has been silent for 10 seconds. When
// the frozen relay thaws (SIGCONT) it is a zombie: fenced in Kafka and
// without its lock, it must stop publishing. A read_committed consumer must
// still see every row once.
//
// The frozen relay's walsender keeps the slot active after its lock is taken
// over, until Postgres ends it at wal_sender_timeout (or the new active relay
// ends it: see the README, section Operations). The test sets a 10s
// wal_sender_timeout, the value that section recommends for quick failover.
func TestStandbyTakesOverFromAFrozenRelay(t *testing.T) {
	e := startChaosEnv(t, testenv.PostgresOptions{WALSenderTimeout: 10 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const name, db = "frozen", "frozen"
	e.setupOutbox(t, ctx, db, name, 2)
	addrs := [2]string{freeAddr(t), freeAddr(t)}
	var cfgs [2]string
	for i := range cfgs {
		path := e.config(t, name, db, fmt.Sprintf(`
[metrics]
listen = %q

[[mapping]]
table = "public.outbox"
kind = "outbox"
`, addrs[i]))
		cfgs[i] = filepath.Join(e.dir, fmt.Sprintf("host%d.toml", i))
		if err := os.Rename(path, cfgs[i]); err != nil {
			t.Fatal(err)
		}
	}
	logs := [2]string{filepath.Join(e.dir, "host0.log"), filepath.Join(e.dir, "host1.log")}
	dumpLogOnFailure(t, logs[0])
	dumpLogOnFailure(t, logs[1])

	logf, err := os.Create(logs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	active := exec.Command(e.bin, "run", "--standby", "--config", cfgs[0])
	active.Stdout, active.Stderr = logf, logf
	// A process group of its own: stopping a member of an orphaned process
	// group (as go test's can be) makes the kernel send SIGHUP to the group.
	active.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := active.Start(); err != nil {
		t.Fatal(err)
	}
	activeDone := make(chan error, 1)
	go func() { activeDone <- active.Wait() }()
	defer func() {
		_ = active.Process.Signal(syscall.SIGCONT)
		_ = active.Process.Kill()
		<-activeDone
	}()
	if !eventually(30*time.Second, func() bool { return httpStatus(addrs[0], "/readyz") == 200 }) {
		t.Fatalf("relay 0 not ready after 30s")
	}
	w, stopWriter := startWriter(ctx, t, e, db)
	standby, err := e2e.Start(e.bin, logs[1], "run", "--standby", "--config", cfgs[1])
	if err != nil {
		t.Fatal(err)
	}
	defer standby.Kill()
	if !eventually(20*time.Second, func() bool {
		return strings.Contains(standby.Output(), "standby: another relay is active")
	}) {
		t.Fatalf("relay 1 does not wait as a standby:\n%s", standby.Output())
	}
	time.Sleep(3 * time.Second)

	if err := active.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	var ready, committing time.Duration
	if !eventually(45*time.Second, func() bool {
		if ready == 0 && httpStatus(addrs[1], "/readyz") == 200 {
			ready = time.Since(frozen)
		}
		m, err := scrape(addrs[1])
		if err == nil && m["cdcrelay_kafka_transactions_committed_total"] > 0 {
			committing = time.Since(frozen)
			return ready != 0
		}
		return false
	}) {
		t.Fatalf("standby did not take over within 45s of the freeze:\n%s", standby.Output())
	}
	t.Logf("relay 0 frozen (SIGSTOP); standby ready after %s, first commit after %s (lease: a holder silent >10s is terminated)",
		ready.Round(10*time.Millisecond), committing.Round(10*time.Millisecond))
	if committing > 20*time.Second {
		t.Errorf("takeover from a frozen relay took %s, more than the 10s lease and wal_sender_timeout plus 10s", committing.Round(10*time.Millisecond))
	}
	if !strings.Contains(standby.Output(), "terminating a stale holder of the relay lock") {
		t.Errorf("the standby did not say it terminated the stale holder")
	}

	// The zombie thaws: it must not publish, and must go back to waiting.
	time.Sleep(2 * time.Second)
	if err := active.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(8 * time.Second)
	if got := httpStatus(addrs[0], "/readyz"); got != 503 {
		t.Errorf("thawed zombie /readyz = %d, want 503", got)
	}
	if got := httpStatus(addrs[1], "/readyz"); got != 200 {
		t.Errorf("new active relay /readyz = %d after the zombie thawed, want 200", got)
	}
	if err := stopWriter(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	total := int(w.committed.Load())
	recs, err := e2e.ReadCommitted(ctx, e.brokers, []string{"outbox.event.order"}, total, 6*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	checkOutboxEvents(t, recs, total, w.seq)
	b, _ := os.ReadFile(logs[0])
	t.Logf("%d rows, each seen once; the zombie's log after the thaw: %s", total, lastLine(string(b)))
	if err := standby.Stop(15 * time.Second); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
}
