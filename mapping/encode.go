package mapping

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/cdcrelay/cdcrelay/replication"
)

// The value encoding: Postgres's text output of a value (what pgoutput sends
// in text mode) to JSON. The table is in docs/mapping.md; the golden files in
// testdata/golden/types pin it. Functions here never round: a value is either
// carried exactly or refused with an error.

// maxTypeDepth bounds domain-over-domain and array-of-domain chains.
const maxTypeDepth = 16

// EncodeValue appends the JSON encoding of text, Postgres's text output of a
// value of type t, to dst. A nil t encodes the text as a JSON string.
func EncodeValue(dst []byte, t *replication.Type, text []byte) ([]byte, error) {
	return encodeValue(dst, t, text, 0)
}

func encodeValue(dst []byte, t *replication.Type, text []byte, depth int) ([]byte, error) {
	if depth > maxTypeDepth {
		return dst, errors.New("type nesting too deep")
	}
	if t == nil {
		return appendString(dst, text)
	}
	if t.Kind == 'd' && t.Base != nil {
		return encodeValue(dst, t.Base, text, depth+1)
	}
	if isArray(t) {
		return encodeArray(dst, t.Elem, text, depth+1)
	}
	if t.Kind == 'e' {
		return appendString(dst, text)
	}
	switch t.Name {
	case "int2", "int4", "int8", "oid":
		if !isInteger(text) {
			return dst, fmt.Errorf("%s value %q is not an integer", t.Name, text)
		}
		return append(dst, text...), nil
	case "float4", "float8":
		return encodeFloat(dst, t.Name, text)
	case "numeric":
		// Never a JSON number: consumers parse those as binary floats.
		return appendString(dst, text)
	case "bool":
		switch string(text) {
		case "t":
			return append(dst, "true"...), nil
		case "f":
			return append(dst, "false"...), nil
		}
		return dst, fmt.Errorf("bool value %q is neither t nor f", text)
	case "bytea":
		b, err := decodeBytea(text)
		if err != nil {
			return dst, err
		}
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, b)
		return append(dst, '"'), nil
	case "json", "jsonb":
		// Inline, compacted: whitespace goes, every token (numbers too) stays.
		out, ok := compactServerJSON(dst, text)
		if !ok || !utf8.Valid(text) {
			return dst, fmt.Errorf("%s value is not valid JSON", t.Name)
		}
		return out, nil
	case "date":
		return encodeDate(dst, text)
	case "time":
		return encodeTime(dst, text)
	case "timetz":
		return encodeTimetz(dst, text)
	case "timestamp":
		return encodeTimestamp(dst, text)
	case "timestamptz":
		return encodeTimestamptz(dst, text)
	case "interval":
		return encodeInterval(dst, text)
	case "hstore":
		return encodeHstore(dst, text)
	}
	// numeric-like text types, enums, uuid, inet, cidr, macaddr, money, and
	// every type without a rule of its own: Postgres's text, as a string.
	return appendString(dst, text)
}

// isArray tells an array type from a base type that merely has an element
// type in pg_type (name, point, int2vector): array types are named "_elem".
func isArray(t *replication.Type) bool {
	return t.Elem != nil && (strings.HasPrefix(t.Name, "_") || t.Name == "")
}

func isInteger(b []byte) bool {
	if len(b) > 0 && b[0] == '-' {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 1 && b[0] == '0' {
		return false // JSON has no leading zeros; Postgres writes none
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func encodeFloat(dst []byte, name string, text []byte) ([]byte, error) {
	switch string(text) {
	case "NaN", "Infinity", "-Infinity":
		return appendString(dst, text)
	}
	if !isJSONNumber(text) {
		return dst, fmt.Errorf("%s value %q is not a number", name, text)
	}
	return append(dst, text...), nil
}

// isJSONNumber checks RFC 8259's number grammar.
func isJSONNumber(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	start := i
	if n := digits(); n == 0 || n > 1 && b[start] == '0' {
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(b)
}

// decodeBytea reads bytea's hex output ("\x0aff", the default) or its escape
// output (bytea_output = escape).
func decodeBytea(text []byte) ([]byte, error) {
	if len(text) >= 2 && text[0] == '\\' && text[1] == 'x' {
		h := text[2:]
		if len(h)%2 != 0 {
			return nil, errors.New("bytea hex value has an odd number of digits")
		}
		out := make([]byte, len(h)/2)
		for i := range out {
			hi, ok1 := unhex(h[2*i])
			lo, ok2 := unhex(h[2*i+1])
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("bytea hex value has a non-hex digit at offset %d", 2+2*i)
			}
			out[i] = hi<<4 | lo
		}
		return out, nil
	}
	out := make([]byte, 0, len(text))
	for i := 0; i < len(text); i++ {
		c := text[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		if i+1 < len(text) && text[i+1] == '\\' {
			out = append(out, '\\')
			i++
			continue
		}
		if i+3 < len(text) && isOctal(text[i+1]) && isOctal(text[i+2]) && isOctal(text[i+3]) && text[i+1] <= '3' {
			out = append(out, (text[i+1]-'0')<<6|(text[i+2]-'0')<<3|(text[i+3]-'0'))
			i += 3
			continue
		}
		return nil, fmt.Errorf("bytea escape value has an invalid escape at offset %d", i)
	}
	return out, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// appendString appends s as a JSON string. Invalid UTF-8 is an error rather
// than a silent U+FFFD; '<', '>' and '&' are not escaped.
func appendString(dst []byte, s []byte) ([]byte, error) {
	if !utf8.Valid(s) {
		return dst, errors.New("value is not valid UTF-8: a JSON string cannot carry it")
	}
	return appendValidString(dst, s), nil
}

const hexDigits = "0123456789abcdef"

// appendValidString appends s, known to be valid UTF-8, as a JSON string.
func appendValidString[S string | []byte](dst []byte, s S) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendStr appends a Go string known to be valid UTF-8 (names, LSNs); an
// invalid one has its bad bytes replaced.
func appendStr(dst []byte, s string) []byte {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return appendValidString(dst, s)
}

// compactServerJSON appends src without the whitespace outside its strings.
// It is for the text output of the json and jsonb types, which the server
// validated on input, so it only tracks strings and escapes; the result is
// what json.Compact gives for valid JSON (FuzzCompactServerJSON checks it),
// at a fraction of the cost (json.Compact's validating state machine was 11 %
// of a backfill's CPU). ok is false for text that is empty or not closed (an
// open string, object or array: a truncated value), which no valid JSON is;
// other malformed text is not detected.
func compactServerJSON(dst, src []byte) (out []byte, ok bool) {
	depth, start, empty := 0, 0, true
	for i := 0; i < len(src); i++ {
		switch src[i] {
		case ' ', '\t', '\n', '\r':
			dst = append(dst, src[start:i]...)
			start = i + 1
			continue
		case '"':
			// Jump to the closing quote: the first one preceded by an even
			// number of backslashes.
			for {
				j := bytes.IndexByte(src[i+1:], '"')
				if j < 0 {
					return dst, false
				}
				i += 1 + j
				n := 0
				for k := i - 1; src[k] == '\\'; k-- {
					n++
				}
				if n%2 == 0 {
					break
				}
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth--; depth < 0 {
				return dst, false
			}
		}
		empty = false
	}
	if depth != 0 || empty {
		return dst, false
	}
	return append(dst, src[start:]...), true
}
