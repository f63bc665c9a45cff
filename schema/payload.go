package schema

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/cdcrelay/cdcrelay/mapping"
)

// Outbox payloads (payload_schema = "registry"): the application's JSON
// must fit the latest schema registered under the event's subject. A JSON
// Schema validates it (github.com/santhosh-tekuri/jsonschema) and the text
// is published as it is; an Avro schema takes it as JSON and encodes it
// (github.com/hamba/avro). A payload that already is in the wire format (a
// bytea payload starting with the magic byte) passes through unchanged, as
// Debezium's BinaryDataConverter passes it.

// PayloadError is an outbox payload that does not fit its subject's schema.
// It is a row error: the mapping's on_error decides.
type PayloadError struct {
	Subject string
	ID      int // the schema's id (0: none registered)
	Version int
	// Field is where in the payload the misfit is ("/total", "items[2].sku";
	// "" for the whole payload).
	Field  string
	Reason string
}

func (e *PayloadError) Error() string {
	s := fmt.Sprintf("the payload does not fit the latest schema of subject %s", e.Subject)
	if e.ID > 0 {
		s += fmt.Sprintf(" (id %d, version %d)", e.ID, e.Version)
	}
	if e.Field != "" {
		s += fmt.Sprintf(": field %s", e.Field)
	}
	return s + ": " + e.Reason
}

type latestSchema struct {
	id, version int
	missing     bool // the subject has no version
	fetched     time.Time
	compiled    *compiledSchema
}

type compiledSchema struct {
	format string // mapping.SchemaAvro or mapping.SchemaJSON
	avro   avro.Schema
	json   *jsonschema.Schema
	err    error // the schema could not be used (its type, or it does not parse)
}

// encodePayload returns payload in the wire format of its subject's latest
// schema, or a *PayloadError.
func (e *Encoder) encodePayload(ctx context.Context, c *mapping.Contract, payload []byte) ([]byte, error) {
	// Text and JSON columns cannot hold a zero byte: a payload that
	// starts with one is a bytea column's, in the wire format already.
	if len(payload) >= 5 && payload[0] == 0 {
		return payload, nil
	}
	l, err := e.latestFor(ctx, c.LookupSubject, false)
	if err != nil {
		return nil, err
	}
	out, err := e.fit(c.LookupSubject, l, payload)
	var pe *PayloadError
	if errors.As(err, &pe) && e.now().Sub(l.fetched) > time.Second {
		// A service may have registered a new version since: look again
		// before refusing the payload.
		if l2, err2 := e.latestFor(ctx, c.LookupSubject, true); err2 == nil && (l2.id != l.id || l2.missing != l.missing) {
			return e.fit(c.LookupSubject, l2, payload)
		}
	}
	return out, err
}

func (e *Encoder) fit(subject string, l *latestSchema, payload []byte) ([]byte, error) {
	if l.missing {
		return nil, &PayloadError{Subject: subject, Reason: "the subject has no schema registered (register one, or set outbox.payload_subject)"}
	}
	cs := l.compiled
	if cs.err != nil {
		return nil, &PayloadError{Subject: subject, ID: l.id, Version: l.version, Reason: cs.err.Error()}
	}
	fail := func(field, reason string) ([]byte, error) {
		return nil, &PayloadError{Subject: subject, ID: l.id, Version: l.version, Field: field, Reason: reason}
	}
	switch cs.format {
	case mapping.SchemaJSON:
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(payload))
		if err != nil {
			return fail("", "not valid JSON: "+err.Error())
		}
		if err := cs.json.Validate(inst); err != nil {
			var ve *jsonschema.ValidationError
			if errors.As(err, &ve) {
				field, reason := leafError(ve)
				return fail(field, reason)
			}
			return fail("", err.Error())
		}
		return frame(l.id, payload), nil
	default:
		dec := json.NewDecoder(bytes.NewReader(payload))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			return fail("", "not valid JSON: "+err.Error())
		}
		native, err := fromJSON(cs.avro, v, "")
		if err != nil {
			var fe *fieldError
			if errors.As(err, &fe) {
				return fail(fe.path, fe.msg)
			}
			return fail("", err.Error())
		}
		b, err := avro.Marshal(cs.avro, native)
		if err != nil {
			return fail("", err.Error())
		}
		return frame(l.id, b), nil
	}
}

