package sink_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/sink"
)

// partitionCounts are the topic sizes javaPartitions pins partitions for.
var partitionCounts = [5]int32{1, 3, 6, 12, 100}

// javaPartitions are key -> partition pairs as Kafka's Java producer computes
// them for a record with a key: Utils.toPositive(Utils.murmur2(key)) %
// partitions (BuiltInPartitioner.partitionForKey). Computed once with
// kafka-clients 4.1.1 by javaMurmurProgram below (TestMurmur2MatchesJavaClient
// recomputes them when java and the Kafka jars are at hand): key, murmur2,
// partition for each of partitionCounts.
var javaPartitions = []struct {
	key       string
	murmur2   int32
	partition [5]int32
}{
	{"", 275646681, [5]int32{0, 0, 3, 9, 81}},
	{"a", -1563381124, [5]int32{0, 1, 4, 4, 24}},
	{"ab", 316155434, [5]int32{0, 2, 2, 2, 34}},
	{"abc", 479470107, [5]int32{0, 0, 3, 3, 7}},
	{"abcd", -1323649548, [5]int32{0, 2, 2, 8, 0}},
	{"abcde", 461995741, [5]int32{0, 1, 1, 1, 41}},
	{"abcdef", 1870650108, [5]int32{0, 0, 0, 0, 8}},
	{"abcdefg", -346467175, [5]int32{0, 1, 1, 1, 73}},
	{"abcdefgh", -955427363, [5]int32{0, 0, 3, 9, 85}},
	{"k1", 1684045097, [5]int32{0, 2, 5, 5, 97}},
	{"42", 417700972, [5]int32{0, 1, 4, 4, 72}},
	{"7", -1961297549, [5]int32{0, 0, 3, 3, 99}},
	{"order-1", 1221710326, [5]int32{0, 1, 4, 10, 26}},
	{"customer-7", -1283830537, [5]int32{0, 1, 1, 7, 11}},
	{"{\"id\":7}", -1038564011, [5]int32{0, 0, 3, 9, 37}},
	{"{\"id\":42}", 486015037, [5]int32{0, 1, 1, 1, 37}},
	{"{\"tenant\":\"acme\",\"id\":1}", -250913868, [5]int32{0, 2, 2, 8, 80}},
	{"4b5f3e5e-7c2a-4f1e-9a3b-2d1c0e9f8a7b", 255144786, [5]int32{0, 0, 0, 6, 86}},
	{"ünïcode", -888566395, [5]int32{0, 1, 1, 1, 53}},
	{"日本語", 1431860170, [5]int32{0, 1, 4, 10, 70}},
	{"\x00", 375494588, [5]int32{0, 2, 2, 8, 88}},
	{strings.Repeat("x", 100), 1249054468, [5]int32{0, 1, 4, 4, 68}},
	{"key-0", 29210041, [5]int32{0, 1, 1, 1, 41}},
	{"key-1", 193331640, [5]int32{0, 0, 0, 0, 40}},
	{"key-2", 852269702, [5]int32{0, 2, 2, 2, 2}},
	{"key-3", -1839136101, [5]int32{0, 2, 5, 11, 47}},
	{"key-4", 647367033, [5]int32{0, 0, 3, 9, 33}},
	{"key-5", -1698326880, [5]int32{0, 2, 2, 8, 68}},
	{"key-6", -758453868, [5]int32{0, 2, 2, 8, 80}},
	{"key-7", 713419675, [5]int32{0, 1, 1, 7, 75}},
	{"key-8", -1340033413, [5]int32{0, 1, 1, 7, 35}},
	{"key-9", -1335190451, [5]int32{0, 0, 3, 9, 97}},
	{"key-10", 1368331310, [5]int32{0, 2, 2, 2, 10}},
	{"key-11", 159536065, [5]int32{0, 1, 1, 1, 65}},
	{"key-12", 217931240, [5]int32{0, 2, 2, 8, 40}},
	{"key-13", 1711107085, [5]int32{0, 1, 1, 1, 85}},
	{"key-14", -1669560592, [5]int32{0, 1, 4, 4, 56}},
	{"key-15", 294428499, [5]int32{0, 0, 3, 3, 99}},
	{"key-16", -2035047247, [5]int32{0, 1, 1, 1, 1}},
	{"key-17", 956945460, [5]int32{0, 0, 0, 0, 60}},
	{"key-18", 1853115137, [5]int32{0, 2, 5, 5, 37}},
	{"key-19", -1594098818, [5]int32{0, 0, 0, 6, 30}},
	{"key-20", 1355278783, [5]int32{0, 1, 1, 7, 83}},
	{"key-21", 333354507, [5]int32{0, 0, 3, 3, 7}},
	{"key-22", -1347818299, [5]int32{0, 1, 1, 1, 49}},
	{"key-23", 1748693444, [5]int32{0, 2, 2, 8, 44}},
	{"\xff\xfe\xfd", 998637092, [5]int32{0, 2, 2, 8, 92}},
	{"\x80\x81\x82\x83\x84", -1665622439, [5]int32{0, 0, 3, 9, 9}},
}

// javaMurmurProgram prints, for each hex-encoded key argument, the key, its
// murmur2 and its partition for each of partitionCounts, as the Java client
// computes them.
const javaMurmurProgram = `
import org.apache.kafka.common.utils.Utils;
import java.util.HexFormat;

public class Murmur {
    public static void main(String[] args) {
        for (String hex : args) {
            byte[] k = HexFormat.of().parseHex(hex);
            int h = Utils.murmur2(k);
            StringBuilder sb = new StringBuilder(hex).append(' ').append(h);
            for (int n : new int[]{1, 3, 6, 12, 100}) sb.append(' ').append(Utils.toPositive(h) % n);
            System.out.println(sb);
        }
    }
}
`

