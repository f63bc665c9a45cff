package mapping

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cdcrelay/cdcrelay/replication"
)

// Avro: the schema of a column, derived from its Postgres type, and the Avro
// binary encoding of its values, written straight from Postgres's text
// output. The binary format's primitives (zig-zag varints, little-endian
// IEEE floats, length-prefixed bytes) are encoding/binary's; the tests
// check every golden type against github.com/hamba/avro's encoder and decode
// the published events with github.com/linkedin/goavro. Writing the bytes
// here rather than building a generic value tree for a library's encoder
// keeps an Avro event as cheap as a JSON one (a map[string]any per row
// cost three times the JSON envelope). docs/mapping.md has the table.

type avroKind uint8

const (
	avroString   avroKind = iota // Postgres's text (also: numeric without scale, enums, uuid, ...)
	avroJSONText                 // json/jsonb: the compacted JSON text, as a string
	avroTimetz                   // string, offset as ±hh:mm (the JSON encoding)
	avroInterval                 // string, ISO 8601 (the JSON encoding)
	avroInt
	avroLong
	avroOID // long
	avroFloat
	avroDouble
	avroBoolean
	avroBytes   // bytea
	avroDecimal // numeric(p,s): bytes, decimal logical type
	avroUUID    // string, uuid logical type
	avroDate    // int, date logical type
	avroTimeMicros
	avroTimestampMicros      // timestamptz
	avroLocalTimestampMicros // timestamp
	avroArray
	avroMap // hstore: map of nullable strings
)

// avroType is one column's Avro type.
type avroType struct {
	kind             avroKind
	precision, scale int       // avroDecimal
	elem             *avroType // avroArray
}

// avroTypeOf derives the Avro type of a column of type t with type modifier
// typmod (the column's atttypmod).
func avroTypeOf(t *replication.Type, typmod int32) *avroType {
	for i := 0; t != nil && t.Kind == 'd' && t.Base != nil && i < maxTypeDepth; i++ {
		t = t.Base
	}
	if t == nil {
		return &avroType{kind: avroString}
	}
	if isArray(t) {
		return &avroType{kind: avroArray, elem: avroTypeOf(t.Elem, typmod)}
	}
	if t.Kind == 'e' {
		return &avroType{kind: avroString}
	}
	switch t.Name {
	case "int2", "int4":
		return &avroType{kind: avroInt}
	case "int8":
		return &avroType{kind: avroLong}
	case "oid":
		return &avroType{kind: avroOID}
	case "float4":
		return &avroType{kind: avroFloat}
	case "float8":
		return &avroType{kind: avroDouble}
	case "bool":
		return &avroType{kind: avroBoolean}
	case "bytea":
		return &avroType{kind: avroBytes}
	case "numeric":
		// numeric(p,s) has a fixed scale; numeric alone does not, nor does
		// a negative scale (Postgres 15+), which Avro cannot express.
		if typmod >= 4 {
			p, s := int((typmod-4)>>16)&0xffff, int(int16((typmod-4)&0xffff))
			if p > 0 && s >= 0 && s <= p {
				return &avroType{kind: avroDecimal, precision: p, scale: s}
			}
		}
		return &avroType{kind: avroString}
	case "uuid":
		return &avroType{kind: avroUUID}
	case "json", "jsonb":
		return &avroType{kind: avroJSONText}
	case "date":
		return &avroType{kind: avroDate}
	case "time":
		return &avroType{kind: avroTimeMicros}
	case "timetz":
		return &avroType{kind: avroTimetz}
	case "timestamp":
		return &avroType{kind: avroLocalTimestampMicros}
	case "timestamptz":
		return &avroType{kind: avroTimestampMicros}
	case "interval":
		return &avroType{kind: avroInterval}
	case "hstore":
		return &avroType{kind: avroMap}
	}
	return &avroType{kind: avroString}
}

