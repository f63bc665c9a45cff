package mapping_test

// End-to-end tests of the envelopes that publish through the schema
// registry ("avro", "json-schema", outbox payload_schema = "registry"),
// against the real registry that `make test` starts (Apicurio Registry, its
// Confluent-compatible API) and the real Kafka. Records are read back as an
// independent consumer would: the schema fetched by id from the registry,
// Avro decoded by goavro (cdcrelay writes Avro itself and registers with
// franz-go's client).

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/cdcrelay/cdcrelay/internal/e2e"
	"github.com/cdcrelay/cdcrelay/internal/e2e/avrocheck"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
)

// registryConfig is e.config with a [schema_registry] section.
func (e *relayEnv) registryConfig(mappings string) string {
	return e.config(mappings) + fmt.Sprintf("\n[schema_registry]\nurl = %q\n", testenv.RegistryURL(e.t))
}

// multiDimensional tells a golden case whose value is an array of arrays:
// an Avro array column cannot carry it (TestAvroRefusesMultiDimensionalArrays).
func multiDimensional(c *goldenCase) bool {
	return bytes.HasPrefix(bytes.TrimSpace(c.Want), []byte("[["))
}

// TestE2EGoldenTypesRegistry publishes every SQL case of every golden type
// file through the relay with envelope "avro" and with envelope
// "json-schema", and checks each value: the Avro one decoded by goavro with
// the schema fetched by its id from the registry, against the case's
// "want" (the JSON encoding) read through the Avro type; the JSON Schema one
// validated against its registered schema and compared with "want" exactly.
func TestE2EGoldenTypesRegistry(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, 4*time.Minute)
	cols, rows := loadGoldenTable(t, e, "golden_avro", nil)
	e.exec(strings.Replace(ddlOf(cols, rows), "CREATE TABLE golden_avro", "CREATE TABLE golden_js", 1))
	e.publish("golden_avro", "golden_js")
	avroTopic := e.topic("golden_avro", 1, nil)
	jsTopic := e.topic("golden_js", 1, nil)
	e.start(e.registryConfig(fmt.Sprintf(`
[[mapping]]
table = "public.golden_avro"
kind = "table"
topic = %q
envelope = "avro"

[[mapping]]
table = "public.golden_js"
kind = "table"
topic = %q
envelope = "json-schema"
`, avroTopic, jsTopic)))
	for _, table := range []string{"golden_avro", "golden_js"} {
		for i := 0; i < rows; i++ {
			names, vals := []string{"id"}, []string{fmt.Sprint(i)}
			for _, c := range cols {
				if i < len(c.f.Cases) && c.f.Cases[i].SQL != "" && !(table == "golden_avro" && multiDimensional(c.f.Cases[i])) {
					names = append(names, c.name)
					vals = append(vals, c.f.Cases[i].SQL)
				}
			}
			e.exec(fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", table, strings.Join(names, ", "), strings.Join(vals, ", ")))
		}
	}
	dec := avrocheck.New(testenv.RegistryURL(t))

	// Avro: decode by id, read each field through its registered type.
	recs := e.read([]string{avroTopic}, rows, 3*time.Second)
	if len(recs) != rows {
		t.Fatalf("avro: got %d events, want %d", len(recs), rows)
	}
	afters := map[int]map[string]any{}
	var valueSchema string
	for _, r := range recs {
		native, id, err := dec.Avro(r.Value)
		if err != nil {
			t.Fatalf("avro record %s/%d@%d: %v", r.Topic, r.Partition, r.Offset, err)
		}
		s, _ := dec.Schema(id)
		valueSchema = s.Schema
		env := native.(map[string]any)
		if env["op"] != "insert" {
			t.Errorf("op %v", env["op"])
		}
		src := env["source"].(map[string]any)
		if src["table"] != "golden_avro" || avrocheck.Unwrap(src["db"]) != e.db || avrocheck.Unwrap(src["commit_time"]) == nil {
			t.Errorf("source %v", src)
		}
		after := avrocheck.Unwrap(env["after"]).(map[string]any)
		key, _, err := dec.Avro(r.Key)
		if err != nil {
			t.Fatalf("key: %v", err)
		}
		id32 := after["id"].(int32)
		if k := key.(map[string]any); k["id"] != id32 {
			t.Errorf("row %d: key %v", id32, k)
		}
		afters[int(id32)] = after
	}
	fieldTypes := avroFieldTypes(t, valueSchema)
	compared := 0
	for _, c := range cols {
		for i, gc := range c.f.Cases {
			if gc.SQL == "" || multiDimensional(gc) {
				continue
			}
			got := avrocheck.Unwrap(afters[i][c.name])
			if err := avroMatches(fieldTypes[c.name], got, gc.Want, gc.Text); err != nil {
				t.Errorf("avro %s case %d (%s): %v", c.name, i, gc.SQL, err)
			}
			compared++
		}
	}
	t.Logf("avro: %d values of %d types decoded by goavro and compared", compared, len(cols))

	// JSON Schema: the json envelope, valid under its registered schema.
	recs = e.read([]string{jsTopic}, rows, 3*time.Second)
	if len(recs) != rows {
		t.Fatalf("json-schema: got %d events, want %d", len(recs), rows)
	}
	jsAfters := map[int]map[string]json.RawMessage{}
	compiled := map[int]*jsonschema.Schema{}
	for _, r := range recs {
		id, body, err := avrocheck.Split(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		if compiled[id] == nil {
			s, err := dec.Schema(id)
			if err != nil || s.SchemaType != "JSON" {
				t.Fatalf("schema %d: %v %q", id, err, s.SchemaType)
			}
			compiled[id] = compileJSONSchema(t, s.Schema)
		}
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if err := compiled[id].Validate(inst); err != nil {
			t.Errorf("json-schema record %d: does not validate against schema %d: %v", r.Offset, id, err)
		}
		env := decodeEnvelope(t, e2e.Record{Value: body})
		var rid int
		_ = json.Unmarshal(env.After["id"], &rid)
		kid, kbody, err := avrocheck.Split(r.Key)
		if err != nil || string(kbody) != fmt.Sprintf(`{"id":%d}`, rid) {
			t.Errorf("json-schema key %q (schema %d): %v", r.Key, kid, err)
		}
		jsAfters[rid] = env.After
	}
	compared = 0
	for _, c := range cols {
		for i, gc := range c.f.Cases {
			if gc.SQL == "" {
				continue
			}
			if got := jsAfters[i][c.name]; compactJSON(got) != compactJSON(gc.Want) {
				t.Errorf("json-schema %s case %d (%s):\n got %s\nwant %s", c.name, i, gc.SQL, got, gc.Want)
			}
			compared++
		}
	}
	t.Logf("json-schema: %d values compared", compared)
}

// ddlOf is the CREATE TABLE statement of the golden table loadGoldenTable made.
func ddlOf(cols []*goldenColumn, _ int) string {
	var ddl strings.Builder
	ddl.WriteString("CREATE TABLE golden_avro (id int PRIMARY KEY")
	for _, c := range cols {
		fmt.Fprintf(&ddl, ", %s %s", c.name, c.f.ColumnType)
	}
	ddl.WriteString(")")
	return ddl.String()
}

func compileJSONSchema(t *testing.T, text string) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("mem:///s.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("mem:///s.json")
	if err != nil {
		t.Fatalf("compile %s: %v", text, err)
	}
	return s
}

// avroFieldTypes reads the row record's fields from an envelope schema:
// field name -> its type (the non-null branch), as JSON.
func avroFieldTypes(t *testing.T, schema string) map[string]any {
	t.Helper()
	var s struct {
		Fields []struct {
			Name string `json:"name"`
			Type any    `json:"type"`
		} `json:"fields"`
	}
	if err := json.Unmarshal([]byte(schema), &s); err != nil {
		t.Fatal(err)
	}
	out := map[string]any{}
	for _, f := range s.Fields {
		if f.Name != "before" {
			continue
		}
		rec := f.Type.([]any)[1].(map[string]any)
		for _, rf := range rec["fields"].([]any) {
			m := rf.(map[string]any)
			typ := m["type"]
			if u, ok := typ.([]any); ok {
				typ = u[1]
			}
			out[m["name"].(string)] = typ
		}
	}
	return out
}

// avroMatches checks a goavro-decoded value against a golden case's JSON
// encoding, read through the field's Avro type (docs/mapping.md has the
// table). text is Postgres's text, for the values the JSON encoding keeps
// as text (infinity, BC, years past 9999).
func avroMatches(typ any, got any, want json.RawMessage, text *string) error {
	if string(want) == "null" {
		// The JSON encoding writes a json value's JSON null as null, as it
		// writes SQL NULL; Avro keeps the two apart (the text "null").
		if got != nil && got != "null" {
			return fmt.Errorf("got %v, want null", got)
		}
		return nil
	}
	var wantStr string
	isStr := json.Unmarshal(want, &wantStr) == nil
	logical, base := "", ""
	switch tt := typ.(type) {
	case string:
		base = tt
	case map[string]any:
		base, _ = tt["type"].(string)
		logical, _ = tt["logicalType"].(string)
	}
	mismatch := func() error { return fmt.Errorf("got %#v (%s %s), want %s", got, base, logical, want) }
	switch {
	case base == "array":
		items := typ.(map[string]any)["items"].([]any)[1]
		arr, ok := got.([]any)
		var wantArr []json.RawMessage
		if !ok || json.Unmarshal(want, &wantArr) != nil || len(arr) != len(wantArr) {
			return mismatch()
		}
		for i := range arr {
			if err := avroMatches(items, avrocheck.Unwrap(arr[i]), wantArr[i], nil); err != nil {
				return fmt.Errorf("element %d: %w", i, err)
			}
		}
		return nil
	case base == "map":
		m, ok := got.(map[string]any)
		var wantMap map[string]*string
		if !ok || json.Unmarshal(want, &wantMap) != nil || len(m) != len(wantMap) {
			return mismatch()
		}
		for k, w := range wantMap {
			v := avrocheck.Unwrap(m[k])
			if w == nil && v != nil || w != nil && v != *w {
				return fmt.Errorf("key %q: got %v, want %v", k, v, w)
			}
		}
		return nil
	case logical == "date":
		tm, ok := got.(time.Time)
		if !ok {
			return mismatch()
		}
		var exp time.Time
		switch wantStr {
		case "infinity":
			exp = time.Unix(int64(math.MaxInt32)*86400, 0)
		case "-infinity":
			exp = time.Unix(int64(math.MinInt32)*86400, 0)
		default:
			exp = parseCivil(strings.ReplaceAll(wantStr, "T", " "))
		}
		if !tm.Equal(exp) {
			return fmt.Errorf("got %s, want %s (%s)", tm, exp, want)
		}
		return nil
	case logical == "timestamp-micros" || logical == "local-timestamp-micros":
		var us int64
		switch g := got.(type) {
		case time.Time:
			us = g.UnixMicro()
		case int64: // goavro does not know local-timestamp-micros: a long
			us = g
		default:
			return mismatch()
		}
		var exp int64
		switch wantStr {
		case "infinity":
			exp = math.MaxInt64
		case "-infinity":
			exp = math.MinInt64
		default:
			s := wantStr
			if strings.Contains(s, " ") && text != nil { // kept as Postgres's text
				s = *text
			}
			exp = parseCivil(strings.ReplaceAll(s, "T", " ")).UnixMicro()
		}
		if us != exp {
			return fmt.Errorf("got %d us (%s), want %d us (%s)", us, time.UnixMicro(us).UTC(), exp, want)
		}
		return nil
	case logical == "time-micros":
		d, ok := got.(time.Duration)
		exp := parseCivil("1970-01-01 " + wantStr).Sub(time.Unix(0, 0))
		if !ok || d != exp {
			return mismatch()
		}
		return nil
	case base == "bytes":
		b, ok := got.([]byte)
		if !ok || !isStr || base64.StdEncoding.EncodeToString(b) != wantStr {
			return mismatch()
		}
		return nil
	case base == "string":
		s, ok := got.(string)
		if !ok {
			return mismatch()
		}
		// A json/jsonb column is an Avro string of its compacted text.
		if isStr && s == wantStr || s == compactJSON(want) {
			return nil
		}
		return mismatch()
	case base == "int", base == "long":
		var n int64
		switch g := got.(type) {
		case int32:
			n = int64(g)
		case int64:
			n = g
		default:
			return mismatch()
		}
		if strconv.FormatInt(n, 10) != string(want) {
			return mismatch()
		}
		return nil
	case base == "float", base == "double":
		var f float64
		switch g := got.(type) {
		case float32:
			f = float64(g)
		case float64:
			f = g
		default:
			return mismatch()
		}
		var exp float64
		switch wantStr {
		case "NaN":
			if !math.IsNaN(f) {
				return mismatch()
			}
			return nil
		case "Infinity":
			exp = math.Inf(1)
		case "-Infinity":
			exp = math.Inf(-1)
		default:
			var err error
			if exp, err = strconv.ParseFloat(string(want), 64); err != nil {
				return mismatch()
			}
		}
		if base == "float" {
			exp = float64(float32(exp))
		}
		if f != exp {
			return mismatch()
		}
		return nil
	case base == "boolean":
		if b, ok := got.(bool); !ok || strconv.FormatBool(b) != string(want) {
			return mismatch()
		}
		return nil
	}
	return fmt.Errorf("no check for Avro type %v", typ)
}

// parseCivil reads "Y-M-D[ h:m:s[.f]][±hh[:mm[:ss]]][ BC]" in the proleptic
// Gregorian calendar, years of any length (time.Parse takes four digits).
func parseCivil(s string) time.Time {
	s, bc := strings.CutSuffix(s, " BC")
	s = strings.TrimSuffix(s, "Z")
	var y, mo, d, h, mi, sec int
	var frac string
	date, clock, _ := strings.Cut(s, " ")
	fmt.Sscanf(date, "%d-%d-%d", &y, &mo, &d)
	off := 0
	if clock != "" {
		if i := strings.IndexAny(clock[1:], "+-"); i >= 0 {
			o := clock[i+1:]
			clock = clock[:i+1]
			sign := 1
			if o[0] == '-' {
				sign = -1
			}
			parts := strings.Split(o[1:], ":")
			for j, p := range parts {
				n, _ := strconv.Atoi(p)
				off += n * []int{3600, 60, 1}[j]
			}
			off *= sign
		}
		hms, f, _ := strings.Cut(clock, ".")
		fmt.Sscanf(hms, "%d:%d:%d", &h, &mi, &sec)
		frac = f
	}
	if bc {
		y = 1 - y
	}
	ns := 0
	for i := 0; i < 9; i++ {
		ns *= 10
		if i < len(frac) {
			ns += int(frac[i] - '0')
		}
	}
	return time.Date(y, time.Month(mo), d, h, mi, sec, ns, time.UTC).Add(-time.Duration(off) * time.Second)
}

// registerSchema registers a schema under subject in the shared registry
// and returns its id.
func registerSchema(t *testing.T, subject, schemaType, schema string) int {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"schema": schema, "schemaType": schemaType})
	resp, err := http.Post(testenv.RegistryURL(t)+"/subjects/"+subject+"/versions", "application/vnd.schemaregistry.v1+json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		ID      int    `json:"id"`
		Message string `json:"message"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("register %s: %s %s", subject, resp.Status, out.Message)
	}
	return out.ID
}

// TestE2EOutboxPayloadSchema: an outbox with payload_schema = "registry".
// One aggregate type's subject holds a JSON Schema (valid payloads are
// published as they are, in the wire format; an invalid one goes to the
// dead-letter topic with the validation message, naming the field), another
// one's an Avro schema (payloads are encoded to Avro, a misfit is dead
// lettered), and a bytea payload already in the wire format passes through.
func TestE2EOutboxPayloadSchema(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, 3*time.Minute)
	suffix := strings.TrimPrefix(e.name, "e2e_")
	js, av, bin := "orderjs"+suffix, "orderav"+suffix, "orderbin"+suffix
	e.exec(`CREATE TABLE outbox (id text PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL,
		type text NOT NULL, payload jsonb)`,
		`CREATE TABLE outbox_bin (id text PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL,
		type text NOT NULL, payload bytea)`)
	e.publish("outbox", "outbox_bin")
	for _, a := range []string{js, av, bin} {
		e.createTopic("outbox.event."+a, 1, nil)
	}
	dlq := e.topic("dlq", 1, nil)
	jsID := registerSchema(t, "outbox.event."+js+"-value", "JSON", `{"type":"object","properties":{
		"orderId":{"type":"integer"},"total":{"type":"string"}},"required":["orderId","total"],"additionalProperties":false}`)
	avID := registerSchema(t, "outbox.event."+av+"-value", "AVRO", `{"type":"record","name":"Order","namespace":"shop","fields":[
		{"name":"orderId","type":"long"},{"name":"total","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
		{"name":"note","type":["null","string"],"default":null}]}`)
	e.start(e.registryConfig(fmt.Sprintf(`
[[mapping]]
table = "public.outbox"
kind = "outbox"
on_error = "dead-letter"
dead_letter_topic = %q
[mapping.outbox]
payload_schema = "registry"

[[mapping]]
table = "public.outbox_bin"
kind = "outbox"
[mapping.outbox]
payload_schema = "registry"
`, dlq)))
	e.tx(
		fmt.Sprintf(`INSERT INTO outbox VALUES ('e1', '%s', 'o1', 'OrderPlaced', '{"orderId": 1, "total": "9.99"}')`, js),
		fmt.Sprintf(`INSERT INTO outbox VALUES ('e2', '%s', 'o2', 'OrderPlaced', '{"orderId": "two", "total": "1.00"}')`, js),
		fmt.Sprintf(`INSERT INTO outbox VALUES ('e3', '%s', 'o3', 'OrderPlaced', '{"orderId": 3, "total": "12.50"}')`, av),
		fmt.Sprintf(`INSERT INTO outbox VALUES ('e4', '%s', 'o4', 'OrderPlaced', '{"orderId": 4, "total": "1.00", "coupon": "X"}')`, av),
		fmt.Sprintf(`INSERT INTO outbox VALUES ('e5', '%s', 'o5', 'OrderPlaced', '{"orderId": 5, "total": "5.00"}')`, js),
		// already in the wire format: magic byte, id, a body
		fmt.Sprintf(`INSERT INTO outbox_bin VALUES ('b1', '%s', 'o6', 'Raw', '\x00%08x0102')`, bin, avID),
	)
	dec := avrocheck.New(testenv.RegistryURL(t))
	recs := e.read([]string{"outbox.event." + js, "outbox.event." + av, "outbox.event." + bin, dlq}, 6, 3*time.Second)
	byID := map[string]e2e.Record{}
	for _, r := range recs {
		id := r.Headers["id"]
		if r.Topic == dlq {
			id = "dlq:" + r.Headers["cdcrelay.lsn"] + ":" + r.Headers["cdcrelay.change_index"]
			var v struct {
				Reason string `json:"reason"`
			}
			_ = json.Unmarshal(r.Value, &v)
			byID["dlq:"+r.Headers["cdcrelay.change_index"]] = r
			t.Logf("dead letter: %s", v.Reason)
		}
		byID[id] = r
	}
	if len(recs) != 6 {
		t.Fatalf("got %d records, want 6: %v", len(recs), recs)
	}
	for _, id := range []string{"e1", "e5"} {
		r, ok := byID[id]
		if !ok || r.Topic != "outbox.event."+js {
			t.Fatalf("%s: not published to its topic: %+v", id, r)
		}
		sid, body, err := avrocheck.Split(r.Value)
		if err != nil || sid != jsID || !json.Valid(body) {
			t.Errorf("%s: schema id %d (want %d), body %q: %v", id, sid, jsID, body, err)
		}
	}
	if r, ok := byID["e3"]; !ok {
		t.Errorf("e3 not published")
	} else {
		native, sid, err := dec.Avro(r.Value)
		if err != nil || sid != avID {
			t.Fatalf("e3: %v (id %d, want %d)", err, sid, avID)
		}
		m := native.(map[string]any)
		if m["orderId"] != int64(3) || m["total"].(*big.Rat).Cmp(big.NewRat(1250, 100)) != 0 || m["note"] != nil {
			t.Errorf("e3 decoded %v", m)
		}
	}
	if r, ok := byID["b1"]; !ok || !bytes.Equal(r.Value, append([]byte{0, 0, 0, 0, 0}[:1], append(be32(avID), 1, 2)...)) {
		t.Errorf("b1: want the bytea payload unchanged, got %x", r.Value)
	}
	// The misfits: dead letters naming the event, the subject and the field.
	for idx, want := range map[string][]string{"1": {"event id e2", "outbox.event." + js + "-value", "/orderId"}, "3": {"event id e4", "coupon", "is not a field of record shop.Order"}} {
		r, ok := byID["dlq:"+idx]
		if !ok {
			t.Errorf("change %s: no dead letter", idx)
			continue
		}
		for _, w := range want {
			if !strings.Contains(r.Headers["cdcrelay.reason"], w) {
				t.Errorf("change %s: reason %q does not name %q", idx, r.Headers["cdcrelay.reason"], w)
			}
		}
		if r.Headers["cdcrelay.column"] != "payload" {
			t.Errorf("change %s: column %q", idx, r.Headers["cdcrelay.column"])
		}
	}
}

func be32(v int) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }
