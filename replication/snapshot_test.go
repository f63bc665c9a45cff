package replication

import "testing"

func TestParseSnapshot(t *testing.T) {
	s, err := ParseSnapshot("100:110:107,102")
	if err != nil {
		t.Fatal(err)
	}
	if s.Xmin != 100 || s.Xmax != 110 || len(s.Xip) != 2 || s.Xip[0] != 102 || s.String() != "100:110:102,107" {
		t.Fatalf("parsed %+v (%s)", s, s)
	}
	if s, err := ParseSnapshot("5:5:"); err != nil || len(s.Xip) != 0 {
		t.Fatalf("empty xip: %+v %v", s, err)
	}
	for _, bad := range []string{"", "1:2", "a:2:", "1:2:x"} {
		if _, err := ParseSnapshot(bad); err == nil {
			t.Errorf("ParseSnapshot(%q) accepted", bad)
		}
	}
}

func TestSnapshotVisible(t *testing.T) {
	s, _ := ParseSnapshot("100:110:102,107")
	for xid, want := range map[uint64]bool{99: true, 100: true, 101: true, 102: false, 107: false, 109: true, 110: false, 200: false} {
		if got := s.Visible(xid); got != want {
			t.Errorf("Visible(%d) = %v, want %v", xid, got, want)
		}
	}
}

func TestSnapshotWiden(t *testing.T) {
	const epoch = uint64(3) << 32
	for _, tc := range []struct {
		xmax uint64
		xid  uint32
		want uint64
	}{
		{epoch + 1000, 990, epoch + 990},                                                 // just before xmax
		{epoch + 1000, 1005, epoch + 1005},                                               // committed, not yet below xmax
		{epoch + 5, 0xFFFFFFF0, epoch - 16},                                              // before the epoch began
		{epoch + 0xFFFFFFF0, 3, epoch + 1<<32 + 3},                                       // just after the next epoch began
		{epoch + 1<<31, 100, epoch + 100},                                                // 2^31 back
		{epoch + 1000, 1000 + recentWindow + 1, epoch - 1<<32 + 1000 + recentWindow + 1}, // too far ahead: the past
		{1000, 990, 990}, // epoch 0
	} {
		s := Snapshot{Xmin: tc.xmax - 10, Xmax: tc.xmax}
		if got := s.Widen(tc.xid); got != tc.want {
			t.Errorf("Widen(%d) at xmax %d = %d, want %d", tc.xid, tc.xmax, got, tc.want)
		}
	}
}
