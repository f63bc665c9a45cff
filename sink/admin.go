package sink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/cdcrelay/cdcrelay/internal/config"
)

// TopicSpec is a topic the relay writes to, as `cdcrelay setup` would create it.
type TopicSpec struct {
	Name              string
	Partitions        int32
	ReplicationFactor int16 // -1: the broker's default.replication.factor
	Configs           map[string]string
	// Purpose says why the relay needs the topic, for messages:
	// "checkpoint", "events of public.outbox", "dead letters of public.outbox".
	Purpose string
}

// CheckpointTopicSpec is the checkpoint topic: compacted, one partition. The
// checkpoint itself is the transactional offset metadata that the relay's
// group commits for partition 0 of this topic.
func CheckpointTopicSpec(cfg *config.Kafka) TopicSpec {
	return TopicSpec{
		Name:              cfg.CheckpointTopic,
		Partitions:        1,
		ReplicationFactor: cfg.Topics.ReplicationFactor,
		Configs:           map[string]string{"cleanup.policy": "compact"},
		Purpose:           "checkpoint",
	}
}

// EventTopicSpec is an event or dead-letter topic with the configured
// partitions and replication factor.
func EventTopicSpec(cfg *config.Kafka, name, purpose string) TopicSpec {
	return TopicSpec{Name: name, Partitions: cfg.Topics.Partitions, ReplicationFactor: cfg.Topics.ReplicationFactor, Purpose: purpose}
}

// TopicResult is what [EnsureTopics] found, or did, for one topic.
type TopicResult struct {
	Spec    TopicSpec
	Exists  bool  // before EnsureTopics ran
	Created bool  // EnsureTopics created it
	Found   int32 // partitions of the existing topic
	// Problem is set when the topic is missing (and was not created) or
	// could not be created; Fix says how to resolve it.
	Problem string
	Fix     string
	// Note is something the operator should know that does not stop the relay.
	Note string
}

// EnsureTopics looks up topics and, with create, creates the missing ones.
// Existing topics are never changed. The error is for a failure to reach the
// cluster; per-topic problems are in the results, in the order of topics.
func EnsureTopics(ctx context.Context, cfg *config.Kafka, topics []TopicSpec, create bool) ([]TopicResult, error) {
	admin, err := newAdmin(cfg)
	if err != nil {
		return nil, err
	}
	defer admin.Close()

	names := make([]string, len(topics))
	for i, t := range topics {
		names[i] = t.Name
	}
	meta, err := admin.DescribeTopics(names)
	if err != nil {
		return nil, fmt.Errorf("describe topics %s: %w", strings.Join(names, ", "), err)
	}
	byName := map[string]*sarama.TopicMetadata{}
	for _, m := range meta {
		byName[m.Name] = m
	}
	results := make([]TopicResult, len(topics))
	for i, spec := range topics {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		r := &results[i]
		r.Spec = spec
		m := byName[spec.Name]
		switch {
		case m != nil && m.Err == sarama.ErrNoError:
			r.Exists = true
			r.Found = int32(len(m.Partitions))
			r.Note = topicNote(admin, spec, r.Found)
		case m != nil && m.Err == sarama.ErrTopicAuthorizationFailed:
			r.Problem = "not authorized to describe topic " + spec.Name
			r.Fix = fmt.Sprintf("grant the relay's principal DESCRIBE and WRITE on topic %s (kafka-acls.sh --add --operation Describe --operation Write --topic %s ...)", spec.Name, spec.Name)
		case m != nil && m.Err != sarama.ErrUnknownTopicOrPartition:
			r.Problem = fmt.Sprintf("topic %s: %v", spec.Name, m.Err)
		case !create:
			r.Problem = fmt.Sprintf("topic %s (%s) does not exist", spec.Name, spec.Purpose)
			r.Fix = "run `cdcrelay setup` (with kafka.topics.create = true), or create it: " + createCommand(cfg, spec)
		default:
			err := admin.CreateTopic(spec.Name, topicDetail(spec), false)
			switch {
			case err == nil || errors.Is(err, sarama.ErrTopicAlreadyExists):
				r.Created = err == nil
				r.Exists = err != nil
			default:
				r.Problem = fmt.Sprintf("create topic %s (%s): %v", spec.Name, spec.Purpose, err)
				r.Fix = "create it with an account that may: " + createCommand(cfg, spec)
			}
		}
	}
	return results, nil
}

