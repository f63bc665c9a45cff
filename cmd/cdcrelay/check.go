package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pelletier/go-toml/v2"
	"github.com/spf13/cobra"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

func (a *app) checkCmd() *cobra.Command {
	var (
		output     string
		configOnly bool
		printCfg   bool
		skipPG     bool
		skipKafka  bool
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Validate the configuration and check Postgres and Kafka, changing nothing",
		Long: `check validates relay.toml, then verifies read-only that Postgres and Kafka are
ready for 'cdcrelay run', and says how to fix each problem it finds.

The configuration is validated first, before any connection: an unknown key, a
value of the wrong type, a missing required key, an unset ${VAR} or an invalid
mapping is reported with its key and line, and check exits with status 2.

Postgres: server version, wal_level = logical, free max_replication_slots and
max_wal_senders, REPLICATION (or superuser) for the role, every mapped table
exists and is readable (SELECT) by the role, its REPLICA IDENTITY suits the
mapping, and the publication and the pgoutput slot exist as 'cdcrelay setup'
creates them.

Kafka: the brokers answer, the checkpoint topic and the literal event and
dead-letter topics exist, and transactions work: a probe transaction is begun,
given one record for the checkpoint topic, and aborted (under the transactional
id <kafka.transactional_id>-check, so that a running relay is not fenced).

Schema registry (when a mapping publishes through one): each mapped table's
current shape is compared with the latest version registered under its
subjects, and check says what 'run' would register and what the registry would
refuse (and which columns changed), without registering anything.

Exit status: 0 everything is ready, 1 a check failed, 2 configuration error.`,
		Example: `  # validate relay.toml in the current directory and check both servers
  cdcrelay check

  # validate a file only, without connecting (e.g. in CI)
  cdcrelay check --config deploy/relay.toml --config-only

  # machine-readable
  cdcrelay check --output json

  # every setting in effect, defaults included, passwords masked
  cdcrelay check --print-config`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			p, err := newPlan(cfg)
			if err != nil {
				return err
			}
			if printCfg {
				return printEffectiveConfig(a.stdout, cfg)
			}
			r := newCheckReport()
			r.section("configuration", "Configuration "+a.configPath)
			r.add("configuration", "config", "", "ok", configSummary(cfg), "")
			if !configOnly {
				if !skipPG {
					a.checkPostgres(cmd.Context(), cfg, p, r)
				}
				if !skipKafka {
					a.checkKafka(cmd.Context(), cfg, p, r)
				}
				if !skipPG {
					a.checkSchemaRegistry(cmd.Context(), cfg, r)
				}
			}
			if output == "json" {
				if err := r.writeJSON(a.stdout, nil); err != nil {
					return err
				}
			} else {
				r.writeText(a.stdout)
				if n := r.failures(); n > 0 {
					fmt.Fprintf(a.stdout, "\n%s found.\n", plural(n, "problem", "problems"))
				} else {
					fmt.Fprintf(a.stdout, "\nReady.\n")
				}
			}
			if r.failures() > 0 {
				return &silentError{code: exitFailure}
			}
			return nil
		},
	}
	outputFlag(cmd, &output)
	cmd.Flags().BoolVar(&configOnly, "config-only", false, "validate the configuration only; connect to nothing")
	cmd.Flags().BoolVar(&printCfg, "print-config", false, "print the effective configuration (defaults filled in, secrets masked) and exit")
	cmd.Flags().BoolVar(&skipPG, "skip-postgres", false, "do not check Postgres")
	cmd.Flags().BoolVar(&skipKafka, "skip-kafka", false, "do not check Kafka")
	return cmd
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("%s takes no arguments, got %q", cmd.CommandPath(), strings.Join(args, " "))
	}
	return nil
}

func configSummary(cfg *config.Config) string {
	tables := make([]string, len(cfg.Mappings))
	for i, m := range cfg.Mappings {
		tables[i] = m.Table
	}
	return fmt.Sprintf("valid: relay %q, %s (%s); slot %s, publication %s, transactional.id %s",
		cfg.Relay.Name, plural(len(cfg.Mappings), "mapping", "mappings"), quoteList(tables),
		cfg.Postgres.Slot, cfg.Postgres.Publication, cfg.Kafka.TransactionalID)
}

