package metrics

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/cdcrelay/cdcrelay/internal/relay"
	"github.com/cdcrelay/cdcrelay/replication"
)

// Metrics is the relay's metrics registry and its readiness. It implements
// [relay.Observer]; its methods are safe for concurrent use and never block
// for long (a mutex and counter updates).
type Metrics struct {
	reg        *prometheus.Registry
	now        func() time.Time
	stallAfter time.Duration

	eventsPublished *prometheus.CounterVec
	txnCommitted    prometheus.Counter
	txnFailed       prometheus.Counter
	commitSeconds   prometheus.Histogram
	deadLettered    *prometheus.CounterVec
	traceInvalid    *prometheus.CounterVec
	reconnects      prometheus.Counter
	backfillDone    *prometheus.GaugeVec
	backfillTotal   *prometheus.GaugeVec
	backfillHeld    *prometheus.CounterVec
	backfillHeldSec *prometheus.CounterVec

	slotExists     prometheus.Gauge
	slotActive     prometheus.Gauge
	slotRetained   prometheus.Gauge
	slotWALStatus  *prometheus.GaugeVec
	slotPollErrors prometheus.Counter
	schema         *schemaMetrics // schema.go

	mu         sync.Mutex
	streaming  bool
	since      time.Time       // when the current session started streaming
	walEnd     replication.LSN // the server's WAL end, newest seen
	durable    replication.LSN // committed in Kafka
	lastSource time.Time       // commit time in Postgres of the last published transaction
	lastCommit time.Time       // wall time of the last Kafka commit
	safeWAL    *int64          // the slot's safe_wal_size; nil: unlimited or unknown
}

var _ relay.Observer = (*Metrics)(nil)

// walStatuses are the values of pg_replication_slots.wal_status.
var walStatuses = []string{"reserved", "extended", "unreserved", "lost"}

// Options configure [New].
type Options struct {
	// Relay and Version label cdcrelay_build_info.
	Relay, Version string
	// StallAfter: a streaming relay that has not committed for this long
	// while the server's WAL is ahead of its checkpoint is not ready (it is
	// stuck, for example on an unreachable Kafka, without having failed yet).
	// Default 30s; keep it above postgres.idle_checkpoint_interval.
	StallAfter time.Duration
}

// New registers the cdcrelay_* series, and the Go runtime's and the
// process's, in a registry of its own.
func New(opts Options) *Metrics {
	if opts.StallAfter <= 0 {
		opts.StallAfter = 30 * time.Second
	}
	m := &Metrics{reg: prometheus.NewRegistry(), now: time.Now, stallAfter: opts.StallAfter}
	relayName, version := opts.Relay, opts.Version
	f := factory{m.reg}
	m.eventsPublished = f.counterVec("cdcrelay_events_published_total",
		"Events committed to Kafka, dead letters included, by topic.", "topic")
	m.txnCommitted = f.counter("cdcrelay_kafka_transactions_committed_total",
		"Kafka transactions committed (events and checkpoint together).")
	m.txnFailed = f.counter("cdcrelay_kafka_transactions_failed_total",
		"Kafka transactions that failed to commit; their events are discarded (never visible to read_committed consumers) and the session restarts from the checkpoint.")
	m.commitSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "cdcrelay_kafka_commit_duration_seconds",
		Help:    "Time to commit a Kafka transaction (flush of its events, checkpoint, EndTxn).",
		Buckets: []float64{.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	})
	m.reg.MustRegister(m.commitSeconds)
	m.deadLettered = f.counterVec("cdcrelay_dead_lettered_events_total",
		"Changes published to the dead-letter topic instead of their mapping's topic, by source table.", "table")
	m.traceInvalid = f.counterVec("cdcrelay_trace_context_invalid_total",
		"Rows whose trace context (traceparent, tracestate or Debezium's tracingspancontext) was invalid, by source table; their events were published without it.", "table")
	m.reconnects = f.counter("cdcrelay_reconnects_total",
		"Sessions that ended with an error and were retried (reconnect to Postgres and Kafka, resume from the checkpoint).")
	m.backfillDone = f.gaugeVec("cdcrelay_backfill_rows_published",
		"Rows of a running backfill published so far, by table.", "table")
	m.backfillTotal = f.gaugeVec("cdcrelay_backfill_rows_estimated",
		"Estimated rows of a running backfill, by table.", "table")
	m.backfillHeld = f.counterVec("cdcrelay_backfill_held_back_total",
		"Backfill chunks that waited, before being read, for transactions committed but not yet visible (a commit waiting for a synchronous standby), by table.", "table")
	m.backfillHeldSec = f.counterVec("cdcrelay_backfill_held_back_seconds_total",
		"Time backfill chunks waited for transactions committed but not yet visible, by table.", "table")

	m.slotExists = f.gauge("cdcrelay_slot_exists", "1 when the replication slot exists.")
	m.slotActive = f.gauge("cdcrelay_slot_active", "1 when a walsender streams from the replication slot (this relay or another).")
	m.slotRetained = f.gauge("cdcrelay_slot_retained_wal_bytes",
		"WAL the server keeps on disk for the slot: the server's WAL position minus the slot's restart_lsn.")
	m.slotWALStatus = f.gaugeVec("cdcrelay_slot_wal_status",
		"pg_replication_slots.wal_status: 1 for the current status (reserved, extended, unreserved or lost), 0 for the others.", "status")
	m.slotPollErrors = f.counter("cdcrelay_slot_poll_errors_total",
		"Failed reads of the replication slot's state.")

	m.schema = newSchemaMetrics(f)
	m.reg.MustRegister(&lagCollector{m: m})
	build := f.gaugeVec("cdcrelay_build_info", "Always 1; labels name the relay and the build.", "relay", "version")
	build.WithLabelValues(relayName, version).Set(1)
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is where the series live (for tests, and for adding more).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Ready reports whether a session streams and commits: Streaming was seen and
// no SessionEnded since, and it is not stalled (see [Options.StallAfter]).
// reason says why not.
func (m *Metrics) Ready() (ready bool, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.readyLocked()
}

