package replication

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Snapshot is a transaction snapshot as pg_current_snapshot() reports it:
// every transaction below Xmin has ended, none at or above Xmax had ended
// when it was taken, and Xip lists those between the two still running.
// The ids are 64-bit (xid8: epoch and xid); the stream's are 32-bit.
type Snapshot struct {
	Xmin, Xmax uint64
	Xip        []uint64 // sorted
}

// ParseSnapshot parses the text form of pg_snapshot ("xmin:xmax:xip,...").
func ParseSnapshot(s string) (Snapshot, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return Snapshot{}, fmt.Errorf("snapshot %q: want xmin:xmax:xip", s)
	}
	var snap Snapshot
	var err error
	if snap.Xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %q: xmin: %w", s, err)
	}
	if snap.Xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %q: xmax: %w", s, err)
	}
	if parts[2] != "" {
		for _, f := range strings.Split(parts[2], ",") {
			x, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				return Snapshot{}, fmt.Errorf("snapshot %q: xip: %w", s, err)
			}
			snap.Xip = append(snap.Xip, x)
		}
	}
	slices.Sort(snap.Xip)
	return snap, nil
}

// String is the text form Postgres uses.
func (s Snapshot) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d:%d:", s.Xmin, s.Xmax)
	for i, x := range s.Xip {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(x, 10))
	}
	return b.String()
}

// Visible tells whether the effects of a transaction known to have
// committed are visible in the snapshot: it left the proc array before the
// snapshot was taken. A committed transaction that is not visible has
// written its commit record but was still running (e.g. waiting for a
// synchronous standby) when the snapshot was taken.
func (s Snapshot) Visible(xid uint64) bool {
	if xid < s.Xmin {
		return true
	}
	if xid >= s.Xmax {
		return false
	}
	_, running := slices.BinarySearch(s.Xip, xid)
	return !running
}

// recentWindow is how far past Xmax a 32-bit xid delivered by the stream
// may lie. A committed transaction can be at or above Xmax (it commits but
// has not yet left the proc array, so Xmax has not moved past it), but only
// by the few xids assigned since: 2^24 is far more than any server assigns
// while one commit is in flight, and small enough that an xid from 2^31
// transactions ago is taken for the past it comes from, not the future.
const recentWindow = 1 << 24

// Widen returns the 64-bit id of a 32-bit xid from the stream, taking it
// for the id nearest to (and at most recentWindow above) the snapshot's Xmax.
// Postgres compares xids modulo 2^32 the same way, within 2^31 of each other.
func (s Snapshot) Widen(xid uint32) uint64 {
	full := s.Xmax&^0xFFFFFFFF | uint64(xid)
	if full > s.Xmax+recentWindow && full >= 1<<32 {
		full -= 1 << 32
	} else if full+(1<<32) <= s.Xmax+recentWindow {
		full += 1 << 32
	}
	return full
}

// VisibleXID is Visible for a committed 32-bit xid from the stream.
func (s Snapshot) VisibleXID(xid uint32) bool { return s.Visible(s.Widen(xid)) }
