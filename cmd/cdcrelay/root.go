package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/internal/relay"
)

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1 // a runtime failure: a check failed, a server refused, ...
	exitUsage   = 2 // a usage or configuration error
	// exitUnsafe: run stopped because resuming would lose or repeat events
	// (the slot is gone, invalidated or ahead of the checkpoint, or the
	// server's WAL does not continue it); restarting will not help.
	exitUnsafe = 3
)

const envConfig = "CDCRELAY_CONFIG"

// app is the state shared by the commands of one invocation.
type app struct {
	stdout, stderr io.Writer

	configPath string
	logLevel   string
	logFormat  string

	// started is set once a command's own code runs: errors before that
	// (flags, arguments, unknown commands) are usage errors.
	started bool
}

// usageError is a mistake in the command line found by a command itself.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// silentError: the command already printed what went wrong; exit with code.
type silentError struct{ code int }

func (e *silentError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// execute runs the command line args and returns the exit status.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var se *silentError
	if errors.As(err, &se) {
		return se.code
	}
	var ce *config.Error
	if errors.As(err, &ce) {
		fmt.Fprintf(stderr, "cdcrelay: configuration error: %v\n", err)
		return exitUsage
	}
	var ue *usageError
	if errors.As(err, &ue) || !a.started {
		fmt.Fprintf(stderr, "cdcrelay: %v\n", err)
		if cmd != nil {
			fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		}
		return exitUsage
	}
	fmt.Fprintf(stderr, "cdcrelay: %v\n", err)
	var unsafe *relay.UnsafeResumeError
	if errors.As(err, &unsafe) {
		return exitUnsafe
	}
	return exitFailure
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "cdcrelay",
		Short: "Publish PostgreSQL changes to Kafka exactly once",
		Long: `cdcrelay tails a PostgreSQL database's logical replication stream (the built-in
pgoutput plugin) and publishes the rows of outbox tables, trigger-written change
tables and ordinary tables to Apache Kafka, exactly once: every committed change
that a mapping selects is published once, and a read_committed consumer sees each
event exactly once, in commit order per key, across crashes and restarts.

Everything is configured in relay.toml (see the annotated example in the
repository). A typical start:

  cdcrelay check      # is the configuration valid, are Postgres and Kafka ready?
  cdcrelay setup      # create the publication, the slot and the Kafka topics
  cdcrelay run        # stream

Exit status: 0 success, 1 runtime failure, 2 usage or configuration error,
3 run stopped because resuming would lose or repeat events (the message says
what to do).`,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			a.started = true
			if !cmd.Flags().Changed("config") {
				if p := os.Getenv(envConfig); p != "" {
					a.configPath = p
				}
			}
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVarP(&a.configPath, "config", "c", "./relay.toml", "configuration file (also $"+envConfig+")")
	pf.StringVar(&a.logLevel, "log-level", "", "log level: debug, info, warn, error (default: relay.log_level, else info)")
	pf.StringVar(&a.logFormat, "log-format", "", "log format: text or json (default: relay.log_format, else text)")
	_ = root.RegisterFlagCompletionFunc("log-level", fixedCompletion("debug", "info", "warn", "error"))
	_ = root.RegisterFlagCompletionFunc("log-format", fixedCompletion("text", "json"))
	_ = root.MarkPersistentFlagFilename("config", "toml")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return &usageError{msg: err.Error()} })

	cobra.EnableCommandSorting = false // list the commands in the order of use
	root.AddCommand(
		a.checkCmd(),
		a.setupCmd(),
		a.runCmd(),
		a.statusCmd(),
		a.backfillCmd(),
		a.teardownCmd(),
		a.tailCmd(),
		a.versionCmd(),
	)
	return root
}

func fixedCompletion(values ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return values, cobra.ShellCompDirectiveNoFileComp
	}
}

// loadConfig reads and validates the configuration file. It connects to
// nothing, so a configuration error is reported before any connection.
func (a *app) loadConfig() (*config.Config, error) {
	cfg, err := config.Load(a.configPath)
	if err != nil {
		return nil, err
	}
	if err := a.checkLogFlags(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func (a *app) checkLogFlags() error {
	switch strings.ToLower(a.logLevel) {
	case "", "debug", "info", "warn", "warning", "error":
	default:
		return usageErrorf("--log-level %q: want debug, info, warn or error", a.logLevel)
	}
	switch strings.ToLower(a.logFormat) {
	case "", "text", "json":
	default:
		return usageErrorf("--log-format %q: want text or json", a.logFormat)
	}
	return nil
}

// logger logs to stderr at the level and in the format of the flags, else of
// relay.toml.
func (a *app) logger(cfg *config.Config) *slog.Logger {
	lv := new(slog.LevelVar)
	lv.Set(a.logLevelFor(cfg))
	return a.leveledLogger(cfg, lv)
}

// logLevelFor is the level of --log-level, else of relay.log_level, else info.
func (a *app) logLevelFor(cfg *config.Config) slog.Level {
	level := a.logLevel
	if level == "" && cfg != nil {
		level = cfg.Relay.LogLevel
	}
	switch strings.ToLower(level) {
	case "debug":
		return slog.LevelDebug
	case "warn", "warning":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

// leveledLogger is logger with a level that can change while it runs (SIGHUP).
func (a *app) leveledLogger(cfg *config.Config, lv *slog.LevelVar) *slog.Logger {
	format := a.logFormat
	if format == "" && cfg != nil {
		format = cfg.Relay.LogFormat
	}
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler
	if strings.ToLower(format) == "json" {
		h = slog.NewJSONHandler(a.stderr, opts)
	} else {
		h = slog.NewTextHandler(a.stderr, opts)
	}
	l := slog.New(h)
	if cfg != nil {
		l = l.With("relay", cfg.Relay.Name)
	}
	return l
}

// outputFlag adds --output text|json to cmd.
func outputFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVarP(p, "output", "o", "text", "output format: text or json")
	_ = cmd.RegisterFlagCompletionFunc("output", fixedCompletion("text", "json"))
}

func checkOutput(o string) error {
	if o != "text" && o != "json" {
		return usageErrorf("--output %q: want text or json", o)
	}
	return nil
}
