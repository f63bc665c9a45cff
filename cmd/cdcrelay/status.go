package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

// statusOut is `cdcrelay status --output json`.
type statusOut struct {
	Relay       string                       `json:"relay"`
	Slot        *replication.SlotInfo        `json:"slot"`
	Publication *replication.PublicationInfo `json:"publication"`
	Checkpoint  *checkpointOut               `json:"checkpoint"`
	// Failover: whether the slot survives a failover to the standbys.
	Failover *replication.FailoverReport `json:"failover,omitempty"`
	// Running is what the running relay's metrics endpoint reports, when
	// metrics.listen is set and a relay answers there.
	Running *runningOut `json:"running,omitempty"`
	// Errors: what could not be read, by side ("postgres", "kafka").
	Errors   map[string]string `json:"errors,omitempty"`
	Warnings []string          `json:"warnings"`
}

type checkpointOut struct {
	Group string `json:"group"`
	Found bool   `json:"found"`
	LSN   string `json:"lsn,omitempty"`
	// TxLSN and TxNext: a large transaction is published up to change TxNext.
	TxLSN  string `json:"tx_lsn,omitempty"`
	TxNext int    `json:"tx_next,omitempty"`
	Seq    int64  `json:"transactions"`
	// LagBytes is the server's current WAL position minus the checkpoint.
	LagBytes *int64 `json:"lag_bytes,omitempty"`
	// Backfills are the cursors of running backfills by table, as stored in
	// the checkpoint.
	Backfills map[string]json.RawMessage `json:"backfills,omitempty"`

	lsn replication.LSN
}

func (a *app) statusCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the replication slot, the publication and the Kafka checkpoint",
		Long: `status shows where the relay stands, read-only:

  slot         exists, active (and the backend pid), confirmed_flush_lsn,
               restart_lsn, the WAL it keeps on the server's disk (current WAL
               position minus restart_lsn), wal_status and safe_wal_size
  publication  the tables it publishes
  checkpoint   the position committed in Kafka with the last events, how
               far the server's WAL is ahead of it, and the cursors of
               running backfills
  running      with metrics.listen set: whether the relay there streams,
               when it last committed, and its lag in seconds

It warns, with the steps to take, when the slot is lost or about to be (retained
WAL near max_slot_wal_keep_size), when no relay streams from it, and when the
slot is ahead of the checkpoint (the relay would refuse to start). It exits 1
when Postgres or Kafka cannot be read.`,
		Example: `  cdcrelay status
  cdcrelay status --output json | jq .slot.retained_wal_bytes`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			st := readStatus(cmd.Context(), cfg)
			if output == "json" {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(st); err != nil {
					return err
				}
			} else {
				printStatus(a.stdout, cfg, st)
			}
			if len(st.Errors) > 0 {
				if output == "json" {
					return &silentError{code: exitFailure}
				}
				return fmt.Errorf("status incomplete: %s", strings.Join(mapValues(st.Errors), "; "))
			}
			return nil
		},
	}
	outputFlag(cmd, &output)
	return cmd
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, k := range []string{"postgres", "kafka"} {
		if v, ok := m[k]; ok {
			out = append(out, k+": "+v)
		}
	}
	return out
}

func readStatus(ctx context.Context, cfg *config.Config) *statusOut {
	st := &statusOut{Relay: cfg.Relay.Name, Errors: map[string]string{}, Warnings: []string{}}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if conn, err := connectPostgres(pctx, cfg, "status"); err != nil {
		st.Errors["postgres"] = err.Error()
	} else {
		defer conn.Close(context.Background())
		if st.Slot, err = replication.SlotStatus(pctx, conn, cfg.Postgres.Slot); err != nil {
			st.Errors["postgres"] = err.Error()
		} else if st.Publication, err = replication.PublicationStatus(pctx, conn, cfg.Postgres.Publication); err != nil {
			st.Errors["postgres"] = err.Error()
		} else {
			st.Failover = readFailover(pctx, cfg, conn)
		}
	}

	kctx, kcancel := context.WithTimeout(ctx, 30*time.Second)
	defer kcancel()
	cp, found, err := sink.LoadCheckpoint(kctx, &cfg.Kafka)
	if err != nil {
		st.Errors["kafka"] = err.Error()
	} else {
		co := &checkpointOut{Group: cfg.Kafka.CheckpointGroup, Found: found}
		if found {
			co.lsn = cp.LSN
			co.LSN, co.Seq, co.TxNext = cp.LSN.String(), cp.Seq, cp.TxNext
			co.Backfills = cp.Backfills
			if cp.TxLSN != 0 {
				co.TxLSN = cp.TxLSN.String()
			}
			if st.Slot != nil {
				lag := int64(st.Slot.CurrentLSN) - int64(cp.LSN)
				co.LagBytes = &lag
			}
		}
		st.Checkpoint = co
	}
	if cfg.Metrics.Listen != "" {
		st.Running = readRunning(ctx, cfg.Metrics.Listen)
	}
	st.Warnings = statusWarnings(cfg, st)
	return st
}

