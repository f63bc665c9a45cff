package mapping

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/cdcrelay/cdcrelay/replication"
)

// Trace context: a service that writes an outbox row inside a trace can
// store the trace's W3C context in the row (columns traceparent and
// tracestate, or Debezium's tracingspancontext column, a java.util.Properties
// text). The mapping copies it, byte for byte, into the record's headers
// traceparent and tracestate, so consumers continue the trace, and hands it
// to the daemon as [Event.Trace], the parent of the relay's own span.
//
// An invalid traceparent is not a row error: the event is published without
// it and the mapping's trace-context function (see [WithTraceContextFunc])
// hears of it, so the daemon can count it.

// TraceSpec says where a row keeps its trace context and its correlation id
// ([mapping.trace] in relay.toml; docs/mapping.md).
type TraceSpec struct {
	// TraceparentColumn holds a W3C traceparent ("00-<trace-id>-<span-id>-<flags>").
	// Outbox default "traceparent"; none for the other kinds.
	TraceparentColumn string `toml:"traceparent_column"`
	// TracestateColumn holds the W3C tracestate that goes with it.
	// Outbox default "tracestate"; none for the other kinds.
	TracestateColumn string `toml:"tracestate_column"`
	// SpanContextColumn holds Debezium's serialized java.util.Properties
	// ("traceparent=...", "tracestate=..."), read when the traceparent
	// column is absent or NULL. Outbox default "tracingspancontext".
	SpanContextColumn string `toml:"span_context_column"`
	// CorrelationIDColumn names a column whose value becomes the header
	// CorrelationIDHeader and the span attribute messaging.message.conversation_id.
	CorrelationIDColumn string `toml:"correlation_id_column"`
	// CorrelationIDHeader is the correlation id's header name (default
	// "correlation_id"). When [mapping.headers] defines a header of this
	// name, that header's template is the correlation id instead of a column.
	CorrelationIDHeader string `toml:"correlation_id_header"`

	// explicit records which column keys relay.toml set (the others are
	// defaults, ignored when the table lacks them).
	explicitParent, explicitState, explicitProps bool
	normalized                                   bool
}

// Header names of the W3C Trace Context.
const (
	HeaderTraceparent = "traceparent"
	HeaderTracestate  = "tracestate"
)

// DefaultCorrelationIDHeader is the correlation id's header unless
// trace.correlation_id_header says otherwise.
const DefaultCorrelationIDHeader = "correlation_id"

// TraceContext is a valid W3C trace context read from a row. The zero value
// means the row carried none (or an invalid one).
type TraceContext struct {
	TraceID [16]byte
	SpanID  [8]byte
	Flags   byte
	// State is the tracestate, as the row had it ("" for none).
	State string
}

// Valid tells whether the row carried a trace context.
func (t TraceContext) Valid() bool { return t.TraceID != [16]byte{} }

// Sampled is the traceparent's sampled flag.
func (t TraceContext) Sampled() bool { return t.Flags&1 == 1 }

func (s *TraceSpec) normalize(kind string) []error {
	if !s.normalized { // a spec normalized before keeps what it knew
		s.explicitParent = s.TraceparentColumn != ""
		s.explicitState = s.TracestateColumn != ""
		s.explicitProps = s.SpanContextColumn != ""
		s.normalized = true
	}
	if kind == KindOutbox {
		if s.TraceparentColumn == "" {
			s.TraceparentColumn = "traceparent"
		}
		if s.TracestateColumn == "" {
			s.TracestateColumn = "tracestate"
		}
		if s.SpanContextColumn == "" {
			s.SpanContextColumn = "tracingspancontext"
		}
	}
	if s.CorrelationIDHeader == "" {
		s.CorrelationIDHeader = DefaultCorrelationIDHeader
	}
	var errs []error
	if s.TracestateColumn != "" && s.TraceparentColumn == "" {
		errs = append(errs, kerr("trace.tracestate_column", "needs trace.traceparent_column: a tracestate means nothing without its traceparent"))
	}
	for _, h := range []string{HeaderTraceparent, HeaderTracestate} {
		if strings.EqualFold(s.CorrelationIDHeader, h) {
			errs = append(errs, kerr("trace.correlation_id_header", "%q is the trace context's own header", s.CorrelationIDHeader))
		}
	}
	if strings.TrimSpace(s.CorrelationIDHeader) == "" {
		errs = append(errs, kerr("trace.correlation_id_header", "is empty"))
	}
	return errs
}

