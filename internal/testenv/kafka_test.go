package testenv

import (
	"os"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

func TestKafkaVersionMatchesPom(t *testing.T) {
	pom, err := os.ReadFile("../../testdata/kafka/pom.xml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`<kafka.version>([^<]+)</kafka.version>`).FindSubmatch(pom)
	if m == nil || string(m[1]) != KafkaVersion {
		t.Fatalf("testdata/kafka/pom.xml pins %q, KafkaVersion is %q", m, KafkaVersion)
	}
}

// txnConfig is an exactly-once producer configuration as the relay uses it.
func txnConfig(txnID string) *sarama.Config {
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_6_0_0
	cfg.Producer.Idempotent = true
	cfg.Producer.RequiredAcks = sarama.WaitForAll
	cfg.Net.MaxOpenRequests = 1
	cfg.Producer.Return.Successes = true
	cfg.Producer.Transaction.ID = txnID
	return cfg
}

// sendTxn produces value in one transaction and commits or aborts it.
func sendTxn(t *testing.T, p sarama.SyncProducer, topic, value string, commit bool) {
	t.Helper()
	if err := p.BeginTxn(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder(value)}); err != nil {
		t.Fatal(err)
	}
	end := p.CommitTxn
	if !commit {
		end = p.AbortTxn
	}
	if err := end(); err != nil {
		t.Fatal(err)
	}
}

// readAll reads partition 0 of topic from the start until want records came, then
// waits quiet for more: it returns every value seen.
func readAll(t *testing.T, brokers []string, topic string, isolation sarama.IsolationLevel, want int, quiet time.Duration) []string {
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_6_0_0
	cfg.Consumer.IsolationLevel = isolation
	consumer, err := sarama.NewConsumer(brokers, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	pc, err := consumer.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var got []string
	timeout := time.After(30 * time.Second)
	for len(got) < want {
		select {
		case m := <-pc.Messages():
			got = append(got, string(m.Value))
		case err := <-pc.Errors():
			t.Fatal(err)
		case <-timeout:
			t.Fatalf("read %q from %s, want %d records", got, topic, want)
		}
	}
	for {
		select {
		case m := <-pc.Messages():
			got = append(got, string(m.Value))
		case <-time.After(quiet):
			return got
		}
	}
}

// The shared broker runs transactions: a read_committed consumer sees the
// committed record and not the aborted one, which is there for read_uncommitted.
func TestSharedKafkaTransactions(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	brokers := KafkaBrokers(t)
	topic := UniqueName(t, "topic")
	if err := CreateTopic(ctx, brokers, topic, 1, nil); err != nil {
		t.Fatal(err)
	}
	p, err := sarama.NewSyncProducer(brokers, txnConfig(UniqueName(t, "txn")))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	sendTxn(t, p, topic, "aborted", false)
	sendTxn(t, p, topic, "committed", true)

	if got := readAll(t, brokers, topic, sarama.ReadCommitted, 1, time.Second); !slices.Equal(got, []string{"committed"}) {
		t.Errorf("read_committed: %q, want [committed]", got)
	}
	if got := readAll(t, brokers, topic, sarama.ReadUncommitted, 2, time.Second); !slices.Equal(got, []string{"aborted", "committed"}) {
		t.Errorf("read_uncommitted: %q, want [aborted committed]", got)
	}
}

// A private broker behind a proxy: clients that bootstrap through the proxy
// learn the proxy's address from metadata and stay behind it (so stalls reach
// them), the INTERNAL listener bypasses it, and Restart keeps the data.
func TestKafkaBehindProxy(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	start := time.Now()
	k := NewKafka(t, KafkaOptions{Proxy: true})
	t.Logf("kafka started in %v", time.Since(start))
	proxy := k.Proxy()
	if got := k.Brokers(); len(got) != 1 || got[0] != proxy.Addr() {
		t.Fatalf("Brokers() = %v, want the proxy %s", got, proxy.Addr())
	}

	client, err := sarama.NewClient(k.Brokers(), txnConfig("unused"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	for _, b := range client.Brokers() {
		if b.Addr() != proxy.Addr() {
			t.Fatalf("metadata through the proxy names broker %s, want the proxy %s", b.Addr(), proxy.Addr())
		}
	}
	direct, err := sarama.NewClient(k.InternalBrokers(), txnConfig("unused"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	for _, b := range direct.Brokers() {
		if b.Addr() != k.InternalBrokers()[0] {
			t.Fatalf("metadata on the internal listener names broker %s, want %s", b.Addr(), k.InternalBrokers()[0])
		}
	}

	topic := "t1"
	if err := CreateTopic(ctx, k.Brokers(), topic, 1, nil); err != nil {
		t.Fatal(err)
	}
	accepted := proxy.Accepted()
	p, err := sarama.NewSyncProducer(k.Brokers(), txnConfig("txn-proxy"))
	if err != nil {
		t.Fatal(err)
	}
	sendTxn(t, p, topic, "one", true)
	if proxy.Accepted() == accepted {
		t.Fatal("the producer did not connect through the proxy")
	}

	// A stall shorter than the client's timeouts only delays the transaction.
	const stall = 2 * time.Second
	begin := time.Now()
	proxy.Stall(stall)
	sendTxn(t, p, topic, "two", true)
	if d := time.Since(begin); d < stall {
		t.Fatalf("a transaction through a stalled proxy took %v, less than the stall %v", d, stall)
	}
	// After a reset the producer reconnects.
	proxy.ResetAll()
	sendTxn(t, p, topic, "three", true)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	begin = time.Now()
	if err := k.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("kafka restarted in %v", time.Since(begin))
	want := []string{"one", "two", "three"}
	if got := readAll(t, k.InternalBrokers(), topic, sarama.ReadCommitted, 3, 500*time.Millisecond); !slices.Equal(got, want) {
		t.Fatalf("after Restart, direct: %q, want %q", got, want)
	}
	if got := readAll(t, k.Brokers(), topic, sarama.ReadCommitted, 3, 500*time.Millisecond); !slices.Equal(got, want) {
		t.Fatalf("after Restart, through the proxy: %q, want %q", got, want)
	}
}
