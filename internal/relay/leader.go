package relay

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/config"
)

// leaderLock is a session-level advisory lock on the source database, keyed by
// the slot name. Postgres releases it when the holder's connection ends, so
// a relay that dies (even by SIGKILL) frees it for the next one.
type leaderLock struct {
	conn *pgx.Conn
	key  string
}

const leaderLockKey = "cdcrelay slot "

func acquireLeadership(ctx context.Context, cfg *config.Config, opts Options, log *slog.Logger) (*leaderLock, error) {
	pc, err := pgx.ParseConfig(cfg.Postgres.DSN)
	if err != nil {
		return nil, &FatalError{Err: fmt.Errorf("postgres.dsn: %w", err)}
	}
	pc.RuntimeParams["application_name"] = "cdcrelay " + cfg.Relay.Name
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	l := &leaderLock{conn: conn, key: leaderLockKey + cfg.Postgres.Slot}
	waiting := false
	for {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, l.key).Scan(&ok); err != nil {
			conn.Close(context.Background())
			return nil, fmt.Errorf("take the relay lock for slot %s: %w", cfg.Postgres.Slot, err)
		}
		if ok {
			if waiting {
				log.Info("standby taking over: the active relay is gone", "slot", cfg.Postgres.Slot)
			}
			return l, nil
		}
		holder := l.holder(ctx)
		if !opts.Standby {
			conn.Close(context.Background())
			return nil, fatal("another cdcrelay is already running for slot %s (%s); stop it first, or start this one with --standby to wait for it", cfg.Postgres.Slot, holder)
		}
		if !waiting {
			log.Info("standby: another relay is active; waiting to take over", "slot", cfg.Postgres.Slot, "active", holder)
			waiting = true
		}
		select {
		case <-ctx.Done():
			conn.Close(context.Background())
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// holder describes the session that holds the lock, for the error message.
func (l *leaderLock) holder(ctx context.Context) string {
	var pid int32
	var app, addr string
	err := l.conn.QueryRow(ctx, `
		SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local')
		FROM pg_locks k JOIN pg_stat_activity a ON a.pid = k.pid
		WHERE k.locktype = 'advisory' AND k.granted AND k.objid = (hashtext($1)::bigint & 4294967295)::oid
		LIMIT 1`, l.key).Scan(&pid, &app, &addr)
	if err != nil {
		return "holder unknown"
	}
	return fmt.Sprintf("backend pid %d, application %q, client %s", pid, app, addr)
}

// watch pings the lock's connection; when it fails the lock may be gone, so
// the session is cancelled before another relay can take over.
func (l *leaderLock) watch(ctx context.Context, cancel context.CancelCauseFunc) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		err := l.conn.Ping(pctx)
		pcancel()
		if err != nil && ctx.Err() == nil {
			cancel(fmt.Errorf("lost the connection holding the relay lock: %w", err))
			return
		}
	}
}

// Close releases the lock by ending its connection.
func (l *leaderLock) Close(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_ = l.conn.Close(ctx)
}
