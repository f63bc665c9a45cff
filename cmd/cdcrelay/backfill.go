package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

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
chunks, each in a short read-only transaction (no lock); a watermark written
into the WAL after each chunk places it in the stream, and the chunk's
snapshot says which of its rows the stream has already carried a newer state
of: those are not published, so no backfilled row overwrites a newer change.
The backfill is resumable: its cursor is part of the Kafka checkpoint.

backfill waits and shows its progress (rows, rate over the last 10 seconds,
ETA) unless --detach: a bar on a terminal, a plain line every 5 seconds in a
log or pipe. --status shows the recorded backfills (--output json: one
object per table, documented in README.md), --cancel stops the one of TABLE.`,
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
	fl.Float64Var(&f.maxRate, "max-rate", 0, "read this many rows per second at most (0: no limit); chunks then hold at most a tenth of a second's rows")
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

// backfillStatus prints the backfills recorded in the Kafka checkpoint
// (those of table only, if given). The JSON form is relay.BackfillStatus
// per table, documented in README.md.
func (a *app) backfillStatus(ctx context.Context, cfg *config.Config, only, output string) error {
	states, err := backfillStates(ctx, cfg)
	if err != nil {
		return err
	}
	tables := make([]string, 0, len(states))
	for t := range states {
		if only == "" || t == only {
			tables = append(tables, t)
		}
	}
	sort.Strings(tables)
	if output == "json" {
		out := make(map[string]relay.BackfillStatus, len(tables))
		for _, t := range tables {
			out[t] = states[t].Public()
		}
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	if len(tables) == 0 {
		fmt.Fprintln(a.stdout, "no backfill recorded in the checkpoint")
		return nil
	}
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

// followBackfill shows the progress until the backfill ends: a bar when
// stderr is a terminal, a plain line every few seconds otherwise. Leaving
// it (Ctrl-C) does not stop the backfill: the relay performs it.
func (a *app) followBackfill(ctx context.Context, cfg *config.Config, table, id string) error {
	return a.follow(ctx, table, id, isTerminal(a.stderr), time.Second, func(ctx context.Context) (map[string]relay.BackfillState, error) {
		return backfillStates(ctx, cfg)
	})
}

func (a *app) follow(ctx context.Context, table, id string, tty bool, poll time.Duration, states func(context.Context) (map[string]relay.BackfillState, error)) error {
	p := newProgress(a.stderr, table, tty)
	defer p.close()
	asked := time.Now()
	hinted := false
	for {
		select {
		case <-ctx.Done():
			p.close()
			fmt.Fprintf(a.stderr, "stopped following; the relay continues the backfill (cdcrelay backfill --status)\n")
			return nil
		case <-time.After(poll):
		}
		all, err := states(ctx)
		if err != nil {
			return err
		}
		st, ok := all[table]
		if !ok || st.ID != id {
			if !hinted && time.Since(asked) > 15*time.Second {
				fmt.Fprintf(a.stderr, "waiting for the relay to pick up the request: is `cdcrelay run` running?\n")
				hinted = true
			}
			continue
		}
		p.update(st, time.Now())
		switch st.Status {
		case relay.BackfillDone:
			p.close()
			fmt.Fprintf(a.stdout, "backfill of %s done: %d rows%s\n", table, st.Done, averageRate(st))
			return nil
		case relay.BackfillCancelled:
			p.close()
			fmt.Fprintf(a.stdout, "backfill of %s cancelled after %d rows\n", table, st.Done)
			return nil
		case relay.BackfillFailed:
			return fmt.Errorf("backfill of %s failed: %s", table, st.Error)
		}
	}
}