func statusWarnings(cfg *config.Config, st *statusOut) []string {
	w := []string{}
	if s := st.Slot; s != nil {
		keep := "max_slot_wal_keep_size"
		switch {
		case !s.Exists:
			w = append(w, fmt.Sprintf("replication slot %s does not exist: run `cdcrelay setup`", s.Slot))
		case s.Invalidated():
			w = append(w, fmt.Sprintf("replication slot %s is LOST: the server removed WAL the relay had not read yet, so changes were never published and the relay cannot continue from this slot. "+
				"Recover: stop the relay; `cdcrelay teardown --yes` (drops the lost slot and the publication); `cdcrelay setup`; "+
				"`cdcrelay run --allow-slot-ahead` (the new slot starts now, ahead of the Kafka checkpoint); then `cdcrelay backfill` each mapped table "+
				"to publish the current rows. Raise %s (or fix what stopped the relay) so it does not happen again", s.Slot, keep))
		case s.WALStatus == "unreserved":
			w = append(w, fmt.Sprintf("replication slot %s holds more WAL (%s) than %s allows: the server will remove that WAL and invalidate the slot at its next checkpoint unless the relay catches up now. "+
				"Make sure a relay is running and ready (`cdcrelay run`, /readyz), or raise %s and reload Postgres (SELECT pg_reload_conf())",
				s.Slot, bytesText(s.RetainedWALBytes), keep, keep))
		case s.SafeWALSize != nil && s.MaxSlotWALKeepSize > 0 && *s.SafeWALSize < s.MaxSlotWALKeepSize/5:
			w = append(w, fmt.Sprintf("replication slot %s is close to %s (%s): only %s more WAL can be written before the slot is invalidated and changes are lost. "+
				"Make sure the relay is running and catching up, or raise %s",
				s.Slot, keep, bytesText(s.MaxSlotWALKeepSize), bytesText(*s.SafeWALSize), keep))
		case s.SafeWALSize == nil && !s.Active && s.RetainedWALBytes > 1<<30:
			w = append(w, fmt.Sprintf("replication slot %s keeps %s of WAL on the server's disk and no relay streams from it; with %s = -1 (unlimited) the disk can fill up. "+
				"Start the relay, or set %s to bound it", s.Slot, bytesText(s.RetainedWALBytes), keep, keep))
		}
		if s.Exists && !s.Active && s.WALStatus != "lost" && (st.Running == nil || !st.Running.Ready) {
			w = append(w, fmt.Sprintf("no relay streams from slot %s: WAL accumulates on the server until one runs", s.Slot))
		}
		if s.Exists && st.Checkpoint != nil && st.Checkpoint.Found && s.ConfirmedFlushLSN > st.Checkpoint.lsn {
			w = append(w, fmt.Sprintf("the slot (%s) is ahead of the Kafka checkpoint (%s): someone moved it, changes in between were not published; `cdcrelay run` refuses to start without --allow-slot-ahead",
				s.ConfirmedFlushLSN, st.Checkpoint.LSN))
		}
	}
	if f := st.Failover; f != nil {
		for _, c := range f.Checks {
			if c.Status != replication.CheckOK {
				w = append(w, failoverWarning(c))
			}
		}
	}
	if p := st.Publication; p != nil && !p.Exists {
		w = append(w, fmt.Sprintf("publication %s does not exist: run `cdcrelay setup`", p.Name))
	}
	return w
}

