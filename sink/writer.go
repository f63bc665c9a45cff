package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/mapping"
)

// maxMetadataBytes stays below the broker's offset.metadata.max.bytes (4096).
const maxMetadataBytes = 4000

// defaultMaxMessageBytes is the broker's default message.max.bytes.
const defaultMaxMessageBytes = 1048588

// recordOverhead approximates a record's framing inside a batch.
const recordOverhead = 80

// Writer publishes events in Kafka transactions and keeps the checkpoint.
//
// Its error handling is crash-only: after any failed send or commit the Writer
// refuses further work; the caller closes it, creates a new one (whose
// producer, with a new epoch, fences every late request of the old one) and
// learns from [Writer.Checkpoint] what was committed.
type Writer struct {
	cfg    *config.Kafka
	client sarama.Client
	log    *slog.Logger

	epochPerTxn bool
	deliveries  bool          // keep each transaction's messages for Txn.Deliveries
	prepared    chan prepared // the next producer, initialised in the background
	current     sarama.AsyncProducer

	limitsMu sync.Mutex
	limits   map[string]int // max record size per topic
	admin    sarama.ClusterAdmin

	broken error
}

type prepared struct {
	p   sarama.AsyncProducer
	err error
}

// ErrBroken is returned by a Writer after a failure; close it and make a new one.
var ErrBroken = errors.New("kafka writer failed earlier; it must be re-created")

// NewWriter connects and creates the transactional producer. Creating it
// fences any other producer with the same transactional.id and aborts that
// producer's open transaction, so the checkpoint read afterwards is final.
func NewWriter(ctx context.Context, cfg *config.Kafka, log *slog.Logger, opts ...WriterOption) (*Writer, error) {
	var o writerOptions
	for _, opt := range opts {
		opt(&o)
	}
	sc, err := SaramaConfig(cfg, true)
	if err != nil {
		return nil, err
	}
	// The broker applies a topic's max.message.bytes to a whole record
	// batch, and sarama sizes every batch by one limit: batch no larger than
	// the smallest of the topics this writer may write.
	limits, err := topicLimits(cfg)
	if err != nil {
		return nil, err
	}
	for topic, l := range limits {
		if o.writes != nil && !o.writes(topic) {
			continue
		}
		if l < sc.Producer.MaxMessageBytes {
			log.Info("batching for the topic with the smallest max.message.bytes", "topic", topic, "max_message_bytes", l)
			sc.Producer.MaxMessageBytes = l
		}
	}
	client, err := sarama.NewClient(cfg.Brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("connect to kafka %v: %w", cfg.Brokers, err)
	}
	w := &Writer{
		cfg:         cfg,
		client:      client,
		log:         log,
		epochPerTxn: cfg.EpochPerTransaction == nil || *cfg.EpochPerTransaction,
		limits:      limits,
		deliveries:  o.deliveries,
	}
	// Bounded, so that a broker that accepts connections but does not answer
	// ends the session (logged, retried) instead of holding it silently.
	pctx, cancel := context.WithTimeout(ctx, cfg.TransactionTimeout.Duration)
	p, err := w.newProducer(pctx)
	cancel()
	if err != nil {
		client.Close()
		return nil, err
	}
	w.current = p
	return w, nil
}

// WriterOption adjusts a Writer.
type WriterOption func(*writerOptions)

type writerOptions struct {
	writes     func(topic string) bool
	deliveries bool
}

// WritesTopics names the topics the writer may write (by default, any): only
// their size limits shape its batches.
func WritesTopics(match func(topic string) bool) WriterOption {
	return func(o *writerOptions) { o.writes = match }
}