func topicDetail(spec TopicSpec) *sarama.TopicDetail {
	d := &sarama.TopicDetail{NumPartitions: spec.Partitions, ReplicationFactor: spec.ReplicationFactor}
	if len(spec.Configs) > 0 {
		d.ConfigEntries = map[string]*string{}
		for k, v := range spec.Configs {
			d.ConfigEntries[k] = &v
		}
	}
	return d
}

// topicNote reports an existing topic that differs from its spec.
func topicNote(admin sarama.ClusterAdmin, spec TopicSpec, partitions int32) string {
	var notes []string
	if spec.Partitions > 0 && partitions != spec.Partitions && spec.Purpose != "checkpoint" {
		notes = append(notes, fmt.Sprintf("has %d partitions, kafka.topics.partitions says %d (existing topics are left as they are)", partitions, spec.Partitions))
	}
	if want, ok := spec.Configs["cleanup.policy"]; ok {
		entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: spec.Name, ConfigNames: []string{"cleanup.policy"}})
		if err == nil {
			for _, e := range entries {
				if e.Name == "cleanup.policy" && !strings.Contains(e.Value, want) {
					notes = append(notes, fmt.Sprintf("cleanup.policy is %q, not %q", e.Value, want))
				}
			}
		}
	}
	return strings.Join(notes, "; ")
}

// createCommand is the kafka-topics.sh line that creates spec.
func createCommand(cfg *config.Kafka, spec TopicSpec) string {
	bootstrap := ""
	if len(cfg.Brokers) > 0 {
		bootstrap = cfg.Brokers[0]
	}
	s := fmt.Sprintf("kafka-topics.sh --bootstrap-server %s --create --topic %s --partitions %d", bootstrap, spec.Name, spec.Partitions)
	if spec.ReplicationFactor > 0 {
		s += fmt.Sprintf(" --replication-factor %d", spec.ReplicationFactor)
	}
	keys := make([]string, 0, len(spec.Configs))
	for k := range spec.Configs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s += fmt.Sprintf(" --config %s=%s", k, spec.Configs[k])
	}
	return s
}

// adminConfig is the client configuration of the administrative calls: not
// transactional, and never creating topics as a side effect of metadata
// requests (a broker with auto.create.topics.enable would create the
// checkpoint topic uncompacted).
func adminConfig(cfg *config.Kafka) (*sarama.Config, error) {
	sc, err := SaramaConfig(cfg, false)
	if err != nil {
		return nil, err
	}
	sc.Metadata.AllowAutoTopicCreation = false
	sc.Metadata.Retry.Max = 2
	return sc, nil
}

func newAdmin(cfg *config.Kafka) (sarama.ClusterAdmin, error) {
	sc, err := adminConfig(cfg)
	if err != nil {
		return nil, err
	}
	admin, err := sarama.NewClusterAdmin(cfg.Brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("connect to kafka %s: %w", strings.Join(cfg.Brokers, ","), err)
	}
	return admin, nil
}

// ProbeResult is what [Probe] learned.
type ProbeResult struct {
	Brokers         []string // the cluster's brokers, from metadata
	ControllerID    int32
	TransactionalID string // the probe's own transactional.id
	// Produced: the probe transaction carried a record (to the checkpoint
	// topic, which must exist for that) before it was aborted.
	Produced bool
}

// ProbeTransactionalID is the transactional.id of the probe transaction: the
// relay's own id plus "-check", so that a check never fences a running relay.
// Kafka ACLs on transactional ids must allow it (a prefixed ACL on the relay's
// id does).
func ProbeTransactionalID(cfg *config.Kafka) string { return cfg.TransactionalID + "-check" }

