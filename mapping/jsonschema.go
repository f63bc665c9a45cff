package mapping

import "strconv"

// JSON Schema (draft-07) of the json envelope, for envelope "json-schema":
// the value is exactly what envelope "json" carries, and its schema says
// what EncodeValue writes for each column. Objects are closed
// (additionalProperties false) and their properties optional, so that
// adding a column is compatible under the registries' rules, and changing a
// column's type is not.

const jsonSchemaDraft = "http://json-schema.org/draft-07/schema#"

// appendJSONType writes the JSON Schema of one column's JSON encoding.
func appendJSONType(b []byte, t *avroType, nullable bool) []byte {
	typ := func(names ...string) []byte {
		if nullable {
			names = append(names, "null")
		}
		b = append(b, `{"type":`...)
		if len(names) == 1 {
			b = strconv.AppendQuote(b, names[0])
		} else {
			b = append(b, '[')
			for i, n := range names {
				if i > 0 {
					b = append(b, ',')
				}
				b = strconv.AppendQuote(b, n)
			}
			b = append(b, ']')
		}
		return b
	}
	switch t.kind {
	case avroInt, avroLong, avroOID:
		b = typ("integer")
	case avroFloat, avroDouble:
		b = typ("number", "string") // NaN and the infinities are strings
	case avroBoolean:
		b = typ("boolean")
	case avroBytes:
		b = typ("string")
		b = append(b, `,"contentEncoding":"base64"`...)
	case avroUUID:
		b = typ("string")
		b = append(b, `,"format":"uuid"`...)
	case avroJSONText:
		return append(b, `{}`...) // any JSON value, null included
	case avroArray:
		b = typ("array")
		// Elements by their type; a multi-dimensional value nests arrays.
		b = append(b, `,"items":{"anyOf":[`...)
		b = appendJSONType(b, t.elem, true)
		b = append(b, `,{"type":"array"}]}`...)
	case avroMap:
		b = typ("object")
		b = append(b, `,"additionalProperties":{"type":["string","null"]}`...)
	default:
		b = typ("string")
	}
	return append(b, '}')
}

// jsonRowSchema writes the object schema of a row image (or a key).
func jsonRowSchema(b []byte, title string, cols []avroCol, top bool) []byte {
	b = append(b, '{')
	if top {
		b = append(b, `"$schema":"`+jsonSchemaDraft+`",`...)
	}
	b = append(b, `"title":`...)
	b = strconv.AppendQuote(b, title)
	b = append(b, `,"type":"object","properties":{`...)
	for i, c := range cols {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendQuote(b, c.name)
		b = append(b, ':')
		b = appendJSONType(b, c.typ, !c.notNull)
	}
	return append(b, `},"additionalProperties":false}`...)
}

func jsonSourceSchema(b []byte, changelog bool) []byte {
	b = append(b, `{"type":"object","properties":{"db":{"type":"string"},"schema":{"type":"string"},"table":{"type":"string"},`...)
	if changelog {
		b = append(b, `"changelog":{"type":"string"},`...)
	}
	return append(b, `"lsn":{"type":"string"},"index":{"type":"integer"},"txid":{"type":"integer"},`+
		`"commit_time":{"type":["string","null"]}},"required":["schema","table","lsn","index","txid","commit_time"],"additionalProperties":false}`...)
}

// tableJSONSchema is the json envelope of a table.
func tableJSONSchema(ns string, cols []avroCol) []byte {
	b := []byte(`{"$schema":"` + jsonSchemaDraft + `","title":`)
	b = strconv.AppendQuote(b, ns+".Envelope")
	b = append(b, `,"type":"object","properties":{"id":{"type":"string"},"op":{"type":"string"},"source":`...)
	b = jsonSourceSchema(b, false)
	for _, img := range []string{"before", "after"} {
		b = append(b, `,"`+img+`":{"oneOf":[{"type":"null"},`...)
		b = jsonRowSchema(b, ns+".Value", cols, false)
		b = append(b, `]}`...)
	}
	return append(b, `,"unchanged_toast":{"type":"array","items":{"type":"string"}}},`+
		`"required":["id","op","source","before","after"],"additionalProperties":false}`...)
}

// changelogJSONSchema is the json envelope of a changelog: the row images
// are the trigger's JSON, any value.
func (r *rule) changelogJSONSchema(ns string) []byte {
	cl := &r.spec.Changelog
	b := []byte(`{"$schema":"` + jsonSchemaDraft + `","title":`)
	b = strconv.AppendQuote(b, ns+".Envelope")
	b = append(b, `,"type":"object","properties":{"id":{"type":"string"},"op":{"type":"string"},`...)
	if cl.TypeColumn != "" {
		b = append(b, `"type":{"type":["string","null"]},`...)
	}
	if cl.TimeColumn != "" {
		b = append(b, `"time":{"type":["string","null"]},`...)
	}
	b = append(b, `"source":`...)
	b = jsonSourceSchema(b, true)
	return append(b, `,"before":{},"after":{}},`+
		`"required":["id","op","source","before","after"],"additionalProperties":false}`...)
}
