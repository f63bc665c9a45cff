package main

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/cdcrelay/cdcrelay/internal/metrics"
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

With several hosts in postgres.dsn it streams from whichever is the primary.
After a failover it reconnects with backoff, checks that the slot exists on
the new primary and that its timeline history continues the checkpoint, and
resumes from the checkpoint. A missing or invalidated slot, a slot ahead of
the checkpoint, another database cluster or a timeline that forked before
the checkpoint stop it with exit status 3 and the way out; it never creates
a slot by itself. --allow-slot-ahead continues from the slot (or the fork)
instead, accepting the loss.

Only one relay streams from a slot. A second one with the same configuration
exits with an error, or, with --standby, waits and takes over when the active
one goes away (within about 10 seconds of its death, even by SIGKILL or the
loss of its host).

With metrics.listen set, it serves Prometheus /metrics, /healthz (the process
runs) and /readyz (200 only while it streams and commits; a waiting standby, a
session being retried, or one that has not committed for 30s while the server's
WAL is ahead of its checkpoint is not ready) on that address.

SIGHUP re-reads relay.toml and applies relay.log_level (unless --log-level was
given). Every other setting needs a restart: run logs which changed settings
it did not apply.

Run 'cdcrelay setup' first. Logs go to stderr (--log-level, --log-format).`,
		Example: `  cdcrelay run --config /etc/cdcrelay/relay.toml

  # a hot standby on a second host
  cdcrelay run --standby --log-format json

  # turn on debug logs of a running relay: edit relay.log_level, then
  kill -HUP <pid>`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			level := new(slog.LevelVar)
			level.Set(a.logLevelFor(cfg))
			log := a.leveledLogger(cfg, level)
			opts.Logger = log
			ctx, cancel := context.WithCancel(cmd.Context())
			var wg sync.WaitGroup
			defer wg.Wait()
			defer cancel()

			tracer, err := relay.NewTracer(ctx, cfg, log)
			if err != nil {
				return err
			}
			if tracer != nil {
				opts.Tracer = tracer
				defer shutdownTracer(tracer, log)
			}
			if cfg.Metrics.Listen != "" {
				m := metrics.New(metrics.Options{Relay: cfg.Relay.Name, Version: version,
					StallAfter: max(30*time.Second, 3*cfg.Postgres.IdleCheckpointInterval.Duration)})
				srv, err := metrics.Listen(cfg.Metrics.Listen, m.Handler(), log)
				if err != nil {
					return err
				}
				defer srv.Close()
				log.Info("serving /metrics, /healthz and /readyz", "addr", srv.Addr())
				opts.Observer = m
				if tracer != nil {
					m.Registry().MustRegister(tracer.Collectors()...)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					m.PollSlot(ctx, cfg.Postgres.DSN, cfg.Postgres.Slot, "cdcrelay "+cfg.Relay.Name+" metrics", metrics.DefaultSlotPollInterval, log)
				}()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.reloadOnSIGHUP(ctx, cfg, level, log)
			}()
			log.Info("cdcrelay run", "version", version, "pid", os.Getpid(), "standby", opts.Standby)
			return relay.Run(ctx, cfg, opts)
		},
	}
	cmd.Flags().BoolVar(&opts.AllowSlotAhead, "allow-slot-ahead", false,
		"start even when the slot is ahead of the Kafka checkpoint, or the checkpoint cannot be followed on this server (another cluster, a forked timeline), continuing from the slot (or the fork) and accepting that the changes in between are lost")
	cmd.Flags().BoolVar(&opts.Standby, "standby", false, "wait while another relay streams from the slot, and take over when it stops")
	return cmd
}
