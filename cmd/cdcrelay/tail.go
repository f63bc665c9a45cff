package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cdcrelay/cdcrelay/sink"
)

func (a *app) tailCmd() *cobra.Command {
	var (
		fromBeginning bool
		max           int
		timeout       time.Duration
		output        string
	)
	cmd := &cobra.Command{
		Use:   "tail [TOPIC...]",
		Short: "Print published events as a read_committed consumer sees them",
		Long: `tail reads the given topics (default: every topic except Kafka's internal ones
and the checkpoint topic) with isolation.level=read_committed, the way the
relay's consumers should, and prints each record: topic, partition, offset,
key, headers and value. Events of aborted or still open Kafka transactions
never appear.`,
		Example: `  cdcrelay tail outbox.event.order --from-beginning
  cdcrelay tail --from-beginning --max 10 --timeout 30s -o json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			n := 0
			err = sink.Tail(ctx, &cfg.Kafka, sink.TailOptions{Topics: args, FromBeginning: fromBeginning}, func(r sink.Record) error {
				a.printRecord(r, output)
				n++
				if max > 0 && n >= max {
					return sink.ErrStopTail
				}
				return nil
			})
			if err != nil {
				return err
			}
			if max > 0 && n < max {
				return fmt.Errorf("saw %d of %d records before the timeout", n, max)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&fromBeginning, "from-beginning", false, "start at the oldest record of each partition")
	fl.IntVar(&max, "max", 0, "exit after this many records (0: run until interrupted)")
	fl.DurationVar(&timeout, "timeout", 0, "give up after this long (0: no limit)")
	outputFlag(cmd, &output)
	return cmd
}

func (a *app) printRecord(r sink.Record, output string) {
	headers := make(map[string]string, len(r.Headers))
	for _, h := range r.Headers {
		headers[string(h.Key)] = string(h.Value)
	}
	if output == "json" {
		b, _ := json.Marshal(map[string]any{
			"topic": r.Topic, "partition": r.Partition, "offset": r.Offset,
			"timestamp": r.Timestamp, "key": string(r.Key), "headers": headers, "value": string(r.Value),
		})
		fmt.Fprintln(a.stdout, string(b))
		return
	}
	var hs []string
	for _, h := range r.Headers {
		hs = append(hs, string(h.Key)+"="+string(h.Value))
	}
	value := string(r.Value)
	if r.Value == nil {
		value = "(tombstone)"
	}
	fmt.Fprintf(a.stdout, "%s/%d@%d key=%s headers={%s}\n  %s\n", r.Topic, r.Partition, r.Offset, r.Key, strings.Join(hs, ", "), value)
}