// appendSchema writes the type as Avro schema JSON.
func (t *avroType) appendSchema(b []byte) []byte {
	switch t.kind {
	case avroString, avroJSONText, avroTimetz, avroInterval:
		return append(b, `"string"`...)
	case avroInt:
		return append(b, `"int"`...)
	case avroLong, avroOID:
		return append(b, `"long"`...)
	case avroFloat:
		return append(b, `"float"`...)
	case avroDouble:
		return append(b, `"double"`...)
	case avroBoolean:
		return append(b, `"boolean"`...)
	case avroBytes:
		return append(b, `"bytes"`...)
	case avroDecimal:
		return fmt.Appendf(b, `{"type":"bytes","logicalType":"decimal","precision":%d,"scale":%d}`, t.precision, t.scale)
	case avroUUID:
		return append(b, `{"type":"string","logicalType":"uuid"}`...)
	case avroDate:
		return append(b, `{"type":"int","logicalType":"date"}`...)
	case avroTimeMicros:
		return append(b, `{"type":"long","logicalType":"time-micros"}`...)
	case avroTimestampMicros:
		return append(b, `{"type":"long","logicalType":"timestamp-micros"}`...)
	case avroLocalTimestampMicros:
		return append(b, `{"type":"long","logicalType":"local-timestamp-micros"}`...)
	case avroArray:
		b = append(b, `{"type":"array","items":["null",`...)
		b = t.elem.appendSchema(b)
		return append(b, `]}`...)
	case avroMap:
		return append(b, `{"type":"map","values":["null","string"]}`...)
	}
	return append(b, `"string"`...)
}

// appendValue writes text, Postgres's text output of a value, in the type's
// Avro binary encoding. It refuses what the type cannot carry exactly.
func (t *avroType) appendValue(dst []byte, pg *replication.Type, text []byte) ([]byte, error) {
	switch t.kind {
	case avroString, avroUUID:
		if !utf8.Valid(text) {
			return dst, errors.New("value is not valid UTF-8: an Avro string cannot carry it")
		}
		return appendAvroBytes(dst, text), nil
	case avroJSONText:
		start := len(dst)
		dst = binary.AppendUvarint(dst, 0) // placeholder, rewritten below
		body := len(dst)
		out, ok := compactServerJSON(dst, text)
		if !ok || !utf8.Valid(text) {
			return dst[:start], fmt.Errorf("%s value is not valid JSON", baseName(pg))
		}
		return relength(out, start, body), nil
	case avroTimetz, avroInterval:
		var j []byte
		var err error
		if t.kind == avroTimetz {
			j, err = encodeTimetz(nil, text)
		} else {
			j, err = encodeInterval(nil, text)
		}
		if err != nil {
			return dst, err
		}
		// A JSON string of ASCII without escapes: its contents are the text.
		return appendAvroBytes(dst, j[1:len(j)-1]), nil
	case avroInt:
		v, err := strconv.ParseInt(string(text), 10, 32)
		if err != nil {
			return dst, fmt.Errorf("%s value %q is not an integer", baseName(pg), text)
		}
		return binary.AppendVarint(dst, v), nil
	case avroLong:
		v, err := strconv.ParseInt(string(text), 10, 64)
		if err != nil {
			return dst, fmt.Errorf("%s value %q is not an integer", baseName(pg), text)
		}
		return binary.AppendVarint(dst, v), nil
	case avroOID:
		v, err := strconv.ParseUint(string(text), 10, 32)
		if err != nil {
			return dst, fmt.Errorf("oid value %q is not an integer", text)
		}
		return binary.AppendVarint(dst, int64(v)), nil
	case avroFloat:
		f, err := strconv.ParseFloat(string(text), 32)
		if err != nil {
			return dst, fmt.Errorf("float4 value %q is not a number", text)
		}
		return binary.LittleEndian.AppendUint32(dst, math.Float32bits(float32(f))), nil
	case avroDouble:
		f, err := strconv.ParseFloat(string(text), 64)
		if err != nil {
			return dst, fmt.Errorf("float8 value %q is not a number", text)
		}
		return binary.LittleEndian.AppendUint64(dst, math.Float64bits(f)), nil
	case avroBoolean:
		switch string(text) {
		case "t":
			return append(dst, 1), nil
		case "f":
			return append(dst, 0), nil
		}
		return dst, fmt.Errorf("bool value %q is neither t nor f", text)
	case avroBytes:
		b, err := decodeBytea(text)
		if err != nil {
			return dst, err
		}
		return appendAvroBytes(dst, b), nil
	case avroDecimal:
		return appendDecimal(dst, text, t.precision, t.scale)
	case avroDate:
		days, err := avroDays(text)
		if err != nil {
			return dst, err
		}
		return binary.AppendVarint(dst, days), nil
	case avroTimeMicros:
		s := string(text)
		h, m, sec, frac, rest, ok := parseClock(s)
		if !ok || rest != "" || len(frac) > 6 {
			return dst, fmt.Errorf("time %q is not hh:mm:ss[.ffffff]", text)
		}
		return binary.AppendVarint(dst, (int64(h)*3600+int64(m)*60+int64(sec))*1e6+fracMicros(frac)), nil
	case avroTimestampMicros, avroLocalTimestampMicros:
		us, err := avroMicros(text, t.kind == avroTimestampMicros)
		if err != nil {
			return dst, err
		}
		return binary.AppendVarint(dst, us), nil
	case avroArray:
		return t.appendArray(dst, pg, text)
	case avroMap:
		return appendHstoreAvro(dst, text)
	}
	return dst, fmt.Errorf("no Avro encoding for %s", baseName(pg))
}

