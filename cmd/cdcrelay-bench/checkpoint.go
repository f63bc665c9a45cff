package main

import (
	"context"
	"fmt"
	"time"

	"github.com/IBM/sarama"

	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

// checkpointWatch polls the relay's committed checkpoint.
type checkpointWatch struct {
	client sarama.Client
	group  string
}

func newCheckpointWatch(brokers []string, group string) (*checkpointWatch, error) {
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_6_0_0
	c, err := sarama.NewClient(brokers, cfg)
	if err != nil {
		return nil, err
	}
	return &checkpointWatch{client: c, group: group}, nil
}

func (w *checkpointWatch) close() { _ = w.client.Close() }

// waitPast returns the time at which the committed checkpoint was first seen
// past lsn (every transaction whose commit record starts before the
// checkpoint's LSN is published; the last one's starts after lsn), or naming
// all lastRows changes of that last transaction as published (a transaction
// whose last change fills a Kafka transaction exactly gets its end-of-
// transaction checkpoint only with the next commit or idle checkpoint).
func (w *checkpointWatch) waitPast(ctx context.Context, lsn replication.LSN, lastRows int, d time.Duration, p *relayProc) (time.Time, error) {
	deadline := time.Now().Add(d)
	var last sink.Checkpoint
	for time.Now().Before(deadline) {
		if p.exited() {
			return time.Time{}, fmt.Errorf("relay exited (%v) at checkpoint %s", p.err, last)
		}
		// A pending transaction makes the broker answer "unstable" and
		// ReadCheckpoint back off; a short context keeps the poll tight.
		pctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
		cp, ok, err := sink.ReadCheckpoint(pctx, w.client, w.group, "cdcrelay.checkpoints")
		cancel()
		now := time.Now()
		if ctx.Err() != nil {
			return time.Time{}, ctx.Err()
		}
		if err == nil && ok {
			last = cp
			if cp.LSN > lsn || cp.TxLSN >= lsn && cp.TxNext >= lastRows {
				return now, nil
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("checkpoint %s not past %s within %s", last, lsn, d)
}

// countEvents reads the topic as a read_committed consumer and checks it
// holds exactly want events.
func countEvents(ctx context.Context, brokers []string, topic string, want int) error {
	c, err := startConsumer(brokers, topic, want, 100*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.close()
	if err := c.wait(ctx, 5*time.Minute, nil); err != nil {
		return fmt.Errorf("counting events: %w", err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := c.seen(); n != want {
		return fmt.Errorf("topic %s holds %d events, %d rows were written", topic, n, want)
	}
	return nil
}
