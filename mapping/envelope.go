package mapping

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/cdcrelay/cdcrelay/replication"
)

// Envelopes: how a mapped change becomes a Kafka record's value and headers.
// docs/mapping.md describes each; testdata/golden/events pins them.

// dataKind says what a payload's bytes are, for the envelopes that must say so.
type dataKind int

const (
	dataJSON   dataKind = iota // JSON text: inline in JSON envelopes
	dataText                   // UTF-8 text: a JSON string
	dataBinary                 // bytes: base64 in JSON envelopes
)

func (k dataKind) contentType() string {
	switch k {
	case dataText:
		return "text/plain; charset=utf-8"
	case dataBinary:
		return "application/octet-stream"
	}
	return "application/json"
}

// built is one mapped change before its envelope is applied.
type built struct {
	id    string
	typ   string // the CloudEvents type when cloudevents.type is not set
	time  time.Time
	topic string
	key   []byte
	env   *tmplEnv

	raw     []byte // the value in envelope "raw"; nil is a tombstone
	rawKind dataKind
	json    []byte // the value in envelope "json"
	// data is the CloudEvents data: the outbox payload, else the json value.
	data     []byte
	dataKind dataKind

	headers    []Header // the kind's own headers, in every envelope
	rawHeaders []Header // headers only envelope "raw" carries (op, unchanged_toast)

	avro         []byte       // the value in envelope "avro" (Avro binary)
	contract     *Contract    // envelopes "avro" and "json-schema"
	trace        TraceContext // the row's trace context (see readTrace)
	traceHeaders []Header     // traceparent and tracestate, as the row had them
	correlation  string       // the correlation id from trace.correlation_id_column
}

// tombstone is the null-valued record for key that follows (or precedes)
// change b's event; it carries the change's trace context and correlation id.
// contract is the key's schema contract (registry envelopes), or nil.
func (r *rule) tombstone(b *built, key []byte, contract *Contract) Event {
	ev := Event{Topic: b.topic, Key: key, Timestamp: b.time, Trace: b.trace, CorrelationID: b.correlation, Contract: contract}
	if b.correlation != "" {
		ev.Headers = append(ev.Headers, Header{Key: r.spec.Trace.CorrelationIDHeader, Value: []byte(b.correlation)})
	}
	ev.Headers = append(ev.Headers, b.traceHeaders...)
	return ev
}

// event applies the mapping's envelope and its headers.
func (r *rule) event(b *built) (Event, error) {
	ev := Event{Topic: b.topic, Key: b.key, Timestamp: b.time, ID: b.id, Trace: b.trace, CorrelationID: b.correlation}
	ev.Headers = append(ev.Headers, b.headers...)
	if b.correlation != "" {
		ev.Headers = append(ev.Headers, Header{Key: r.spec.Trace.CorrelationIDHeader, Value: []byte(b.correlation)})
	}
	switch r.spec.Envelope {
	case EnvelopeRaw:
		ev.Value = b.raw
		ev.Headers = append(ev.Headers, b.rawHeaders...)
	case EnvelopeJSON:
		ev.Value = b.json
	case EnvelopeAvro, EnvelopeJSONSchema:
		ev.Contract = b.contract
		if r.spec.Envelope == EnvelopeAvro {
			ev.Value = b.avro
		} else if r.spec.Schema.Value == SchemaValueRow {
			ev.Value = b.raw
		} else {
			ev.Value = b.json
		}
		if r.spec.Schema.Value == SchemaValueRow {
			ev.Headers = append(ev.Headers, b.rawHeaders...)
		}
	case EnvelopeCEBinary, EnvelopeCEStructed:
		source, ceType, err := r.ceAttrs(b)
		if err != nil {
			return Event{}, err
		}
		if r.spec.Envelope == EnvelopeCEBinary {
			ev.Value = b.data
			ce := []Header{
				{Key: "ce_specversion", Value: []byte("1.0")},
				{Key: "ce_id", Value: []byte(b.id)},
				{Key: "ce_source", Value: []byte(source)},
				{Key: "ce_type", Value: []byte(ceType)},
			}
			if !b.time.IsZero() {
				ce = append(ce, Header{Key: "ce_time", Value: []byte(formatTime(b.time))})
			}
			ce = append(ce, Header{Key: "content-type", Value: []byte(b.dataKind.contentType())})
			ev.Headers = append(ce, ev.Headers...)
		} else {
			ev.Value = structuredCE(b, source, ceType)
			ev.Headers = append([]Header{{Key: "content-type", Value: []byte("application/cloudevents+json; charset=utf-8")}}, ev.Headers...)
		}
	}
	ev.Headers = append(ev.Headers, b.traceHeaders...)
	for _, h := range r.headers {
		v, err := h.t.expand(b.env)
		if errors.Is(err, errTemplateNull) || errors.Is(err, errAbsent) {
			continue // a NULL column, or one the row image lacks: no header
		}
		if err != nil {
			return Event{}, fmt.Errorf("header %q: %w", h.name, err)
		}
		ev.Headers = append(ev.Headers, Header{Key: h.name, Value: []byte(v)})
		if ev.CorrelationID == "" && h.name == r.spec.Trace.CorrelationIDHeader {
			ev.CorrelationID = v // the correlation id is this header's template
		}
	}
	return ev, nil
}

