package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/IBM/sarama"
)

func ensureCheckpointTopic(brokers []string) error {
	return createTopicCfg(brokers, "cdcrelay.checkpoints", 1, map[string]string{"cleanup.policy": "compact"})
}

func createTopic(brokers []string, name string, partitions int32) error {
	return createTopicCfg(brokers, name, partitions, nil)
}

func createTopicCfg(brokers []string, name string, partitions int32, cfgs map[string]string) error {
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_6_0_0
	admin, err := sarama.NewClusterAdmin(brokers, cfg)
	if err != nil {
		return err
	}
	defer admin.Close()
	entries := map[string]*string{}
	for k, v := range cfgs {
		entries[k] = &v
	}
	err = admin.CreateTopic(name, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1, ConfigEntries: entries}, false)
	if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", name, err)
	}
	return nil
}

// consumer reads a topic from the start as a read_committed consumer and
// notes when each record arrived, relative to its CreateTime (which the relay
// sets to the source transaction's commit time).
type consumer struct {
	c      sarama.Consumer
	pcs    []sarama.PartitionConsumer
	want   int
	mu     sync.Mutex
	count  int
	lastAt time.Time
	lat    []time.Duration // receive time - record timestamp
	keep   bool
	full   chan struct{}
	errs   chan error
}

func startConsumer(brokers []string, topic string, want int, maxWait time.Duration) (*consumer, error) {
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_6_0_0
	cfg.Consumer.IsolationLevel = sarama.ReadCommitted
	cfg.Consumer.Return.Errors = true
	cfg.Consumer.MaxWaitTime = maxWait
	cfg.Consumer.Fetch.Default = 4 << 20
	cfg.ChannelBufferSize = 1024
	c, err := sarama.NewConsumer(brokers, cfg)
	if err != nil {
		return nil, err
	}
	k := &consumer{c: c, want: want, full: make(chan struct{}), errs: make(chan error, 1)}
	parts, err := c.Partitions(topic)
	if err != nil {
		c.Close()
		return nil, err
	}
	for _, part := range parts {
		// Just after a topic is created its leader may not be known yet
		// (NOT_LEADER_OR_FOLLOWER): retry for a few seconds.
		var pc sarama.PartitionConsumer
		for attempt := 0; ; attempt++ {
			pc, err = c.ConsumePartition(topic, part, sarama.OffsetOldest)
			if err == nil || attempt == 20 {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if err != nil {
			k.close()
			return nil, fmt.Errorf("consume %s/%d: %w", topic, part, err)
		}
		k.pcs = append(k.pcs, pc)
		go func() {
			for m := range pc.Messages() {
				now := time.Now()
				k.mu.Lock()
				k.count++
				k.lastAt = now
				if k.keep {
					k.lat = append(k.lat, now.Sub(m.Timestamp))
				}
				if k.count == k.want {
					close(k.full)
				}
				k.mu.Unlock()
			}
		}()
		go func() {
			for e := range pc.Errors() {
				select {
				case k.errs <- e:
				default:
				}
			}
		}()
	}
	return k, nil
}

func (k *consumer) seen() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.count
}

// wait returns once want records have been read.
func (k *consumer) wait(ctx context.Context, d time.Duration, p *relayProc) error {
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-k.full:
			return nil
		case err := <-k.errs:
			return fmt.Errorf("consumer: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-timeout.C:
			return fmt.Errorf("read %d of %d events within %s", k.seen(), k.want, d)
		case <-tick.C:
			if p != nil && p.exited() {
				return fmt.Errorf("relay exited (%v) after %d of %d events", p.err, k.seen(), k.want)
			}
		}
	}
}

func (k *consumer) close() {
	for _, pc := range k.pcs {
		pc.AsyncClose()
	}
	_ = k.c.Close()
}

type latencyStats struct{ p50, p95, p99, max time.Duration }

func percentiles(ds []time.Duration) *latencyStats {
	if len(ds) == 0 {
		return nil
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return &latencyStats{p50: at(0.50), p95: at(0.95), p99: at(0.99), max: s[len(s)-1]}
}
