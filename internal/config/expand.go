package config

import (
	"fmt"
	"reflect"
	"strings"
)

// expandEnv replaces ${VAR} in every string value of cfg (strings, arrays of
// strings, tables of strings, at any depth, [[mapping]] sections included).
func expandEnv(cfg *Config, ix *index, lookup func(string) (string, bool)) []Issue {
	var issues []Issue
	var walk func(v reflect.Value, segs []seg)
	walk = func(v reflect.Value, segs []seg) {
		switch v.Kind() {
		case reflect.Pointer:
			if !v.IsNil() {
				walk(v.Elem(), segs)
			}
		case reflect.Struct:
			t := v.Type()
			for i := 0; i < t.NumField(); i++ {
				name := tagName(t.Field(i))
				if name == "" {
					continue
				}
				walk(v.Field(i), append(segs[:len(segs):len(segs)], seg{name: name}))
			}
		case reflect.Slice:
			for i := 0; i < v.Len(); i++ {
				s := append([]seg(nil), segs...)
				s[len(s)-1].idx = i + 1
				walk(v.Index(i), s)
			}
		case reflect.Map:
			if v.Type().Key().Kind() != reflect.String {
				return
			}
			iter := v.MapRange()
			for iter.Next() {
				s := append(segs[:len(segs):len(segs)], seg{name: iter.Key().String()})
				ev := reflect.New(v.Type().Elem()).Elem()
				ev.Set(iter.Value())
				walk(ev, s)
				v.SetMapIndex(iter.Key(), ev)
			}
		case reflect.String:
			out, err := Expand(v.String(), lookup)
			if err != nil {
				path, line := locate(ix, segs)
				issues = append(issues, Issue{Key: path, Line: line, Msg: err.Error()})
				return
			}
			v.SetString(out)
		}
	}
	walk(reflect.ValueOf(cfg).Elem(), nil)
	return issues
}

// locate names a value found by walking the decoded configuration: its path
// and the line of its key. An element of an array of strings is named by the
// array ("kafka.brokers").
func locate(ix *index, segs []seg) (string, int) {
	path := pathString(segs)
	if e, ok := ix.lookup(path); ok {
		return path, e.line
	}
	last := segs[len(segs)-1]
	if last.idx > 0 {
		trimmed := append(append([]seg(nil), segs[:len(segs)-1]...), seg{name: last.name})
		p := pathString(trimmed)
		if e, ok := ix.lookup(p); ok {
			return p, e.line
		}
	}
	return path, 0
}

// Expand replaces ${NAME} in s with the value of the environment variable
// NAME, as lookup reports it; ${NAME:-default} uses default when NAME is unset
// or empty; $${ is a literal "${". Any other "$" is kept as is. An unset
// variable without a default is an error.
func Expand(s string, lookup func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		if strings.HasPrefix(s[i:], "$${") {
			b.WriteString("${")
			i += 3
			continue
		}
		if !strings.HasPrefix(s[i:], "${") {
			b.WriteByte(s[i])
			i++
			continue
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", fmt.Errorf("%q has no closing brace (write $${ for a literal ${)", s[i:])
		}
		expr := s[i+2 : i+end]
		name, def, hasDef := strings.Cut(expr, ":-")
		if !validEnvName(name) {
			return "", fmt.Errorf("${%s}: %q is not a valid environment variable name", expr, name)
		}
		val, ok := lookup(name)
		switch {
		case hasDef && val == "":
			val = def
		case !ok:
			return "", fmt.Errorf("environment variable %s is not set (used as ${%s}; ${%s:-default} gives a default)", name, name, name)
		}
		b.WriteString(val)
		i += end + 1
	}
	return b.String(), nil
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