func (m *Metrics) readyLocked() (bool, string) {
	if !m.streaming {
		return false, "not streaming (a standby waiting for the active relay, or a session being retried)"
	}
	last := m.since
	if m.lastCommit.After(last) {
		last = m.lastCommit
	}
	if idle := m.now().Sub(last); m.walEnd > m.durable && idle > m.stallAfter {
		return false, fmt.Sprintf("stalled: no Kafka commit for %s while the server's WAL is %d bytes ahead of the checkpoint",
			idle.Round(time.Second), m.walEnd-m.durable)
	}
	return true, "streaming"
}

// Streaming implements [relay.Observer].
func (m *Metrics) Streaming() {
	m.mu.Lock()
	m.streaming = true
	m.since = m.now()
	m.mu.Unlock()
}

// SessionEnded implements [relay.Observer].
func (m *Metrics) SessionEnded(err error) {
	m.mu.Lock()
	m.streaming = false
	m.mu.Unlock()
	if err != nil {
		m.reconnects.Inc()
	}
}

// Committed implements [relay.Observer].
func (m *Metrics) Committed(c relay.CommitInfo) {
	m.txnCommitted.Inc()
	m.commitSeconds.Observe(c.Took.Seconds())
	for topic, n := range c.Events {
		m.eventsPublished.WithLabelValues(topic).Add(float64(n))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lastCommit = m.now()
	if c.LSN > m.durable {
		m.durable = c.LSN
	}
	if c.SourceCommitTime.After(m.lastSource) {
		m.lastSource = c.SourceCommitTime
	}
}

// CommitFailed implements [relay.Observer].
func (m *Metrics) CommitFailed(error) { m.txnFailed.Inc() }

// DeadLettered implements [relay.Observer].
func (m *Metrics) DeadLettered(table, _ string) {
	// The reason is free text: as a label it would make a series per row.
	m.deadLettered.WithLabelValues(table).Inc()
}

// TraceContextInvalid implements [relay.Observer].
func (m *Metrics) TraceContextInvalid(table string) {
	m.traceInvalid.WithLabelValues(table).Inc()
}

// Position implements [relay.Observer].
func (m *Metrics) Position(serverWALEnd, durable replication.LSN) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.walEnd = max(m.walEnd, serverWALEnd)
	m.durable = max(m.durable, durable)
}

// BackfillHeldBack counts a backfill chunk that waited for commits in flight.
func (m *Metrics) BackfillHeldBack(table string, waited time.Duration) {
	m.backfillHeld.WithLabelValues(table).Inc()
	m.backfillHeldSec.WithLabelValues(table).Add(waited.Seconds())
}

