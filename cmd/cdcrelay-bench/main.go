// Command cdcrelay-bench measures the relay against the limit Postgres sets:
// for each workload it writes a backlog with the relay stopped, times
// pg_recvlogical streaming that WAL range to /dev/null (the limit), then runs
// the cdcrelay binary as a separate process on the same range and times it to
// the last event a read_committed consumer sees. A separate latency run
// inserts single-row transactions at a steady rate with the relay running.
// Kafka's own ProducerPerformance (transactional) is the Kafka-side reference.
//
// It uses the servers of `make dev-up` (the environment of .dev/env.sh):
//
//	. .dev/env.sh && go run ./cmd/cdcrelay-bench [-only outbox-small,latency] [-scale 0.1]
//	    [-profile DIR]   run the relay in-process under pprof (CPU + heap profiles in DIR)
//	    [-tracing [-tracing-ratio R]]   the relay with [tracing] on, exporting to a collector in this process
//
// `make bench` does exactly this.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

type options struct {
	pgDSN      string
	brokers    []string
	pgBin      string
	jars       string
	scale      float64
	only       map[string]bool
	profileDir string
	extraTOML  string
	keep       bool
	partitions int32
	latRate    int
	latSecs    int
	relayBin   string
	benchBin   string
	workDir    string
	logLevel   string
	relayLog   string
	tracing    bool
	traceRatio float64
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "relay" {
		os.Exit(inProcessRelay(os.Args[2:]))
	}
	var o options
	var only string
	flag.StringVar(&only, "only", "", "comma-separated workloads to run (outbox-small, outbox-large, tiny-txns, one-big-txn, table-json, table-avro, backfill, latency, kafka-perf); default all")
	flag.Float64Var(&o.scale, "scale", 1, "multiply every workload's row count (e.g. 0.1 for a quick run)")
	flag.StringVar(&o.profileDir, "profile", "", "run the relay in-process (this binary's `relay` subcommand) and write CPU and heap profiles into this directory")
	flag.StringVar(&o.extraTOML, "relay-toml", "", "extra TOML appended to every relay.toml (e.g. a [batch] table)")
	flag.StringVar(&o.logLevel, "relay-log-level", "warn", "the relay's log_level")
	flag.StringVar(&o.relayLog, "relay-log", "", "append the relay's output to this file")
	flag.BoolVar(&o.keep, "keep", false, "keep the benchmark databases, slots and work directory")
	flag.IntVar(&o.latRate, "latency-rate", 2000, "transactions per second in the latency run")
	flag.IntVar(&o.latSecs, "latency-seconds", 20, "length of the latency run")
	partitions := flag.Int("partitions", 3, "partitions of each event topic")
	flag.BoolVar(&o.tracing, "tracing", false, "run the relay with [tracing] on, exporting to an OTLP/HTTP collector inside the benchmark")
	flag.Float64Var(&o.traceRatio, "tracing-ratio", 1, "tracing.sample_ratio of a -tracing run")
	flag.Parse()
	o.partitions = int32(*partitions)
	if only != "" {
		o.only = map[string]bool{}
		for _, w := range strings.Split(only, ",") {
			o.only[strings.TrimSpace(w)] = true
		}
	}
	o.pgDSN = os.Getenv("CDCRELAY_TEST_PG_DSN")
	if b := os.Getenv("CDCRELAY_TEST_KAFKA_BROKERS"); b != "" {
		o.brokers = strings.Split(b, ",")
	}
	o.pgBin = os.Getenv("CDCRELAY_PG_BIN")
	o.jars = os.Getenv("CDCRELAY_KAFKA_JARS")
	if o.pgDSN == "" || len(o.brokers) == 0 {
		fmt.Fprintln(os.Stderr, "cdcrelay-bench: CDCRELAY_TEST_PG_DSN and CDCRELAY_TEST_KAFKA_BROKERS are not set: run `make dev-up` and `. .dev/env.sh` (or `make bench`)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, &o); err != nil {
		fmt.Fprintln(os.Stderr, "cdcrelay-bench:", err)
		os.Exit(1)
	}
}

func (o *options) want(name string) bool { return o.only == nil || o.only[name] }

func run(ctx context.Context, o *options) error {
	var err error
	if o.workDir, err = os.MkdirTemp("", "cdcrelay-bench-"); err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(o.workDir)
	}
	if o.relayBin, err = buildRelay(o.workDir); err != nil {
		return err
	}
	if o.benchBin, err = os.Executable(); err != nil {
		return err
	}
	if o.profileDir != "" {
		if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
			return err
		}
		if o.profileDir, err = filepath.Abs(o.profileDir); err != nil {
			return err
		}
	}
	if o.tracing {
		c, err := startSpanCounter()
		if err != nil {
			return err
		}
		defer func() {
			fmt.Printf("tracing: the collector received %d spans (sample_ratio %g)\n", c.spans.Load(), o.traceRatio)
			c.close()
		}()
		o.extraTOML += "\n" + c.toml(o.traceRatio)
	}
	host, _ := os.Hostname()
	fmt.Printf("cdcrelay-bench: %d CPU cores (GOMAXPROCS %d), %s/%s, host %s, scale %g\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, host, o.scale)
	fmt.Printf("postgres %s, kafka %s\n", redactDSN(o.pgDSN), strings.Join(o.brokers, ","))
	if err := ensureCheckpointTopic(o.brokers); err != nil {
		return err
	}
	var results []result
	// The latency run goes first, on servers not yet busy flushing the
	// backlogs' gigabytes of WAL and log segments (and before any DROP
	// DATABASE forces a checkpoint).
	var lat *result
	if o.want("latency") {
		fmt.Printf("\n== latency: %d single-row transactions/s for %ds, relay running\n", o.latRate, o.latSecs)
		r, err := runLatency(ctx, o)
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		lat = &r
	}
	for _, w := range workloads(o.scale) {
		if !o.want(w.name) {
			continue
		}
		fmt.Printf("\n== %s: %s\n", w.name, w.desc)
		r, err := runBacklog(ctx, o, w)
		if err != nil {
			return fmt.Errorf("%s: %w", w.name, err)
		}
		results = append(results, r)
	}
	backfillNote := ""
	if o.want("backfill") {
		fmt.Printf("\n== backfill: `cdcrelay backfill` of %d existing rows of ~200 B (table mapping)\n", int(1_000_000*o.scale))
		r, err := runBackfill(ctx, o, max(1, int(1_000_000*o.scale)))
		if err != nil {
			// Backfill is new: report, do not lose the other results.
			backfillNote = fmt.Sprintf("backfill: failed: %v", err)
			fmt.Println(backfillNote)
		} else {
			results = append(results, r)
		}
	}
	if lat != nil {
		results = append(results, *lat)
	}
	var kp *kafkaPerf
	if o.want("kafka-perf") && o.jars != "" {
		fmt.Printf("\n== kafka-perf: ProducerPerformance, transactional\n")
		kp, err = runKafkaPerf(ctx, o, int(1_000_000*o.scale))
		if err != nil {
			fmt.Printf("kafka-perf failed: %v\n", err)
			kp = nil
		}
	}
	fmt.Println()
	printTable(os.Stdout, results, kp)
	if backfillNote != "" {
		fmt.Println("\n" + firstLine(backfillNote))
	}
	return nil
}

func redactDSN(dsn string) string {
	if i := strings.Index(dsn, "@"); i > 0 {
		if j := strings.Index(dsn, "://"); j > 0 && j < i {
			return dsn[:j+3] + "…" + dsn[i:]
		}
	}
	return dsn
}

func since(t time.Time) float64 { return time.Since(t).Seconds() }