// Probe checks that the cluster answers metadata requests and that
// transactions work: it initialises a transactional producer (under
// [ProbeTransactionalID]), begins a transaction, produces one record to the
// checkpoint topic if it exists, and aborts. Nothing becomes visible to
// read_committed consumers. The error names the step that failed.
func Probe(ctx context.Context, cfg *config.Kafka) (*ProbeResult, error) {
	sc, err := SaramaConfig(cfg, true)
	if err != nil {
		return nil, err
	}
	sc.Metadata.AllowAutoTopicCreation = false
	sc.Producer.Transaction.ID = ProbeTransactionalID(cfg)
	// A probe left open by a killed check blocks read_committed readers of
	// the checkpoint partition only this long.
	sc.Producer.Transaction.Timeout = 10 * time.Second
	res := &ProbeResult{TransactionalID: sc.Producer.Transaction.ID}

	client, err := sarama.NewClient(cfg.Brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("connect to kafka %s: %w", strings.Join(cfg.Brokers, ","), err)
	}
	defer client.Close()
	for _, b := range client.Brokers() {
		res.Brokers = append(res.Brokers, b.Addr())
	}
	slices.Sort(res.Brokers)
	if c, err := client.Controller(); err == nil {
		res.ControllerID = c.ID()
	}

	producer, err := initProducer(ctx, client)
	if err != nil {
		return res, fmt.Errorf("transactions do not work: initialise transactional producer %q: %w%s", res.TransactionalID, err, txnHint(err))
	}
	defer producer.Close()
	go func() {
		for range producer.Errors() {
		}
	}()

	if err := producer.BeginTxn(); err != nil {
		return res, fmt.Errorf("transactions do not work: begin: %w", err)
	}
	if parts, err := client.Partitions(cfg.CheckpointTopic); err == nil && len(parts) > 0 {
		producer.Input() <- &sarama.ProducerMessage{
			Topic: cfg.CheckpointTopic, Key: sarama.StringEncoder(res.TransactionalID),
			Value: sarama.StringEncoder("cdcrelay check: probe transaction, aborted"),
		}
		res.Produced = true
	}
	if err := producer.AbortTxn(); err != nil {
		return res, fmt.Errorf("transactions do not work: abort probe transaction: %w", err)
	}
	return res, nil
}

// initProducer creates the transactional producer (InitProducerId), retrying
// while the transaction coordinator is loading or busy, until ctx ends.
func initProducer(ctx context.Context, client sarama.Client) (sarama.AsyncProducer, error) {
	backoff := 50 * time.Millisecond
	for {
		p, err := sarama.NewAsyncProducerFromClient(client)
		if err == nil {
			return p, nil
		}
		if IsFatal(err) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (gave up: %v)", err, ctx.Err())
		case <-time.After(backoff):
		}
		if backoff < time.Second {
			backoff *= 2
		}
	}
}

func txnHint(err error) string {
	switch {
	case errors.Is(err, sarama.ErrTransactionalIDAuthorizationFailed):
		return " (grant WRITE and DESCRIBE on the transactional id, e.g. a prefixed ACL on the relay's transactional_id)"
	case errors.Is(err, sarama.ErrClusterAuthorizationFailed):
		return " (grant IDEMPOTENT_WRITE on the cluster)"
	case errors.Is(err, sarama.ErrConsumerCoordinatorNotAvailable), errors.Is(err, sarama.ErrNotCoordinatorForConsumer):
		return " (is the __transaction_state topic creatable? a cluster with fewer brokers than transaction.state.log.replication.factor (default 3) needs it and transaction.state.log.min.isr lowered)"
	}
	return ""
}

// LoadCheckpoint reads the relay's last committed checkpoint with a plain
// (non-transactional) client, for `cdcrelay status`: it fences nobody. ok is
// false when the relay never committed one.
func LoadCheckpoint(ctx context.Context, cfg *config.Kafka) (cp Checkpoint, ok bool, err error) {
	sc, err := adminConfig(cfg)
	if err != nil {
		return Checkpoint{}, false, err
	}
	client, err := sarama.NewClient(cfg.Brokers, sc)
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("connect to kafka %s: %w", strings.Join(cfg.Brokers, ","), err)
	}
	defer client.Close()
	return ReadCheckpoint(ctx, client, cfg.CheckpointGroup, cfg.CheckpointTopic)
}