// BackfillProgress implements [relay.Observer].
func (m *Metrics) BackfillProgress(table string, done, total int64) {
	m.backfillDone.WithLabelValues(table).Set(float64(done))
	m.backfillTotal.WithLabelValues(table).Set(float64(total))
}

// SetSlot records a reading of the replication slot.
func (m *Metrics) SetSlot(s *replication.SlotInfo) {
	m.mu.Lock()
	m.walEnd = max(m.walEnd, s.CurrentLSN)
	m.safeWAL = s.SafeWALSize
	m.mu.Unlock()
	m.slotExists.Set(b2f(s.Exists))
	m.slotActive.Set(b2f(s.Active))
	m.slotRetained.Set(float64(s.RetainedWALBytes))
	for _, st := range walStatuses {
		m.slotWALStatus.WithLabelValues(st).Set(b2f(s.WALStatus == st))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// lagCollector computes the lag series at scrape time, and leaves out what is
// not known yet (no commit of this process, no reading of the server's WAL).
type lagCollector struct{ m *Metrics }

var (
	lagBytesDesc = prometheus.NewDesc("cdcrelay_replication_lag_bytes",
		"The server's WAL position minus the checkpoint committed in Kafka: WAL not yet published (0 when caught up).", nil, nil)
	lagSecondsDesc = prometheus.NewDesc("cdcrelay_replication_lag_seconds",
		"Now minus the source commit time of the last transaction published; 0 while the checkpoint has reached the server's WAL position.", nil, nil)
	walEndDesc = prometheus.NewDesc("cdcrelay_server_wal_position_bytes",
		"The server's WAL position (an LSN as a byte offset), as last seen in the stream or by the slot poller.", nil, nil)
	durableDesc = prometheus.NewDesc("cdcrelay_checkpoint_wal_position_bytes",
		"The LSN of the checkpoint committed in Kafka, as a byte offset.", nil, nil)
	lastCommitDesc = prometheus.NewDesc("cdcrelay_last_commit_timestamp_seconds",
		"Unix time of the last Kafka transaction this process committed.", nil, nil)
	lastSourceDesc = prometheus.NewDesc("cdcrelay_last_source_commit_timestamp_seconds",
		"Unix time at which the last published Postgres transaction committed.", nil, nil)
	safeWALDesc = prometheus.NewDesc("cdcrelay_slot_safe_wal_size_bytes",
		"WAL that can still be written before the slot is in danger of being invalidated (pg_replication_slots.safe_wal_size); absent while max_slot_wal_keep_size = -1.", nil, nil)
	readyDesc = prometheus.NewDesc("cdcrelay_ready",
		"1 while a session streams and commits (what /readyz reports), else 0.", nil, nil)
)

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{lagBytesDesc, lagSecondsDesc, walEndDesc, durableDesc, lastCommitDesc, lastSourceDesc, safeWALDesc, readyDesc} {
		ch <- d
	}
}

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	m.mu.Lock()
	walEnd, durable, lastSource, lastCommit := m.walEnd, m.durable, m.lastSource, m.lastCommit
	ready, _ := m.readyLocked()
	safeWAL := m.safeWAL
	now := m.now()
	m.mu.Unlock()
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	gauge(readyDesc, b2f(ready))
	if safeWAL != nil {
		gauge(safeWALDesc, float64(*safeWAL))
	}
	if walEnd != 0 {
		gauge(walEndDesc, float64(walEnd))
	}
	if durable != 0 {
		gauge(durableDesc, float64(durable))
	}
	if walEnd != 0 && durable != 0 {
		gauge(lagBytesDesc, float64(lagBytes(walEnd, durable)))
		switch {
		case durable >= walEnd:
			gauge(lagSecondsDesc, 0)
		case !lastSource.IsZero():
			gauge(lagSecondsDesc, max(0, now.Sub(lastSource).Seconds()))
		}
	}
	if !lastCommit.IsZero() {
		gauge(lastCommitDesc, float64(lastCommit.UnixNano())/1e9)
	}
	if !lastSource.IsZero() {
		gauge(lastSourceDesc, float64(lastSource.UnixNano())/1e9)
	}
}

func lagBytes(walEnd, durable replication.LSN) int64 {
	if durable >= walEnd {
		return 0
	}
	return int64(walEnd - durable)
}

type factory struct{ reg *prometheus.Registry }

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	f.reg.MustRegister(c)
	return c
}

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	f.reg.MustRegister(g)
	return g
}

func (f factory) gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	f.reg.MustRegister(g)
	return g
}