// murmur2 is Kafka's Utils.murmur2 (seed 0x9747b28c), written out so the
// pinned hashes are checked independently of sarama.
func murmur2(data []byte) int32 {
	const (
		seed = uint32(0x9747b28c)
		m    = uint32(0x5bd1e995)
		r    = 24
	)
	n := len(data)
	h := seed ^ uint32(n)
	for i := 0; i+4 <= n; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := data[n&^3:]
	switch len(tail) {
	case 3:
		h ^= uint32(tail[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(tail[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(tail[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return int32(h)
}

// TestMurmur2PartitionerMatchesJava: sarama's NewMurmur2Partitioner, which
// the sink configures, puts every pinned key on the partition the Java
// producer (and so Kafka Streams and every Java consumer's expectation) does.
func TestMurmur2PartitionerMatchesJava(t *testing.T) {
	p := sarama.NewMurmur2Partitioner("t")
	if !p.RequiresConsistency() {
		t.Error("the murmur2 partitioner does not require consistency: keys could move")
	}
	for _, c := range javaPartitions {
		if h := murmur2([]byte(c.key)); h != c.murmur2 {
			t.Errorf("murmur2(%q) = %d, Java computed %d", c.key, h, c.murmur2)
		}
		for i, n := range partitionCounts {
			got, err := p.Partition(&sarama.ProducerMessage{Topic: "t", Key: sarama.ByteEncoder(c.key)}, n)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.partition[i] {
				t.Errorf("key %q, %d partitions: sarama picks %d, Java %d", c.key, n, got, c.partition[i])
			}
		}
	}
}

// TestMurmur2MatchesJavaClient recomputes javaPartitions with the real Java
// client (the kafka-clients jar the test broker runs from) and compares.
func TestMurmur2MatchesJavaClient(t *testing.T) {
	java, err := exec.LookPath("java")
	if err != nil {
		t.Skip("java is not installed")
	}
	jars, err := testenv.KafkaJarDir()
	if err != nil {
		if os.Getenv(testenv.EnvRequireServers) == "1" {
			t.Fatalf("Kafka jars: %v", err)
		}
		t.Skipf("Kafka jars: %v", err)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "Murmur.java")
	if err := os.WriteFile(src, []byte(javaMurmurProgram), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-cp", filepath.Join(jars, "*"), src}
	for _, c := range javaPartitions {
		args = append(args, hex.EncodeToString([]byte(c.key)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, java, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("java: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) != len(javaPartitions) {
		t.Fatalf("java printed %d lines for %d keys:\n%s", len(lines), len(javaPartitions), out)
	}
	for i, c := range javaPartitions {
		want := hex.EncodeToString([]byte(c.key)) + " " + strconv.Itoa(int(c.murmur2))
		for _, p := range c.partition {
			want += " " + strconv.Itoa(int(p))
		}
		if strings.TrimRight(lines[i], "\r") != want {
			t.Errorf("key %q: Java says %q, pinned %q", c.key, lines[i], want)
		}
	}
}

// TestKeysLandOnJavaPartitions publishes an event per pinned key through the
// sink's transactional Writer to a 6-partition topic and reads back which
// partition each landed on.
func TestKeysLandOnJavaPartitions(t *testing.T) {
	ctx := ctxT(t)
	brokers := testenv.KafkaBrokers(t)
	cfg := kafkaConfig(t, brokers)
	if _, err := sink.EnsureTopics(ctx, cfg, []sink.TopicSpec{sink.CheckpointTopicSpec(cfg)}, true); err != nil {
		t.Fatal(err)
	}
	topic := testenv.UniqueName(t, "partitions")
	if err := testenv.CreateTopic(ctx, brokers, topic, 6, nil); err != nil {
		t.Fatal(err)
	}
	w, err := sink.NewWriter(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	txn, err := w.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int32{}
	for i, c := range javaPartitions {
		ev := mapping.Event{Topic: topic, Key: []byte(c.key), Value: []byte(strconv.Itoa(i))}
		if err := txn.Send(ctx, &ev); err != nil {
			t.Fatal(err)
		}
		want[strconv.Itoa(i)] = c.partition[2]
	}
	if err := txn.Commit(sink.Checkpoint{LSN: 1, Seq: 1}); err != nil {
		t.Fatal(err)
	}
	recs, err := e2e.ReadCommitted(ctx, brokers, []string{topic}, len(javaPartitions), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(javaPartitions) {
		t.Fatalf("read %d records, want %d", len(recs), len(javaPartitions))
	}
	used := map[int32]bool{}
	for _, r := range recs {
		i, _ := strconv.Atoi(string(r.Value))
		c := javaPartitions[i]
		if !bytes.Equal(r.Key, []byte(c.key)) {
			t.Errorf("record %s: key %q, want %q", r.Value, r.Key, c.key)
		}
		if r.Partition != want[string(r.Value)] {
			t.Errorf("key %q landed on partition %d of 6, Java's producer would pick %d", c.key, r.Partition, want[string(r.Value)])
		}
		used[r.Partition] = true
	}
	if len(used) != 6 {
		t.Errorf("the pinned keys cover partitions %v, want all 6", used)
	}
	t.Logf("%d keys on the partitions Java picks", len(recs))
}
