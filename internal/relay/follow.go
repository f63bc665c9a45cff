package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

// UnsafeResumeError: the relay stopped because resuming from where it is
// would lose or repeat events, and only an operator can decide how to go on
// (the slot is gone or invalidated, it is ahead of the Kafka checkpoint, or
// the server's WAL does not continue the checkpoint's). `cdcrelay run`
// exits with status 3 on it, so that a supervisor can tell it from a crash
// (systemd: RestartPreventExitStatus=3). The message names the way out.
type UnsafeResumeError struct{ Err error }

func (e *UnsafeResumeError) Error() string { return e.Err.Error() }
func (e *UnsafeResumeError) Unwrap() error { return e.Err }

// unsafeResume is a fatal error (Run does not retry it) that is an
// [*UnsafeResumeError].
func unsafeResume(format string, args ...any) error {
	return &FatalError{Err: &UnsafeResumeError{Err: fmt.Errorf(format, args...)}}
}

// notPrimaryError: a connection reached a standby, or two connections reached
// different servers; retried with backoff (a failover is under way).
type notPrimaryError struct{ msg string }

func (e *notPrimaryError) Error() string { return e.msg }

// identifyPrimary identifies the server the relay streams from and makes
// sure the lock's connection is on the same one and that it is a primary.
// After a failover the connections of a multi-host DSN go to the new primary
// (target_session_attrs=primary); while none is promoted yet they fail, and
// the session is retried with backoff.
func (s *session) identifyPrimary(ctx context.Context, lock *leaderLock) (*replication.ServerIdentity, error) {
	srv, err := replication.IdentifyServer(ctx, s.cfg.Postgres.DSN)
	if err != nil {
		return nil, err
	}
	if srv.InRecovery {
		return nil, &notPrimaryError{fmt.Sprintf("the server at %s is a standby (in recovery): the relay streams from the primary only; "+
			"with several hosts in postgres.dsn use target_session_attrs=primary", srv.Addr)}
	}
	var sysid string
	var recovery bool
	if err := lock.conn.QueryRow(ctx, `SELECT system_identifier::text, pg_is_in_recovery() FROM pg_control_system()`).Scan(&sysid, &recovery); err != nil {
		return nil, fmt.Errorf("identify the server of the relay lock: %w", err)
	}
	if sysid != srv.SystemID || recovery {
		return nil, &notPrimaryError{fmt.Sprintf("the relay's lock connection reached another server (system %s, in recovery %v) than its replication connection (%s, system %s): a failover under way?",
			sysid, recovery, srv.Addr, srv.SystemID)}
	}
	return srv, nil
}

// loadSlot reads the slot on the lock's connection.
func loadSlot(ctx context.Context, conn *pgx.Conn, slot string) (*replication.SlotInfo, error) {
	si, err := replication.SlotStatus(ctx, conn, slot)
	if err != nil {
		return nil, err
	}
	if si.Exists && (si.Type != "logical" || si.Plugin != "pgoutput") {
		return nil, fatal("replication slot %s is not a pgoutput logical slot (type %s, plugin %q)", slot, si.Type, si.Plugin)
	}
	return si, nil
}

