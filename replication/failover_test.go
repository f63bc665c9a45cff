package replication

import (
	"strings"
	"testing"
)

func TestParseTimelineHistory(t *testing.T) {
	h, err := parseTimelineHistory([]byte("1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point\n"))
	if err != nil || len(h) != 2 || h[0].Timeline != 1 || h[0].Switch.String() != "0/3000158" || h[1].Timeline != 2 {
		t.Fatalf("%+v %v", h, err)
	}
}

// Continues is the rule that decides whether a checkpoint can be followed
// on a server after a failover; each case sits at a boundary.
func TestServerContinuesCheckpoint(t *testing.T) {
	lsn := func(s string) LSN { l, _ := ParseLSN(s); return l }
	srv := &ServerIdentity{SystemID: "42", Timeline: 3, Addr: "db2:5432",
		History: []TimelineSwitch{{1, lsn("0/3000000")}, {2, lsn("0/5000000")}}}
	cases := []struct {
		name   string
		sysid  string
		tli    uint32
		at, tx string
		reason string // "" : continues
	}{
		{"old checkpoint without identity", "", 0, "0/9000000", "0/0", ""},
		{"same timeline", "42", 3, "0/9000000", "0/0", ""},
		{"another cluster", "41", 3, "0/1000000", "0/0", "system"},
		{"older timeline, before its end", "42", 2, "0/4FFFFFF", "0/0", ""},
		{"older timeline, at its end", "42", 2, "0/5000000", "0/0", ""},
		{"older timeline, past its end", "42", 2, "0/5000001", "0/0", "fork"},
		{"two failovers back, before the first fork", "42", 1, "0/3000000", "0/0", ""},
		{"two failovers back, past the first fork", "42", 1, "0/3000008", "0/0", "fork"},
		{"large transaction committing at the fork", "42", 2, "0/4000000", "0/5000000", "fork"},
		{"large transaction committing before the fork", "42", 2, "0/4000000", "0/4FFFFF0", ""},
		{"newer timeline than the server", "42", 4, "0/1000000", "0/0", "timeline-ahead"},
		{"timeline not in the history", "42", 0x7, "0/1000000", "0/0", "timeline-ahead"},
	}
	for _, c := range cases {
		err := srv.Continues(c.sysid, c.tli, lsn(c.at), lsn(c.tx))
		switch de, _ := err.(*DivergedError); {
		case c.reason == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.reason != "" && (de == nil || de.Reason != c.reason):
			t.Errorf("%s: %v, want a %s divergence", c.name, err, c.reason)
		case c.reason == "fork" && !strings.Contains(err.Error(), "branched off"):
			t.Errorf("%s: %v", c.name, err)
		}
	}
	missing := &ServerIdentity{SystemID: "42", Timeline: 3, History: []TimelineSwitch{{2, lsn("0/5000000")}}}
	if err := missing.Continues("42", 1, lsn("0/1000000"), 0); err == nil {
		t.Errorf("a timeline missing from the history must not be followed")
	}
}