func (r *rule) ceAttrs(b *built) (source, ceType string, err error) {
	if source, err = r.ceSource.expand(b.env); err != nil {
		return "", "", fmt.Errorf("cloudevents.source: %w", err)
	}
	ceType = b.typ
	if r.ceType != nil {
		if ceType, err = r.ceType.expand(b.env); err != nil {
			return "", "", fmt.Errorf("cloudevents.type: %w", err)
		}
	}
	if ceType == "" {
		return "", "", errors.New("the event has no type, which CloudEvents requires (set cloudevents.type)")
	}
	return source, ceType, nil
}

// structuredCE is the CloudEvents JSON event format (structured mode).
func structuredCE(b *built, source, ceType string) []byte {
	v := []byte(`{"specversion":"1.0","id":`)
	v = appendStr(v, b.id)
	v = append(v, `,"source":`...)
	v = appendStr(v, source)
	v = append(v, `,"type":`...)
	v = appendStr(v, ceType)
	if !b.time.IsZero() {
		v = append(v, `,"time":`...)
		v = appendStr(v, formatTime(b.time))
	}
	v = append(v, `,"datacontenttype":`...)
	v = appendStr(v, b.dataKind.contentType())
	if b.data != nil {
		switch b.dataKind {
		case dataJSON:
			v = append(v, `,"data":`...)
			if out, ok := compactServerJSON(v, b.data); ok {
				v = out
			} else {
				v = append(v, b.data...) // not reached: the kinds validate their JSON
			}
		case dataText:
			v = append(v, `,"data":`...)
			v = appendValidString(v, b.data) // checked by the kind
		case dataBinary:
			v = append(v, `,"data_base64":"`...)
			v = base64.StdEncoding.AppendEncode(v, b.data)
			v = append(v, '"')
		}
	}
	return append(v, '}')
}

// eventID is the id of a change that has no id column: its position, which
// Postgres reproduces after a restart. "16/B374D848:3".
func eventID(p replication.Pos) string {
	return p.CommitLSN.String() + ":" + strconv.Itoa(p.Index)
}

// formatTime is RFC 3339 in UTC with up to microseconds, Postgres's precision.
func formatTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.999999Z07:00")
}

// appendSource writes the envelope's "source" object.
func (r *rule) appendSource(dst []byte, c *replication.Change, schema, table, via string) []byte {
	dst = append(dst, '{')
	if db := r.m.opts.database; db != "" {
		dst = append(dst, `"db":`...)
		dst = appendStr(dst, db)
		dst = append(dst, ',')
	}
	dst = append(dst, `"schema":`...)
	dst = appendStr(dst, schema)
	dst = append(dst, `,"table":`...)
	dst = appendStr(dst, table)
	if via != "" {
		dst = append(dst, `,"changelog":`...)
		dst = appendStr(dst, via)
	}
	dst = append(dst, `,"lsn":`...)
	dst = appendStr(dst, c.Pos.CommitLSN.String())
	dst = append(dst, `,"index":`...)
	dst = strconv.AppendInt(dst, int64(c.Pos.Index), 10)
	dst = append(dst, `,"txid":`...)
	dst = strconv.AppendUint(dst, uint64(c.XID), 10)
	dst = append(dst, `,"commit_time":`...)
	if c.CommitTime.IsZero() {
		dst = append(dst, "null"...)
	} else {
		dst = appendStr(dst, formatTime(c.CommitTime))
	}
	return append(dst, '}')
}

// appendNames writes a JSON array of strings.
func appendNames(dst []byte, names []string) []byte {
	dst = append(dst, '[')
	for i, n := range names {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendStr(dst, n)
	}
	return append(dst, ']')
}
