package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/sink"
)

func (a *app) setupCmd() *cobra.Command {
	var (
		dryRun    bool
		skipPG    bool
		skipKafka bool
		output    string
		grants    bool
	)
	cmd := &cobra.Command{
		Use:   "setup",
		Short: "Create the publication, the replication slot and the Kafka topics",
		Long: `setup prepares Postgres and Kafka for the relay described by relay.toml.

Postgres: it first verifies the prerequisites (wal_level = logical, free
max_replication_slots and max_wal_senders, REPLICATION or superuser, the mapped
tables exist, SELECT on them, a REPLICA IDENTITY that suits each mapping) and
stops with the exact fix for each failing one, changing nothing. Then it creates
the publication for exactly the mapped tables (or alters an existing one to
match) and the logical replication slot with the pgoutput plugin. Creating the
publication needs ownership of the tables (or a superuser); running the relay
afterwards needs only REPLICATION and SELECT.

Kafka: it creates the checkpoint topic (compacted, one partition) and the
literal event and dead-letter topics (kafka.topics.partitions and
replication_factor) when kafka.topics.create is true, and otherwise reports the
missing ones. Topics named by row values (templates such as
outbox.event.{aggregatetype}) cannot be known in advance: create them yourself
or enable auto.create.topics.enable on the brokers.

setup is idempotent: run again, it changes nothing and says so.`,
		Example: `  # see what setup would do
  cdcrelay setup --dry-run

  # do it
  cdcrelay setup --config /etc/cdcrelay/relay.toml

  # only the Postgres side (Kafka topics are managed elsewhere)
  cdcrelay setup --skip-kafka

  # the role and GRANTs the relay needs, for a DBA to run
  cdcrelay setup --print-grants`,
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
			if grants {
				return printGrants(a.stdout, cfg, p)
			}
			r := newCheckReport()
			var statements []string
			pgChanged := false
			if !skipPG {
				statements, pgChanged = a.setupPostgres(cmd.Context(), cfg, p, r, dryRun)
			}
			var created []string
			if !skipKafka {
				created = a.setupKafka(cmd.Context(), cfg, p, r, dryRun)
			}
			if output == "json" {
				if err := r.writeJSON(a.stdout, map[string]any{
					"dry_run": dryRun, "statements": nonNil(statements), "postgres_changed": pgChanged,
					"topics_created": nonNil(created), "topic_templates": p.templated,
				}); err != nil {
					return err
				}
			} else {
				r.writeText(a.stdout)
				fmt.Fprintln(a.stdout)
				a.printSetupSummary(skipPG, skipKafka, dryRun, statements, pgChanged, created, r.failures())
			}
			if r.failures() > 0 {
				return &silentError{code: exitFailure}
			}
			return nil
		},
	}
	outputFlag(cmd, &output)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the SQL and the topics setup would create; change nothing")
	cmd.Flags().BoolVar(&skipPG, "skip-postgres", false, "do not touch Postgres")
	cmd.Flags().BoolVar(&skipKafka, "skip-kafka", false, "do not touch Kafka")
	cmd.Flags().BoolVar(&grants, "print-grants", false,
		"print the SQL for a least-privilege role that can run the relay (connects to nothing)")
	return cmd
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// setupPostgres runs replication.Setup and reports into r. It returns the
// statements run (or, for a dry run or a failed prerequisite, those that would
// run) and whether anything changed.
func (a *app) setupPostgres(ctx context.Context, cfg *config.Config, p *plan, r *checkReport, dryRun bool) ([]string, bool) {
	r.section("postgres", "PostgreSQL "+describeDSN(cfg.Postgres.DSN))
	// Creating the slot waits for the transactions running at that moment to
	// end: allow for a long one.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	conn, err := connectPostgres(ctx, cfg, "setup")
	if err != nil {
		r.add("postgres", "connect", "", "fail", err.Error(), "check postgres.dsn, the server's address and pg_hba.conf")
		return nil, false
	}
	defer conn.Close(context.Background())
	res, err := replication.Setup(ctx, conn, p.repl, dryRun)
	if res != nil {
		r.addPostgres(res.Report)
	}
	var pe *replication.PrerequisiteError
	switch {
	case errors.As(err, &pe):
		return res.Statements, false
	case err != nil:
		r.add("postgres", "setup", "", "fail", err.Error(), "")
		if res != nil {
			return res.Statements, false
		}
		return nil, false
	}
	return res.Statements, res.Applied
}

// setupKafka creates (or, for a dry run or kafka.topics.create = false,
// looks up) the topics. It returns the names of the topics created.
func (a *app) setupKafka(ctx context.Context, cfg *config.Config, p *plan, r *checkReport, dryRun bool) []string {
	r.section("kafka", "Kafka "+strings.Join(cfg.Kafka.Brokers, ","))
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	create := cfg.Kafka.Topics.Create == nil || *cfg.Kafka.Topics.Create
	results, err := sink.EnsureTopics(ctx, &cfg.Kafka, p.topics, create && !dryRun)
	if err != nil {
		r.add("kafka", "connect", "", "fail", err.Error(), "check kafka.brokers, the network, and kafka.tls / kafka.sasl")
		return nil
	}
	r.addTopics(results, dryRun && create)
	var created []string
	for _, t := range results {
		if t.Created {
			created = append(created, t.Spec.Name)
		}
	}
	for _, t := range p.templated {
		r.add("kafka", "topic_template", t.Table, "ok",
			fmt.Sprintf("topics of %s are named by row values (%s): setup cannot create them; create them in advance or let the brokers auto-create them", t.Table, t.Template), "")
	}
	return created
}

func (a *app) printSetupSummary(skipPG, skipKafka, dryRun bool, statements []string, pgChanged bool, created []string, failures int) {
	w := a.stdout
	if !skipPG && len(statements) > 0 {
		switch {
		case dryRun && failures == 0:
			fmt.Fprintln(w, "Would run on PostgreSQL:")
		case pgChanged:
			fmt.Fprintln(w, "Ran on PostgreSQL:")
		default:
			fmt.Fprintln(w, "Would run on PostgreSQL once the problems above are fixed:")
		}
		for _, s := range statements {
			fmt.Fprintf(w, "  %s;\n", s)
		}
	}
	switch {
	case failures > 0:
		fmt.Fprintf(w, "%s found; fix them and run setup again.\n", plural(failures, "problem", "problems"))
	case dryRun:
		fmt.Fprintln(w, "Dry run: nothing was changed.")
	case (skipPG || !pgChanged) && len(created) == 0:
		fmt.Fprintln(w, "Nothing to change: the publication, the slot and the topics already match the configuration.")
	default:
		fmt.Fprintln(w, "Setup complete. Start the relay with: cdcrelay run")
	}
}
