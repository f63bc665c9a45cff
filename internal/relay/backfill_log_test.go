package relay

import (
	"slices"
	"strconv"
	"testing"

	"github.com/cdcrelay/cdcrelay/replication"
)

func TestChangeLogDecide(t *testing.T) {
	l := newChangeLog([]uint32{90})
	l.add(95, [][]string{{"1"}})         // visible below
	l.add(104, [][]string{{"2"}, {"3"}}) // running in the snapshot: newer than the rows
	l.add(112, [][]string{{"4"}})        // at or above xmax
	l.add(106, [][]string{{"5"}})        // visible: ended before the snapshot
	snap, _ := replication.ParseSnapshot("100:110:104")
	if got := l.unknown(); !slices.Equal(got, []uint32{90}) {
		t.Fatalf("unknown = %v", got)
	}
	drop, undecided := l.decide(snap)
	if len(undecided) != 0 {
		t.Fatalf("undecided %v: the base transaction is visible", undecided)
	}
	for k, want := range map[string]bool{"1": false, "2": true, "3": true, "4": true, "5": false} {
		if drop[k] != want {
			t.Errorf("drop[%s] = %v, want %v", k, drop[k], want)
		}
	}
	l.prune(snap)
	if len(l.xacts) != 2 || l.xacts[104] == nil || l.xacts[112] == nil || l.keys != 3 {
		t.Fatalf("after prune: %d xacts, %d keys", len(l.xacts), l.keys)
	}
	// A later snapshot that sees them forgets them.
	later, _ := replication.ParseSnapshot("120:120:")
	l.prune(later)
	if len(l.xacts) != 0 || l.keys != 0 {
		t.Fatalf("after the second prune: %d xacts, %d keys", len(l.xacts), l.keys)
	}
}

func TestChangeLogUnknownKeys(t *testing.T) {
	l := newChangeLog(nil)
	l.add(104, [][]string{{"1"}})
	l.addUnknown(104) // a truncate in the same transaction
	snap, _ := replication.ParseSnapshot("100:110:104")
	if _, undecided := l.decide(snap); !slices.Equal(undecided, []uint32{104}) {
		t.Fatalf("undecided = %v, want [104]", undecided)
	}
	if l.keys != 0 {
		t.Fatalf("keys = %d after the transaction lost its keys", l.keys)
	}
}

func TestChangeLogCap(t *testing.T) {
	l := newChangeLog(nil)
	keys := make([][]string, maxLoggedKeys)
	for i := range keys {
		keys[i] = []string{strconv.Itoa(i)}
	}
	l.add(7, keys)
	if l.xacts[7].unknown || l.keys != len(keys) {
		t.Fatalf("at the cap: unknown %v, %d keys", l.xacts[7].unknown, l.keys)
	}
	l.add(8, [][]string{{"x"}})
	if !l.xacts[8].unknown || l.keys != len(keys) {
		t.Fatalf("past the cap: unknown %v, %d keys", l.xacts[8].unknown, l.keys)
	}
}

func TestXIDRing(t *testing.T) {
	var r xidRing
	a := &replication.Relation{Schema: "public", Table: "a"}
	b := &replication.Relation{Schema: "public", Table: "b"}
	r.note(5, a)
	r.note(5, a)
	r.note(6, b)
	r.note(7, a)
	if got := r.of("public.a"); !slices.Equal(got, []uint32{5, 7}) {
		t.Fatalf("of(a) = %v", got)
	}
	for i := range uint32(len(r.buf)) {
		r.note(100+i, b)
	}
	if got := r.of("public.a"); len(got) != 0 {
		t.Fatalf("of(a) after the ring turned over = %v", got)
	}
	if got := r.of("public.b"); len(got) != len(r.buf) {
		t.Fatalf("of(b) holds %d, want %d", len(got), len(r.buf))
	}
}