// resumePoint decides where the session resumes, from the Kafka checkpoint
// (cp, found), the slot and the server, or refuses with the way out. The
// rule: resume at the checkpoint (the relay skips what Kafka has) whenever
// the server's WAL continues it and the slot is not past it; a slot behind
// the checkpoint is fine (a synchronized slot after a failover usually is).
func (s *session) resumePoint(cp sink.Checkpoint, found bool, slot *replication.SlotInfo, srv *replication.ServerIdentity) (sink.Checkpoint, error) {
	pg := &s.cfg.Postgres
	where := fmt.Sprintf("the primary at %s (system identifier %s, timeline %d)", srv.Addr, srv.SystemID, srv.Timeline)
	recreate := fmt.Sprintf("`cdcrelay setup` (creates the slot), `cdcrelay run --allow-slot-ahead` (accepts that the new slot starts after the checkpoint), "+
		"then `cdcrelay backfill` each mapped table (%s) to publish their current rows", strings.Join(s.mapper.Tables(), ", "))
	switch {
	case !slot.Exists && !found:
		return cp, fatal("replication slot %s does not exist on %s: run `cdcrelay setup` first", pg.Slot, where)
	case !slot.Exists:
		return cp, unsafeResume("replication slot %s does not exist on %s, although the Kafka checkpoint says the relay published up to %s: "+
			"the slot was lost, most likely by a failover to a standby that had no synchronized copy of it "+
			"(PostgreSQL before 17, postgres.failover_slot = false, a standby without sync_replication_slots = on, or a copy not synchronized yet), or it was dropped. "+
			"The relay does not create a new slot by itself: it would start at the current WAL position, and the changes committed since the checkpoint would never be published. "+
			"To recover: %s", pg.Slot, where, cp, recreate)
	case slot.Invalidated():
		reason := slot.InvalidationReason
		if reason == "" {
			reason = "wal_status = lost"
		}
		return cp, unsafeResume("replication slot %s on %s is invalidated (%s): the server can no longer decode the changes since %s, so they cannot be published. "+
			"To recover: `cdcrelay teardown --yes` (drops the slot and the publication), %s",
			pg.Slot, where, reason, slot.ConfirmedFlushLSN, recreate)
	case !found:
		s.log.Info("no checkpoint in kafka yet; starting at the slot's position", "slot", pg.Slot, "lsn", slot.ConfirmedFlushLSN.String())
		return sink.Checkpoint{LSN: slot.ConfirmedFlushLSN}, nil
	}
	if err := srv.Continues(cp.SystemID, cp.Timeline, cp.LSN, cp.TxLSN); err != nil {
		var de *replication.DivergedError
		if !errors.As(err, &de) {
			return cp, err
		}
		if !s.opts.AllowSlotAhead {
			way := "To recover: re-create the slot (`cdcrelay teardown --yes`), " + recreate
			if de.Reason == "timeline-ahead" {
				way = "If the cluster has indeed moved on, point postgres.dsn at its current primary"
			}
			return cp, unsafeResume("%v. %s", err, way)
		}
		start := slot.ConfirmedFlushLSN
		if fork := srv.ForkPoint(cp.Timeline); de.Reason == "fork" && fork > start {
			start = fork
		}
		s.log.Warn("the kafka checkpoint cannot be followed on this server; continuing from the slot as --allow-slot-ahead says",
			"slot", pg.Slot, "reason", err.Error(), "lsn", start.String(), "checkpoint", cp.String())
		return sink.Checkpoint{LSN: start, Seq: cp.Seq, Backfills: cp.Backfills}, nil
	}
	if cp.Timeline != 0 && cp.Timeline != srv.Timeline {
		s.log.Warn("the primary is on a new timeline since the checkpoint (a failover); its history continues the checkpoint: following it",
			"slot", pg.Slot, "checkpoint_timeline", cp.Timeline, "timeline", srv.Timeline, "fork", srv.ForkPoint(cp.Timeline).String(), "checkpoint", cp.String())
	}
	switch {
	case slot.ConfirmedFlushLSN > cp.LSN && !s.opts.AllowSlotAhead:
		return cp, unsafeResume("slot %s is at %s, ahead of the kafka checkpoint %s: changes between the two were never published "+
			"(was the slot advanced or re-created by hand?); start with --allow-slot-ahead to accept the loss and continue from the slot",
			pg.Slot, slot.ConfirmedFlushLSN, cp.LSN)
	case slot.ConfirmedFlushLSN > cp.LSN:
		s.log.Warn("slot is ahead of the kafka checkpoint; continuing from the slot as --allow-slot-ahead says", "slot", pg.Slot, "lsn", slot.ConfirmedFlushLSN.String(), "checkpoint", cp.String())
		return sink.Checkpoint{LSN: slot.ConfirmedFlushLSN, Seq: cp.Seq, Backfills: cp.Backfills}, nil
	}
	s.log.Info("resuming from kafka checkpoint", "slot", pg.Slot, "lsn", cp.LSN.String(), "checkpoint", cp.String(), "slot_lsn", slot.ConfirmedFlushLSN.String())
	return cp, nil
}
