package replication

import (
	"context"
	"fmt"
	"regexp"
	"strings"
)

// Standby is a physical standby of the primary to check: Name (its address)
// for messages, Conn an ordinary connection to it.
type Standby struct {
	Name string
	Conn Querier
	// Err is why the caller could not connect (Conn is then nil).
	Err error
}

// FailoverReport is whether the relay's slot will survive a failover to one
// of the primary's standbys: the primary's side, what each standby says, and
// the problems found, each with its fix.
type FailoverReport struct {
	// Supported: the primary has failover slots (PostgreSQL 17 and later).
	Supported bool `json:"failover_slots_supported"`
	// SlotFailover: the relay's slot on the primary is a failover slot.
	SlotFailover bool `json:"slot_failover"`
	// SynchronizedStandbySlots is the primary's synchronized_standby_slots.
	SynchronizedStandbySlots string `json:"synchronized_standby_slots"`
	// Streaming lists the physical standbys pg_stat_replication shows.
	Streaming []StreamingStandby `json:"streaming"`
	Standbys  []StandbyReport    `json:"standbys"`
	Checks    []CheckResult      `json:"checks"`
}

// StreamingStandby is one physical walsender on the primary.
type StreamingStandby struct {
	ApplicationName string `json:"application_name"`
	ClientAddr      string `json:"client_addr"`
	State           string `json:"state"`
	SyncState       string `json:"sync_state"`
}

// StandbyReport is what one standby says.
type StandbyReport struct {
	Name                  string    `json:"name"`
	Error                 string    `json:"error,omitempty"`
	InRecovery            bool      `json:"in_recovery"`
	SyncReplicationSlots  string    `json:"sync_replication_slots,omitempty"`
	HotStandbyFeedback    string    `json:"hot_standby_feedback,omitempty"`
	PrimarySlotName       string    `json:"primary_slot_name,omitempty"`
	PrimaryConninfoDBName string    `json:"primary_conninfo_dbname,omitempty"`
	Slot                  *SlotInfo `json:"slot,omitempty"`
}

// OK reports whether no check failed or warned.
func (f *FailoverReport) OK() bool {
	for _, c := range f.Checks {
		if c.Status != CheckOK {
			return false
		}
	}
	return true
}

func (f *FailoverReport) add(name, subject string, status CheckStatus, detail, fix string) {
	f.Checks = append(f.Checks, CheckResult{Name: name, Subject: subject, Status: status, Detail: detail, Fix: fix})
}

var conninfoDBName = regexp.MustCompile(`(?:^|\s)dbname\s*=\s*'?([^'\s]+)`)