// traceColumns are the trace columns in use, by key, for checkDistinct and
// CheckRelation.
func (s *TraceSpec) columns() map[string]string {
	return map[string]string{
		"trace.traceparent_column": s.TraceparentColumn, "trace.tracestate_column": s.TracestateColumn,
		"trace.span_context_column": s.SpanContextColumn, "trace.correlation_id_column": s.CorrelationIDColumn,
	}
}

// checkTraceRelation reports the trace columns relay.toml named that the
// table lacks. The outbox defaults are optional: a table without them has
// no trace context.
func (r *rule) checkTraceRelation(need func(key, col string)) {
	t := &r.spec.Trace
	if t.explicitParent {
		need("trace.traceparent_column", t.TraceparentColumn)
	}
	if t.explicitState {
		need("trace.tracestate_column", t.TracestateColumn)
	}
	if t.explicitProps {
		need("trace.span_context_column", t.SpanContextColumn)
	}
	need("trace.correlation_id_column", t.CorrelationIDColumn)
}

// readTrace fills b's trace context, trace headers and correlation id from
// the row. Missing, NULL and unsent values mean "none"; an invalid context
// is reported to the trace-context function and left out.
func (r *rule) readTrace(v *rowView, b *built) {
	if !v.traced {
		return
	}
	t := &r.spec.Trace
	text := func(col string) (string, bool) {
		if col == "" {
			return "", false
		}
		if _, ok := v.idx[col]; !ok {
			return "", false
		}
		val, err := v.current(col)
		if err != nil || val.Kind != replication.ValueText {
			return "", false
		}
		return string(val.Text), true
	}
	if t.CorrelationIDColumn != "" {
		if id, ok := text(t.CorrelationIDColumn); ok {
			b.correlation = id
			b.headers = append(b.headers, Header{Key: t.CorrelationIDHeader, Value: []byte(id)})
		}
	}
	parent, ok := text(t.TraceparentColumn)
	state, _ := text(t.TracestateColumn)
	source := t.TraceparentColumn
	if !ok {
		props, found := text(t.SpanContextColumn)
		if !found {
			return
		}
		source = t.SpanContextColumn
		p, err := parseJavaProperties(props)
		if err != nil {
			r.traceInvalid(v.c, source, fmt.Errorf("not a java.util.Properties text: %w", err))
			return
		}
		if parent, ok = p[HeaderTraceparent]; !ok {
			return
		}
		state = p[HeaderTracestate]
	}
	tc, err := ParseTraceparent(parent)
	if err != nil {
		r.traceInvalid(v.c, source, err)
		return
	}
	if state != "" {
		if err := checkTracestate(state); err != nil {
			// The traceparent stands without it (W3C: an invalid
			// tracestate is discarded, the traceparent kept).
			r.traceInvalid(v.c, source, err)
			state = ""
		}
	}
	tc.State = state
	b.trace = tc
	if !r.userHeader(HeaderTraceparent) {
		b.traceHeaders = append(b.traceHeaders, Header{Key: HeaderTraceparent, Value: []byte(parent)})
		if state != "" && !r.userHeader(HeaderTracestate) {
			b.traceHeaders = append(b.traceHeaders, Header{Key: HeaderTracestate, Value: []byte(state)})
		}
	}
}

// userHeader tells whether [mapping.headers] writes header name itself
// (then the mapping leaves that header to it).
func (r *rule) userHeader(name string) bool {
	for _, h := range r.headers {
		if strings.EqualFold(h.name, name) {
			return true
		}
	}
	return false
}

func (r *rule) traceInvalid(c *replication.Change, column string, err error) {
	if f := r.m.opts.traceInvalid; f != nil {
		f(&RowError{Table: r.spec.Table, Pos: c.Pos, Column: column, Reason: "invalid trace context, left out: " + err.Error()})
	}
}

