package mapping

import (
	"bytes"
	"encoding/json"
	"math/rand"
	"testing"
	"unicode/utf8"
)

// compactSeeds are json and jsonb text outputs as Postgres prints them
// (jsonb: ", " and ": " between tokens; json: the input verbatim), and the
// string edge cases a tracker of strings can get wrong.
var compactSeeds = []string{
	`{}`, `[]`, `null`, `0`, `-1.5e+300`, `"x"`, `""`, `true`,
	`{"a": 1, "b": [1, 2, {"c": null}], "d": "e f"}`,
	`{"quote \" inside": "back\\slash\\", "t": "tab\tnot: a, separator"}`,
	`{"esc": "\\\"", "u": "\u00e9\u2028", "n": "line\nbreak"}`,
	"{\n  \"pretty\" : [ 1 ,\t2 ],\r\n  \"x\":\"  spaced  \" }\n",
	`  [ "a" , "b\\" , "c" ]  `,
	`{"k": "日本語 ☃", "k2": " \" \\ "}`,
}

func TestCompactServerJSONMatchesEncodingJSON(t *testing.T) {
	for _, s := range compactSeeds {
		checkCompact(t, []byte(s))
	}
}

func FuzzCompactServerJSON(f *testing.F) {
	for _, s := range compactSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		if !json.Valid(src) || !utf8.Valid(src) {
			return // the server never prints such json
		}
		checkCompact(t, src)
	})
}

func checkCompact(t *testing.T, src []byte) {
	t.Helper()
	var want bytes.Buffer
	if err := json.Compact(&want, src); err != nil {
		t.Fatalf("seed %q is not valid JSON: %v", src, err)
	}
	got, ok := compactServerJSON([]byte("prefix:"), src)
	if !ok || string(got) != "prefix:"+want.String() {
		t.Errorf("compactServerJSON(%q) = %q, %v; json.Compact gives %q", src, got, ok, want.String())
	}
	enc, err := EncodeValue(nil, tJSONB, src)
	if err != nil || string(enc) != want.String() {
		t.Errorf("EncodeValue(jsonb, %q) = %q, %v; want %q", src, enc, err, want.String())
	}
}

// TestCompactServerJSONRandomDocuments: random nested documents whose strings
// are full of quotes, backslashes and whitespace, printed indented (json as a
// user may write it), must compact exactly as encoding/json does.
func TestCompactServerJSONRandomDocuments(t *testing.T) {
	rnd := rand.New(rand.NewSource(1))
	alphabet := []rune{'a', ' ', '"', '\\', '\t', '\n', ',', ':', '{', ']', 'é', '☃', '/'}
	var value func(depth int) any
	value = func(depth int) any {
		switch k := rnd.Intn(6); {
		case k == 0 && depth < 5:
			m := map[string]any{}
			for i := rnd.Intn(4); i > 0; i-- {
				m[randString(rnd, alphabet)] = value(depth + 1)
			}
			return m
		case k == 1 && depth < 5:
			var a []any
			for i := rnd.Intn(4); i > 0; i-- {
				a = append(a, value(depth+1))
			}
			return a
		case k == 2:
			return rnd.NormFloat64() * 1e6
		case k == 3:
			return nil
		default:
			return randString(rnd, alphabet)
		}
	}
	for i := 0; i < 2000; i++ {
		doc, err := json.MarshalIndent(value(0), " ", "\t ")
		if err != nil {
			t.Fatal(err)
		}
		checkCompact(t, doc)
	}
}

func randString(rnd *rand.Rand, alphabet []rune) string {
	r := make([]rune, rnd.Intn(8))
	for i := range r {
		r[i] = alphabet[rnd.Intn(len(alphabet))]
	}
	return string(r)
}