func appendVarint(dst []byte, v int64) []byte { return binary.AppendVarint(dst, v) }

// appendAvroBytes writes Avro bytes or string: a length, then the bytes.
func appendAvroBytes(dst, b []byte) []byte {
	dst = binary.AppendVarint(dst, int64(len(b)))
	return append(dst, b...)
}

// relength turns dst[start:body], a one-byte length placeholder, into the
// varint length of dst[body:], moving the body when the length needs more
// bytes.
func relength(dst []byte, start, body int) []byte {
	n := len(dst) - body
	var lb [binary.MaxVarintLen64]byte
	l := binary.PutVarint(lb[:], int64(n))
	if l == body-start {
		copy(dst[start:], lb[:l])
		return dst
	}
	dst = append(dst, make([]byte, l-(body-start))...)
	copy(dst[start+l:], dst[body:body+n])
	copy(dst[start:], lb[:l])
	return dst
}

// appendDecimal writes numeric text ("-12.50") as Avro's decimal: the
// unscaled value as big-endian two's complement bytes.
func appendDecimal(dst []byte, text []byte, precision, scale int) ([]byte, error) {
	s := string(text)
	bad := func(why string) ([]byte, error) {
		return dst, fmt.Errorf("numeric value %q %s", s, why)
	}
	if s == "NaN" || s == "Infinity" || s == "-Infinity" {
		return bad(fmt.Sprintf("has no place in Avro decimal(%d,%d)", precision, scale))
	}
	neg := strings.HasPrefix(s, "-")
	digits := strings.TrimPrefix(s, "-")
	intPart, frac, _ := strings.Cut(digits, ".")
	if len(frac) > scale {
		return bad(fmt.Sprintf("has more than %d fraction digits", scale))
	}
	if intPart == "" || strings.Trim(intPart, "0123456789") != "" || strings.Trim(frac, "0123456789") != "" {
		return bad("is not a decimal number")
	}
	unscaled := strings.TrimLeft(intPart+frac+strings.Repeat("0", scale-len(frac)), "0")
	if len(unscaled) > precision {
		return bad(fmt.Sprintf("has more than %d digits", precision))
	}
	if len(unscaled) <= 18 {
		var v int64
		for i := 0; i < len(unscaled); i++ {
			v = v*10 + int64(unscaled[i]-'0')
		}
		if neg {
			v = -v
		}
		return appendAvroBytes(dst, twosComplement64(v)), nil
	}
	n, _ := new(big.Int).SetString(unscaled, 10)
	if neg {
		n.Neg(n)
	}
	return appendAvroBytes(dst, twosComplementBig(n)), nil
}

// twosComplement64 is v in the fewest big-endian two's complement bytes
// (Java's BigInteger.toByteArray, which Avro's decimal uses).
func twosComplement64(v int64) []byte {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], uint64(v))
	i := 0
	for i < 7 && (buf[i] == 0 && buf[i+1]&0x80 == 0 || buf[i] == 0xff && buf[i+1]&0x80 != 0) {
		i++
	}
	return buf[i:]
}

func twosComplementBig(n *big.Int) []byte {
	if n.Sign() >= 0 {
		b := n.Bytes()
		if len(b) == 0 || b[0]&0x80 != 0 {
			b = append([]byte{0}, b...)
		}
		return b
	}
	l := len(new(big.Int).Neg(n).Bytes())
	for {
		m := new(big.Int).Lsh(big.NewInt(1), uint(8*l))
		m.Add(m, n)
		b := m.Bytes()
		if len(b) == l && b[0]&0x80 != 0 {
			return b
		}
		l++
	}
}

