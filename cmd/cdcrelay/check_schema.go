package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/schema"
)

// checkSchemaRegistry compares, read-only, each mapped table's current
// shape with the latest version registered under its subjects: what `run`
// would register, and what the registry would refuse.
func (a *app) checkSchemaRegistry(ctx context.Context, cfg *config.Config, r *checkReport) {
	if _, needed := cfg.NeedsSchemaRegistry(); !needed {
		return
	}
	r.section("schema_registry", "Schema registry "+config.RedactURL(cfg.SchemaRegistry.URL))
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	sc, err := cfg.SchemaRegistry.ClientConfig()
	if err == nil {
		sc.RetryFor = time.Second
		sc.Logger = slog.New(slog.DiscardHandler)
	}
	var enc *schema.Encoder
	if err == nil {
		enc, err = schema.New(sc)
	}
	if err != nil {
		r.add("schema_registry", "connect", "", "fail", err.Error(), "check [schema_registry] in relay.toml")
		return
	}
	mapper, err := mapping.New(cfg.Mappings, mapping.WithRelayName(cfg.Relay.Name))
	if err != nil {
		return // reported with the configuration
	}
	conn, err := connectPostgres(ctx, cfg, "check")
	if err != nil {
		r.add("schema_registry", "tables", "", "fail", "cannot read the tables' shapes: "+err.Error(), "")
		return
	}
	defer conn.Close(context.Background())
	for _, table := range mapper.Tables() {
		spec, _ := mapper.Spec(table)
		if spec.Kind == mapping.KindOutbox {
			if spec.Outbox.PayloadSchema == mapping.PayloadSchemaRegistry {
				r.add("schema_registry", "payload_schema", table, "ok",
					fmt.Sprintf("%s: outbox payloads are checked against the latest schema of their subject (%s)", table, payloadSubjectOf(spec)), "")
			}
			continue
		}
		rel, err := replication.LoadRelation(ctx, conn, table)
		if err != nil {
			continue // reported by the Postgres checks
		}
		contract, topic, err := mapper.TableContract(rel)
		if err != nil {
			r.add("schema_registry", "schema", table, "fail", err.Error(), "rename the columns, or exclude one (rows.exclude_columns)")
			continue
		}
		if contract == nil {
			continue
		}
		if topic == "" && sc.SubjectNameStrategy == schema.TopicNameStrategy {
			r.add("schema_registry", "schema", table, "warn",
				fmt.Sprintf("%s: the topic is named by row values (%s), so its subjects are known only per event", table, spec.Topic), "")
			continue
		}
		for _, part := range []struct {
			s   *mapping.Schema
			key bool
		}{{contract.Value, false}, {contract.Key, true}} {
			if part.s == nil {
				continue
			}
			subject := enc.Subject(topic, part.s, part.key)
			res, err := enc.Check(ctx, subject, part.s)
			if err != nil {
				r.add("schema_registry", "schema", subject, "fail", fmt.Sprintf("%s: subject %s: %v", table, subject, err), "check schema_registry.url and the registry")
				continue
			}
			changes := describeChanges(res.Changes)
			switch {
			case res.Registered:
				r.add("schema_registry", "schema", subject, "ok", fmt.Sprintf("%s: subject %s: the table's shape is registered (version %d)", table, subject, res.Latest), "")
			case res.Latest == 0:
				r.add("schema_registry", "schema", subject, "ok", fmt.Sprintf("%s: subject %s has no version yet: `run` registers version 1", table, subject), "")
			case res.Compatible:
				r.add("schema_registry", "schema", subject, "ok", fmt.Sprintf("%s: subject %s: `run` registers a new version after %d (compatible under %s)%s", table, subject, res.Latest, res.Level, changes), "")
			default:
				msg := fmt.Sprintf("%s: subject %s: the table's shape would break consumers: the registry refuses it under %s against version %d%s", table, subject, res.Level, res.Latest, changes)
				if len(res.Messages) > 0 {
					msg += " (" + strings.Join(res.Messages, "; ") + ")"
				}
				r.add("schema_registry", "schema", subject, "fail", msg,
					"undo the ALTER TABLE, or publish to a new topic, or change [mapping.schema] compatibility deliberately")
			}
			if lvl := contract.Compatibility; lvl != "" && res.Level != "" && lvl != res.Level && !res.Registered {
				r.add("schema_registry", "compatibility", subject, "warn",
					fmt.Sprintf("%s: subject %s is at %s; `run` sets it to %s (schema.compatibility) before registering", table, subject, res.Level, lvl), "")
			}
		}
	}
}

func describeChanges(cs []schema.Change) string {
	if len(cs) == 0 {
		return ""
	}
	parts := make([]string, len(cs))
	for i, c := range cs {
		parts[i] = c.String()
	}
	return ": " + strings.Join(parts, "; ")
}

func payloadSubjectOf(s mapping.Spec) string {
	if s.Outbox.PayloadSubject != "" {
		return s.Outbox.PayloadSubject
	}
	return "<topic>-value"
}
