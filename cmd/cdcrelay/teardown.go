package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/cdcrelay/cdcrelay/replication"
)

func (a *app) teardownCmd() *cobra.Command {
	var yes, dryRun bool
	cmd := &cobra.Command{
		Use:   "teardown --yes",
		Short: "Drop the replication slot and the publication",
		Long: `teardown drops the relay's logical replication slot, then its publication.

Without the slot, Postgres no longer keeps WAL for the relay, and changes made
from then on are not published: a relay started later begins at that later
point. It refuses while the slot is in use (a relay is running) and names the
backend that holds it. Kafka topics and the checkpoint are left as they are.

teardown changes nothing without --yes; --dry-run prints the SQL it would run.`,
		Example: `  # see what would be dropped
  cdcrelay teardown --dry-run

  # drop the slot and the publication
  cdcrelay teardown --yes`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			if !yes && !dryRun {
				return usageErrorf("teardown drops replication slot %s and publication %s of %s; changes made after that are never published.\n"+
					"Run it again with --yes to proceed, or with --dry-run to see the SQL",
					cfg.Postgres.Slot, cfg.Postgres.Publication, describeDSN(cfg.Postgres.DSN))
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			conn, err := connectPostgres(ctx, cfg, "teardown")
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			stmts, err := replication.Teardown(ctx, conn, cfg.Postgres.Slot, cfg.Postgres.Publication, dryRun)
			if err != nil {
				return err
			}
			w := a.stdout
			switch {
			case len(stmts) == 0:
				fmt.Fprintf(w, "Nothing to do: neither slot %s nor publication %s exists.\n", cfg.Postgres.Slot, cfg.Postgres.Publication)
			case dryRun:
				fmt.Fprintln(w, "Would run on PostgreSQL:")
			default:
				fmt.Fprintln(w, "Ran on PostgreSQL:")
			}
			for _, s := range stmts {
				fmt.Fprintf(w, "  %s;\n", s)
			}
			if len(stmts) > 0 && !dryRun {
				fmt.Fprintf(w, "Kafka topics and the checkpoint of group %s were left as they are.\n", cfg.Kafka.CheckpointGroup)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "really drop the slot and the publication")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the SQL teardown would run; change nothing")
	return cmd
}
