package main

import (
	"errors"

	"github.com/spf13/cobra"
)

type backfillFlags struct {
	where     string
	chunkSize int
	maxRate   float64
	status    bool
	cancel    bool
	detach    bool
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
			if _, err := a.loadConfig(); err != nil {
				return err
			}
			return errors.New("backfill is not available in this build yet")
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.where, "where", "", "SQL condition selecting the rows to backfill (default: all rows)")
	fl.IntVar(&f.chunkSize, "chunk-size", 1000, "rows per chunk (one short query each)")
	fl.Float64Var(&f.maxRate, "max-rate", 0, "at most this many rows per second (0: no limit)")
	fl.BoolVar(&f.status, "status", false, "show the progress of running backfills")
	fl.BoolVar(&f.cancel, "cancel", false, "cancel the backfill of TABLE")
	fl.BoolVar(&f.detach, "detach", false, "request the backfill and return at once")
	return cmd
}
