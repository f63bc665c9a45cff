package mapping

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/cdcrelay/cdcrelay/replication"
)

// mapOutbox follows Debezium's Outbox Event Router: inserts become events,
// deletes are ignored (so "insert then delete in one transaction" keeps the
// table empty), updates are skipped or refused by configuration.
//
// Topic and key come from templates (defaults outbox.event.{aggregatetype}
// and {aggregateid}); headers "id" and "type" carry the event id and type;
// the payload passes through unchanged (json, jsonb and text as their text,
// bytea as its bytes). A NULL payload is a tombstone, as in Debezium.
func (r *rule) mapOutbox(v *rowView) ([]Event, error) {
	c := v.c
	o := &r.spec.Outbox
	switch c.Op {
	case replication.OpInsert, replication.OpRead:
	case replication.OpUpdate:
		return nil, r.onUpdate(c, o.OnUpdate, "outbox.on_update")
	default:
		return nil, nil
	}
	env := v.env(c.Relation.Schema, c.Relation.Table, c.Op.String())
	b := &built{env: env, time: c.CommitTime}

	id, err := v.current(o.ID)
	if err == nil && id.Kind == replication.ValueNull {
		err = &colError{col: o.ID, err: errors.New("the event id is NULL")}
	}
	if err != nil {
		return nil, err
	}
	b.id = string(id.Text)
	b.headers = append(b.headers, Header{Key: "id", Value: id.Text})

	typ, err := v.current(o.Type)
	if err != nil {
		return nil, err
	}
	if typ.Kind == replication.ValueText {
		b.typ = string(typ.Text)
		b.headers = append(b.headers, Header{Key: "type", Value: typ.Text})
	}

	if o.Timestamp != "" {
		ts, err := v.current(o.Timestamp)
		if err != nil {
			return nil, err
		}
		if ts.Kind == replication.ValueText {
			t, err := parseEventTime(v.colType(o.Timestamp), ts.Text)
			if err != nil {
				return nil, &colError{col: o.Timestamp, err: err}
			}
			if !t.IsZero() {
				b.time = t
			}
		}
	}

	if b.topic, err = expandTopic(r.topic, env); err != nil {
		return nil, fmt.Errorf("topic: %w", err)
	}
	key, err := r.key.expand(env)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	b.key = []byte(key)

	payload, err := v.current(o.Payload)
	if err != nil {
		return nil, err
	}
	kind := payloadKind(v.colType(o.Payload))
	var pj []byte // the payload inside a JSON envelope
	// Only the JSON envelope embeds the payload re-encoded; the others pass
	// it through (json and jsonb columns hold valid JSON by construction).
	embed := r.spec.Envelope == EnvelopeJSON || r.spec.Envelope == EnvelopeCEStructed
	if payload.Kind == replication.ValueText {
		switch kind {
		case dataBinary:
			if b.raw, err = decodeBytea(payload.Text); err != nil {
				return nil, &colError{col: o.Payload, err: err}
			}
			if embed {
				pj, _ = EncodeValue(nil, &replication.Type{Name: "bytea"}, payload.Text)
			}
		case dataJSON:
			b.raw = payload.Text
			if embed {
				if pj, err = EncodeValue(nil, &replication.Type{Name: "json"}, payload.Text); err != nil {
					return nil, &colError{col: o.Payload, err: err}
				}
			}
		default:
			b.raw = payload.Text
			if !utf8.Valid(payload.Text) {
				// Raw passes bytes through; the JSON envelopes cannot.
				if r.spec.Envelope != EnvelopeRaw && r.spec.Envelope != EnvelopeCEBinary {
					return nil, &colError{col: o.Payload, err: errors.New("payload is not valid UTF-8: a JSON envelope cannot carry it")}
				}
			}
			pj = appendValidString(nil, payload.Text)
		}
	}
	b.rawKind, b.data, b.dataKind = kind, b.raw, kind

	if r.spec.Envelope == EnvelopeJSON {
		agt, err := v.current(o.AggregateType)
		if err != nil {
			return nil, err
		}
		agi, err := v.current(o.AggregateID)
		if err != nil {
			return nil, err
		}
		j := []byte(`{`)
		for _, f := range []struct {
			name, col string
			v         replication.Value
		}{{"id", o.ID, id}, {"type", o.Type, typ}, {"aggregate_type", o.AggregateType, agt}, {"aggregate_id", o.AggregateID, agi}} {
			if len(j) > 1 {
				j = append(j, ',')
			}
			j = appendStr(j, f.name)
			j = append(j, ':')
			if j, err = appendNullable(j, f.v); err != nil {
				return nil, &colError{col: f.col, err: err}
			}
		}
		if !b.time.IsZero() {
			j = append(j, `,"time":`...)
			j = appendStr(j, formatTime(b.time))
		}
		j = append(j, `,"source":`...)
		j = r.appendSource(j, c, c.Relation.Schema, c.Relation.Table, "")
		j = append(j, `,"payload":`...)
		if pj == nil {
			pj = []byte("null")
		}
		j = append(j, pj...)
		b.json = append(j, '}')
	}
	r.readTrace(v, b)
	ev, err := r.event(b)
	if err != nil {
		return nil, err
	}
	if o.PayloadSchema == PayloadSchemaRegistry && ev.Value != nil {
		subject := b.topic + "-value"
		if r.payloadSubject != nil {
			if subject, err = r.payloadSubject.expand(env); err != nil {
				return nil, fmt.Errorf("outbox.payload_subject: %w", err)
			}
		}
		ev.Contract = &Contract{LookupSubject: subject, PayloadColumn: o.Payload, Table: r.spec.Table}
	}
	return []Event{ev}, nil
}

// onUpdate handles an update of an insert-only table (outbox, changelog).
func (r *rule) onUpdate(c *replication.Change, policy, key string) error {
	e := &RowError{Table: r.spec.Table, Pos: c.Pos,
		Reason: fmt.Sprintf("an update of an insert-only %s table was skipped (%s = %q)", r.spec.Kind, key, policy)}
	if policy == "error" {
		e.Reason = fmt.Sprintf("%s rows must not be updated (%s = %q)", r.spec.Kind, key, policy)
		return e
	}
	if r.m.opts.warn != nil {
		r.m.opts.warn(e)
	}
	return nil
}

// payloadKind tells how a payload column's value is carried.
func payloadKind(t *replication.Type) dataKind {
	switch baseName(t) {
	case "json", "jsonb":
		return dataJSON
	case "bytea":
		return dataBinary
	}
	return dataText
}

// parseEventTime reads a timestamptz (or a timestamp, taken as UTC) for an
// event's time. Infinity and BC have no place on Kafka's clock: zero, so the
// caller keeps the commit time.
func parseEventTime(t *replication.Type, text []byte) (time.Time, error) {
	if isSpecialTime(text) {
		return time.Time{}, nil
	}
	s := string(text)
	if baseName(t) == "timestamp" {
		s += "+00" // the same grammar with an offset
	}
	tm, frac, err := parseTimestamptz(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("event time: %w", err)
	}
	ns := 0
	for i := 0; i < 9; i++ {
		ns *= 10
		if i < len(frac) {
			ns += int(frac[i] - '0')
		}
	}
	return tm.Add(time.Duration(ns)), nil
}

// appendNullable writes a text value as a JSON string, NULL as null.
func appendNullable(dst []byte, v replication.Value) ([]byte, error) {
	if v.Kind != replication.ValueText {
		return append(dst, "null"...), nil
	}
	return appendString(dst, v.Text)
}