// avroDays reads a date ("2024-02-29", "0044-03-15 BC") as days since
// 1970-01-01 in the proleptic Gregorian calendar; infinity and -infinity
// are the largest and smallest int, as Debezium writes them.
func avroDays(text []byte) (int64, error) {
	switch string(text) {
	case "infinity":
		return math.MaxInt32, nil
	case "-infinity":
		return math.MinInt32, nil
	}
	s, bc := strings.CutSuffix(string(text), " BC")
	y, m, d, rest, ok := parseDate(s)
	if !ok || rest != "" {
		return 0, fmt.Errorf("date %q is not in DateStyle ISO (YYYY-MM-DD)", text)
	}
	if bc {
		y = 1 - y
	}
	return time.Date(y, time.Month(m), d, 0, 0, 0, 0, time.UTC).Unix() / 86400, nil
}

// avroMicros reads a timestamp or timestamptz as microseconds since the
// epoch (a timestamp's wall clock taken as UTC); infinity and -infinity are
// the largest and smallest long.
func avroMicros(text []byte, tz bool) (int64, error) {
	switch string(text) {
	case "infinity":
		return math.MaxInt64, nil
	case "-infinity":
		return math.MinInt64, nil
	}
	s, bc := strings.CutSuffix(string(text), " BC")
	var t time.Time
	var frac string
	if tz {
		var err error
		if t, frac, err = parseTimestamptz(s); err != nil {
			return 0, err
		}
	} else {
		y, mo, d, rest, ok := parseDate(s)
		var h, mi, sec int
		if ok && strings.HasPrefix(rest, " ") {
			h, mi, sec, frac, rest, ok = parseClock(rest[1:])
		} else {
			ok = false
		}
		if !ok || rest != "" {
			return 0, fmt.Errorf("timestamp %q is not in DateStyle ISO (YYYY-MM-DD hh:mm:ss[.ffffff])", text)
		}
		t = time.Date(y, time.Month(mo), d, h, mi, sec, 0, time.UTC)
	}
	if bc {
		t = t.AddDate(1-2*t.Year(), 0, 0) // year y BC is year 1-y
	}
	if len(frac) > 6 {
		return 0, fmt.Errorf("timestamp %q has more than 6 fraction digits", text)
	}
	sec := t.Unix()
	if sec > (math.MaxInt64-999_999)/1_000_000 || sec < math.MinInt64/1_000_000+1 {
		return 0, fmt.Errorf("timestamp %q is beyond the range of Avro timestamp-micros", text)
	}
	return sec*1_000_000 + fracMicros(frac), nil
}

// fracMicros is a fraction's digits ("5", "123456") as microseconds.
func fracMicros(frac string) int64 {
	var us int64
	for i := 0; i < 6; i++ {
		us *= 10
		if i < len(frac) {
			us += int64(frac[i] - '0')
		}
	}
	return us
}

// appendArray writes a one-dimensional Postgres array as an Avro array of
// nullable elements. A multi-dimensional value has no place in the column's
// schema (Postgres does not fix an array column's dimensions): an error.
func (t *avroType) appendArray(dst []byte, pg *replication.Type, text []byte) ([]byte, error) {
	elemPG := pg
	for i := 0; elemPG != nil && elemPG.Kind == 'd' && elemPG.Base != nil && i < maxTypeDepth; i++ {
		elemPG = elemPG.Base
	}
	if elemPG != nil {
		elemPG = elemPG.Elem
	}
	p := arrayParser{s: text, delim: ','}
	if elemPG != nil && elemPG.Name == "box" {
		p.delim = ';'
	}
	fail := func(err error) ([]byte, error) {
		return dst, fmt.Errorf("array %q: %w", truncate(text, 64), err)
	}
	p.skipDims()
	p.skipSpace()
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return fail(fmt.Errorf("expected '{' at offset %d", p.i))
	}
	p.i++
	var items []byte
	n := 0
	p.skipSpace()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
	} else {
		for {
			p.skipSpace()
			var err error
			switch {
			case p.i >= len(p.s):
				return fail(errors.New("unexpected end"))
			case p.s[p.i] == '{':
				return fail(errors.New("a multi-dimensional array has no place in an Avro array column"))
			case p.s[p.i] == '"':
				var v []byte
				if v, err = p.quoted(); err == nil {
					items = append(items, 2) // union branch 1
					items, err = t.elem.appendValue(items, elemPG, v)
				}
			default:
				v, isNull := p.unquoted()
				if isNull {
					items = append(items, 0) // union branch 0: null
				} else {
					items = append(items, 2)
					items, err = t.elem.appendValue(items, elemPG, v)
				}
			}
			if err != nil {
				return fail(err)
			}
			n++
			p.skipSpace()
			if p.i >= len(p.s) {
				return fail(errors.New("unexpected end"))
			}
			if p.s[p.i] == '}' {
				p.i++
				break
			}
			if p.s[p.i] != p.delim {
				return fail(fmt.Errorf("unexpected %q at offset %d", p.s[p.i], p.i))
			}
			p.i++
		}
	}
	p.skipSpace()
	if p.i != len(p.s) {
		return fail(fmt.Errorf("trailing text at offset %d", p.i))
	}
	if n > 0 {
		dst = binary.AppendVarint(dst, int64(n))
		dst = append(dst, items...)
	}
	return append(dst, 0), nil
}

