package testenv

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// StandbyOptions configures [Postgres.NewStandby].
type StandbyOptions struct {
	// Name is the standby's application_name and its physical slot on the
	// primary (default "standby1").
	Name string
	// DBName is the database in primary_conninfo, which slot
	// synchronization needs (default "postgres").
	DBName string
	// Synchronous puts the standby in the primary's synchronous_standby_names
	// (with synchronous_commit = on, the default): a commit returns only
	// once the standby has flushed it.
	Synchronous bool
	// SyncSlots (PostgreSQL 17 and later) turns on sync_replication_slots on
	// the standby and names its physical slot in the primary's
	// synchronized_standby_slots, so that failover slots are kept on the
	// standby and no logical consumer gets ahead of it.
	SyncSlots bool
}

// NewStandby makes a streaming physical standby of p, without
// pg_basebackup (the test matrix's server builds have only initdb, pg_ctl
// and postgres): it creates a physical slot on p, stops p, copies its data
// directory (a cold copy is a consistent base backup), configures the copy
// as a standby (standby.signal, primary_conninfo, primary_slot_name,
// hot_standby_feedback) and starts both. The standby lives beside p and is
// closed with it. Settings on p that the options ask for
// (synchronous_standby_names, synchronized_standby_slots) are set before the
// restart.
func (p *Postgres) NewStandby(ctx context.Context, opts StandbyOptions) (*Postgres, error) {
	if opts.Name == "" {
		opts.Name = "standby1"
	}
	if opts.DBName == "" {
		opts.DBName = "postgres"
	}
	if err := p.ExecSQL(ctx, "postgres", "SELECT pg_create_physical_replication_slot($1, true)", opts.Name); err != nil {
		return nil, fmt.Errorf("physical slot for the standby: %w", err)
	}
	primarySettings := map[string]string{}
	if opts.Synchronous {
		primarySettings["synchronous_standby_names"] = quoteConf(opts.Name)
	}
	if opts.SyncSlots {
		primarySettings["synchronized_standby_slots"] = quoteConf(opts.Name)
	}
	if err := p.Stop(ctx); err != nil {
		return nil, err
	}
	p.mu.Lock()
	maps.Copy(p.settings, primarySettings)
	err := p.writeSettings()
	p.mu.Unlock()
	if err != nil {
		return nil, err
	}

	dir, link, err := newServerDir(filepath.Dir(p.dir), "pg-standby-", p.osUser)
	if err != nil {
		return nil, err
	}
	s := &Postgres{
		dir: dir, link: link,
		dataDir: filepath.Join(dir, "data"), logFile: filepath.Join(dir, "postgres.log"),
		bin: p.bin, osUser: p.osUser, uid: p.uid, gid: p.gid,
		settings: maps.Clone(p.settings),
	}
	fail := func(err error) (*Postgres, error) {
		s.removeDir()
		return nil, err
	}
	// cp -a keeps the owner (the server's OS user) and the modes.
	if out, err := exec.CommandContext(ctx, "cp", "-a", p.dataDir, s.dataDir).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("copy %s: %w: %s", p.dataDir, err, strings.TrimSpace(string(out))))
	}
	if p.osUser != "" {
		if err := os.Chown(dir, p.uid, p.gid); err != nil {
			return fail(err)
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return fail(err)
		}
	}
	// The copy must not own the primary's slots (a standby has only the
	// synchronized copies of failover slots), nor its pid file.
	slots, _ := filepath.Glob(filepath.Join(s.dataDir, "pg_replslot", "*"))
	for _, path := range append(slots, filepath.Join(s.dataDir, postmasterPID), filepath.Join(s.dataDir, "postmaster.opts")) {
		if err := os.RemoveAll(path); err != nil {
			return fail(err)
		}
	}
	delete(s.settings, "synchronous_standby_names")
	delete(s.settings, "synchronized_standby_slots")
	s.settings["primary_conninfo"] = quoteConf(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s application_name=%s",
		p.port, opts.DBName, opts.Name))
	s.settings["primary_slot_name"] = quoteConf(opts.Name)
	s.settings["hot_standby_feedback"] = "on"
	if opts.SyncSlots {
		s.settings["sync_replication_slots"] = "on"
	}
	if err := s.writeFile("standby.signal", ""); err != nil {
		return fail(err)
	}
	ports, err := FreePorts(1)
	if err != nil {
		return fail(err)
	}
	s.port = ports[0]
	if err := s.writeSettings(); err != nil {
		return fail(err)
	}
	if err := p.Start(ctx); err != nil {
		return fail(err)
	}
	if err := s.Start(ctx); err != nil {
		return fail(fmt.Errorf("start standby: %w", err))
	}
	// Streaming, and (when synchronous) counted as the synchronous standby.
	want := "async"
	if opts.Synchronous {
		want = "sync"
	}
	if err := p.waitQuery(ctx, time.Minute, `SELECT EXISTS (SELECT 1 FROM pg_stat_replication
		WHERE application_name = $1 AND state = 'streaming' AND sync_state = $2)`, opts.Name, want); err != nil {
		return fail(fmt.Errorf("standby %s not streaming (%s): %w\n--- %s (tail) ---\n%s", opts.Name, want, err, s.logFile, tailFile(s.logFile, 2048)))
	}
	return s, nil
}

func quoteConf(v string) string { return "'" + strings.ReplaceAll(v, "'", "''") + "'" }

// waitQuery polls a query returning one boolean until it is true.
func (p *Postgres) waitQuery(ctx context.Context, d time.Duration, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var lastErr error
	for {
		conn, err := p.Connect(ctx, "postgres")
		if err == nil {
			var ok bool
			err = conn.QueryRow(ctx, sql, args...).Scan(&ok)
			conn.Close(context.Background())
			if err == nil && ok {
				return nil
			}
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), lastErr)
			}
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Promote ends recovery on a standby (pg_ctl promote) and waits until it
// accepts writes.
func (p *Postgres) Promote(ctx context.Context) error {
	p.mu.Lock()
	err := p.pgCtl(ctx, "promote", "-w", "-t", "60", "-s")
	p.mu.Unlock()
	if err != nil {
		return err
	}
	return p.waitQuery(ctx, time.Minute, "SELECT NOT pg_is_in_recovery()")
}

// Crash stops the server as a crash would (pg_ctl stop -m immediate: every
// process exits at once, nothing is flushed or checkpointed) and leaves it
// stopped.
func (p *Postgres) Crash(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pgCtl(ctx, "stop", "-m", "immediate", "-w", "-t", "60", "-s")
}

// NewStandby is [Postgres.NewStandby] for a test: the standby is stopped and
// removed at the end of it.
func NewStandby(t testing.TB, primary *Postgres, opts StandbyOptions) *Postgres {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := primary.NewStandby(ctx, opts)
	if err != nil {
		t.Fatalf("testenv: standby: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Logf("testenv: close standby: %v", err)
		}
	})
	return s
}