func printStatus(w io.Writer, cfg *config.Config, st *statusOut) {
	row := func(k, v string) { fmt.Fprintf(w, "  %-20s %s\n", k, v) }
	fmt.Fprintf(w, "Relay %s\n", cfg.Relay.Name)
	switch s := st.Slot; {
	case s == nil:
		fmt.Fprintf(w, "Slot %s\n", cfg.Postgres.Slot)
		row("error", st.Errors["postgres"])
	case !s.Exists:
		fmt.Fprintf(w, "Slot %s\n", s.Slot)
		row("exists", "no")
	default:
		fmt.Fprintf(w, "Slot %s (%s, database %s)\n", s.Slot, s.Plugin, s.Database)
		row("exists", "yes")
		if s.Active {
			row("active", fmt.Sprintf("yes, backend pid %d", s.ActivePID))
		} else {
			row("active", "no")
		}
		row("confirmed_flush_lsn", s.ConfirmedFlushLSN.String())
		row("restart_lsn", s.RestartLSN.String())
		row("retained WAL", fmt.Sprintf("%s (server at %s)", bytesText(s.RetainedWALBytes), s.CurrentLSN))
		row("unconfirmed WAL", bytesText(s.LagBytes))
		row("wal_status", s.WALStatus)
		if s.SafeWALSize == nil {
			row("safe_wal_size", "unlimited (max_slot_wal_keep_size = -1)")
		} else {
			row("safe_wal_size", bytesText(*s.SafeWALSize))
		}
	}
	printFailover(w, st.Failover)
	if p := st.Publication; p != nil {
		fmt.Fprintf(w, "Publication %s\n", p.Name)
		switch {
		case !p.Exists:
			row("exists", "no")
		case p.AllTables:
			row("tables", "all tables (FOR ALL TABLES)")
		default:
			row("tables", strings.Join(p.Tables, ", "))
		}
	}
	fmt.Fprintf(w, "Kafka checkpoint (group %s, %s)\n", cfg.Kafka.CheckpointGroup, strings.Join(cfg.Kafka.Brokers, ","))
	switch c := st.Checkpoint; {
	case c == nil:
		row("error", st.Errors["kafka"])
	case !c.Found:
		row("lsn", "none yet (the relay has not committed a transaction)")
	default:
		v := c.LSN
		if c.LagBytes != nil {
			v += fmt.Sprintf(" (%s behind the server)", bytesText(*c.LagBytes))
		}
		row("lsn", v)
		if c.TxLSN != "" {
			row("inside transaction", fmt.Sprintf("%s, %d changes published", c.TxLSN, c.TxNext))
		}
		row("transactions", fmt.Sprint(c.Seq))
		if len(c.Backfills) == 0 {
			row("backfills", "none running")
		}
		for _, table := range sortedKeys(c.Backfills) {
			row("backfill "+table, string(c.Backfills[table]))
		}
	}
	if r := st.Running; r != nil {
		fmt.Fprintf(w, "Running relay (metrics at %s)\n", r.URL)
		switch {
		case r.Error != "":
			row("error", r.Error)
		default:
			if r.Ready {
				row("ready", "yes, streaming")
			} else {
				row("ready", "no (a standby waiting, or a session being retried)")
			}
			if r.LastCommit != nil {
				row("last commit", fmt.Sprintf("%s (%s ago)", r.LastCommit.Format(time.RFC3339), time.Since(*r.LastCommit).Round(time.Second)))
			}
			if r.LastSourceCommit != nil {
				row("last source commit", r.LastSourceCommit.Format(time.RFC3339))
			}
			if r.LagSeconds != nil {
				row("lag", fmt.Sprintf("%.1f s", *r.LagSeconds))
			}
		}
	}
	for _, warn := range st.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n", warn)
	}
}

func bytesText(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		f /= unit
		if f < unit && f > -unit {
			return fmt.Sprintf("%.1f %s", f, u)
		}
	}
	return fmt.Sprintf("%.1f PiB", f/unit)
}
