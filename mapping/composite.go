package mapping

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cdcrelay/cdcrelay/replication"
)

// Arrays and hstore: values whose text form nests other values.

// encodeArray reads a Postgres array literal ("{1,2,NULL}", "{{1,2},{3,4}}",
// `{"a b","c\"d"}`, "[0:1]={1,2}") and writes nested JSON arrays, each element
// encoded by elem's rule. Lower bounds other than 1 are dropped.
func encodeArray(dst []byte, elem *replication.Type, text []byte, depth int) ([]byte, error) {
	p := arrayParser{s: text, delim: ','}
	if elem != nil && elem.Name == "box" {
		p.delim = ';'
	}
	p.skipDims()
	out, err := p.parse(dst, elem, depth)
	if err != nil {
		return dst, fmt.Errorf("array %q: %w", truncate(text, 64), err)
	}
	p.skipSpace()
	if p.i != len(p.s) {
		return dst, fmt.Errorf("array %q: trailing text at offset %d", truncate(text, 64), p.i)
	}
	return out, nil
}

type arrayParser struct {
	s     []byte
	i     int
	delim byte
}

func (p *arrayParser) skipSpace() {
	for p.i < len(p.s) && isSpace(p.s[p.i]) {
		p.i++
	}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// skipDims skips a leading "[lo:hi][lo:hi]=" dimension decoration.
func (p *arrayParser) skipDims() {
	if p.i < len(p.s) && p.s[p.i] == '[' {
		if j := bytes.IndexByte(p.s, '='); j > 0 {
			p.i = j + 1
		}
	}
}

func (p *arrayParser) parse(dst []byte, elem *replication.Type, depth int) ([]byte, error) {
	p.skipSpace()
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return dst, fmt.Errorf("expected '{' at offset %d", p.i)
	}
	p.i++
	dst = append(dst, '[')
	p.skipSpace()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		return append(dst, ']'), nil
	}
	for n := 0; ; n++ {
		if n > 0 {
			dst = append(dst, ',')
		}
		p.skipSpace()
		var err error
		switch {
		case p.i >= len(p.s):
			return dst, errors.New("unexpected end")
		case p.s[p.i] == '{':
			if depth > maxTypeDepth {
				return dst, errors.New("too many dimensions")
			}
			dst, err = p.parse(dst, elem, depth+1)
		case p.s[p.i] == '"':
			var v []byte
			v, err = p.quoted()
			if err == nil {
				dst, err = encodeValue(dst, elem, v, depth+1)
			}
		default:
			v, isNull := p.unquoted()
			if isNull {
				dst = append(dst, "null"...)
			} else {
				dst, err = encodeValue(dst, elem, v, depth+1)
			}
		}
		if err != nil {
			return dst, err
		}
		p.skipSpace()
		if p.i >= len(p.s) {
			return dst, errors.New("unexpected end")
		}
		switch p.s[p.i] {
		case '}':
			p.i++
			return append(dst, ']'), nil
		case p.delim:
			p.i++
		default:
			return dst, fmt.Errorf("unexpected %q at offset %d", p.s[p.i], p.i)
		}
	}
}

// quoted reads a double-quoted element, undoing backslash escapes.
func (p *arrayParser) quoted() ([]byte, error) {
	p.i++ // opening quote
	var v []byte
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch c {
		case '\\':
			if p.i+1 >= len(p.s) {
				return nil, errors.New("unexpected end after '\\'")
			}
			v = append(v, p.s[p.i+1])
			p.i += 2
		case '"':
			p.i++
			return v, nil
		default:
			v = append(v, c)
			p.i++
		}
	}
	return nil, errors.New("unterminated quoted element")
}

// unquoted reads an element up to the delimiter or '}'; NULL (any case) is null.
func (p *arrayParser) unquoted() ([]byte, bool) {
	var v []byte
	for p.i < len(p.s) {
		c := p.s[p.i]
		if c == p.delim || c == '}' {
			break
		}
		if c == '\\' && p.i+1 < len(p.s) {
			v = append(v, p.s[p.i+1])
			p.i += 2
			continue
		}
		v = append(v, c)
		p.i++
	}
	v = bytes.TrimRight(v, " \t\n\r\v\f")
	return v, bytes.EqualFold(v, []byte("NULL"))
}

// encodeHstore reads hstore's output (`"a"=>"1", "b"=>NULL`) and writes a JSON
// object with string values, in the order Postgres wrote the pairs.
func encodeHstore(dst []byte, text []byte) ([]byte, error) {
	p := arrayParser{s: text}
	dst = append(dst, '{')
	for n := 0; ; n++ {
		p.skipSpace()
		if p.i >= len(p.s) {
			break
		}
		if n > 0 {
			if p.s[p.i] != ',' {
				return dst, fmt.Errorf("hstore: expected ',' at offset %d", p.i)
			}
			p.i++
			p.skipSpace()
			dst = append(dst, ',')
		}
		if p.i >= len(p.s) || p.s[p.i] != '"' {
			return dst, fmt.Errorf("hstore: expected '\"' at offset %d", p.i)
		}
		k, err := p.quoted()
		if err != nil {
			return dst, fmt.Errorf("hstore: %w", err)
		}
		if dst, err = appendString(dst, k); err != nil {
			return dst, err
		}
		p.skipSpace()
		if !bytes.HasPrefix(p.s[p.i:], []byte("=>")) {
			return dst, fmt.Errorf("hstore: expected '=>' at offset %d", p.i)
		}
		p.i += 2
		p.skipSpace()
		dst = append(dst, ':')
		switch {
		case p.i < len(p.s) && p.s[p.i] == '"':
			v, err := p.quoted()
			if err != nil {
				return dst, fmt.Errorf("hstore: %w", err)
			}
			if dst, err = appendString(dst, v); err != nil {
				return dst, err
			}
		case bytes.HasPrefix(bytes.ToUpper(p.s[p.i:min(p.i+4, len(p.s))]), []byte("NULL")):
			p.i += 4
			dst = append(dst, "null"...)
		default:
			return dst, fmt.Errorf("hstore: expected a value at offset %d", p.i)
		}
	}
	return append(dst, '}'), nil
}

func truncate(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	return append(append([]byte(nil), b[:n]...), "..."...)
}