// CheckFailover checks, read-only, that the relay's slot survives a
// failover: on the primary, that it is a failover slot and that
// synchronized_standby_slots names the standbys' physical slots (so the
// relay never gets ahead of them); on each standby, sync_replication_slots,
// hot_standby_feedback, primary_slot_name and the dbname in
// primary_conninfo, and that its copy of the slot is synchronized and not
// invalidated. Standbys the primary streams to but that are not given are
// listed from pg_stat_replication.
func CheckFailover(ctx context.Context, primary Querier, slot string, standbys []Standby) (*FailoverReport, error) {
	f := &FailoverReport{Streaming: []StreamingStandby{}, Standbys: []StandbyReport{}, Checks: []CheckResult{}}
	ps, err := SlotStatus(ctx, primary, slot)
	if err != nil {
		return nil, err
	}
	f.Supported = FailoverSlotsSupported(ps.ServerVersionNum)
	f.SlotFailover = ps.Failover
	rows, err := primary.Query(ctx, `SELECT coalesce(application_name, ''), coalesce(host(client_addr), 'local'), coalesce(state, ''), coalesce(sync_state, '')
		FROM pg_stat_replication s
		WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots r WHERE r.active_pid = s.pid AND r.slot_type = 'logical')
		ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("read pg_stat_replication: %w", err)
	}
	for rows.Next() {
		var s StreamingStandby
		if err := rows.Scan(&s.ApplicationName, &s.ClientAddr, &s.State, &s.SyncState); err != nil {
			rows.Close()
			return nil, err
		}
		f.Streaming = append(f.Streaming, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read pg_stat_replication: %w", err)
	}
	if len(standbys) == 0 && len(f.Streaming) == 0 {
		return f, nil // no standby: nothing to fail over to
	}
	if !f.Supported {
		f.add("failover", slot, CheckWarn,
			"this PostgreSQL has no failover slots (17 and later have): after a failover the slot is gone and the relay stops with exit status 3",
			"upgrade to PostgreSQL 17 or later; until then a failover needs `cdcrelay setup`, `cdcrelay run --allow-slot-ahead` and a backfill of the mapped tables")
		return f, nil
	}
	var physical []string
	if rows, err := primary.Query(ctx, `SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY 1`); err == nil {
		for rows.Next() {
			var n string
			if rows.Scan(&n) == nil {
				physical = append(physical, n)
			}
		}
		rows.Close()
	}
	if err := primary.QueryRow(ctx, `SELECT current_setting('synchronized_standby_slots')`).Scan(&f.SynchronizedStandbySlots); err != nil {
		return nil, fmt.Errorf("read synchronized_standby_slots: %w", err)
	}
	listed := map[string]bool{}
	for _, n := range strings.Split(f.SynchronizedStandbySlots, ",") {
		if n = strings.TrimSpace(n); n != "" {
			listed[n] = true
		}
	}
	if len(listed) == 0 {
		names := "'<physical slot of each standby>'"
		if len(physical) > 0 {
			names = quoteLiteral(strings.Join(physical, ", "))
		}
		f.add("synchronized_standby_slots", "", CheckWarn,
			"synchronized_standby_slots is empty on the primary: the relay can receive and publish changes that no standby has yet; after a failover Kafka would hold events the new primary lost, and the relay stops at the fork",
			"on the primary: ALTER SYSTEM SET synchronized_standby_slots = "+names+"; SELECT pg_reload_conf();")
	} else {
		f.add("synchronized_standby_slots", "", CheckOK, "synchronized_standby_slots = "+f.SynchronizedStandbySlots+": the relay never gets ahead of those standbys", "")
	}
	if len(standbys) == 0 {
		f.add("standbys", "", CheckWarn,
			fmt.Sprintf("the primary streams to %d standby(s), but none is known to check its synchronized copy of the slot", len(f.Streaming)),
			"name them in postgres.standby_dsns, or list them as further hosts of postgres.dsn")
	}
	for _, sb := range standbys {
		f.Standbys = append(f.Standbys, checkStandby(ctx, f, sb, slot, ps, listed))
	}
	return f, nil
}

func checkStandby(ctx context.Context, f *FailoverReport, sb Standby, slot string, primarySlot *SlotInfo, listed map[string]bool) StandbyReport {
	rep := StandbyReport{Name: sb.Name}
	if sb.Err != nil || sb.Conn == nil {
		rep.Error = fmt.Sprint(sb.Err)
		f.add("standby", sb.Name, CheckWarn, fmt.Sprintf("cannot reach standby %s: %v", sb.Name, sb.Err), "check postgres.standby_dsns (or the hosts of postgres.dsn) and pg_hba.conf on the standby")
		return rep
	}
	var conninfo *string
	err := sb.Conn.QueryRow(ctx, `SELECT pg_is_in_recovery(), coalesce(current_setting('sync_replication_slots', true), ''), current_setting('hot_standby_feedback'),
		current_setting('primary_slot_name')`).Scan(&rep.InRecovery, &rep.SyncReplicationSlots, &rep.HotStandbyFeedback, &rep.PrimarySlotName)
	if err == nil {
		// primary_conninfo may hold a password: only superusers and
		// pg_read_all_settings can read it.
		_ = sb.Conn.QueryRow(ctx, `SELECT current_setting('primary_conninfo') WHERE pg_has_role('pg_read_all_settings', 'MEMBER')
			OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)`).Scan(&conninfo)
	}
	if err != nil {
		rep.Error = err.Error()
		f.add("standby", sb.Name, CheckWarn, fmt.Sprintf("cannot read the settings of standby %s: %v", sb.Name, err), "")
		return rep
	}
	if !rep.InRecovery {
		f.add("standby", sb.Name, CheckWarn, fmt.Sprintf("%s is not a standby (it is not in recovery)", sb.Name), "remove it from postgres.standby_dsns")
		return rep
	}
	onStandby := "on standby " + sb.Name + ": "
	if rep.SyncReplicationSlots == "on" {
		f.add("sync_replication_slots", sb.Name, CheckOK, "sync_replication_slots = on on "+sb.Name, "")
	} else {
		f.add("sync_replication_slots", sb.Name, CheckWarn,
			fmt.Sprintf("sync_replication_slots = %s on standby %s: it keeps no copy of the slot, and a failover to it loses the slot", orNone(rep.SyncReplicationSlots), sb.Name),
			onStandby+"ALTER SYSTEM SET sync_replication_slots = on; SELECT pg_reload_conf();")
	}
	if rep.HotStandbyFeedback == "on" {
		f.add("hot_standby_feedback", sb.Name, CheckOK, "hot_standby_feedback = on on "+sb.Name, "")
	} else {
		f.add("hot_standby_feedback", sb.Name, CheckWarn,
			fmt.Sprintf("hot_standby_feedback = %s on standby %s: slot synchronization needs it (the primary would remove catalog rows the copy of the slot needs)", rep.HotStandbyFeedback, sb.Name),
			onStandby+"ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf();")
	}
	switch {
	case rep.PrimarySlotName == "":
		f.add("primary_slot_name", sb.Name, CheckWarn,
			fmt.Sprintf("primary_slot_name is not set on standby %s: slot synchronization needs a physical slot for the standby on the primary", sb.Name),
			"on the primary: SELECT pg_create_physical_replication_slot('standby1'); "+onStandby+"ALTER SYSTEM SET primary_slot_name = 'standby1'; SELECT pg_reload_conf(); "+
				"and add it to the primary's synchronized_standby_slots")
	case len(listed) > 0 && !listed[rep.PrimarySlotName]:
		f.add("primary_slot_name", sb.Name, CheckWarn,
			fmt.Sprintf("standby %s streams through slot %s, which the primary's synchronized_standby_slots (%s) does not name: the relay may get ahead of this standby", sb.Name, rep.PrimarySlotName, f.SynchronizedStandbySlots),
			fmt.Sprintf("on the primary: ALTER SYSTEM SET synchronized_standby_slots = %s; SELECT pg_reload_conf();", quoteLiteral(f.SynchronizedStandbySlots+", "+rep.PrimarySlotName)))
	default:
		f.add("primary_slot_name", sb.Name, CheckOK, "primary_slot_name = "+rep.PrimarySlotName+" on "+sb.Name, "")
	}
	switch {
	case conninfo == nil:
		f.add("primary_conninfo", sb.Name, CheckWarn,
			fmt.Sprintf("cannot read primary_conninfo on standby %s (it may hold a password: superusers and members of pg_read_all_settings can read it); slot synchronization needs a dbname in it", sb.Name),
			"check it on the standby as a superuser: SHOW primary_conninfo;")
	default:
		if m := conninfoDBName.FindStringSubmatch(*conninfo); m != nil {
			rep.PrimaryConninfoDBName = m[1]
			f.add("primary_conninfo", sb.Name, CheckOK, "primary_conninfo names dbname="+m[1]+" on "+sb.Name, "")
		} else {
			f.add("primary_conninfo", sb.Name, CheckWarn,
				fmt.Sprintf("primary_conninfo on standby %s names no dbname: the slot synchronization worker cannot connect to the primary", sb.Name),
				onStandby+"ALTER SYSTEM SET primary_conninfo = '<the current value> dbname="+orNone(primarySlot.Database)+"'; SELECT pg_reload_conf();")
		}
	}
	si, err := SlotStatus(ctx, sb.Conn, slot)
	if err != nil {
		f.add("synced_slot", sb.Name, CheckWarn, fmt.Sprintf("cannot read slot %s on standby %s: %v", slot, sb.Name, err), "")
		return rep
	}
	rep.Slot = si
	switch {
	case !si.Exists && !primarySlot.Failover:
		f.add("synced_slot", sb.Name, CheckWarn,
			fmt.Sprintf("standby %s has no copy of slot %s: the slot is not a failover slot", sb.Name, slot), "stop the relay, run `cdcrelay setup` (postgres.failover_slot = true), start the relay")
	case !si.Exists:
		f.add("synced_slot", sb.Name, CheckWarn,
			fmt.Sprintf("standby %s has no synchronized copy of slot %s yet: a failover now would lose the slot", sb.Name, slot),
			"fix the standby settings above; the copy appears within seconds once they are right and the relay streams")
	case !si.Synced:
		f.add("synced_slot", sb.Name, CheckWarn,
			fmt.Sprintf("slot %s on standby %s was not synchronized from the primary (synced = false): it was created there, and the standby cannot keep it in step", slot, sb.Name),
			fmt.Sprintf("on standby %s: SELECT pg_drop_replication_slot(%s); the synchronized copy replaces it", sb.Name, quoteLiteral(slot)))
	case si.Invalidated():
		f.add("synced_slot", sb.Name, CheckFail,
			fmt.Sprintf("the copy of slot %s on standby %s is invalidated (%s): a failover to it would lose the slot", slot, sb.Name, orNone(si.InvalidationReason+si.WALStatus)),
			"check hot_standby_feedback and primary_slot_name on the standby; the worker re-creates the copy once they are right")
	default:
		f.add("synced_slot", sb.Name, CheckOK,
			fmt.Sprintf("standby %s keeps a synchronized copy of slot %s, confirmed up to %s (the primary's: %s)", sb.Name, slot, si.ConfirmedFlushLSN, primarySlot.ConfirmedFlushLSN), "")
	}
	return rep
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
