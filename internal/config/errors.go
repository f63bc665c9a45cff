package config

import (
	"fmt"
	"strings"
)

// Error is a configuration error: relay.toml cannot be read, is not valid TOML,
// or does not describe a relay that can run. The CLI exits with status 2 on it.
// Every problem found is listed, not only the first.
type Error struct {
	File   string  // the configuration file as named by the user
	Issues []Issue // at least one
}

// Issue is one problem of a configuration file.
type Issue struct {
	// Key is the dotted path of the key concerned, with [[array]] sections
	// numbered from 1: "kafka.brokers", "mapping[2].outbox.payload_column".
	// Empty for a syntax error.
	Key string
	// Line is the key's line in the file (from 1); 0 when the key is missing
	// from the file or the problem concerns the file as a whole.
	Line int
	Msg  string
}

func (e *Error) Error() string {
	if len(e.Issues) == 1 {
		return e.Issues[0].format(e.File)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problems:", e.File, len(e.Issues))
	for _, is := range e.Issues {
		b.WriteString("\n  ")
		b.WriteString(is.format(e.File))
	}
	return b.String()
}

// format renders an issue as "relay.toml line 4: kafka.brokers: message".
func (i Issue) format(file string) string {
	var b strings.Builder
	b.WriteString(file)
	if i.Line > 0 {
		fmt.Fprintf(&b, " line %d", i.Line)
	}
	b.WriteString(": ")
	if i.Key != "" {
		b.WriteString(i.Key)
		b.WriteString(": ")
	}
	b.WriteString(i.Msg)
	return b.String()
}

func (i Issue) String() string { return i.format("relay.toml") }
