package mapping

import (
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/cdcrelay/cdcrelay/replication"
)

// Dead-letter records. The daemon publishes them in the same Kafka
// transaction as the events around them, so "no silent loss" holds: a change
// either becomes its events, or a dead-letter record, or stops the relay.
//
// Every dead-letter record has key "schema.table" (one partition per table
// keeps the table's rejects in order) and these headers:
//
//	cdcrelay.reason        why the change was rejected
//	cdcrelay.table         "schema.table"
//	cdcrelay.op            insert, update, delete, truncate or read
//	cdcrelay.lsn           the transaction's commit LSN ("16/B374D848")
//	cdcrelay.change_index  the change's index in its transaction
//	cdcrelay.txid          the transaction id
//	cdcrelay.commit_time   RFC 3339 (when known)
//	cdcrelay.column        the column to blame (when one is)
//
// and, for an oversized event, cdcrelay.topic, cdcrelay.size, cdcrelay.limit,
// cdcrelay.event_id (when the event had one) and cdcrelay.key (the original
// key, when it is at most 1 KiB).

// maxDeadLetterValue caps the row images a dead-letter record carries; past
// it the images are left out ("values_omitted": true) and the headers still
// locate the row.
const maxDeadLetterValue = 256 << 10

const maxDeadLetterKey = 1 << 10

// DeadLetter returns the dead-letter record for change c that its mapping
// could not map (cause is usually the *[RowError] from [Mapper.Map]), and
// true; or false when the table's on_error is "stop" (or the table is not
// mapped): then the relay must stop, naming cause.
//
// The value is a JSON object: reason, table, column, op, lsn, index, txid,
// commit_time, and the row as the stream sent it, "before" and "after"
// objects whose values are Postgres's text (a string), null for NULL, or
// {"base64": ...} for text that is not UTF-8; unchanged TOAST columns are
// listed in "unchanged_toast". Images above 256 KiB are left out.
func (m *Mapper) DeadLetter(c *replication.Change, cause error) (Event, bool) {
	r := m.ruleOf(c)
	if r == nil || r.spec.OnError != OnErrorDeadLetter {
		return Event{}, false
	}
	c = keyOnlyOld(c)
	reason, column := causeOf(cause)
	v := dlqHead(nil, r, c, reason, column)
	withRow := v
	var unchanged []string
	withRow = append(withRow, `,"before":`...)
	withRow, unchanged = appendTextImage(withRow, c.Relation, c.Old, unchanged)
	withRow = append(withRow, `,"after":`...)
	withRow, unchanged = appendTextImage(withRow, c.Relation, c.New, unchanged)
	if len(unchanged) > 0 {
		withRow = append(withRow, `,"unchanged_toast":`...)
		withRow = appendNames(withRow, unchanged)
	}
	if len(withRow) <= maxDeadLetterValue {
		v = withRow
	} else {
		v = append(v, `,"values_omitted":true`...)
	}
	v = append(v, '}')
	return Event{
		Topic:     r.dlqTopic,
		Key:       []byte(r.spec.Table),
		Value:     v,
		Headers:   dlqHeaders(r, c, reason, column),
		Timestamp: c.CommitTime,
	}, true
}

// DeadLetterOversized returns the dead-letter record for event ev, mapped
// from change c, that is larger than its topic accepts (limit bytes), and
// true; or false when the table's on_error is "stop". The record is small:
// it names the event (topic, size, id, key) and the row's position, never
// the event's value.
func (m *Mapper) DeadLetterOversized(ev Event, c *replication.Change, limit int) (Event, bool) {
	r := m.ruleOf(c)
	if r == nil || r.spec.OnError != OnErrorDeadLetter {
		return Event{}, false
	}
	size := ev.Size()
	reason := fmt.Sprintf("event of %d bytes for topic %s exceeds the limit of %d bytes", size, ev.Topic, limit)
	v := dlqHead(nil, r, c, reason, "")
	v = append(v, `,"topic":`...)
	v = appendStr(v, ev.Topic)
	v = append(v, `,"size":`...)
	v = strconv.AppendInt(v, int64(size), 10)
	v = append(v, `,"limit":`...)
	v = strconv.AppendInt(v, int64(limit), 10)
	id, hasID := ev.Header("ce_id")
	if !hasID {
		id, hasID = ev.Header("id")
	}
	if hasID && len(id) <= maxDeadLetterKey && utf8.Valid(id) {
		v = append(v, `,"event_id":`...)
		v = appendStr(v, string(id))
	} else {
		hasID = false
	}
	v = append(v, '}')
	h := dlqHeaders(r, c, reason, "")
	h = append(h,
		Header{Key: "cdcrelay.topic", Value: []byte(ev.Topic)},
		Header{Key: "cdcrelay.size", Value: []byte(strconv.Itoa(size))},
		Header{Key: "cdcrelay.limit", Value: []byte(strconv.Itoa(limit))})
	if hasID {
		h = append(h, Header{Key: "cdcrelay.event_id", Value: id})
	}
	if ev.Key != nil && len(ev.Key) <= maxDeadLetterKey {
		h = append(h, Header{Key: "cdcrelay.key", Value: ev.Key})
	}
	return Event{Topic: r.dlqTopic, Key: []byte(r.spec.Table), Value: v, Headers: h, Timestamp: c.CommitTime}, true
}

