// Package e2e holds what end-to-end tests and the benchmark share: building
// and running the cdcrelay binary as a separate process, creating topics, and
// reading topics back as a read_committed consumer sees them.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/IBM/sarama"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// ModuleRoot is the repository's root directory.
func ModuleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Binary builds cmd/cdcrelay once per test process and returns its path.
func Binary() (string, error) {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cdcrelay-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "cdcrelay")
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/cdcrelay")
		cmd.Dir = ModuleRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/cdcrelay: %v\n%s", err, out)
		}
	})
	return buildPath, buildErr
}

// Process is a running cdcrelay.
type Process struct {
	cmd    *exec.Cmd
	output *syncBuffer
	done   chan struct{}
	err    error
}

// Start runs the binary with args; its combined output is kept (and also
// appended to logPath when not empty).
func Start(bin, logPath string, args ...string) (*Process, error) {
	p := &Process{output: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	var w interface{ Write([]byte) (int, error) } = p.output
	if logPath != "" {
		f, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, err
		}
		w = &tee{a: p.output, b: f}
	}
	p.cmd.Stdout = w
	p.cmd.Stderr = w
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Process) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and waits up to grace for the exit; then it kills.
func (p *Process) Stop(grace time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(grace):
		p.Kill()
		return fmt.Errorf("cdcrelay did not stop within %s after SIGTERM", grace)
	}
}

// Wait waits for the process to exit by itself, up to d.
func (p *Process) Wait(d time.Duration) (exitCode int, err error) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-p.done:
	default:
		select {
		case <-p.done:
		case <-timer.C:
			return -1, fmt.Errorf("cdcrelay still running after %s", d)
		}
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, p.err
}

// Exited tells whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Output is everything the process printed so far.
func (p *Process) Output() string { return p.output.String() }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type tee struct {
	a *syncBuffer
	b *os.File
}

func (t *tee) Write(p []byte) (int, error) {
	_, _ = t.b.Write(p)
	return t.a.Write(p)
}

// CreateTopic creates a topic (no error when it exists).
func CreateTopic(brokers []string, name string, partitions int32, compact bool) error {
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_6_0_0
	admin, err := sarama.NewClusterAdmin(brokers, cfg)
	if err != nil {
		return err
	}
	defer admin.Close()
	d := &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1}
	if compact {
		policy := "compact"
		d.ConfigEntries = map[string]*string{"cleanup.policy": &policy}
	}
	err = admin.CreateTopic(name, d, false)
	if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", name, err)
	}
	return nil
}

// Record is one record as a read_committed consumer sees it.
type Record struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       []byte
	Value     []byte
	Headers   map[string]string
}

// ReadCommitted reads every partition of topics from the start, with
// isolation.level=read_committed, until it has want records or no new record
// arrived for quiet (after at least want, or at the deadline of ctx).
func ReadCommitted(ctx context.Context, brokers []string, topics []string, want int, quiet time.Duration) ([]Record, error) {
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_6_0_0
	cfg.Consumer.IsolationLevel = sarama.ReadCommitted
	cfg.Consumer.Return.Errors = true
	consumer, err := sarama.NewConsumer(brokers, cfg)
	if err != nil {
		return nil, err
	}
	defer consumer.Close()
	out := make(chan Record, 4096)
	errs := make(chan error, 16)
	var pcs []sarama.PartitionConsumer
	for _, topic := range topics {
		parts, err := consumer.Partitions(topic)
		if err != nil {
			return nil, fmt.Errorf("partitions of %s: %w", topic, err)
		}
		for _, part := range parts {
			// Just after a topic is created its leader may not be known
			// everywhere yet: retry a few times.
			var pc sarama.PartitionConsumer
			for attempt := 0; ; attempt++ {
				pc, err = consumer.ConsumePartition(topic, part, sarama.OffsetOldest)
				if err == nil || attempt == 20 || ctx.Err() != nil {
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
			if err != nil {
				return nil, fmt.Errorf("consume %s/%d: %w", topic, part, err)
			}
			pcs = append(pcs, pc)
			go func(pc sarama.PartitionConsumer) {
				for m := range pc.Messages() {
					r := Record{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Key: m.Key, Value: m.Value, Headers: map[string]string{}}
					for _, h := range m.Headers {
						r.Headers[string(h.Key)] = string(h.Value)
					}
					out <- r
				}
			}(pc)
			go func(pc sarama.PartitionConsumer) {
				for e := range pc.Errors() {
					select {
					case errs <- e:
					default:
					}
				}
			}(pc)
		}
	}
	defer func() {
		for _, pc := range pcs {
			pc.AsyncClose()
		}
	}()
	var recs []Record
	timer := time.NewTimer(quiet)
	defer timer.Stop()
	for {
		select {
		case r := <-out:
			recs = append(recs, r)
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
			timer.Reset(quiet)
		case <-timer.C:
			if len(recs) >= want {
				return recs, nil
			}
			timer.Reset(quiet)
		case <-ctx.Done():
			return recs, fmt.Errorf("read %d of %d records before %w", len(recs), want, ctx.Err())
		}
	}
}