// ParseTraceparent reads a W3C traceparent header value
// (https://www.w3.org/TR/trace-context/#traceparent-header): version,
// trace-id, parent-id and flags in lowercase hex. A version above 00 may
// carry more fields after the flags, as the specification allows.
func ParseTraceparent(s string) (TraceContext, error) {
	var tc TraceContext
	if len(s) < 55 {
		return tc, fmt.Errorf("traceparent %q: %d characters, want 55", clip(s), len(s))
	}
	if s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return tc, fmt.Errorf("traceparent %q: not version-traceid-parentid-flags", clip(s))
	}
	var version [1]byte
	if !decodeLowerHex(version[:], s[0:2]) {
		return tc, fmt.Errorf("traceparent %q: version is not two lowercase hex digits", clip(s))
	}
	switch {
	case version[0] == 0xff:
		return tc, fmt.Errorf("traceparent %q: version ff is invalid", clip(s))
	case version[0] == 0 && len(s) != 55:
		return tc, fmt.Errorf("traceparent %q: version 00 has 55 characters, not %d", clip(s), len(s))
	case len(s) > 55 && s[55] != '-':
		return tc, fmt.Errorf("traceparent %q: unexpected text after the flags", clip(s))
	}
	if !decodeLowerHex(tc.TraceID[:], s[3:35]) {
		return TraceContext{}, fmt.Errorf("traceparent %q: trace-id is not 32 lowercase hex digits", clip(s))
	}
	if !decodeLowerHex(tc.SpanID[:], s[36:52]) {
		return TraceContext{}, fmt.Errorf("traceparent %q: parent-id is not 16 lowercase hex digits", clip(s))
	}
	var flags [1]byte
	if !decodeLowerHex(flags[:], s[53:55]) {
		return TraceContext{}, fmt.Errorf("traceparent %q: flags are not two lowercase hex digits", clip(s))
	}
	tc.Flags = flags[0]
	if tc.TraceID == [16]byte{} {
		return TraceContext{}, fmt.Errorf("traceparent %q: trace-id is all zeros", clip(s))
	}
	if tc.SpanID == [8]byte{} {
		return TraceContext{}, fmt.Errorf("traceparent %q: parent-id is all zeros", clip(s))
	}
	return tc, nil
}

// FormatTraceparent writes a version-00 traceparent.
func FormatTraceparent(traceID [16]byte, spanID [8]byte, flags byte) []byte {
	const hexDigits = "0123456789abcdef"
	b := make([]byte, 0, 55)
	b = append(b, '0', '0', '-')
	for _, c := range traceID {
		b = append(b, hexDigits[c>>4], hexDigits[c&15])
	}
	b = append(b, '-')
	for _, c := range spanID {
		b = append(b, hexDigits[c>>4], hexDigits[c&15])
	}
	return append(b, '-', hexDigits[flags>>4], hexDigits[flags&15])
}

