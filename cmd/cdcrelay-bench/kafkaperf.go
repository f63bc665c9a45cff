package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

type kafkaPerf struct {
	records int
	rate    float64
	mbps    float64
	line    string
}

var perfLine = regexp.MustCompile(`(\d+) records sent, ([0-9.]+) records/sec \(([0-9.]+) MB/sec\)`)

// runKafkaPerf runs Kafka's own ProducerPerformance from the broker's jars:
// transactional, acks=all, 200-byte records, as fast as it can.
func runKafkaPerf(ctx context.Context, o *options, n int) (*kafkaPerf, error) {
	java := "java"
	if h := os.Getenv("JAVA_HOME"); h != "" {
		java = filepath.Join(h, "bin", "java")
	}
	topic := "bench.kafka-perf." + strconv.FormatInt(time.Now().UnixNano()/1e6, 36)
	if err := createTopic(o.brokers, topic, o.partitions); err != nil {
		return nil, err
	}
	args := []string{"-Xmx512m", "-cp", o.jars + "/*", "org.apache.kafka.tools.ProducerPerformance",
		"--topic", topic, "--num-records", strconv.Itoa(n), "--record-size", "200", "--throughput", "-1",
		"--transactional-id", topic, "--transaction-duration-ms", "100",
		"--producer-props", "bootstrap.servers=" + strings.Join(o.brokers, ","), "acks=all", "enable.idempotence=true"}
	cmd := exec.CommandContext(ctx, java, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, tail(string(out), 2000))
	}
	m := perfLine.FindAllStringSubmatch(string(out), -1)
	if len(m) == 0 {
		return nil, fmt.Errorf("no result line in: %s", tail(string(out), 2000))
	}
	last := m[len(m)-1]
	kp := &kafkaPerf{line: last[0]}
	kp.records, _ = strconv.Atoi(last[1])
	kp.rate, _ = strconv.ParseFloat(last[2], 64)
	kp.mbps, _ = strconv.ParseFloat(last[3], 64)
	fmt.Println(strings.TrimSpace(last[0]))
	return kp, nil
}
