package replication

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// failoverSlotVersion is the first server version with failover slots
// (CREATE_REPLICATION_SLOT ... FAILOVER, sync_replication_slots).
const failoverSlotVersion = 170000

// FailoverSlotsSupported reports whether a server of server_version_num v
// can keep a logical slot synchronized on its standbys.
func FailoverSlotsSupported(v int) bool { return v >= failoverSlotVersion }

func (st *dbState) failoverSlots() bool {
	return st.plan.FailoverSlot && FailoverSlotsSupported(st.versionNum)
}

// alterFailover is the replication command that makes an existing slot a
// failover slot. There is no SQL function for it in PostgreSQL 17 or 18.
func alterFailover(slot string) string {
	return "ALTER_REPLICATION_SLOT " + quoteIdent(slot) + " (FAILOVER true)"
}

func isReplicationCommand(s string) bool { return strings.HasPrefix(s, "ALTER_REPLICATION_SLOT ") }

// checkFailoverSlot: with failover_slot on and a server that has failover
// slots, the slot must be one; setup makes an existing one so.
func (st *dbState) checkFailoverSlot(r *Report, setup bool) {
	s := st.slot
	name := st.plan.Slot
	switch {
	case !st.plan.FailoverSlot:
		return
	case !FailoverSlotsSupported(st.versionNum):
		if st.standbys > 0 {
			r.add("failover_slot", name, CheckWarn,
				fmt.Sprintf("PostgreSQL %s has no failover slots: the slot exists on this primary only; after a failover to one of its %d standby(s) it is gone, and the relay stops (exit status 3) until it is re-created and the mapped tables backfilled",
					st.version, st.standbys),
				"upgrade to PostgreSQL 17 or later for failover slots; until then see the README, \"Running against an HA Postgres\"")
		}
		return
	case !s.Exists || s.Type != "logical" || s.Failover:
		if s.Exists && s.Failover {
			r.add("failover_slot", name, CheckOK, fmt.Sprintf("replication slot %s is a failover slot: standbys with sync_replication_slots = on keep a copy", name), "")
		}
		return
	}
	alter := alterFailover(name)
	switch {
	case s.Active && setup:
		r.add("failover_slot", name, CheckFail,
			fmt.Sprintf("replication slot %s is not a failover slot, and it cannot be made one while a walsender holds it (backend pid %d, a running relay?): ALTER_REPLICATION_SLOT fails on an active slot", name, s.ActivePID),
			"stop the relay, run `cdcrelay setup` again (it runs "+alter+" on a replication connection), then start the relay")
	case setup:
		st.slotStmts = append(st.slotStmts, alter)
		r.add("failover_slot", name, CheckOK, fmt.Sprintf("replication slot %s is not a failover slot yet (setup makes it one)", name), "")
	default:
		fix := "run `cdcrelay setup`, which runs " + alter + " on a replication connection"
		if s.Active {
			fix = "stop the relay (a slot in use cannot be altered), " + fix + ", then start the relay again"
		}
		r.add("failover_slot", name, CheckWarn,
			fmt.Sprintf("replication slot %s is not a failover slot (postgres.failover_slot = true): standbys do not keep a copy of it, and a failover loses it", name), fix)
	}
}

// runReplicationCommand runs a replication command of setup on a
// replication connection of its own.
func runReplicationCommand(ctx context.Context, plan Plan, cmd string) error {
	if plan.ReplicationDSN == "" {
		return fmt.Errorf("setup: %s needs a replication connection, and no DSN was given", cmd)
	}
	conn, err := connectReplication(ctx, plan.ReplicationDSN)
	if err != nil {
		return fmt.Errorf("setup: %s: %w", cmd, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, cmd).ReadAll(); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "55006" {
			return fmt.Errorf("setup: %s: %w (a walsender holds the slot: stop the relay, run setup again, then start the relay)", cmd, err)
		}
		return fmt.Errorf("setup: %s: %w", cmd, err)
	}
	return nil
}

// connectReplication opens a logical replication connection (replication=database).
func connectReplication(ctx context.Context, dsn string) (*pgconn.PgConn, error) {
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres.dsn: %w", err)
	}
	pc.RuntimeParams["replication"] = "database"
	pc.RuntimeParams["application_name"] = ApplicationName
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("replication connection: %w", err)
	}
	return conn, nil
}

// ServerIdentity is what IDENTIFY_SYSTEM says about the server a replication
// connection reached, plus what the relay needs to follow it across a
// failover.
type ServerIdentity struct {
	// SystemID is the cluster's system identifier (pg_control_system()): the
	// same on a primary and its physical standbys, different for another
	// cluster (a new initdb, a logical copy, pg_upgrade).
	SystemID string
	// Timeline is the WAL timeline the server writes; a promotion starts a
	// new one.
	Timeline uint32
	// WALPos is the server's current WAL flush position.
	WALPos LSN
	// InRecovery: the server is a standby (it cannot stream from a slot of
	// the primary, nor hold the relay's lock).
	InRecovery bool
	// Addr is the host:port the connection reached (one of a multi-host DSN).
	Addr string
	// History is the server's timeline history (TIMELINE_HISTORY): for each
	// earlier timeline, where it ended. Empty on timeline 1.
	History []TimelineSwitch
}

// TimelineSwitch is one line of a timeline history file: timeline Timeline
// ended at Switch, where the next one began.
type TimelineSwitch struct {
	Timeline uint32
	Switch   LSN
}