// decodeLowerHex decodes len(dst)*2 lowercase hex digits (W3C refuses
// uppercase).
func decodeLowerHex(dst []byte, s string) bool {
	if len(s) != 2*len(dst) {
		return false
	}
	for i := range dst {
		hi, ok1 := lowerHexDigit(s[2*i])
		lo, ok2 := lowerHexDigit(s[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func lowerHexDigit(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// checkTracestate applies the W3C tracestate grammar
// (https://www.w3.org/TR/trace-context/#tracestate-header): at most 32
// comma-separated list members key=value, keys unique.
func checkTracestate(s string) error {
	seen := map[string]bool{}
	n := 0
	for _, m := range strings.Split(s, ",") {
		m = strings.Trim(m, " \t")
		if m == "" {
			continue // empty members are allowed, and ignored
		}
		if n++; n > 32 {
			return fmt.Errorf("tracestate %q: more than 32 list members", clip(s))
		}
		key, value, ok := strings.Cut(m, "=")
		if !ok {
			return fmt.Errorf("tracestate %q: member %q has no '='", clip(s), clip(m))
		}
		if !validTracestateKey(key) {
			return fmt.Errorf("tracestate %q: key %q is not a W3C tracestate key", clip(s), clip(key))
		}
		if !validTracestateValue(value) {
			return fmt.Errorf("tracestate %q: value of %q is not a W3C tracestate value", clip(s), clip(key))
		}
		if seen[key] {
			return fmt.Errorf("tracestate %q: key %q twice", clip(s), clip(key))
		}
		seen[key] = true
	}
	return nil
}

func validTracestateKey(k string) bool {
	keyChar := func(c byte) bool {
		return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '*' || c == '/'
	}
	part := func(p string, max int, digitFirst bool) bool {
		if p == "" || len(p) > max {
			return false
		}
		if c := p[0]; !(c >= 'a' && c <= 'z' || digitFirst && c >= '0' && c <= '9') {
			return false
		}
		for i := 1; i < len(p); i++ {
			if !keyChar(p[i]) {
				return false
			}
		}
		return true
	}
	if tenant, system, multi := strings.Cut(k, "@"); multi {
		return part(tenant, 241, true) && part(system, 14, false)
	}
	return part(k, 256, false)
}

func validTracestateValue(v string) bool {
	if v == "" || len(v) > 256 || v[len(v)-1] == ' ' {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c > 0x7e || c == ',' || c == '=' {
			return false
		}
	}
	return true
}

// clip shortens a value quoted in an error.
func clip(s string) string {
	if len(s) <= 80 {
		return s
	}
	i := 80
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "..."
}

// parseJavaProperties reads the text format of java.util.Properties.load:
// natural lines end at \n, \r or \r\n; a line ending in an odd number of
// backslashes continues on the next (whose leading white space is
// skipped); blank lines and lines whose first non-white character is '#' or
// '!' are comments; the key ends at the first unescaped '=', ':' or white
// space, and one '=' or ':' with white space around it separates it from
// the value; \t \n \r \f and \uXXXX are escapes, and a backslash before any
// other character stands for that character. A later key replaces an
// earlier one, as in Java.
func parseJavaProperties(s string) (map[string]string, error) {
	props := map[string]string{}
	isWhite := func(c byte) bool { return c == ' ' || c == '\t' || c == '\f' }
	for len(s) > 0 {
		// One logical line.
		var line strings.Builder
		first := true
		for {
			// Skip leading white space of this natural line.
			i := 0
			for i < len(s) && isWhite(s[i]) {
				i++
			}
			s = s[i:]
			end := strings.IndexAny(s, "\r\n")
			nat := s
			if end >= 0 {
				nat = s[:end]
				s = s[end:]
				if strings.HasPrefix(s, "\r\n") {
					s = s[2:]
				} else {
					s = s[1:]
				}
			} else {
				s = ""
			}
			if first && (nat == "" || nat[0] == '#' || nat[0] == '!') {
				break // a blank line or a comment (never continued)
			}
			first = false
			bs := 0
			for j := len(nat) - 1; j >= 0 && nat[j] == '\\'; j-- {
				bs++
			}
			if bs%2 == 1 {
				line.WriteString(nat[:len(nat)-1])
				if s == "" {
					break // a continuation at the end of the text
				}
				continue
			}
			line.WriteString(nat)
			break
		}
		if first {
			continue
		}
		key, value, err := splitJavaProperty(line.String())
		if err != nil {
			return nil, err
		}
		props[key] = value
	}
	return props, nil
}

// splitJavaProperty splits a logical line into its unescaped key and value.
func splitJavaProperty(l string) (key, value string, err error) {
	isWhite := func(c byte) bool { return c == ' ' || c == '\t' || c == '\f' }
	i := 0
	for i < len(l) {
		c := l[i]
		if c == '\\' {
			i += 2
			continue
		}
		if c == '=' || c == ':' || isWhite(c) {
			break
		}
		i++
	}
	if i > len(l) {
		i = len(l)
	}
	rawKey, rest := l[:i], l[i:]
	j := 0
	for j < len(rest) && isWhite(rest[j]) {
		j++
	}
	if j < len(rest) && (rest[j] == '=' || rest[j] == ':') {
		j++
		for j < len(rest) && isWhite(rest[j]) {
			j++
		}
	}
	if key, err = unescapeJava(rawKey); err != nil {
		return "", "", err
	}
	if value, err = unescapeJava(rest[j:]); err != nil {
		return "", "", err
	}
	return key, value, nil
}

func unescapeJava(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		i++
		if i >= len(s) {
			break // a trailing backslash (a continuation at the end of the text)
		}
		switch c := s[i]; c {
		case 't':
			b.WriteByte('\t')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 'f':
			b.WriteByte('\f')
		case 'u':
			r, ok := hex4(s[i+1:])
			if !ok {
				return "", errors.New(`malformed \uxxxx escape`)
			}
			i += 4
			// Java's chars are UTF-16: a surrogate pair is two escapes.
			if utf16.IsSurrogate(r) && i+6 < len(s) && s[i+1] == '\\' && s[i+2] == 'u' {
				if r2, ok := hex4(s[i+3:]); ok {
					if pair := utf16.DecodeRune(r, r2); pair != utf8.RuneError {
						r = pair
						i += 6
					}
				}
			}
			b.WriteRune(r)
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// hex4 reads the four hex digits of a \uxxxx escape.
func hex4(s string) (rune, bool) {
	if len(s) < 4 {
		return 0, false
	}
	var r rune
	for _, h := range s[:4] {
		switch {
		case h >= '0' && h <= '9':
			r = r<<4 | (h - '0')
		case h >= 'a' && h <= 'f':
			r = r<<4 | (h - 'a' + 10)
		case h >= 'A' && h <= 'F':
			r = r<<4 | (h - 'A' + 10)
		default:
			return 0, false
		}
	}
	return r, true
}
