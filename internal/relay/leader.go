package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/config"
)

// leaderLock makes one relay per slot the publisher. It is a session-level
// advisory lock on the source database, held like a lease: the holder pings
// its connection every leasePing, and a holder whose connection has been
// silent for leaseStale is taken for dead (a relay killed on a lost host, or
// our own previous connection cut by the network) and its backend is
// terminated. Postgres releases the lock when the backend ends, so a relay
// that dies, even by SIGKILL, frees it at once.
type leaderLock struct {
	conn *pgx.Conn
	key  string
	pid  uint32 // our backend
}

const (
	leaderLockKey = "cdcrelay slot "
	leasePing     = 2 * time.Second
	// pingTimeout < leaseStale - leasePing: a relay that cannot reach its
	// lock stops publishing before anyone may take the lock over.
	pingTimeout = 5 * time.Second
	leaseStale  = 10 * time.Second
)

type lockHolder struct {
	pid    uint32
	app    string
	addr   string
	silent time.Duration
}

func (h *lockHolder) String() string {
	if h == nil {
		return "holder unknown"
	}
	return fmt.Sprintf("backend pid %d, application %q, client %s", h.pid, h.app, h.addr)
}

// acquireLeadership takes the lock. previous is our own former lock backend
// (0 if none): when it still holds the lock it is terminated at once.
func acquireLeadership(ctx context.Context, cfg *config.Config, opts Options, log *slog.Logger, previous uint32) (*leaderLock, error) {
	pc, err := pgx.ParseConfig(cfg.Postgres.DSN)
	if err != nil {
		return nil, &FatalError{Err: fmt.Errorf("postgres.dsn: %w", err)}
	}
	pc.RuntimeParams["application_name"] = "cdcrelay " + cfg.Relay.Name
	pc.ConnectTimeout = 10 * time.Second
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	l := &leaderLock{conn: conn, key: leaderLockKey + cfg.Postgres.Slot, pid: conn.PgConn().PID()}
	waiting := false
	fail := func(err error) (*leaderLock, error) {
		conn.Close(context.Background())
		return nil, err
	}
	// A holder is a live relay only once we see it renew its lease; the
	// backend of a relay that just died (SIGKILL, before Postgres noticed)
	// holds the lock too, but never renews it, and soon ends or goes stale.
	var seen *lockHolder
	var seenAt time.Time
	deadline := time.Now().Add(leaseStale + 2*leasePing)
	for {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, l.key).Scan(&ok); err != nil {
			return fail(fmt.Errorf("take the relay lock for slot %s: %w", cfg.Postgres.Slot, err))
		}
		if ok {
			if waiting {
				log.Info("standby taking over: the active relay is gone", "slot", cfg.Postgres.Slot)
			}
			return l, nil
		}
		holder, err := l.holder(ctx)
		if err != nil {
			return fail(err)
		}
		if holder == nil {
			continue // released between our attempt and the look
		}
		if holder.pid == previous || holder.silent > leaseStale {
			log.Warn("terminating a stale holder of the relay lock", "slot", cfg.Postgres.Slot, "holder", holder.String(), "silent", holder.silent.Round(time.Second).String())
			if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend($1)`, int64(holder.pid)); err != nil {
				return fail(fmt.Errorf("terminate stale lock holder (%s): %w", holder, err))
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		now := time.Now()
		renewed := seen != nil && seen.pid == holder.pid && holder.silent+100*time.Millisecond < seen.silent+now.Sub(seenAt)
		seen, seenAt = holder, now
		if !opts.Standby && (renewed || now.After(deadline)) {
			return fail(fatal("another cdcrelay is already running for slot %s (%s); stop it first, or start this one with --standby to wait for it", cfg.Postgres.Slot, holder))
		}
		if opts.Standby && !waiting {
			log.Info("standby: another relay is active; waiting to take over", "slot", cfg.Postgres.Slot, "active", holder.String())
			waiting = true
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// holder describes the session that holds the lock (nil if it was just released).
func (l *leaderLock) holder(ctx context.Context) (*lockHolder, error) {
	var h lockHolder
	var pid int64
	var silentMS float64
	err := l.conn.QueryRow(ctx, `
		SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local'),
		       extract(epoch FROM clock_timestamp() - coalesce(a.state_change, a.backend_start)) * 1000
		FROM pg_locks k JOIN pg_stat_activity a ON a.pid = k.pid
		WHERE k.locktype = 'advisory' AND k.granted AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND k.objid = (hashtext($1)::bigint & 4294967295)::oid
		LIMIT 1`, l.key).Scan(&pid, &h.app, &h.addr, &silentMS)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find the holder of the relay lock: %w", err)
	}
	h.pid = uint32(pid)
	h.silent = time.Duration(silentMS) * time.Millisecond
	return &h, nil
}

// alive pings the lock's connection; a live ping also renews the lease.
func (l *leaderLock) alive(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	return l.conn.Ping(pctx)
}

// watch renews the lease until ctx ends; when a ping fails the lock may be
// gone, so the session is cancelled before another relay can take over.
func (l *leaderLock) watch(ctx context.Context, cancel context.CancelCauseFunc) {
	t := time.NewTicker(leasePing)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := l.alive(ctx); err != nil && ctx.Err() == nil {
			cancel(&lockLostError{err: err})
			return
		}
	}
}

type lockLostError struct{ err error }

func (e *lockLostError) Error() string {
	return "lost the connection holding the relay lock: " + e.err.Error()
}
func (e *lockLostError) Unwrap() error { return e.err }

// Close releases the lock by ending its connection.
func (l *leaderLock) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = l.conn.Close(ctx)
}
