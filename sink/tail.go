package sink

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/cdcrelay/cdcrelay/internal/config"
)

// Record is one Kafka record as a read_committed consumer sees it.
type Record struct {
	Topic     string
	Partition int32
	Offset    int64
	Timestamp time.Time
	Key       []byte
	Value     []byte
	Headers   []sarama.RecordHeader
}

// TailOptions says what Tail reads.
type TailOptions struct {
	Topics []string
	// FromBeginning reads each partition from its oldest record, else only
	// records that arrive from now on.
	FromBeginning bool
}

// Tail reads the topics with isolation.level=read_committed, so it shows
// exactly what consumers of the relay's events see, and calls fn for each
// record until ctx ends or fn returns an error (errStop-style sentinels are
// returned as is).
func Tail(ctx context.Context, cfg *config.Kafka, opts TailOptions, fn func(Record) error) error {
	sc, err := adminConfig(cfg)
	if err != nil {
		return err
	}
	sc.Consumer.IsolationLevel = sarama.ReadCommitted
	sc.Consumer.Return.Errors = true
	consumer, err := sarama.NewConsumer(cfg.Brokers, sc)
	if err != nil {
		return fmt.Errorf("connect to kafka %v: %w", cfg.Brokers, err)
	}
	defer consumer.Close()
	if len(opts.Topics) == 0 {
		all, err := consumer.Topics()
		if err != nil {
			return err
		}
		for _, t := range all {
			if !strings.HasPrefix(t, "__") && t != cfg.CheckpointTopic {
				opts.Topics = append(opts.Topics, t)
			}
		}
		sort.Strings(opts.Topics)
	}
	start := sarama.OffsetNewest
	if opts.FromBeginning {
		start = sarama.OffsetOldest
	}
	recs := make(chan Record, 256)
	errs := make(chan error, 1)
	for _, topic := range opts.Topics {
		parts, err := consumer.Partitions(topic)
		if err != nil {
			return fmt.Errorf("topic %s: %w", topic, err)
		}
		for _, p := range parts {
			pc, err := consumer.ConsumePartition(topic, p, start)
			if err != nil {
				return fmt.Errorf("consume %s/%d: %w", topic, p, err)
			}
			defer pc.AsyncClose()
			go func() {
				for m := range pc.Messages() {
					select {
					case recs <- Record{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Timestamp: m.Timestamp,
						Key: m.Key, Value: m.Value, Headers: derefHeaders(m.Headers)}:
					case <-ctx.Done():
						return
					}
				}
			}()
			go func() {
				for e := range pc.Errors() {
					select {
					case errs <- e:
					default:
					}
				}
			}()
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return err
		case r := <-recs:
			if err := fn(r); err != nil {
				if errors.Is(err, ErrStopTail) {
					return nil
				}
				return err
			}
		}
	}
}

// ErrStopTail, returned by Tail's callback, ends Tail without an error.
var ErrStopTail = errors.New("stop tail")

func derefHeaders(hs []*sarama.RecordHeader) []sarama.RecordHeader {
	out := make([]sarama.RecordHeader, 0, len(hs))
	for _, h := range hs {
		if h != nil {
			out = append(out, *h)
		}
	}
	return out
}
