package schema

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/sr"

	"github.com/cdcrelay/cdcrelay/mapping"
)

// Subject naming strategies, as the Java serializers name them.
const (
	TopicNameStrategy       = "topic"        // "<topic>-key", "<topic>-value"
	RecordNameStrategy      = "record"       // the record's full name
	TopicRecordNameStrategy = "topic_record" // "<topic>-<record's full name>"
)

// Config configures [New].
type Config struct {
	// URL is the registry's base URL (for Apicurio: ".../apis/ccompat/v7").
	URL string
	// Username and Password: HTTP basic authentication, when set.
	Username, Password string
	// TLS for an https URL (nil: the system's roots).
	TLS *tls.Config
	// Timeout bounds one request (default 10s).
	Timeout time.Duration
	// SubjectNameStrategy: TopicNameStrategy (default), RecordNameStrategy
	// or TopicRecordNameStrategy.
	SubjectNameStrategy string
	// RetryFor is how long Encode retries a registry that cannot be reached
	// before it returns an [*UnavailableError] (default 15s: well inside a
	// Kafka transaction's timeout).
	RetryFor time.Duration
	// LatestTTL is how long the latest schema of an outbox payload's
	// subject is cached before it is looked up again (default 30s). A
	// payload that does not fit a cached schema older than a second is
	// checked again against a fresh lookup before it is refused.
	LatestTTL time.Duration
	// Observe, when set, hears every request to the registry: op names it
	// ("register", "lookup", "config", "latest", "schema"), err is nil on
	// success. For metrics; it must not block.
	Observe func(op string, err error)
	// Logger receives the registrations (default slog.Default()).
	Logger *slog.Logger
}

// Encoder registers schemas and writes events in the wire format. It is
// safe for concurrent use.
type Encoder struct {
	cfg Config
	cl  *sr.Client
	log *slog.Logger

	mu       sync.Mutex
	ids      map[subjectSchema]int      // registered: the schema's id under the subject
	refused  map[subjectSchema]*refusal // refused by the registry, not asked again for a while
	compat   map[string]string          // subjects whose compatibility level this encoder set
	latest   map[string]*latestSchema   // outbox lookups, by subject
	compiled map[int]*compiledSchema    // parsed schemas, by id
	now      func() time.Time
}

type subjectSchema struct {
	subject     string
	fingerprint [32]byte
}

type refusal struct {
	err *IncompatibleError
	at  time.Time
}

// refusalTTL: a refused schema is asked for again after this long (the
// operator may have changed the subject's compatibility meanwhile).
const refusalTTL = 30 * time.Second

// maxCached bounds each cache; past it the cache starts over.
const maxCached = 4096