// leafError finds the deepest first cause of a validation error: the field
// to blame and what is wrong with it.
func leafError(ve *jsonschema.ValidationError) (field, reason string) {
	for len(ve.Causes) > 0 {
		ve = ve.Causes[0]
	}
	field = "/" + strings.Join(ve.InstanceLocation, "/")
	if len(ve.InstanceLocation) == 0 {
		field = "(the payload)"
	}
	out := ve.BasicOutput()
	reason = strings.TrimSpace(ve.Error())
	for _, u := range out.Errors {
		if u.Error != nil && u.InstanceLocation == "/"+strings.Join(ve.InstanceLocation, "/") {
			reason = u.Error.String()
		}
	}
	if out.Error != nil && reason == "" {
		reason = out.Error.String()
	}
	return field, reason
}

// latestFor returns the latest schema of subject, cached for LatestTTL
// (force: look it up now).
func (e *Encoder) latestFor(ctx context.Context, subject string, force bool) (*latestSchema, error) {
	e.mu.Lock()
	l := e.latest[subject]
	e.mu.Unlock()
	if l != nil && !force && e.now().Sub(l.fetched) < e.cfg.LatestTTL {
		return l, nil
	}
	var ss sr.SubjectSchema
	err := e.retry(ctx, "latest", func(ctx context.Context) error {
		var err error
		ss, err = e.cl.SchemaByVersion(ctx, subject, -1)
		return err
	})
	var re *sr.ResponseError
	switch {
	case errors.As(err, &re) && re.StatusCode == http.StatusNotFound:
		l = &latestSchema{missing: true, fetched: e.now()}
	case err != nil:
		return nil, fmt.Errorf("look up the latest schema of subject %s: %w", subject, err)
	default:
		l = &latestSchema{id: ss.ID, version: ss.Version, fetched: e.now(), compiled: e.compile(ss)}
	}
	e.mu.Lock()
	if len(e.latest) >= maxCached {
		e.latest = map[string]*latestSchema{}
	}
	e.latest[subject] = l
	e.mu.Unlock()
	return l, nil
}

// compile parses a registered schema once per id.
func (e *Encoder) compile(ss sr.SubjectSchema) *compiledSchema {
	e.mu.Lock()
	cs := e.compiled[ss.ID]
	e.mu.Unlock()
	if cs != nil {
		return cs
	}
	cs = &compiledSchema{}
	switch ss.Type {
	case sr.TypeAvro:
		cs.format = mapping.SchemaAvro
		if len(ss.References) > 0 {
			cs.err = errors.New("the Avro schema has references, which cdcrelay does not resolve")
		} else if cs.avro, cs.err = avro.Parse(ss.Schema.Schema); cs.err != nil {
			cs.err = fmt.Errorf("the registered Avro schema does not parse: %w", cs.err)
		}
	case sr.TypeJSON:
		cs.format = mapping.SchemaJSON
		cs.json, cs.err = compileJSONSchema(ss.ID, ss.Schema.Schema)
	default:
		cs.err = fmt.Errorf("the subject's schema type is %s; payload_schema = \"registry\" takes AVRO or JSON", ss.Type)
	}
	e.mu.Lock()
	if len(e.compiled) >= maxCached {
		e.compiled = map[int]*compiledSchema{}
	}
	e.compiled[ss.ID] = cs
	e.mu.Unlock()
	return cs
}

