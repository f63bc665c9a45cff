package replication

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SlotInfo is the state of a replication slot, as pg_replication_slots and
// the server's WAL position tell it.
type SlotInfo struct {
	Slot     string
	Exists   bool
	Type     string // "logical" or "physical"
	Plugin   string
	Database string
	Active   bool
	// ActivePID is the backend streaming from the slot, 0 when inactive.
	ActivePID int32
	// ConfirmedFlushLSN: the consumer confirmed everything before it; a
	// restart streams the transactions that commit after it.
	ConfirmedFlushLSN LSN
	// RestartLSN is the oldest WAL the slot keeps the server from removing.
	RestartLSN LSN
	// CurrentLSN is the server's current WAL write position.
	CurrentLSN LSN
	// RetainedWALBytes = CurrentLSN - RestartLSN: WAL kept on the server's
	// disk for this slot.
	RetainedWALBytes int64
	// LagBytes = CurrentLSN - ConfirmedFlushLSN: WAL written since the
	// consumer's last confirmation.
	LagBytes int64
	// WALStatus is "reserved", "extended", "unreserved" or "lost".
	WALStatus string
	// SafeWALSize is how many more bytes of WAL can be written before the slot
	// is in danger of losing WAL; nil when max_slot_wal_keep_size = -1.
	SafeWALSize *int64
	// MaxSlotWALKeepSize is max_slot_wal_keep_size in bytes; -1: unlimited.
	MaxSlotWALKeepSize int64

	// The columns that only newer servers have (zero on older ones):
	// InvalidationReason (17+; on 16 "conflicting" is reported as
	// "rows_removed") says why the slot can no longer be used, e.g.
	// "wal_removed", "rows_removed", "wal_level_insufficient",
	// "idle_timeout" (18); "" while it is valid. InactiveSince (17+) is when
	// it was last released. Failover (17+): synchronized to standbys with
	// sync_replication_slots. Synced (17+): a copy synchronized from the
	// primary (on a standby; on a promoted one it may stay true).
	InvalidationReason string
	InactiveSince      *time.Time
	Failover           bool
	Synced             bool
	// ServerVersionNum is the server's server_version_num, e.g. 170011.
	ServerVersionNum int
	// InRecovery: the server is a standby.
	InRecovery bool

	currentDB string
}

// Invalidated reports whether the slot can no longer be streamed from: its
// WAL was removed (wal_status lost) or it was invalidated for another reason.
func (s *SlotInfo) Invalidated() bool {
	return s.Exists && (s.WALStatus == "lost" || s.InvalidationReason != "")
}

// slotInfoJSON is the form of `cdcrelay status --output json`: LSNs in
// Postgres's text form, snake_case names as in pg_replication_slots.
type slotInfoJSON struct {
	Slot               string `json:"slot"`
	Exists             bool   `json:"exists"`
	Type               string `json:"slot_type,omitempty"`
	Plugin             string `json:"plugin,omitempty"`
	Database           string `json:"database,omitempty"`
	Active             bool   `json:"active"`
	ActivePID          *int32 `json:"active_pid"`
	ConfirmedFlushLSN  string `json:"confirmed_flush_lsn,omitempty"`
	RestartLSN         string `json:"restart_lsn,omitempty"`
	CurrentLSN         string `json:"current_wal_lsn"`
	RetainedWALBytes   int64  `json:"retained_wal_bytes"`
	LagBytes           int64  `json:"lag_bytes"`
	WALStatus          string `json:"wal_status,omitempty"`
	SafeWALSize        *int64 `json:"safe_wal_size"`
	MaxSlotWALKeepSize int64  `json:"max_slot_wal_keep_size"`
	InvalidationReason string `json:"invalidation_reason,omitempty"`
	InactiveSince      string `json:"inactive_since,omitempty"`
	Failover           bool   `json:"failover"`
	Synced             bool   `json:"synced"`
}

// MarshalJSON writes the slot as `cdcrelay status --output json` shows it.
func (s SlotInfo) MarshalJSON() ([]byte, error) {
	j := slotInfoJSON{
		Slot: s.Slot, Exists: s.Exists, Type: s.Type, Plugin: s.Plugin, Database: s.Database,
		Active: s.Active, CurrentLSN: s.CurrentLSN.String(),
		RetainedWALBytes: s.RetainedWALBytes, LagBytes: s.LagBytes, WALStatus: s.WALStatus,
		SafeWALSize: s.SafeWALSize, MaxSlotWALKeepSize: s.MaxSlotWALKeepSize,
		InvalidationReason: s.InvalidationReason, Failover: s.Failover, Synced: s.Synced,
	}
	if s.InactiveSince != nil {
		j.InactiveSince = s.InactiveSince.UTC().Format(time.RFC3339)
	}
	if s.ActivePID != 0 {
		pid := s.ActivePID
		j.ActivePID = &pid
	}
	if s.Exists {
		if s.ConfirmedFlushLSN != 0 {
			j.ConfirmedFlushLSN = s.ConfirmedFlushLSN.String()
		}
		if s.RestartLSN != 0 {
			j.RestartLSN = s.RestartLSN.String()
		}
	}
	return json.Marshal(j)
}