// checkPostgres runs the read-only Postgres checks into r.
func (a *app) checkPostgres(ctx context.Context, cfg *config.Config, p *plan, r *checkReport) {
	r.section("postgres", "PostgreSQL "+describeDSN(cfg.Postgres.DSN))
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := connectPostgres(ctx, cfg, "check")
	if err != nil {
		r.add("postgres", "connect", "", "fail", err.Error(), "check postgres.dsn, the server's address and pg_hba.conf")
		return
	}
	defer conn.Close(context.Background())
	rep, err := replication.Check(ctx, conn, p.repl)
	if err != nil {
		r.add("postgres", "query", "", "fail", err.Error(), "")
		return
	}
	r.addPostgres(rep)
	a.checkMappingsFitTables(ctx, cfg, conn, r)
	a.checkFailover(ctx, cfg, conn, r)
}

// checkMappingsFitTables checks each mapping against its table's columns,
// as the relay does at start: a template or setting naming a column the
// table lacks fails here, not on the first row.
func (a *app) checkMappingsFitTables(ctx context.Context, cfg *config.Config, conn *pgx.Conn, r *checkReport) {
	mapper, err := mapping.New(cfg.Mappings, mapping.WithRelayName(cfg.Relay.Name))
	if err != nil {
		return // reported with the configuration
	}
	for _, table := range mapper.Tables() {
		rel, err := replication.LoadRelation(ctx, conn, table)
		if err != nil {
			continue // a missing table is reported by the checks above
		}
		if err := mapper.CheckRelation(rel); err != nil {
			r.add("postgres", "mapping_columns", table, "fail", err.Error(), "fix the [[mapping]] of "+table+" in relay.toml, or add the column to the table")
			continue
		}
		r.add("postgres", "mapping_columns", table, "ok", "the mapping fits the table's columns", "")
	}
}

// checkKafka checks reachability, topics and transactions into r.
func (a *app) checkKafka(ctx context.Context, cfg *config.Config, p *plan, r *checkReport) {
	r.section("kafka", "Kafka "+strings.Join(cfg.Kafka.Brokers, ","))
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	probe, err := sink.Probe(ctx, &cfg.Kafka)
	if probe == nil {
		r.add("kafka", "connect", "", "fail", err.Error(), "check kafka.brokers, the network, and kafka.tls / kafka.sasl")
		return
	}
	r.add("kafka", "connect", "", "ok", fmt.Sprintf("reachable: %s (%s)", plural(len(probe.Brokers), "broker", "brokers"), strings.Join(probe.Brokers, ", ")), "")
	results, terr := sink.EnsureTopics(ctx, &cfg.Kafka, p.topics, false)
	if terr != nil {
		r.add("kafka", "topics", "", "fail", terr.Error(), "")
	} else {
		r.addTopics(results, false)
	}
	for _, t := range p.templated {
		r.add("kafka", "topic_template", t.Table, "ok",
			fmt.Sprintf("topics of %s are named by row values (%s): create them in advance or let the brokers auto-create them", t.Table, t.Template), "")
	}
	if err != nil {
		r.add("kafka", "transactions", probe.TransactionalID, "fail", err.Error(), "")
		return
	}
	what := "begun and aborted"
	if probe.Produced {
		what = "begun, given a record, and aborted"
	}
	r.add("kafka", "transactions", probe.TransactionalID, "ok",
		fmt.Sprintf("transactions work: a probe transaction (transactional.id %s) was %s", probe.TransactionalID, what), "")
}

// printEffectiveConfig writes cfg as TOML with every default filled in (the
// mappings as the mapping package completes them) and the secrets masked.
func printEffectiveConfig(w io.Writer, cfg *config.Config) error {
	r := cfg.Redacted()
	m, err := mapping.New(cfg.Mappings, mapping.WithRelayName(cfg.Relay.Name))
	if err != nil {
		return err
	}
	r.Mappings = nil
	for _, table := range m.Tables() {
		spec, _ := m.Spec(table)
		r.Mappings = append(r.Mappings, spec)
	}
	b, err := toml.Marshal(r)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
