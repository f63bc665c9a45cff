// Package avrocheck reads records in the Confluent wire format as an
// independent consumer would: the schema fetched by id from the registry's
// REST API, Avro decoded by github.com/linkedin/goavro (not the library
// cdcrelay writes with). For tests only.
package avrocheck

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/linkedin/goavro/v2"
)

// Decoder decodes wire-format records by the registry at URL (the
// Confluent-compatible API's base).
type Decoder struct {
	URL string

	mu      sync.Mutex
	schemas map[int]Schema
	codecs  map[int]*goavro.Codec
}

// Schema is a registered schema as GET /schemas/ids/{id} returns it.
type Schema struct {
	Schema     string `json:"schema"`
	SchemaType string `json:"schemaType"` // "" is AVRO
}

// New returns a Decoder for the registry at url.
func New(url string) *Decoder {
	return &Decoder{URL: strings.TrimRight(url, "/"), schemas: map[int]Schema{}, codecs: map[int]*goavro.Codec{}}
}

// Split reads the wire format's header: the schema id and the body.
func Split(b []byte) (id int, body []byte, err error) {
	if len(b) < 5 || b[0] != 0 {
		return 0, nil, fmt.Errorf("not in the wire format (%d bytes, first %x)", len(b), b[:min(len(b), 5)])
	}
	return int(binary.BigEndian.Uint32(b[1:5])), b[5:], nil
}

// Schema fetches schema id from the registry (once).
func (d *Decoder) Schema(id int) (Schema, error) {
	d.mu.Lock()
	s, ok := d.schemas[id]
	d.mu.Unlock()
	if ok {
		return s, nil
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(fmt.Sprintf("%s/schemas/ids/%d", d.URL, id))
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("GET /schemas/ids/%d: %s %s", id, resp.Status, body)
	}
	if err := json.Unmarshal(body, &s); err != nil {
		return s, err
	}
	d.mu.Lock()
	d.schemas[id] = s
	d.mu.Unlock()
	return s, nil
}

// Avro decodes an Avro record in the wire format into goavro's native form
// (records are map[string]any, a union's value is map[string]any{branch:
// value}, null is nil).
func (d *Decoder) Avro(b []byte) (native any, id int, err error) {
	id, body, err := Split(b)
	if err != nil {
		return nil, 0, err
	}
	d.mu.Lock()
	codec := d.codecs[id]
	d.mu.Unlock()
	if codec == nil {
		s, err := d.Schema(id)
		if err != nil {
			return nil, id, err
		}
		if s.SchemaType != "" && s.SchemaType != "AVRO" {
			return nil, id, fmt.Errorf("schema %d is %s, not AVRO", id, s.SchemaType)
		}
		if codec, err = goavro.NewCodec(s.Schema); err != nil {
			return nil, id, fmt.Errorf("schema %d: %w", id, err)
		}
		d.mu.Lock()
		d.codecs[id] = codec
		d.mu.Unlock()
	}
	native, rest, err := codec.NativeFromBinary(body)
	if err != nil {
		return nil, id, err
	}
	if len(rest) > 0 {
		return nil, id, errors.New("trailing bytes after the record")
	}
	return native, id, nil
}

// Unwrap returns a union value's branch value: goavro wraps it in a
// one-entry map keyed by the branch's type name (a primitive's name, a
// logical type's "long.timestamp-micros", a record's full name, which has
// a namespace). Anything else is returned as it is.
func Unwrap(v any) any {
	m, ok := v.(map[string]any)
	if !ok || len(m) != 1 {
		return v
	}
	for k, x := range m {
		switch k {
		case "boolean", "int", "long", "float", "double", "bytes", "string", "array", "map":
			return x
		}
		if strings.Contains(k, ".") {
			return x
		}
	}
	return v
}
