package mapping

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cdcrelay/cdcrelay/replication"
)

// -update rewrites the expected values ("want", "error") of the golden files
// from the current code. Review the diff before committing it.
var update = flag.Bool("update", false, "rewrite golden files under testdata/golden")

const goldenDir = "../testdata/golden"

// typeFile is one file of testdata/golden/types (format: testdata/golden/README.md).
type typeFile struct {
	Comment    string      `json:"comment,omitempty"`
	ColumnType string      `json:"column_type"`
	Setup      []string    `json:"setup,omitempty"`
	Type       *goldenType `json:"type"`
	Cases      []*typeCase `json:"cases"`
}

type goldenType struct {
	Name string      `json:"name"`
	Kind string      `json:"kind,omitempty"`
	Elem *goldenType `json:"elem,omitempty"`
	Base *goldenType `json:"base,omitempty"`
}

func (g *goldenType) typ() *replication.Type {
	if g == nil {
		return nil
	}
	t := &replication.Type{Name: g.Name, Kind: 'b', Elem: g.Elem.typ(), Base: g.Base.typ()}
	if g.Kind != "" {
		t.Kind = g.Kind[0]
	}
	return t
}

type typeCase struct {
	SQL      string          `json:"sql,omitempty"`
	TimeZone string          `json:"timezone,omitempty"`
	Style    string          `json:"style,omitempty"`
	Null     bool            `json:"null,omitempty"`
	Text     *string         `json:"text,omitempty"`
	Want     json.RawMessage `json:"want,omitempty"`
	Error    string          `json:"error,omitempty"`
}

// encodeCase encodes one case as a column of a row image does.
func encodeCase(t *replication.Type, c *typeCase) ([]byte, error) {
	rel := &replication.Relation{Schema: "public", Table: "t", Columns: []replication.Column{{Name: "v", Type: t}}}
	val := replication.Value{Kind: replication.ValueNull}
	if !c.Null {
		val = replication.Value{Kind: replication.ValueText, Text: []byte(*c.Text)}
	}
	img, _, err := appendImage(nil, rel, []replication.Value{val}, nil, nil)
	var ce *colError
	if errors.As(err, &ce) {
		return nil, ce.err
	}
	if err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(bytes.TrimPrefix(img, []byte(`{"v":`)), []byte("}")), nil
}

func TestGoldenTypes(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(goldenDir, "types", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden type files: %v", err)
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".json"), func(t *testing.T) {
			var f typeFile
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&f); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			typ := f.Type.typ()
			for i, c := range f.Cases {
				if c.Text == nil && !c.Null {
					t.Fatalf("case %d: neither text nor null", i)
				}
				got, err := encodeCase(typ, c)
				if *update {
					c.Want, c.Error = nil, ""
					if err != nil {
						c.Error = err.Error()
					} else {
						c.Want = got
					}
					continue
				}
				name := c.SQL
				if c.Text != nil {
					name = *c.Text
				}
				if c.Error != "" {
					if err == nil || err.Error() != c.Error {
						t.Errorf("case %d %q: error %v, want %q", i, name, err, c.Error)
					}
					continue
				}
				if err != nil {
					t.Errorf("case %d %q: %v", i, name, err)
					continue
				}
				if !json.Valid(got) {
					t.Errorf("case %d %q: invalid JSON %s", i, name, got)
				}
				if !bytes.Equal(got, c.Want) {
					t.Errorf("case %d %q:\n got %s\nwant %s", i, name, got, c.Want)
				}
			}
			if *update {
				if err := os.WriteFile(path, writeTypeFile(&f), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// writeTypeFile writes a golden type file with one case per line.
func writeTypeFile(f *typeFile) []byte {
	var b bytes.Buffer
	enc := func(v any) string {
		var buf bytes.Buffer
		e := json.NewEncoder(&buf)
		e.SetEscapeHTML(false)
		if err := e.Encode(v); err != nil {
			panic(err)
		}
		return strings.TrimSuffix(buf.String(), "\n")
	}
	b.WriteString("{\n")
	if f.Comment != "" {
		b.WriteString(`  "comment": ` + enc(f.Comment) + ",\n")
	}
	b.WriteString(`  "column_type": ` + enc(f.ColumnType) + ",\n")
	if len(f.Setup) > 0 {
		b.WriteString(`  "setup": ` + enc(f.Setup) + ",\n")
	}
	b.WriteString(`  "type": ` + enc(f.Type) + ",\n")
	b.WriteString("  \"cases\": [\n")
	for i, c := range f.Cases {
		b.WriteString("    " + enc(c))
		if i < len(f.Cases)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString("  ]\n}\n")
	return b.Bytes()
}
