package sink

import (
	"encoding/json"
	"fmt"

	"github.com/jackc/pglogrepl"
)

// Checkpoint is the source position that the events committed so far reach.
// It is committed in the same Kafka transaction as those events.
type Checkpoint struct {
	// LSN: every transaction whose commit record starts before LSN is fully
	// published. It is the end of the last published transaction, or a WAL
	// position the server reported while nothing was in flight. Replication
	// resumes here, and it is the only position confirmed to the slot.
	LSN pglogrepl.LSN
	// TxLSN and TxNext describe a large transaction that spans several Kafka
	// transactions: the changes with index < TxNext of the transaction that
	// commits at TxLSN are published. Zero TxLSN: none.
	TxLSN  pglogrepl.LSN
	TxNext int
	// Seq counts the relay's Kafka transactions.
	Seq int64
	// Backfills holds the cursors of running backfills, by table.
	Backfills map[string]json.RawMessage
	// SystemID and Timeline name the database cluster (its system
	// identifier) and the WAL timeline the LSNs above belong to, as
	// IDENTIFY_SYSTEM reported them when the relay streamed. After a
	// failover they tell whether the new primary's WAL continues the
	// checkpoint's. Empty and 0 in checkpoints of older relays: unknown.
	SystemID string
	Timeline uint32
}

// checkpointJSON is the stored form: LSNs in Postgres's text form, so an
// operator reading the group's offset metadata can make sense of it.
type checkpointJSON struct {
	V         int                        `json:"v"`
	LSN       string                     `json:"lsn"`
	TxLSN     string                     `json:"tx_lsn,omitempty"`
	TxNext    int                        `json:"tx_next,omitempty"`
	Seq       int64                      `json:"seq"`
	Backfills map[string]json.RawMessage `json:"backfills,omitempty"`
	// Added later; older relays ignore them, and their checkpoints lack them.
	SystemID string `json:"sysid,omitempty"`
	Timeline uint32 `json:"tli,omitempty"`
}

// MarshalJSON writes the stored form.
func (c Checkpoint) MarshalJSON() ([]byte, error) {
	j := checkpointJSON{V: 1, LSN: c.LSN.String(), TxNext: c.TxNext, Seq: c.Seq, Backfills: c.Backfills,
		SystemID: c.SystemID, Timeline: c.Timeline}
	if c.TxLSN != 0 {
		j.TxLSN = c.TxLSN.String()
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads the stored form.
func (c *Checkpoint) UnmarshalJSON(b []byte) error {
	var j checkpointJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	if j.V != 1 {
		return fmt.Errorf("checkpoint format version %d is not supported by this build", j.V)
	}
	lsn, err := pglogrepl.ParseLSN(j.LSN)
	if err != nil {
		return fmt.Errorf("checkpoint lsn %q: %w", j.LSN, err)
	}
	*c = Checkpoint{LSN: lsn, TxNext: j.TxNext, Seq: j.Seq, Backfills: j.Backfills, SystemID: j.SystemID, Timeline: j.Timeline}
	if j.TxLSN != "" {
		if c.TxLSN, err = pglogrepl.ParseLSN(j.TxLSN); err != nil {
			return fmt.Errorf("checkpoint tx_lsn %q: %w", j.TxLSN, err)
		}
	}
	return nil
}

// String is a short human form, for logs.
func (c Checkpoint) String() string {
	if c.TxLSN != 0 {
		return fmt.Sprintf("%s (inside transaction %s after %d changes)", c.LSN, c.TxLSN, c.TxNext)
	}
	return c.LSN.String()
}