func compileJSONSchema(id int, text string) (*jsonschema.Schema, error) {
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("the registered JSON Schema is not JSON: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft7) // the Confluent serializers' default
	url := fmt.Sprintf("registry:///schemas/ids/%d", id)
	if err := c.AddResource(url, doc); err != nil {
		return nil, fmt.Errorf("the registered JSON Schema: %w", err)
	}
	s, err := c.Compile(url)
	if err != nil {
		return nil, fmt.Errorf("the registered JSON Schema does not compile: %w", err)
	}
	return s, nil
}

// fieldError is a JSON value that does not fit its Avro type.
type fieldError struct {
	path, msg string
}

func (e *fieldError) Error() string { return e.path + ": " + e.msg }

func ferr(path, format string, a ...any) error {
	if path == "" {
		path = "(the payload)"
	}
	return &fieldError{path: path, msg: fmt.Sprintf(format, a...)}
}

// fromJSON converts a decoded JSON value (numbers as json.Number) to the
// native value hamba/avro encodes for schema s. Plain JSON, as
// applications write it: a union takes the value of its first branch that
// fits (no {"type": value} wrapper), bytes are base64, timestamps RFC 3339
// text or epoch numbers, decimals numbers or numeric strings. A JSON field
// the record does not have is refused, not dropped.
func fromJSON(s avro.Schema, v any, path string) (any, error) {
	if r, ok := s.(*avro.RefSchema); ok {
		s = r.Schema()
	}
	switch s := s.(type) {
	case *avro.NullSchema:
		if v != nil {
			return nil, ferr(path, "want null, got %s", jsonKind(v))
		}
		return nil, nil
	case *avro.UnionSchema:
		var firstErr error
		for _, t := range s.Types() {
			if t.Type() == avro.Null {
				if v == nil {
					return nil, nil
				}
				continue
			}
			n, err := fromJSON(t, v, path)
			if err == nil {
				return map[string]any{branchName(t): n}, nil
			}
			if firstErr == nil {
				firstErr = err
			}
		}
		if v == nil {
			return nil, ferr(path, "is null, but the schema does not allow null")
		}
		return nil, firstErr
	case *avro.RecordSchema:
		m, ok := v.(map[string]any)
		if !ok {
			return nil, ferr(path, "want an object (record %s), got %s", s.FullName(), jsonKind(v))
		}
		out := make(map[string]any, len(s.Fields()))
		known := map[string]bool{}
		for _, f := range s.Fields() {
			known[f.Name()] = true
			fp := joinPath(path, f.Name())
			fv, present := m[f.Name()]
			if !present {
				if !f.HasDefault() {
					return nil, ferr(fp, "is missing and has no default")
				}
				fv = f.Default()
				if fv == nil {
					out[f.Name()] = nil
					continue
				}
				// A default is already native; hamba takes it as it is.
				out[f.Name()] = defaultNative(f.Type(), fv)
				continue
			}
			n, err := fromJSON(f.Type(), fv, fp)
			if err != nil {
				return nil, err
			}
			out[f.Name()] = n
		}
		var extra []string
		for k := range m {
			if !known[k] {
				extra = append(extra, k)
			}
		}
		if len(extra) > 0 {
			sort.Strings(extra)
			return nil, ferr(joinPath(path, extra[0]), "is not a field of record %s", s.FullName())
		}
		return out, nil
	case *avro.ArraySchema:
		a, ok := v.([]any)
		if !ok {
			return nil, ferr(path, "want an array, got %s", jsonKind(v))
		}
		out := make([]any, len(a))
		for i, e := range a {
			n, err := fromJSON(s.Items(), e, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			out[i] = n
		}
		return out, nil
	case *avro.MapSchema:
		m, ok := v.(map[string]any)
		if !ok {
			return nil, ferr(path, "want an object (map), got %s", jsonKind(v))
		}
		out := make(map[string]any, len(m))
		for k, e := range m {
			n, err := fromJSON(s.Values(), e, joinPath(path, k))
			if err != nil {
				return nil, err
			}
			out[k] = n
		}
		return out, nil
	case *avro.EnumSchema:
		str, ok := v.(string)
		if !ok {
			return nil, ferr(path, "want a string (enum %s), got %s", s.FullName(), jsonKind(v))
		}
		for _, sym := range s.Symbols() {
			if sym == str {
				return str, nil
			}
		}
		return nil, ferr(path, "%q is not a symbol of enum %s", str, s.FullName())
	case *avro.FixedSchema:
		return nil, ferr(path, "fixed type %s is not supported for JSON payloads", s.FullName())
	case *avro.PrimitiveSchema:
		return primitiveFromJSON(s, v, path)
	}
	return nil, ferr(path, "unsupported Avro type %s", s.Type())
}

func primitiveFromJSON(s *avro.PrimitiveSchema, v any, path string) (any, error) {
	var lt avro.LogicalType
	if l := s.Logical(); l != nil {
		lt = l.Type()
	}
	num := func() (json.Number, bool) { n, ok := v.(json.Number); return n, ok }
	switch s.Type() {
	case avro.Boolean:
		b, ok := v.(bool)
		if !ok {
			return nil, ferr(path, "want a boolean, got %s", jsonKind(v))
		}
		return b, nil
	case avro.Int:
		if lt == avro.Date {
			if str, ok := v.(string); ok {
				t, err := time.Parse("2006-01-02", str)
				if err != nil {
					return nil, ferr(path, "want a date YYYY-MM-DD, got %q", str)
				}
				return t, nil
			}
		}
		n, ok := num()
		if !ok {
			return nil, ferr(path, "want an integer, got %s", jsonKind(v))
		}
		i, err := strconv.ParseInt(n.String(), 10, 32)
		if err != nil {
			return nil, ferr(path, "want a 32-bit integer, got %s", n)
		}
		switch lt {
		case avro.Date:
			return time.Unix(i*86400, 0).UTC(), nil
		case avro.TimeMillis:
			return time.Duration(i) * time.Millisecond, nil
		}
		return int(i), nil
	case avro.Long:
		if str, ok := v.(string); ok && (lt == avro.TimestampMillis || lt == avro.TimestampMicros || lt == avro.LocalTimestampMillis || lt == avro.LocalTimestampMicros) {
			t, err := time.Parse(time.RFC3339Nano, str)
			if err != nil {
				t, err = time.Parse("2006-01-02T15:04:05.999999999", str)
			}
			if err != nil {
				return nil, ferr(path, "want an RFC 3339 timestamp, got %q", str)
			}
			return t, nil
		}
		n, ok := num()
		if !ok {
			return nil, ferr(path, "want an integer, got %s", jsonKind(v))
		}
		i, err := strconv.ParseInt(n.String(), 10, 64)
		if err != nil {
			return nil, ferr(path, "want a 64-bit integer, got %s", n)
		}
		switch lt {
		case avro.TimestampMillis, avro.LocalTimestampMillis:
			return time.UnixMilli(i).UTC(), nil
		case avro.TimestampMicros, avro.LocalTimestampMicros:
			return time.UnixMicro(i).UTC(), nil
		case avro.TimeMicros:
			return time.Duration(i) * time.Microsecond, nil
		}
		return i, nil
	case avro.Float, avro.Double:
		n, ok := num()
		if !ok {
			return nil, ferr(path, "want a number, got %s", jsonKind(v))
		}
		f, err := strconv.ParseFloat(n.String(), 64)
		if err != nil {
			return nil, ferr(path, "want a number, got %s", n)
		}
		if s.Type() == avro.Float {
			return float32(f), nil
		}
		return f, nil
	case avro.String:
		str, ok := v.(string)
		if !ok {
			return nil, ferr(path, "want a string, got %s", jsonKind(v))
		}
		return str, nil
	case avro.Bytes:
		if lt == avro.Decimal {
			var text string
			switch x := v.(type) {
			case json.Number:
				text = x.String()
			case string:
				text = x
			default:
				return nil, ferr(path, "want a decimal number, got %s", jsonKind(v))
			}
			r, ok := new(big.Rat).SetString(text)
			if !ok {
				return nil, ferr(path, "want a decimal number, got %q", text)
			}
			return r, nil
		}
		str, ok := v.(string)
		if !ok {
			return nil, ferr(path, "want base64 text (bytes), got %s", jsonKind(v))
		}
		b, err := base64.StdEncoding.DecodeString(str)
		if err != nil {
			return nil, ferr(path, "want base64 text (bytes): %v", err)
		}
		return b, nil
	}
	return nil, ferr(path, "unsupported Avro type %s", s.Type())
}

// defaultNative adapts a field default as hamba parsed it to what its
// encoder takes: a union's default is its first branch's value.
func defaultNative(t avro.Schema, v any) any {
	if u, ok := t.(*avro.UnionSchema); ok && len(u.Types()) > 0 {
		return map[string]any{branchName(u.Types()[0]): v}
	}
	return v
}

// branchName is how hamba names a union branch (its schemaTypeName).
func branchName(s avro.Schema) string {
	if r, ok := s.(*avro.RefSchema); ok {
		s = r.Schema()
	}
	if n, ok := s.(avro.NamedSchema); ok {
		return n.FullName()
	}
	name := string(s.Type())
	if p, ok := s.(*avro.PrimitiveSchema); ok && p.Logical() != nil {
		name += "." + string(p.Logical().Type())
	}
	return name
}

func joinPath(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