// newProducer initialises a producer (InitProducerId: a new epoch), retrying
// while the coordinator is still finishing the previous transaction or loading.
//
// With a fresh epoch per transaction this runs right after every commit, and
// the coordinator answers CONCURRENT_TRANSACTIONS until it has written the
// commit markers (a few milliseconds). An exponential backoff from 5ms made
// each re-init wait 75-155ms, idle (make bench: commits 140ms apart while the
// CPU was 80% idle); the first retries are therefore short and flat, and only
// a coordinator that stays busy (loading, moving) backs off further.
func (w *Writer) newProducer(ctx context.Context) (sarama.AsyncProducer, error) {
	backoff := producerRetryMin
	for attempt := 1; ; attempt++ {
		p, err := sarama.NewAsyncProducerFromClient(w.client)
		if err == nil {
			return p, nil
		}
		if isFatal(err) {
			return nil, fmt.Errorf("create transactional producer %q: %w", w.cfg.TransactionalID, err)
		}
		if attempt%20 == 0 {
			w.log.Info("waiting for the transaction coordinator", "transactional_id", w.cfg.TransactionalID, "attempt", attempt, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("create transactional producer %q: %w (last error: %v)", w.cfg.TransactionalID, ctx.Err(), err)
		case <-time.After(backoff):
		}
		if attempt >= producerFlatRetries && backoff < 500*time.Millisecond {
			backoff *= 2
		}
	}
}

const (
	producerRetryMin    = 2 * time.Millisecond
	producerFlatRetries = 25 // ~50ms of 2ms retries before backing off
)

// isFatal tells errors that no retry can cure.
func isFatal(err error) bool {
	return errors.Is(err, sarama.ErrTransactionalIDAuthorizationFailed) ||
		errors.Is(err, sarama.ErrClusterAuthorizationFailed) ||
		errors.Is(err, sarama.ErrTopicAuthorizationFailed) ||
		errors.Is(err, sarama.ErrGroupAuthorizationFailed) ||
		errors.Is(err, sarama.ErrSASLAuthenticationFailed) ||
		errors.Is(err, sarama.ErrUnsupportedVersion)
}

// IsFatal tells whether err (from this package) needs an operator rather than a retry.
func IsFatal(err error) bool { return isFatal(err) }

// Checkpoint reads the last committed checkpoint. ok is false when the relay
// has never committed one. Only committed transactions are visible: a pending
// one makes the broker answer "unstable", and the read waits for it.
func (w *Writer) Checkpoint(ctx context.Context) (cp Checkpoint, ok bool, err error) {
	return ReadCheckpoint(ctx, w.client, w.cfg.CheckpointGroup, w.cfg.CheckpointTopic)
}

// ReadCheckpoint reads the checkpoint committed for group, waiting while a
// transaction that carries one is still pending.
func ReadCheckpoint(ctx context.Context, client sarama.Client, group, topic string) (cp Checkpoint, ok bool, err error) {
	backoff := 10 * time.Millisecond
	for {
		cp, ok, err = fetchCheckpoint(client, group, topic)
		if err == nil || isFatal(err) {
			return cp, ok, err
		}
		select {
		case <-ctx.Done():
			return cp, false, fmt.Errorf("read checkpoint of group %s: %w (last error: %v)", group, ctx.Err(), err)
		case <-time.After(backoff):
		}
		if backoff < time.Second {
			backoff *= 2
		}
		_ = client.RefreshCoordinator(group)
	}
}

func fetchCheckpoint(client sarama.Client, group, topic string) (Checkpoint, bool, error) {
	coord, err := client.Coordinator(group)
	if err != nil {
		return Checkpoint{}, false, err
	}
	if ok, _ := coord.Connected(); !ok {
		// sarama closes a coordinator's connection after a failed request;
		// the cached Broker must be reopened before use.
		if err := coord.Open(client.Config()); err != nil && !errors.Is(err, sarama.ErrAlreadyConnected) {
			return Checkpoint{}, false, err
		}
	}
	req := &sarama.OffsetFetchRequest{Version: 7, ConsumerGroup: group, RequireStable: true}
	req.AddPartition(topic, 0)
	resp, err := coord.FetchOffset(req)
	if err != nil {
		_ = coord.Close()
		return Checkpoint{}, false, err
	}
	if resp.Err != sarama.ErrNoError {
		return Checkpoint{}, false, resp.Err
	}
	b := resp.GetBlock(topic, 0)
	if b == nil {
		return Checkpoint{}, false, fmt.Errorf("offset fetch for group %s: no answer for %s/0", group, topic)
	}
	if b.Err != sarama.ErrNoError {
		return Checkpoint{}, false, b.Err
	}
	if b.Offset < 0 {
		return Checkpoint{}, false, nil
	}
	var cp Checkpoint
	if err := json.Unmarshal([]byte(b.Metadata), &cp); err != nil {
		return Checkpoint{}, false, fmt.Errorf("checkpoint of group %s is unreadable (%q): %w", group, b.Metadata, err)
	}
	return cp, true, nil
}

// TooLargeError is an event larger than its topic accepts.
type TooLargeError struct {
	Topic string
	Size  int
	Limit int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("event of %d bytes is larger than topic %s accepts (%d bytes)", e.Size, e.Topic, e.Limit)
}

// topicLimits reads max.message.bytes of every topic in one request.
func topicLimits(cfg *config.Kafka) (map[string]int, error) {
	sc, err := adminConfig(cfg)
	if err != nil {
		return nil, err
	}
	client, err := sarama.NewClient(cfg.Brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("connect to kafka %v: %w", cfg.Brokers, err)
	}
	defer client.Close()
	topics, err := client.Topics()
	if err != nil {
		return nil, fmt.Errorf("list kafka topics: %w", err)
	}
	limits := map[string]int{}
	if len(topics) == 0 {
		return limits, nil
	}
	req := &sarama.DescribeConfigsRequest{Version: 1}
	for _, t := range topics {
		req.Resources = append(req.Resources, &sarama.ConfigResource{Type: sarama.TopicResource, Name: t, ConfigNames: []string{"max.message.bytes"}})
	}
	b := client.LeastLoadedBroker()
	if b == nil {
		return nil, sarama.ErrOutOfBrokers
	}
	resp, err := b.DescribeConfigs(req)
	if err != nil {
		return nil, fmt.Errorf("describe kafka topics: %w", err)
	}
	for _, r := range resp.Resources {
		for _, e := range r.Configs {
			if e.Name == "max.message.bytes" {
				if v, err := strconv.Atoi(e.Value); err == nil {
					limits[r.Name] = v
				}
			}
		}
	}
	return limits, nil
}

// Txn is one open Kafka transaction.
//
// Its deadline is the transaction timeout from Begin: by then the broker
// aborts the transaction anyway, so a send or commit that sarama is still
// retrying (a broker that went silent without closing the connection) is
// given up, and the session ends instead of hanging without a word.
type Txn struct {
	w         *Writer
	p         sarama.AsyncProducer
	sent      int
	deadline  time.Time
	msgs      []*sarama.ProducerMessage // with RecordDeliveries: the messages sent, in order
	committed bool

	mu     sync.Mutex
	failed chan struct{}
	err    error
	done   chan struct{} // the error drain has finished
}

// Begin opens a Kafka transaction.
func (w *Writer) Begin(ctx context.Context) (*Txn, error) {
	if w.broken != nil {
		return nil, fmt.Errorf("%w: %v", ErrBroken, w.broken)
	}
	p, err := w.take(ctx)
	if err != nil {
		w.broken = err
		return nil, err
	}
	if err := p.BeginTxn(); err != nil {
		w.broken = err
		p.AsyncClose()
		return nil, fmt.Errorf("begin kafka transaction: %w", err)
	}
	t := &Txn{w: w, p: p, failed: make(chan struct{}), done: make(chan struct{}),
		deadline: time.Now().Add(w.cfg.TransactionTimeout.Duration)}
	go t.drainErrors()
	return t, nil
}

func (w *Writer) take(ctx context.Context) (sarama.AsyncProducer, error) {
	if w.current != nil {
		p := w.current
		w.current = nil
		return p, nil
	}
	if w.prepared != nil {
		// Bounded like any request: a broker that cannot initialise the
		// producer must end the session, not stall it.
		timer := time.NewTimer(w.cfg.RequestTimeout.Duration)
		defer timer.Stop()
		select {
		case r := <-w.prepared:
			w.prepared = nil
			return r.p, r.err
		case <-timer.C:
			return nil, fmt.Errorf("create transactional producer %q: no answer within %s", w.cfg.TransactionalID, w.cfg.RequestTimeout.Duration)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return w.newProducer(ctx)
}

func (t *Txn) drainErrors() {
	defer close(t.done)
	for pe := range t.p.Errors() {
		t.fail(fmt.Errorf("produce to %s: %w", pe.Msg.Topic, pe.Err))
	}
}

func (t *Txn) fail(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err == nil {
		t.err = err
		close(t.failed)
	}
}

func (t *Txn) firstErr() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// Send queues ev in the transaction. An event larger than its topic accepts
// is refused with a *TooLargeError before anything is sent, and the
// transaction stays usable.
func (t *Txn) Send(ctx context.Context, ev *mapping.Event) error {
	if err := t.firstErr(); err != nil {
		return err
	}
	limit, batch := t.w.maxRecordBytes(ev.Topic)
	if size := ev.Size() + recordOverhead; size > limit {
		return &TooLargeError{Topic: ev.Topic, Size: size, Limit: limit}
	}
	if limit < batch {
		// A topic created since the writer started, with a smaller limit
		// than our batches: fail this transaction; the next writer reads
		// the topic's limit at its start and batches accordingly.
		return fmt.Errorf("topic %s accepts record batches of at most %d bytes, less than the %d this producer batches; reconnecting with smaller batches", ev.Topic, limit, batch)
	}
	msg := producerMessage(ev)
	if t.w.deliveries {
		msg.Offset = -1 // sarama sets it from the produce response
	}
	select {
	case t.p.Input() <- msg:
		t.queued(msg)
		return nil
	default:
	}
	// sarama's buffers are full: wait for room, but not past the deadline.
	timer := time.NewTimer(time.Until(t.deadline))
	defer timer.Stop()
	select {
	case t.p.Input() <- msg:
		t.queued(msg)
		return nil
	case <-t.failed:
		return t.firstErr()
	case <-timer.C:
		return t.expired("send")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ErrTxnExpired means a transaction was still not through when its
// transaction timeout passed; its outcome (for a commit) is unknown.
var ErrTxnExpired = errors.New("kafka transaction not finished within the transaction timeout")

func (t *Txn) expired(what string) error {
	return fmt.Errorf("%s: %w (kafka.transaction_timeout %s; is the broker reachable?)", what, ErrTxnExpired, t.w.cfg.TransactionTimeout.Duration)
}

// producerMessage is the record for ev. Its CreateTime is the event's
// timestamp (the source commit time), so consumers can measure latency.
func producerMessage(ev *mapping.Event) *sarama.ProducerMessage {
	msg := &sarama.ProducerMessage{Topic: ev.Topic, Timestamp: ev.Timestamp}
	if ev.Key != nil {
		msg.Key = sarama.ByteEncoder(ev.Key)
	}
	if ev.Value != nil {
		msg.Value = sarama.ByteEncoder(ev.Value)
	}
	if len(ev.Headers) > 0 {
		msg.Headers = make([]sarama.RecordHeader, len(ev.Headers))
		for i, h := range ev.Headers {
			msg.Headers[i] = sarama.RecordHeader{Key: []byte(h.Key), Value: h.Value}
		}
	}
	return msg
}

// Sent is the number of events queued in the transaction.
func (t *Txn) Sent() int { return t.sent }

// Commit adds cp to the transaction and commits it. On any error the outcome
// is unknown: the Writer is broken, the transaction is NOT aborted with the
// same epoch (a late abort or commit could then hit a later transaction,
// KAFKA-17754), and the caller must re-create the Writer and read the
// checkpoint to learn what happened.
//
// A commit still unanswered at the transaction's deadline counts as failed;
// sarama's CommitTxn cannot be cancelled, so it is left to finish (or fail)
// in the background and its producer is closed then. The next Writer's
// producer fences whatever it still sends.
func (t *Txn) Commit(cp Checkpoint) error {
	result := make(chan error, 1)
	go func() { result <- t.commit(cp) }()
	// A commit gets at least one request timeout, even in a transaction
	// that is near its deadline already (one that waited for Postgres).
	deadline := t.deadline
	if d := time.Now().Add(t.w.cfg.RequestTimeout.Duration); d.After(deadline) {
		deadline = d
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	var err error
	select {
	case err = <-result:
	case <-timer.C:
		err = t.expired(fmt.Sprintf("commit kafka transaction (checkpoint %s)", cp))
		t.w.broken = err
		go func() {
			<-result
			t.p.AsyncClose()
		}()
		return err
	}
	if err != nil {
		t.w.broken = err
		t.p.AsyncClose()
		return err
	}
	t.committed = true
	if t.w.epochPerTxn {
		t.p.AsyncClose()
		t.w.prepareNext()
	} else {
		t.w.current = t.p
	}
	return nil
}

func (t *Txn) commit(cp Checkpoint) error {
	meta, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	if len(meta) > maxMetadataBytes {
		return fmt.Errorf("checkpoint is %d bytes, more than the %d the broker stores", len(meta), maxMetadataBytes)
	}
	if err := t.firstErr(); err != nil {
		return err
	}
	m := string(meta)
	offsets := map[string][]*sarama.PartitionOffsetMetadata{
		t.w.cfg.CheckpointTopic: {{Partition: 0, Offset: cp.Seq, Metadata: &m}},
	}
	if err := t.p.AddOffsetsToTxn(offsets, t.w.cfg.CheckpointGroup); err != nil {
		return fmt.Errorf("add checkpoint %s to kafka transaction: %w", cp, err)
	}
	if err := t.p.CommitTxn(); err != nil {
		if perr := t.firstErr(); perr != nil {
			return fmt.Errorf("commit kafka transaction: %w (first produce error: %v)", err, perr)
		}
		return fmt.Errorf("commit kafka transaction: %w", err)
	}
	// CommitTxn waits for every queued message; a produce error reported on
	// the Errors channel would have failed the commit, but check anyway.
	if err := t.firstErr(); err != nil {
		return fmt.Errorf("kafka transaction committed with a produce error: %w", err)
	}
	return nil
}

// Discard gives up the transaction without committing it. The Writer is
// broken afterwards: the next producer's InitProducerId aborts the
// transaction on the broker, with a new epoch.
func (t *Txn) Discard() {
	if t.w.broken == nil {
		t.w.broken = errors.New("transaction discarded")
	}
	t.p.AsyncClose()
}

func (w *Writer) prepareNext() {
	ch := make(chan prepared, 1)
	w.prepared = ch
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), w.cfg.RequestTimeout.Duration)
		defer cancel()
		p, err := w.newProducer(ctx)
		ch <- prepared{p: p, err: err}
	}()
}

// maxRecordBytes is the largest record topic accepts (its max.message.bytes,
// capped by the producer's own limit) and the producer's batch limit.
func (w *Writer) maxRecordBytes(topic string) (limit, batch int) {
	batch = w.client.Config().Producer.MaxMessageBytes
	w.limitsMu.Lock()
	defer w.limitsMu.Unlock()
	if l, ok := w.limits[topic]; ok {
		return min(l, batch), batch
	}
	limit = defaultMaxMessageBytes
	if w.admin == nil {
		if a, err := sarama.NewClusterAdminFromClient(w.client); err == nil {
			w.admin = a
		}
	}
	if w.admin != nil {
		entries, err := w.admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: topic, ConfigNames: []string{"max.message.bytes"}})
		if err == nil {
			for _, e := range entries {
				if e.Name == "max.message.bytes" {
					if v, err := strconv.Atoi(e.Value); err == nil {
						limit = v
					}
				}
			}
		}
	}
	w.limits[topic] = limit
	return min(limit, batch), batch
}

// Close releases the producers and the connection. It never aborts a
// transaction: that is left to the next producer's initialisation.
func (w *Writer) Close() {
	if w.current != nil {
		w.current.AsyncClose()
		w.current = nil
	}
	if w.prepared != nil {
		ch := w.prepared
		w.prepared = nil
		go func() {
			if r := <-ch; r.p != nil {
				r.p.AsyncClose()
			}
		}()
	}
	// The admin shares the client; closing the client closes both.
	_ = w.client.Close()
}

// Abort aborts a transaction on which Commit was never attempted (then no
// late EndTxn of this epoch can exist), so read_committed consumers are not
// held up until the transaction timeout. The Writer is broken afterwards.
func (t *Txn) Abort() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = t.p.AbortTxn()
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	t.Discard()
}
