package replication

import (
	"encoding/binary"
	"fmt"
)

// decodeRow decodes a pgoutput (protocol 1) Insert, Update or Delete message
// into a Change, without pglogrepl: pglogrepl's TupleData.Decode copies every
// column byte by byte into its own allocation, plus one allocation per column
// header, and that showed in the relay's CPU profile (make bench). Here the
// message body is copied once (the receive buffer is reused by the next
// read) and every value's Text is a slice of that one copy.
//
// The result is what pglogrepl.Parse followed by values() produced: one Value
// per relation column, columns the row does not carry left ValueAbsent, and
// an error for more columns than the relation has or for a binary value.
func (s *Stream) decodeRow(data []byte) (*Change, error) {
	if len(data) < 6 {
		return nil, fmt.Errorf("pgoutput %q message of %d bytes is too short", data[0], len(data))
	}
	kind := data[0]
	relID := binary.BigEndian.Uint32(data[1:5])
	var op Op
	switch kind {
	case 'I':
		op = OpInsert
	case 'U':
		op = OpUpdate
	case 'D':
		op = OpDelete
	default:
		return nil, fmt.Errorf("pgoutput message %q is not a row change", kind)
	}
	c, err := s.newChange(op, relID)
	if err != nil {
		return nil, err
	}
	rel := c.Relation
	body := make([]byte, len(data)-5)
	copy(body, data[5:])
	switch kind {
	case 'I':
		if body[0] != 'N' {
			return nil, fmt.Errorf("table %s: insert message: expected new tuple 'N', got %q", rel.QualifiedName(), body[0])
		}
		c.New, _, err = decodeTuple(rel, body[1:])
	case 'U':
		p := body
		if p[0] == 'K' || p[0] == 'O' {
			if c.Old, p, err = decodeTuple(rel, p[1:]); err != nil {
				return nil, err
			}
			if body[0] == 'K' {
				keyOnly(rel, c.Old)
			}
		}
		if len(p) == 0 || p[0] != 'N' {
			return nil, fmt.Errorf("table %s: update message: expected new tuple 'N'", rel.QualifiedName())
		}
		c.New, _, err = decodeTuple(rel, p[1:])
	case 'D':
		if body[0] != 'K' && body[0] != 'O' {
			return nil, fmt.Errorf("table %s: delete message: expected old tuple 'K' or 'O', got %q", rel.QualifiedName(), body[0])
		}
		if c.Old, _, err = decodeTuple(rel, body[1:]); err == nil && body[0] == 'K' {
			keyOnly(rel, c.Old)
		}
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// keyOnly marks the non-key columns of a key-only old row ('K': the replica
// identity's columns only) absent: pgoutput sends them as NULL, which they
// are not (as Stream.change does for the pglogrepl path).
func keyOnly(rel *Relation, vs []Value) {
	for i := range vs {
		if !rel.Columns[i].Key {
			vs[i] = Value{Kind: ValueAbsent}
		}
	}
}

// decodeTuple decodes TupleData at the start of p into values that alias p,
// and returns the rest of p.
func decodeTuple(rel *Relation, p []byte) ([]Value, []byte, error) {
	if len(p) < 2 {
		return nil, nil, fmt.Errorf("table %s: truncated tuple", rel.QualifiedName())
	}
	n := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if n > len(rel.Columns) {
		return nil, nil, fmt.Errorf("table %s: row has %d columns, relation has %d", rel.QualifiedName(), n, len(rel.Columns))
	}
	vs := make([]Value, len(rel.Columns))
	for i := 0; i < n; i++ {
		if len(p) < 1 {
			return nil, nil, fmt.Errorf("table %s: truncated tuple at column %d", rel.QualifiedName(), i)
		}
		t := p[0]
		p = p[1:]
		switch t {
		case 't', 'b':
			if len(p) < 4 {
				return nil, nil, fmt.Errorf("table %s: truncated tuple at column %d", rel.QualifiedName(), i)
			}
			l := int(binary.BigEndian.Uint32(p))
			p = p[4:]
			if l < 0 || l > len(p) {
				return nil, nil, fmt.Errorf("table %s column %s: value of %d bytes, %d left in the message", rel.QualifiedName(), rel.Columns[i].Name, l, len(p))
			}
			if t == 'b' {
				return nil, nil, fmt.Errorf("table %s column %s: unexpected tuple data type %q", rel.QualifiedName(), rel.Columns[i].Name, t)
			}
			vs[i] = Value{Kind: ValueText, Text: p[:l:l]}
			p = p[l:]
		case 'n':
			vs[i] = Value{Kind: ValueNull}
		case 'u':
			vs[i] = Value{Kind: ValueUnchanged}
		default:
			return nil, nil, fmt.Errorf("table %s column %s: unexpected tuple data type %q", rel.QualifiedName(), rel.Columns[i].Name, t)
		}
	}
	return vs, p, nil
}
