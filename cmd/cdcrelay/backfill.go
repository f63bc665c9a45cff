package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/internal/relay"
	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/sink"
)

type backfillFlags struct {
	where     string
	chunkSize int
	maxRate   float64
	status    bool
	cancel    bool
	detach    bool
	output    string
}

func (a *app) backfillCmd() *cobra.Command {
	var f backfillFlags
	cmd := &cobra.Command{
		Use:   "backfill TABLE",
		Short: "Publish the rows a mapped table already holds",
		Long: `backfill asks the running relay to publish the existing rows of a mapped table,
as "read" events, while it keeps streaming. The table is read in primary-key
chunks between watermarks written into the WAL, so that no backfilled row
overwrites a newer change; no lock is taken, and each chunk is a short query.
The backfill is resumable: its cursor is part of the Kafka checkpoint.

backfill waits and shows its progress (rows, rate, ETA) unless --detach;
--status shows the running backfills, --cancel stops the one of TABLE.`,
		Example: `  cdcrelay backfill public.orders
  cdcrelay backfill public.orders --where "created_at > now() - interval '30 days'" --max-rate 5000
  cdcrelay backfill public.orders --detach
  cdcrelay backfill --status
  cdcrelay backfill public.orders --cancel`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case f.status && len(args) > 1:
				return usageErrorf("backfill --status takes at most one TABLE")
			case !f.status && len(args) != 1:
				return usageErrorf("backfill needs exactly one TABLE (schema.table), got %d", len(args))
			case f.status && f.cancel:
				return usageErrorf("--status and --cancel exclude each other")
			case f.chunkSize < 1:
				return usageErrorf("--chunk-size must be at least 1")
			case f.maxRate < 0:
				return usageErrorf("--max-rate must not be negative")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			var table string
			if len(args) == 1 {
				table = mapping.QualifyTable(args[0])
				if _, ok := mappedTable(cfg, table); !ok {
					return usageErrorf("table %s is not mapped in %s: add a [[mapping]] for it first", table, a.configPath)
				}
			}
			ctx := cmd.Context()
			switch {
			case f.status:
				if err := checkOutput(f.output); err != nil {
					return err
				}
				return a.backfillStatus(ctx, cfg, table, f.output)
			case f.cancel:
				if _, err := relay.RequestBackfill(ctx, cfg, relay.BackfillRequest{Op: "cancel", Table: table}); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "asked the relay to cancel the backfill of %s\n", table)
				return nil
			}
			id, err := relay.RequestBackfill(ctx, cfg, relay.BackfillRequest{
				Op: "start", Table: table, Where: f.where, ChunkSize: f.chunkSize, MaxRate: f.maxRate,
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "backfill of %s requested (id %s)\n", table, id)
			if f.detach {
				fmt.Fprintf(a.stdout, "the running relay performs it; follow it with: cdcrelay backfill --status\n")
				return nil
			}
			return a.followBackfill(ctx, cfg, table, id)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.where, "where", "", "SQL condition selecting the rows to backfill (default: all rows)")
	fl.IntVar(&f.chunkSize, "chunk-size", relay.DefaultChunkSize, "rows per chunk (one short query each)")
	fl.Float64Var(&f.maxRate, "max-rate", 0, "at most this many rows per second (0: no limit)")
	fl.BoolVar(&f.status, "status", false, "show the progress of running backfills")
	fl.BoolVar(&f.cancel, "cancel", false, "cancel the backfill of TABLE")
	fl.BoolVar(&f.detach, "detach", false, "request the backfill and return at once")
	outputFlag(cmd, &f.output)
	return cmd
}

func mappedTable(cfg *config.Config, table string) (mapping.Spec, bool) {
	for _, m := range cfg.Mappings {
		if mapping.QualifyTable(m.Table) == table {
			return m, true
		}
	}
	return mapping.Spec{}, false
}

func backfillStates(ctx context.Context, cfg *config.Config) (map[string]relay.BackfillState, error) {
	cp, ok, err := sink.LoadCheckpoint(ctx, &cfg.Kafka)
	if err != nil || !ok {
		return nil, err
	}
	return relay.BackfillStates(cp)
}

// backfillStatus prints the backfills recorded in the Kafka checkpoint.
func (a *app) backfillStatus(ctx context.Context, cfg *config.Config, only, output string) error {
	states, err := backfillStates(ctx, cfg)
	if err != nil {
		return err
	}
	if output == "json" {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(states)
	}
	if len(states) == 0 {
		fmt.Fprintln(a.stdout, "no backfill recorded in the checkpoint")
		return nil
	}
	tables := make([]string, 0, len(states))
	for t := range states {
		if only == "" || t == only {
			tables = append(tables, t)
		}
	}
	sort.Strings(tables)
	for _, t := range tables {
		st := states[t]
		line := fmt.Sprintf("%-30s %-9s %d/%d rows", t, st.Status, st.Done, st.Total)
		if st.Status == relay.BackfillRunning && st.Total > 0 {
			line += fmt.Sprintf(" (%.1f%%)", 100*float64(st.Done)/float64(st.Total))
		}
		if st.Error != "" {
			line += "  error: " + st.Error
		}
		fmt.Fprintln(a.stdout, line)
	}
	return nil
}

// followBackfill shows a progress bar until the backfill ends. Leaving it
// (Ctrl-C) does not stop the backfill: the relay performs it.
func (a *app) followBackfill(ctx context.Context, cfg *config.Config, table, id string) error {
	bar := progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(a.stderr),
		progressbar.OptionSetDescription(table),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("rows"),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(200*time.Millisecond),
	)
	defer bar.Close()
	asked := time.Now()
	hinted := false
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintf(a.stderr, "\nstopped following; the relay continues the backfill (cdcrelay backfill --status)\n")
			return nil
		case <-time.After(time.Second):
		}
		states, err := backfillStates(ctx, cfg)
		if err != nil {
			return err
		}
		st, ok := states[table]
		if !ok || st.ID != id {
			if !hinted && time.Since(asked) > 15*time.Second {
				fmt.Fprintf(a.stderr, "\nwaiting for the relay to pick up the request: is `cdcrelay run` running?\n")
				hinted = true
			}
			continue
		}
		if st.Total > 0 {
			bar.ChangeMax64(st.Total)
		}
		_ = bar.Set64(st.Done)
		switch st.Status {
		case relay.BackfillDone:
			_ = bar.Finish()
			fmt.Fprintf(a.stdout, "\nbackfill of %s done: %d rows\n", table, st.Done)
			return nil
		case relay.BackfillCancelled:
			fmt.Fprintf(a.stdout, "\nbackfill of %s cancelled after %d rows\n", table, st.Done)
			return nil
		case relay.BackfillFailed:
			return fmt.Errorf("backfill of %s failed: %s", table, st.Error)
		}
	}
}
