package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

// plan is what a configuration asks of Postgres and Kafka.
type plan struct {
	repl replication.Plan
	// topics are the Kafka topics known in advance: the checkpoint topic and
	// the literal (template-free) event and dead-letter topics.
	topics []sink.TopicSpec
	// templated are topics named by column values: setup cannot create them.
	templated []templatedTopic
}

type templatedTopic struct {
	Table    string `json:"table"`
	Template string `json:"template"`
}

// newPlan derives the plan from a validated configuration.
func newPlan(cfg *config.Config) (*plan, error) {
	m, err := mapping.New(cfg.Mappings, mapping.WithRelayName(cfg.Relay.Name))
	if err != nil {
		return nil, err // config.Load has validated the mappings already
	}
	p := &plan{repl: replication.Plan{Slot: cfg.Postgres.Slot, Publication: cfg.Postgres.Publication,
		FailoverSlot: cfg.Postgres.FailoverSlot == nil || *cfg.Postgres.FailoverSlot, ReplicationDSN: cfg.Postgres.DSN}}
	p.topics = append(p.topics, sink.CheckpointTopicSpec(&cfg.Kafka))
	seen := map[string]bool{cfg.Kafka.CheckpointTopic: true}
	addTopic := func(name, purpose string) {
		if name == "" || seen[name] {
			return
		}
		seen[name] = true
		p.topics = append(p.topics, sink.EventTopicSpec(&cfg.Kafka, name, purpose))
	}
	for _, table := range m.Tables() {
		spec, _ := m.Spec(table)
		tp := replication.TablePlan{Table: table}
		switch spec.Kind {
		case mapping.KindOutbox, mapping.KindChangelog:
			// Inserts carry the events; updates are watched for on_update.
			tp.Ops = []replication.Op{replication.OpInsert, replication.OpUpdate}
		default:
			for _, op := range spec.Rows.Ops {
				switch op {
				case "insert":
					tp.Ops = append(tp.Ops, replication.OpInsert)
				case "update":
					tp.Ops = append(tp.Ops, replication.OpUpdate)
				case "delete":
					tp.Ops = append(tp.Ops, replication.OpDelete)
				case "truncate":
					tp.Ops = append(tp.Ops, replication.OpTruncate)
				}
			}
			tp.BeforeImages = true
		}
		p.repl.Tables = append(p.repl.Tables, tp)
		if strings.Contains(spec.Topic, "{") {
			p.templated = append(p.templated, templatedTopic{Table: table, Template: spec.Topic})
		} else {
			addTopic(spec.Topic, "events of "+table)
		}
		addTopic(m.DeadLetterTopic(table), "dead letters of "+table)
	}
	return p, nil
}

// connectPostgres opens an ordinary (not replication) connection.
func connectPostgres(ctx context.Context, cfg *config.Config, purpose string) (*pgx.Conn, error) {
	pc, err := pgx.ParseConfig(cfg.Postgres.DSN)
	if err != nil {
		return nil, fmt.Errorf("postgres.dsn: %w", err)
	}
	pc.RuntimeParams["application_name"] = "cdcrelay " + purpose
	if pc.ConnectTimeout == 0 {
		pc.ConnectTimeout = 10 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres (%s): %w", describeDSN(cfg.Postgres.DSN), err)
	}
	return conn, nil
}

// describeDSN names the database without secrets, for messages.
func describeDSN(dsn string) string {
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return config.RedactDSN(dsn)
	}
	return fmt.Sprintf("%s@%s:%d/%s", pc.User, pc.Host, pc.Port, pc.Database)
}
