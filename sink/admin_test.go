package sink_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
	"github.com/cdcrelay/cdcrelay/sink"
)

// kafkaConfig is the [kafka] section of a relay named after the test, with its
// own checkpoint topic, completed with the defaults as config.Load does.
func kafkaConfig(t *testing.T, brokers []string) *config.Kafka {
	t.Helper()
	name := testenv.UniqueName(t, "r")
	q := make([]string, len(brokers))
	for i, b := range brokers {
		q[i] = strconv.Quote(b)
	}
	text := fmt.Sprintf(`
[relay]
name = %q
[postgres]
dsn = "postgres://u@127.0.0.1:1/db"
[kafka]
brokers = [%s]
checkpoint_topic = %q
request_timeout = "10s"
[kafka.topics]
partitions = 3
[[mapping]]
table = "public.outbox"
kind = "outbox"
`, name, strings.Join(q, ", "), name+".checkpoints")
	cfg, err := config.ParseWithEnv("test.toml", []byte(text), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return &cfg.Kafka
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestEnsureTopics(t *testing.T) {
	ctx := ctxT(t)
	cfg := kafkaConfig(t, testenv.KafkaBrokers(t))
	events := testenv.UniqueName(t, "events")
	specs := []sink.TopicSpec{sink.CheckpointTopicSpec(cfg), sink.EventTopicSpec(cfg, events, "events of public.outbox")}

	// Without create: both reported missing, each with the command that creates it.
	res, err := sink.EnsureTopics(ctx, cfg, specs, false)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Exists || r.Created || r.Problem == "" || !strings.Contains(r.Fix, "kafka-topics.sh") {
			t.Errorf("topic %s: %+v, want a problem with a fix", specs[i].Name, r)
		}
	}
	if !strings.Contains(res[0].Fix, "--config cleanup.policy=compact") || !strings.Contains(res[0].Fix, "--partitions 1") {
		t.Errorf("checkpoint topic fix %q", res[0].Fix)
	}

	// With create: both created as specified.
	res, err = sink.EnsureTopics(ctx, cfg, specs, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if !r.Created || r.Problem != "" {
			t.Errorf("topic %s: %+v, want created", r.Spec.Name, r)
		}
	}
	admin := newAdmin(t, cfg)
	meta, err := admin.DescribeTopics([]string{cfg.CheckpointTopic, events})
	if err != nil {
		t.Fatal(err)
	}
	parts := map[string]int{}
	for _, m := range meta {
		parts[m.Name] = len(m.Partitions)
	}
	if parts[cfg.CheckpointTopic] != 1 || parts[events] != 3 {
		t.Errorf("partitions = %v, want checkpoint 1, events 3", parts)
	}
	entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: cfg.CheckpointTopic, ConfigNames: []string{"cleanup.policy"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Value != "compact" {
		t.Errorf("checkpoint topic cleanup.policy = %+v", entries)
	}

	// Again: nothing to do.
	res, err = sink.EnsureTopics(ctx, cfg, specs, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if !r.Exists || r.Created || r.Problem != "" || r.Note != "" {
			t.Errorf("topic %s on the second run: %+v", r.Spec.Name, r)
		}
	}
}

func newAdmin(t *testing.T, cfg *config.Kafka) sarama.ClusterAdmin {
	t.Helper()
	sc, err := sink.SaramaConfig(cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := sarama.NewClusterAdmin(cfg.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	return admin
}

// TestProbe: the probe transaction is really a transaction: its record reaches
// the log (a read_uncommitted consumer sees it) but a read_committed consumer
// never does, because it was aborted.
func TestProbe(t *testing.T) {
	ctx := ctxT(t)
	cfg := kafkaConfig(t, testenv.KafkaBrokers(t))

	res, err := sink.Probe(ctx, cfg)
	if err != nil {
		t.Fatalf("probe without a checkpoint topic: %v", err)
	}
	if res.Produced || len(res.Brokers) == 0 || res.TransactionalID != cfg.TransactionalID+"-check" {
		t.Errorf("probe = %+v", res)
	}

	if _, err := sink.EnsureTopics(ctx, cfg, []sink.TopicSpec{sink.CheckpointTopicSpec(cfg)}, true); err != nil {
		t.Fatal(err)
	}
	res, err = sink.Probe(ctx, cfg)
	if err != nil {
		t.Fatalf("probe: %v", err)
	}
	if !res.Produced {
		t.Fatalf("probe did not produce into the existing checkpoint topic: %+v", res)
	}
	if n := count(t, cfg, sarama.ReadUncommitted); n != 1 {
		t.Errorf("read_uncommitted sees %d records, want the aborted probe record", n)
	}
	if n := count(t, cfg, sarama.ReadCommitted); n != 0 {
		t.Errorf("read_committed sees %d records, want none (the probe aborted)", n)
	}
}

// count reads partition 0 of the checkpoint topic up to its end.
func count(t *testing.T, cfg *config.Kafka, iso sarama.IsolationLevel) int {
	t.Helper()
	sc, err := sink.SaramaConfig(cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	sc.Consumer.IsolationLevel = iso
	sc.Consumer.MaxWaitTime = 100 * time.Millisecond
	c, err := sarama.NewConsumer(cfg.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc, err := c.ConsumePartition(cfg.CheckpointTopic, 0, sarama.OffsetOldest)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	n := 0
	timeout := time.After(3 * time.Second)
	for {
		select {
		case <-pc.Messages():
			n++
		case <-timeout:
			return n
		}
	}
}

func TestProbeUnreachable(t *testing.T) {
	ctx := ctxT(t)
	cfg := kafkaConfig(t, []string{"127.0.0.1:1"})
	start := time.Now()
	_, err := sink.Probe(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("probe of a closed port: %v", err)
	}
	if _, err := sink.EnsureTopics(ctx, cfg, []sink.TopicSpec{sink.CheckpointTopicSpec(cfg)}, false); err == nil {
		t.Fatal("EnsureTopics on a closed port: no error")
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("took %v to give up", d)
	}
}