// appendHstoreAvro writes hstore's output as an Avro map of nullable strings.
func appendHstoreAvro(dst []byte, text []byte) ([]byte, error) {
	// The JSON encoder parses hstore; its output is an object of strings
	// and nulls, which is read back here pair by pair.
	j, err := encodeHstore(nil, text)
	if err != nil {
		return dst, err
	}
	var pairs []byte
	n := 0
	d := jsonObjectReader{b: j}
	for {
		k, v, isNull, ok, err := d.next()
		if err != nil {
			return dst, fmt.Errorf("hstore: %w", err)
		}
		if !ok {
			break
		}
		pairs = appendAvroBytes(pairs, k)
		if isNull {
			pairs = append(pairs, 0)
		} else {
			pairs = append(pairs, 2)
			pairs = appendAvroBytes(pairs, v)
		}
		n++
	}
	if n > 0 {
		dst = binary.AppendVarint(dst, int64(n))
		dst = append(dst, pairs...)
	}
	return append(dst, 0), nil
}

// jsonObjectReader reads a flat JSON object of string or null values, as
// encodeHstore writes it.
type jsonObjectReader struct {
	b []byte
	i int
}

func (r *jsonObjectReader) next() (key, val []byte, isNull, ok bool, err error) {
	if r.i == 0 {
		if len(r.b) < 2 || r.b[0] != '{' {
			return nil, nil, false, false, errors.New("not an object")
		}
		r.i = 1
	}
	if r.b[r.i] == '}' {
		return nil, nil, false, false, nil
	}
	if r.b[r.i] == ',' {
		r.i++
	}
	if key, err = r.str(); err != nil {
		return
	}
	if r.i >= len(r.b) || r.b[r.i] != ':' {
		return nil, nil, false, false, errors.New("expected ':'")
	}
	r.i++
	if bytes.HasPrefix(r.b[r.i:], []byte("null")) {
		r.i += 4
		return key, nil, true, true, nil
	}
	val, err = r.str()
	return key, val, false, err == nil, err
}

// str reads a JSON string and undoes its escapes.
func (r *jsonObjectReader) str() ([]byte, error) {
	if r.i >= len(r.b) || r.b[r.i] != '"' {
		return nil, errors.New("expected a string")
	}
	j := r.i + 1
	for j < len(r.b) && r.b[j] != '"' {
		if r.b[j] == '\\' {
			j++
		}
		j++
	}
	if j >= len(r.b) {
		return nil, errors.New("unterminated string")
	}
	s, err := strconv.Unquote(string(r.b[r.i : j+1]))
	if err != nil {
		return nil, err
	}
	r.i = j + 1
	return []byte(s), nil
}

// avroName turns a Postgres identifier into an Avro name: characters other
// than letters, digits and '_' become '_', and a leading digit gets a '_'
// before it (Debezium's field.name.adjustment.mode = avro).
func avroName(s string) string {
	if s == "" {
		return "_"
	}
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	if b[0] >= '0' && b[0] <= '9' {
		return "_" + string(b)
	}
	return string(b)
}

// avroNamespace is "schema.table" with each part an Avro name.
func avroNamespace(schema, table string) string {
	return avroName(schema) + "." + avroName(table)
}