// DeadLetterTopic is the dead-letter topic of a mapped table ("" if the
// table is not mapped or its on_error is "stop"), for setup to create.
func (m *Mapper) DeadLetterTopic(table string) string {
	r, ok := m.rules[table]
	if !ok || r.spec.OnError != OnErrorDeadLetter {
		return ""
	}
	return r.dlqTopic
}

func (m *Mapper) ruleOf(c *replication.Change) *rule {
	if c == nil || c.Relation == nil {
		return nil
	}
	return m.rules[c.Relation.QualifiedName()]
}

func causeOf(cause error) (reason, column string) {
	var re *RowError
	if errors.As(cause, &re) {
		return re.Reason, re.Column
	}
	if cause == nil {
		return "unknown", ""
	}
	return cause.Error(), ""
}

// dlqHead opens the value object with the fields every record has.
func dlqHead(v []byte, r *rule, c *replication.Change, reason, column string) []byte {
	v = append(v, `{"reason":`...)
	v = appendStr(v, reason)
	v = append(v, `,"table":`...)
	v = appendStr(v, r.spec.Table)
	if column != "" {
		v = append(v, `,"column":`...)
		v = appendStr(v, column)
	}
	v = append(v, `,"op":`...)
	v = appendStr(v, c.Op.String())
	v = append(v, `,"lsn":`...)
	v = appendStr(v, c.Pos.CommitLSN.String())
	v = append(v, `,"index":`...)
	v = strconv.AppendInt(v, int64(c.Pos.Index), 10)
	v = append(v, `,"txid":`...)
	v = strconv.AppendUint(v, uint64(c.XID), 10)
	v = append(v, `,"commit_time":`...)
	if c.CommitTime.IsZero() {
		return append(v, "null"...)
	}
	return appendStr(v, formatTime(c.CommitTime))
}

func dlqHeaders(r *rule, c *replication.Change, reason, column string) []Header {
	h := []Header{
		{Key: "cdcrelay.reason", Value: []byte(reason)},
		{Key: "cdcrelay.table", Value: []byte(r.spec.Table)},
		{Key: "cdcrelay.op", Value: []byte(c.Op.String())},
		{Key: "cdcrelay.lsn", Value: []byte(c.Pos.CommitLSN.String())},
		{Key: "cdcrelay.change_index", Value: []byte(strconv.Itoa(c.Pos.Index))},
		{Key: "cdcrelay.txid", Value: []byte(strconv.FormatUint(uint64(c.XID), 10))},
	}
	if !c.CommitTime.IsZero() {
		h = append(h, Header{Key: "cdcrelay.commit_time", Value: []byte(formatTime(c.CommitTime))})
	}
	if column != "" {
		h = append(h, Header{Key: "cdcrelay.column", Value: []byte(column)})
	}
	return h
}

// appendTextImage writes a row image with Postgres's text of each value,
// which cannot fail: the dead-letter record must carry what the mapping
// could not.
func appendTextImage(dst []byte, rel *replication.Relation, vals []replication.Value, unchanged []string) ([]byte, []string) {
	if vals == nil {
		return append(dst, "null"...), unchanged
	}
	dst = append(dst, '{')
	n := 0
	for i, col := range rel.Columns {
		val := at(vals, i)
		switch val.Kind {
		case replication.ValueAbsent:
			continue
		case replication.ValueUnchanged:
			if !slices.Contains(unchanged, col.Name) {
				unchanged = append(unchanged, col.Name)
			}
			continue
		}
		if n > 0 {
			dst = append(dst, ',')
		}
		n++
		dst = appendStr(dst, col.Name)
		dst = append(dst, ':')
		switch {
		case val.Kind == replication.ValueNull:
			dst = append(dst, "null"...)
		case utf8.Valid(val.Text):
			dst = appendValidString(dst, val.Text)
		default:
			dst = append(dst, `{"base64":"`...)
			dst = base64.StdEncoding.AppendEncode(dst, val.Text)
			dst = append(dst, `"}`...)
		}
	}
	return append(dst, '}'), unchanged
}
