package relay

import (
	"slices"
	"strings"

	"github.com/cdcrelay/cdcrelay/replication"
)

// changeLog is what the committer remembers of a table's streamed changes
// while the table's backfill runs: for each source transaction (by its
// 32-bit stream xid) the primary keys it changed. A chunk read in snapshot
// S must not publish a key that a transaction not visible in S changed:
// see the argument at the top of backfill.go.
//
// A transaction whose keys are unknown (it was delivered before the log
// began, it truncated the table, or the log was full) cannot be matched to
// rows; while such a transaction is not visible in a chunk's snapshot, the
// chunk cannot be decided and is read again once it is.
type changeLog struct {
	xacts map[uint32]*loggedXact
	keys  int // keys held, bounded by maxLoggedKeys
	// needBase: no chunk has been decided since the log began, so the next
	// read must first see every transaction committed before it (see
	// pgChunks.awaitVisible).
	needBase bool
}

type loggedXact struct {
	keys    map[string]struct{}
	unknown bool
}

// maxLoggedKeys bounds the log's memory (a key costs roughly 100 bytes).
// The log holds the changes since the last chunk plus those of the few
// transactions committed but not yet visible, so it reaches the bound only
// under a huge transaction or a very long pause between chunks; further
// transactions are then logged without their keys, which costs at most a
// re-read of one chunk, never a wrong row.
const maxLoggedKeys = 200_000

func newChangeLog(base []uint32) *changeLog {
	l := &changeLog{xacts: map[uint32]*loggedXact{}, needBase: true}
	for _, x := range base {
		l.addUnknown(x)
	}
	return l
}

func (l *changeLog) xact(xid uint32) *loggedXact {
	x := l.xacts[xid]
	if x == nil {
		x = &loggedXact{}
		l.xacts[xid] = x
	}
	return x
}

// add notes the keys a change of transaction xid touched (its new and, for
// a delete or a key change, its old primary key).
func (l *changeLog) add(xid uint32, keys [][]string) {
	x := l.xact(xid)
	if x.unknown {
		return
	}
	if l.keys+len(keys) > maxLoggedKeys {
		l.keys -= len(x.keys)
		x.keys, x.unknown = nil, true
		return
	}
	if x.keys == nil {
		x.keys = make(map[string]struct{}, 1)
	}
	for _, k := range keys {
		s := joinKey(k)
		if _, ok := x.keys[s]; !ok {
			x.keys[s] = struct{}{}
			l.keys++
		}
	}
}

// addUnknown notes a transaction whose keys are not known.
func (l *changeLog) addUnknown(xid uint32) {
	x := l.xact(xid)
	l.keys -= len(x.keys)
	x.keys, x.unknown = nil, true
}

// unknown lists the transactions whose keys are unknown.
func (l *changeLog) unknown() []uint32 {
	var out []uint32
	for xid, x := range l.xacts {
		if x.unknown {
			out = append(out, xid)
		}
	}
	slices.Sort(out)
	return out
}

// decide returns, for a chunk read in snap, the keys to drop from it: those
// changed by a transaction not visible in snap. undecided lists the
// transactions of unknown keys not visible in snap; while there are any,
// the chunk must not be published.
func (l *changeLog) decide(snap replication.Snapshot) (drop map[string]bool, undecided []uint32) {
	drop = map[string]bool{}
	for xid, x := range l.xacts {
		if snap.VisibleXID(xid) {
			continue
		}
		if x.unknown {
			undecided = append(undecided, xid)
			continue
		}
		for k := range x.keys {
			drop[k] = true
		}
	}
	slices.Sort(undecided)
	return drop, undecided
}

// prune forgets the transactions visible in snap: a committed transaction
// visible in one snapshot is visible in every later one, so every later
// chunk holds its changes already.
func (l *changeLog) prune(snap replication.Snapshot) {
	for xid, x := range l.xacts {
		if snap.VisibleXID(xid) {
			l.keys -= len(x.keys)
			delete(l.xacts, xid)
		}
	}
}

func joinKey(k []string) string { return strings.Join(k, "\x00") }

// xidRing remembers the tables that the most recent source transactions
// changed, one entry per transaction and table: when a backfill is
// requested, the transactions that the stream delivered just before the
// request are its log's base (logged with unknown keys).
type xidRing struct {
	buf  [4096]ringEntry
	next int
	full bool
}

type ringEntry struct {
	xid uint32
	rel *replication.Relation
}

// note records that transaction xid changed rel; consecutive changes of the
// same transaction and table take one entry.
func (r *xidRing) note(xid uint32, rel *replication.Relation) {
	last := r.next - 1
	if last < 0 {
		last = len(r.buf) - 1
	}
	if e := r.buf[last]; e.xid == xid && e.rel == rel && (r.full || r.next > 0) {
		return
	}
	r.buf[r.next] = ringEntry{xid: xid, rel: rel}
	r.next++
	if r.next == len(r.buf) {
		r.next, r.full = 0, true
	}
}

// of returns the distinct xids of the remembered transactions that changed
// table ("schema.table").
func (r *xidRing) of(table string) []uint32 {
	n := r.next
	if r.full {
		n = len(r.buf)
	}
	seen := map[uint32]bool{}
	var out []uint32
	for _, e := range r.buf[:n] {
		if e.rel != nil && !seen[e.xid] && e.rel.QualifiedName() == table {
			seen[e.xid] = true
			out = append(out, e.xid)
		}
	}
	slices.Sort(out)
	return out
}