// IdentifyServer connects to the server a DSN reaches now (with several
// hosts: the primary, see target_session_attrs) and identifies it.
func IdentifyServer(ctx context.Context, dsn string) (*ServerIdentity, error) {
	conn, err := connectReplication(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	return identify(ctx, conn)
}

func identify(ctx context.Context, conn *pgconn.PgConn) (*ServerIdentity, error) {
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	id := &ServerIdentity{SystemID: sys.SystemID, Timeline: uint32(sys.Timeline), WALPos: sys.XLogPos}
	if c := conn.Conn(); c != nil {
		id.Addr = c.RemoteAddr().String()
	}
	res, err := conn.Exec(ctx, "SELECT pg_is_in_recovery()").ReadAll()
	if err != nil {
		return nil, fmt.Errorf("pg_is_in_recovery(): %w", err)
	}
	if len(res) == 1 && len(res[0].Rows) == 1 {
		id.InRecovery = string(res[0].Rows[0][0]) == "t"
	}
	if id.Timeline > 1 {
		h, err := pglogrepl.TimelineHistory(ctx, conn, int32(id.Timeline))
		if err != nil {
			return nil, fmt.Errorf("TIMELINE_HISTORY %d: %w", id.Timeline, err)
		}
		if id.History, err = parseTimelineHistory(h.Content); err != nil {
			return nil, fmt.Errorf("timeline history %s: %w", h.FileName, err)
		}
	}
	return id, nil
}

// parseTimelineHistory reads a history file: "tli<TAB>switch LSN<TAB>reason"
// per line, # comments.
func parseTimelineHistory(content []byte) ([]TimelineSwitch, error) {
	var out []TimelineSwitch
	for _, line := range strings.Split(string(content), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("line %q", line)
		}
		tli, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("line %q: %w", line, err)
		}
		lsn, err := ParseLSN(f[1])
		if err != nil {
			return nil, fmt.Errorf("line %q: %w", line, err)
		}
		out = append(out, TimelineSwitch{Timeline: uint32(tli), Switch: lsn})
	}
	return out, nil
}

// DivergedError says that the server's WAL does not continue the history
// a checkpoint was written on, so resuming there could skip or repeat
// changes.
type DivergedError struct {
	// Reason is "system" (another cluster), "timeline-ahead" (the server is
	// on an older timeline than the checkpoint: a former primary) or "fork"
	// (the server's timeline branched off before the checkpoint's position).
	Reason string
	Msg    string
}

func (e *DivergedError) Error() string { return e.Msg }

// Continues checks that WAL position lsn on timeline tli of cluster sysid
// (a checkpoint's) is part of this server's history, so that streaming from
// it continues where the checkpoint ended. txLSN, if not zero, is the
// commit LSN of a transaction published in part: its commit record must be
// in the shared history too. An empty sysid or a zero tli (a checkpoint of
// an older relay) is not checked.
//
// Why a fork matters: after a failover the new primary's timeline begins at
// the point up to which the standby had replayed. WAL of the old primary
// past that point was never on the standby; if the relay published changes
// from there (asynchronous replication, no synchronized_standby_slots),
// Kafka holds events the new primary does not have, and the new timeline
// reuses those LSNs for other transactions, which a resume at the
// checkpoint would skip.
func (id *ServerIdentity) Continues(sysid string, tli uint32, lsn, txLSN LSN) error {
	if sysid != "" && sysid != id.SystemID {
		return &DivergedError{Reason: "system", Msg: fmt.Sprintf(
			"the server at %s is database cluster %s, but the Kafka checkpoint was written on cluster %s: "+
				"this is another database (a new initdb, a restored or logical copy, pg_upgrade), and its LSNs do not continue the checkpoint's",
			id.Addr, id.SystemID, sysid)}
	}
	if tli == 0 || tli == id.Timeline {
		return nil
	}
	if tli > id.Timeline {
		return &DivergedError{Reason: "timeline-ahead", Msg: fmt.Sprintf(
			"the server at %s is on timeline %d, but the Kafka checkpoint was written on timeline %d of the same cluster: "+
				"this server is a former primary (or a restored backup) that the cluster has failed over from; point the relay at the current primary",
			id.Addr, id.Timeline, tli)}
	}
	for _, h := range id.History {
		if h.Timeline != tli {
			continue
		}
		if lsn > h.Switch || (txLSN != 0 && txLSN >= h.Switch) {
			pos := lsn
			if txLSN > pos {
				pos = txLSN
			}
			return &DivergedError{Reason: "fork", Msg: fmt.Sprintf(
				"the server at %s is on timeline %d, which branched off timeline %d at %s, but the Kafka checkpoint is at %s on timeline %d: "+
					"the relay published changes from WAL of the old primary that the new one never received (asynchronous replication, or no synchronized_standby_slots), "+
					"and resuming would skip the new primary's changes after %s",
				id.Addr, id.Timeline, tli, h.Switch, pos, tli, h.Switch)}
		}
		return nil
	}
	return &DivergedError{Reason: "fork", Msg: fmt.Sprintf(
		"the server at %s is on timeline %d, whose history does not contain timeline %d of the Kafka checkpoint: its WAL does not continue the checkpoint's",
		id.Addr, id.Timeline, tli)}
}

// ForkPoint is where timeline tli ended in this server's history (0: not in it).
func (id *ServerIdentity) ForkPoint(tli uint32) LSN {
	for _, h := range id.History {
		if h.Timeline == tli {
			return h.Switch
		}
	}
	return 0
}
