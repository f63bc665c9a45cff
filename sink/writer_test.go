package sink_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/sink"
)

// silentBroker is a private broker behind a proxy that a test can pause: the
// connections stay open and nothing is answered.
type silentBroker struct {
	k      *testenv.Kafka
	direct []string // bypasses the proxy, for the test's own checks
}

func newSilentBroker(t *testing.T) *silentBroker {
	k := testenv.NewKafka(t, testenv.KafkaOptions{Proxy: true})
	return &silentBroker{k: k, direct: k.InternalBrokers()}
}

// config is a relay's [kafka] section through the proxy, with its own
// checkpoint topic and an event topic of one partition.
func (b *silentBroker) config(ctx context.Context, t *testing.T, requestTimeout, txnTimeout time.Duration) (*config.Kafka, string) {
	t.Helper()
	cfg := kafkaConfig(t, []string{b.k.Proxy().Addr()})
	cfg.RequestTimeout.Duration = requestTimeout
	cfg.TransactionTimeout.Duration = txnTimeout
	if _, err := sink.EnsureTopics(ctx, cfg, []sink.TopicSpec{sink.CheckpointTopicSpec(cfg)}, true); err != nil {
		t.Fatal(err)
	}
	topic := testenv.UniqueName(t, "silent")
	if err := testenv.CreateTopic(ctx, b.direct, topic, 1, nil); err != nil {
		t.Fatal(err)
	}
	return cfg, topic
}

// TestWriterOnSilentBroker: a broker that keeps the connection
// open but answers nothing must not hold a send or a commit for as long as
// sarama keeps retrying; both fail by the transaction timeout.
func TestWriterOnSilentBroker(t *testing.T) {
	b := newSilentBroker(t)
	t.Run("commit", func(t *testing.T) { testCommitGivesUp(t, b) })
	t.Run("send", func(t *testing.T) { testSendGivesUp(t, b) })
}

// testCommitGivesUp: the commit fails by the transaction timeout; after the
// broker is back, a new Writer learns the outcome from the checkpoint and the
// next transaction commits, with every committed event visible once to a
// read_committed consumer.
func testCommitGivesUp(t *testing.T, b *silentBroker) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	k, direct := b.k, b.direct
	cfg, topic := b.config(ctx, t, 3*time.Second, 8*time.Second)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	w, err := sink.NewWriter(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	txn, err := w.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ev := mapping.Event{Topic: topic, Key: []byte("k"), Value: []byte("during-pause")}
	if err := txn.Send(ctx, &ev); err != nil {
		t.Fatal(err)
	}
	k.Proxy().Pause()
	started := time.Now()
	done := make(chan error, 1)
	go func() { done <- txn.Commit(sink.Checkpoint{LSN: 100, Seq: 1}) }()
	// Far more than the transaction timeout, far less than sarama's own
	// retries against a silent broker.
	bound := cfg.TransactionTimeout.Duration + cfg.RequestTimeout.Duration + 10*time.Second
	select {
	case err = <-done:
	case <-time.After(bound):
		k.Proxy().Resume()
		t.Fatalf("commit still waiting %s after the broker went silent (transaction timeout %s)", bound, cfg.TransactionTimeout.Duration)
	}
	if err == nil {
		t.Fatalf("commit succeeded although the broker answered nothing")
	}
	t.Logf("commit failed after %s: %v", time.Since(started).Round(100*time.Millisecond), err)
	if _, err := w.Begin(ctx); !errors.Is(err, sink.ErrBroken) {
		t.Errorf("Begin after a failed commit: %v, want ErrBroken", err)
	}
	w.Close()
	k.Proxy().Resume()

	// The outcome is learnt from the checkpoint, by a new producer epoch.
	w, err = sink.NewWriter(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cp, found, err := w.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	firstCommitted := found && cp.Seq == 1
	t.Logf("checkpoint after the silent commit: found %v, %v", found, cp)
	if found && cp.Seq != 1 {
		t.Fatalf("checkpoint seq %d, want 1 or none", cp.Seq)
	}
	txn, err = w.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ev2 := mapping.Event{Topic: topic, Key: []byte("k"), Value: []byte("after-resume")}
	if err := txn.Send(ctx, &ev2); err != nil {
		t.Fatal(err)
	}
	if err := txn.Commit(sink.Checkpoint{LSN: 200, Seq: cp.Seq + 1}); err != nil {
		t.Fatal(err)
	}
	want := []string{"after-resume"}
	if firstCommitted {
		want = []string{"during-pause", "after-resume"}
	}
	recs, err := e2e.ReadCommitted(ctx, direct, []string{topic}, len(want), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range recs {
		got = append(got, string(r.Value))
	}
	if len(got) != len(want) || got[len(got)-1] != "after-resume" || (firstCommitted && got[0] != "during-pause") {
		t.Fatalf("read_committed sees %q, want %q (the checkpoint says the first commit %s)", got, want,
			map[bool]string{true: "landed", false: "did not land"}[firstCommitted])
	}
}

// testSendGivesUp: with the broker silent, sends fill sarama's buffers and the
// next one waits; it must fail by the transaction timeout, long before the
// request timeout would let sarama report anything.
func testSendGivesUp(t *testing.T, b *silentBroker) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg, topic := b.config(ctx, t, 60*time.Second, 3*time.Second)
	w, err := sink.NewWriter(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	txn, err := w.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b.k.Proxy().Pause()
	defer b.k.Proxy().Resume()
	started := time.Now()
	value := make([]byte, 1024)
	done := make(chan error, 1)
	sent := 0
	go func() {
		for i := 0; i < 200000; i++ {
			ev := mapping.Event{Topic: topic, Key: []byte("k"), Value: value}
			if err := txn.Send(ctx, &ev); err != nil {
				done <- err
				return
			}
			sent++
		}
		done <- nil
	}()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("sends still waiting 30s after the broker went silent (transaction timeout %s, request timeout %s)",
			cfg.TransactionTimeout.Duration, cfg.RequestTimeout.Duration)
	}
	if !errors.Is(err, sink.ErrTxnExpired) {
		t.Fatalf("after %d sends: %v, want ErrTxnExpired", sent, err)
	}
	t.Logf("send %d failed after %s: %v", sent+1, time.Since(started).Round(100*time.Millisecond), err)
}
