package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

// checkLine is one line of the output of `check` and `setup`.
type checkLine struct {
	Section string `json:"section"` // "configuration", "postgres", "kafka"
	Name    string `json:"name"`
	Subject string `json:"subject,omitempty"`
	Status  string `json:"status"` // "ok", "warn", "fail"
	Detail  string `json:"detail"`
	Fix     string `json:"fix,omitempty"`
}

type checkReport struct {
	Lines []checkLine `json:"checks"`
	// heads are the section headings of the text form.
	heads map[string]string
	order []string
}

func newCheckReport() *checkReport { return &checkReport{heads: map[string]string{}} }

func (r *checkReport) section(name, heading string) {
	if _, ok := r.heads[name]; !ok {
		r.order = append(r.order, name)
	}
	r.heads[name] = heading
}

func (r *checkReport) add(section, name, subject, status, detail, fix string) {
	r.Lines = append(r.Lines, checkLine{Section: section, Name: name, Subject: subject, Status: status, Detail: detail, Fix: fix})
}

func (r *checkReport) addPostgres(rep *replication.Report) {
	for _, c := range rep.Checks {
		r.add("postgres", c.Name, c.Subject, string(c.Status), c.Detail, c.Fix)
	}
}

func (r *checkReport) addTopics(results []sink.TopicResult, dryRun bool) {
	for _, t := range results {
		name := "topic"
		detail := fmt.Sprintf("topic %s (%s)", t.Spec.Name, t.Spec.Purpose)
		switch {
		case t.Problem != "" && dryRun:
			r.add("kafka", name, t.Spec.Name, "ok", detail+" does not exist yet (setup creates it)", "")
		case t.Problem != "":
			r.add("kafka", name, t.Spec.Name, "fail", t.Problem, t.Fix)
		case t.Created:
			r.add("kafka", name, t.Spec.Name, "ok", detail+" created", "")
		case t.Note != "":
			r.add("kafka", name, t.Spec.Name, "warn", detail+" exists but "+t.Note, "")
		default:
			r.add("kafka", name, t.Spec.Name, "ok", detail+" exists", "")
		}
	}
}

func (r *checkReport) failures() int {
	n := 0
	for _, l := range r.Lines {
		if l.Status == "fail" {
			n++
		}
	}
	return n
}

func (r *checkReport) writeJSON(w io.Writer, extra map[string]any) error {
	out := map[string]any{"ok": r.failures() == 0, "checks": r.Lines}
	for k, v := range extra {
		out[k] = v
	}
	if r.Lines == nil {
		out["checks"] = []checkLine{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// writeText prints the lines under their section headings:
//
//	PostgreSQL cdcrelay@127.0.0.1:5432/shop
//	  ok    wal_level = logical
//	  FAIL  role cdcrelay has neither REPLICATION nor SUPERUSER: ...
//	        fix: as a superuser: ALTER ROLE "cdcrelay" WITH REPLICATION;
func (r *checkReport) writeText(w io.Writer) {
	for i, sec := range r.order {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintln(w, r.heads[sec])
		for _, l := range r.Lines {
			if l.Section != sec {
				continue
			}
			label := map[string]string{"ok": "ok", "warn": "WARN", "fail": "FAIL"}[l.Status]
			fmt.Fprintf(w, "  %-5s %s\n", label, l.Detail)
			if l.Fix != "" {
				fmt.Fprintf(w, "        fix: %s\n", l.Fix)
			}
		}
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

func quoteList(ss []string) string { return strings.Join(ss, ", ") }
