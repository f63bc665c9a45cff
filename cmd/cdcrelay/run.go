package main

import (
	"github.com/spf13/cobra"

	"github.com/cdcrelay/cdcrelay/internal/relay"
)

func (a *app) runCmd() *cobra.Command {
	var opts relay.Options
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Stream changes to Kafka (the daemon)",
		Long: `run streams the mapped tables' changes from the replication slot to Kafka until
it receives SIGINT or SIGTERM; then it finishes or aborts the open Kafka
transaction, confirms to the slot what is committed, and exits 0.

On start it creates the transactional producer (fencing any older relay with the
same kafka.transactional_id), reads the checkpoint committed in Kafka, and
resumes from it. If the slot has been moved past the checkpoint (by hand, or by
re-creating it), changes in between were never published: run refuses to start
unless --allow-slot-ahead accepts that loss.

Only one relay streams from a slot. A second one with the same configuration
exits with an error, or, with --standby, waits and takes over when the active
one goes away.

Run 'cdcrelay setup' first. Logs go to stderr (--log-level, --log-format).`,
		Example: `  cdcrelay run --config /etc/cdcrelay/relay.toml

  # a hot standby on a second host
  cdcrelay run --standby --log-format json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			opts.Logger = a.logger(cfg)
			return relay.Run(cmd.Context(), cfg, opts)
		},
	}
	cmd.Flags().BoolVar(&opts.AllowSlotAhead, "allow-slot-ahead", false,
		"start even when the slot is ahead of the Kafka checkpoint, accepting that the changes in between are lost")
	cmd.Flags().BoolVar(&opts.Standby, "standby", false, "wait while another relay streams from the slot, and take over when it stops")
	return cmd
}
