package sink

import (
	"encoding/json"
	"strings"
	"testing"
)

// The checkpoint lives in Kafka across upgrades: one written before the
// system identifier and timeline were recorded must still be read, and a
// newer one must keep them.
func TestCheckpointJSONCompatible(t *testing.T) {
	var old Checkpoint
	if err := json.Unmarshal([]byte(`{"v":1,"lsn":"0/16B3748","seq":7}`), &old); err != nil {
		t.Fatal(err)
	}
	if old.LSN.String() != "0/16B3748" || old.Seq != 7 || old.SystemID != "" || old.Timeline != 0 {
		t.Fatalf("old checkpoint read as %+v", old)
	}
	cp := Checkpoint{LSN: old.LSN, Seq: 8, SystemID: "7412345678901234567", Timeline: 2}
	b, err := json.Marshal(cp)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"sysid":"7412345678901234567"`) || !strings.Contains(string(b), `"tli":2`) {
		t.Fatalf("stored form %s", b)
	}
	var back Checkpoint
	if err := json.Unmarshal(b, &back); err != nil || back.SystemID != cp.SystemID || back.Timeline != 2 || back.Seq != 8 {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
}