// SlotStatus reads the state of the named slot. A missing slot is not an
// error: Exists is false.
func SlotStatus(ctx context.Context, db Querier, slot string) (*SlotInfo, error) {
	si := &SlotInfo{Slot: slot}
	var current string
	var keep int64
	err := db.QueryRow(ctx, `
		SELECT current_database(),
		       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
		       CASE WHEN current_setting('max_slot_wal_keep_size') = '-1' THEN -1
		            ELSE pg_size_bytes(current_setting('max_slot_wal_keep_size')) END,
		       current_setting('server_version_num')::int, pg_is_in_recovery()`).Scan(
		&si.currentDB, &current, &keep, &si.ServerVersionNum, &si.InRecovery)
	if err != nil {
		return nil, fmt.Errorf("read wal position: %w", err)
	}
	si.MaxSlotWALKeepSize = keep
	if si.CurrentLSN, err = ParseLSN(current); err != nil {
		return nil, fmt.Errorf("wal position %q: %w", current, err)
	}
	var (
		typ, plugin, database, walStatus *string
		pid                              *int32
		confirmed, restart               *string
		retained, lag, safe              *int64
		invalidation                     *string
	)
	// The columns differ by version: "conflicting" came with 16,
	// "invalidation_reason", "inactive_since", "failover" and "synced" with 17.
	newer := "NULL::text, NULL::timestamptz, false, false"
	switch {
	case si.ServerVersionNum >= 170000:
		newer = "invalidation_reason, inactive_since, failover, synced"
	case si.ServerVersionNum >= 160000:
		newer = "CASE WHEN conflicting THEN 'rows_removed' END, NULL::timestamptz, false, false"
	}
	err = db.QueryRow(ctx, `
		SELECT slot_type, plugin, database, active, active_pid,
		       confirmed_flush_lsn::text, restart_lsn::text,
		       pg_wal_lsn_diff($2::pg_lsn, restart_lsn)::bigint,
		       pg_wal_lsn_diff($2::pg_lsn, confirmed_flush_lsn)::bigint,
		       wal_status, safe_wal_size, `+newer+`
		FROM pg_replication_slots WHERE slot_name = $1`, slot, current).Scan(
		&typ, &plugin, &database, &si.Active, &pid, &confirmed, &restart, &retained, &lag, &walStatus, &safe,
		&invalidation, &si.InactiveSince, &si.Failover, &si.Synced)
	if errors.Is(err, pgx.ErrNoRows) {
		return si, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read replication slot %s: %w", slot, err)
	}
	si.Exists = true
	si.Type, si.Plugin, si.Database, si.WALStatus = ptrValue(typ), ptrValue(plugin), ptrValue(database), ptrValue(walStatus)
	if pid != nil {
		si.ActivePID = *pid
	}
	if confirmed != nil {
		if si.ConfirmedFlushLSN, err = ParseLSN(*confirmed); err != nil {
			return nil, fmt.Errorf("slot %s confirmed_flush_lsn %q: %w", slot, *confirmed, err)
		}
	}
	if restart != nil {
		if si.RestartLSN, err = ParseLSN(*restart); err != nil {
			return nil, fmt.Errorf("slot %s restart_lsn %q: %w", slot, *restart, err)
		}
	}
	if retained != nil {
		si.RetainedWALBytes = *retained
	}
	if lag != nil {
		si.LagBytes = *lag
	}
	si.SafeWALSize = safe
	si.InvalidationReason = ptrValue(invalidation)
	return si, nil
}

// PublicationInfo is the state of a publication.
type PublicationInfo struct {
	Name      string   `json:"name"`
	Exists    bool     `json:"exists"`
	AllTables bool     `json:"all_tables,omitempty"`
	Tables    []string `json:"tables"` // "schema.table", sorted
}

// PublicationStatus reads the named publication and the tables it publishes.
func PublicationStatus(ctx context.Context, db Querier, name string) (*PublicationInfo, error) {
	pi := &PublicationInfo{Name: name, Tables: []string{}}
	err := db.QueryRow(ctx, `SELECT puballtables FROM pg_publication WHERE pubname = $1`, name).Scan(&pi.AllTables)
	if errors.Is(err, pgx.ErrNoRows) {
		return pi, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read publication %s: %w", name, err)
	}
	pi.Exists = true
	rows, err := db.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1`, name)
	if err != nil {
		return nil, fmt.Errorf("read tables of publication %s: %w", name, err)
	}
	if pi.Tables, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return nil, fmt.Errorf("read tables of publication %s: %w", name, err)
	}
	return pi, nil
}

func ptrValue[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