// New builds an Encoder. It does not contact the registry.
func New(cfg Config) (*Encoder, error) {
	if cfg.URL == "" {
		return nil, errors.New("schema registry: no URL")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.RetryFor <= 0 {
		cfg.RetryFor = 15 * time.Second
	}
	if cfg.LatestTTL <= 0 {
		cfg.LatestTTL = 30 * time.Second
	}
	switch cfg.SubjectNameStrategy {
	case "":
		cfg.SubjectNameStrategy = TopicNameStrategy
	case TopicNameStrategy, RecordNameStrategy, TopicRecordNameStrategy:
	default:
		return nil, fmt.Errorf("schema registry: unknown subject name strategy %q", cfg.SubjectNameStrategy)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg.TLS
	opts := []sr.ClientOpt{
		sr.URLs(cfg.URL),
		sr.HTTPClient(&http.Client{Timeout: cfg.Timeout, Transport: tr}),
		sr.UserAgent("cdcrelay"),
	}
	if cfg.Username != "" {
		opts = append(opts, sr.BasicAuth(cfg.Username, cfg.Password))
	}
	cl, err := sr.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("schema registry %s: %w", cfg.URL, err)
	}
	return &Encoder{
		cfg: cfg, cl: cl, log: cfg.Logger,
		ids: map[subjectSchema]int{}, refused: map[subjectSchema]*refusal{}, compat: map[string]string{},
		latest: map[string]*latestSchema{}, compiled: map[int]*compiledSchema{}, now: time.Now,
	}, nil
}

// Subject is the subject under which schema s of an event for topic is
// registered, by the configured strategy.
func (e *Encoder) Subject(topic string, s *mapping.Schema, key bool) string {
	return SubjectName(e.cfg.SubjectNameStrategy, topic, s, key)
}

// SubjectName names a subject by strategy.
func SubjectName(strategy, topic string, s *mapping.Schema, key bool) string {
	switch strategy {
	case RecordNameStrategy:
		return s.Name
	case TopicRecordNameStrategy:
		return topic + "-" + s.Name
	}
	if key {
		return topic + "-key"
	}
	return topic + "-value"
}

// Encode puts ev's key and value in the registry's wire format, as
// ev.Contract says, registering (or finding) their schemas first; then it
// clears ev.Contract. An event without a contract is left alone.
func (e *Encoder) Encode(ctx context.Context, ev *mapping.Event) error {
	c := ev.Contract
	if c == nil {
		return nil
	}
	if c.Key != nil && ev.Key != nil {
		id, err := e.register(ctx, c, e.Subject(ev.Topic, c.Key, true), c.Key)
		if err != nil {
			return err
		}
		ev.Key = frame(id, ev.Key)
	}
	switch {
	case ev.Value == nil:
	case c.LookupSubject != "":
		v, err := e.encodePayload(ctx, c, ev.Value)
		if err != nil {
			return err
		}
		ev.Value = v
	case c.Value != nil:
		id, err := e.register(ctx, c, e.Subject(ev.Topic, c.Value, false), c.Value)
		if err != nil {
			return err
		}
		ev.Value = frame(id, ev.Value)
	}
	ev.Contract = nil
	return nil
}

// frame prefixes body with the Confluent wire format's header.
func frame(id int, body []byte) []byte {
	b := make([]byte, 0, 5+len(body))
	b, _ = (&sr.ConfluentHeader{}).AppendEncode(b, id, nil)
	return append(b, body...)
}

// register returns the id of schema s under subject, registering it when
// this encoder has not seen it there yet.
func (e *Encoder) register(ctx context.Context, c *mapping.Contract, subject string, s *mapping.Schema) (int, error) {
	k := subjectSchema{subject, s.Fingerprint}
	e.mu.Lock()
	id, ok := e.ids[k]
	ref := e.refused[k]
	level, levelSet := e.compat[subject]
	now := e.now()
	e.mu.Unlock()
	if ok {
		return id, nil
	}
	if ref != nil && now.Sub(ref.at) < refusalTTL {
		return 0, ref.err
	}
	if c.Compatibility != "" && (!levelSet || level != c.Compatibility) {
		if err := e.ensureCompatibility(ctx, subject, c.Compatibility); err != nil {
			return 0, err
		}
	}
	typ := sr.TypeAvro
	if s.Format == mapping.SchemaJSON {
		typ = sr.TypeJSON
	}
	// Registering the same schema again returns its id and adds no
	// version, so a retry after a timeout (whose request may well have
	// succeeded) is harmless, and so is a registration whose events never
	// committed.
	err := e.retry(ctx, "register", func(ctx context.Context) error {
		var err error
		id, err = e.cl.RegisterSchema(ctx, subject, sr.Schema{Schema: s.Text, Type: typ}, -1, -1)
		return err
	})
	var re *sr.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusConflict {
		ie := e.incompatible(ctx, c, subject, s, re)
		e.mu.Lock()
		if len(e.refused) >= maxCached {
			e.refused = map[subjectSchema]*refusal{}
		}
		e.refused[k] = &refusal{err: ie, at: e.now()}
		e.mu.Unlock()
		return 0, ie
	}
	if err != nil {
		return 0, fmt.Errorf("register the schema of %s under subject %s: %w", c.Table, subject, err)
	}
	e.mu.Lock()
	if len(e.ids) >= maxCached {
		e.ids = map[subjectSchema]int{}
	}
	e.ids[k] = id
	e.mu.Unlock()
	e.log.Info("schema registered", "table", c.Table, "subject", subject, "id", id, "format", s.Format)
	return id, nil
}

// ensureCompatibility sets the subject's compatibility level to level
// unless it already is.
func (e *Encoder) ensureCompatibility(ctx context.Context, subject, level string) error {
	var want sr.CompatibilityLevel
	if err := want.UnmarshalText([]byte(level)); err != nil {
		return fmt.Errorf("compatibility level %q: %w", level, err)
	}
	var have sr.CompatibilityLevel
	err := e.retry(ctx, "config", func(ctx context.Context) error {
		res := e.cl.Compatibility(ctx, subject)[0]
		var re *sr.ResponseError
		if errors.As(res.Err, &re) && re.StatusCode == http.StatusNotFound {
			return nil // no level of its own yet
		}
		have = res.Level
		return res.Err
	})
	if err != nil {
		return fmt.Errorf("read the compatibility level of subject %s: %w", subject, err)
	}
	if have != want {
		err = e.retry(ctx, "config", func(ctx context.Context) error {
			return e.cl.SetCompatibility(ctx, sr.SetCompatibility{Level: want}, subject)[0].Err
		})
		if err != nil {
			return fmt.Errorf("set the compatibility level of subject %s to %s: %w", subject, level, err)
		}
		e.log.Info("compatibility level set", "subject", subject, "level", level)
	}
	e.mu.Lock()
	e.compat[subject] = level
	e.mu.Unlock()
	return nil
}

// incompatible builds the error for a refused registration, naming what
// changed against the latest registered version.
func (e *Encoder) incompatible(ctx context.Context, c *mapping.Contract, subject string, s *mapping.Schema, re *sr.ResponseError) *IncompatibleError {
	ie := &IncompatibleError{Table: c.Table, Subject: subject, Level: c.Compatibility, Registry: re.Message}
	if ie.Level == "" {
		ie.Level = "the registry's"
	}
	var latest sr.SubjectSchema
	err := e.retry(ctx, "latest", func(ctx context.Context) error {
		var err error
		latest, err = e.cl.SchemaByVersion(ctx, subject, -1)
		return err
	})
	if err == nil {
		ie.Version = latest.Version
		ie.Changes = Changes(s.Format, latest.Schema.Schema, s.Text)
	}
	return ie
}

// IncompatibleError is a schema the registry refused under the subject's
// compatibility level.
type IncompatibleError struct {
	Table   string
	Subject string
	Level   string // the compatibility level, e.g. "BACKWARD"
	Version int    // the latest version it was checked against (0: unknown)
	// Changes describe what differs from that version, one column each
	// ("column \"qty\": type string -> long").
	Changes  []Change
	Registry string // the registry's own message
}

func (e *IncompatibleError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s: the schema registry refused the table's new schema under subject %s (compatibility %s", e.Table, e.Subject, e.Level)
	if e.Version > 0 {
		fmt.Fprintf(&b, ", against version %d", e.Version)
	}
	b.WriteString(")")
	if len(e.Changes) > 0 {
		parts := make([]string, len(e.Changes))
		for i, c := range e.Changes {
			parts[i] = c.String()
		}
		b.WriteString(": " + strings.Join(parts, "; "))
	}
	if e.Registry != "" {
		b.WriteString("; the registry says: " + e.Registry)
	}
	return b.String()
}

// Column is the first column a change names ("" if none).
func (e *IncompatibleError) Column() string {
	for _, c := range e.Changes {
		if c.Column != "" {
			return c.Column
		}
	}
	return ""
}

// UnavailableError is a registry that could not be reached, or failed, for
// longer than the encoder retries.
type UnavailableError struct {
	Op  string
	Err error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("schema registry unavailable (%s): %v", e.Op, e.Err)
}
func (e *UnavailableError) Unwrap() error { return e.Err }

// CheckResult is what [Encoder.Check] found for one subject.
type CheckResult struct {
	Subject string
	// Registered: this very schema is registered under the subject.
	Registered bool
	// Latest is the subject's latest version (0: the subject has none).
	Latest int
	// Compatible: registering it would be accepted under the subject's
	// compatibility level (Level).
	Compatible bool
	Level      string
	Changes    []Change // against the latest version
	Messages   []string // the registry's reasons, when it gives them
}

// Check asks the registry, changing nothing, what registering s under
// subject would do.
func (e *Encoder) Check(ctx context.Context, subject string, s *mapping.Schema) (CheckResult, error) {
	res := CheckResult{Subject: subject}
	typ := sr.TypeAvro
	if s.Format == mapping.SchemaJSON {
		typ = sr.TypeJSON
	}
	sch := sr.Schema{Schema: s.Text, Type: typ}
	var re *sr.ResponseError
	var found sr.SubjectSchema
	err := e.retry(ctx, "lookup", func(ctx context.Context) error {
		var err error
		found, err = e.cl.LookupSchema(ctx, subject, sch)
		return err
	})
	switch {
	case err == nil:
		res.Registered, res.Compatible = true, true
		res.Latest = found.Version
	case errors.As(err, &re) && re.StatusCode == http.StatusNotFound:
	default:
		return res, err
	}
	var latest sr.SubjectSchema
	err = e.retry(ctx, "latest", func(ctx context.Context) error {
		var err error
		latest, err = e.cl.SchemaByVersion(ctx, subject, -1)
		return err
	})
	if errors.As(err, &re) && re.StatusCode == http.StatusNotFound {
		res.Compatible = true // a first version
		return res, nil
	}
	if err != nil {
		return res, err
	}
	res.Latest = latest.Version
	if res.Registered {
		return res, nil
	}
	res.Changes = Changes(s.Format, latest.Schema.Schema, s.Text)
	if c := e.cl.Compatibility(ctx, subject)[0]; c.Err == nil {
		res.Level = c.Level.String()
	} else if g := e.cl.Compatibility(ctx)[0]; g.Err == nil {
		res.Level = g.Level.String()
	}
	var cr sr.CheckCompatibilityResult
	err = e.retry(ctx, "compatibility", func(ctx context.Context) error {
		var err error
		cr, err = e.cl.CheckCompatibility(sr.WithParams(ctx, sr.Verbose), subject, -1, sch)
		return err
	})
	if err != nil {
		return res, err
	}
	res.Compatible, res.Messages = cr.Is, cr.Messages
	return res, nil
}
