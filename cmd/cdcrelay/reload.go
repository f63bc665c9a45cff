package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"syscall"

	"github.com/cdcrelay/cdcrelay/internal/config"
)

// reloadOnSIGHUP re-reads relay.toml on every SIGHUP until ctx ends. What is
// safe to change in a running relay is applied: relay.log_level (unless
// --log-level fixes the level). Changes to anything else are named in the
// log with "restart to apply": they shape the slot, the producer, the
// transactions or the mapping, which a running session holds.
func (a *app) reloadOnSIGHUP(ctx context.Context, running *config.Config, level *slog.LevelVar, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		cfg, err := config.Load(a.configPath)
		if err != nil {
			// config errors name keys and lines, never values of secrets.
			log.Error("SIGHUP: relay.toml not reloaded; the running configuration stays", "config", a.configPath, "err", err)
			continue
		}
		if a.logLevel != "" {
			log.Info("SIGHUP: log level is fixed by --log-level", "level", level.Level().String())
		} else if lv := a.logLevelFor(cfg); lv != level.Level() {
			old := level.Level()
			level.Set(lv)
			log.Log(ctx, max(lv, old), "SIGHUP: log level changed", "from", old.String(), "to", lv.String())
		} else {
			log.Info("SIGHUP: log level unchanged", "level", lv.String())
		}
		if changed := restartOnly(running, cfg); len(changed) > 0 {
			log.Warn("SIGHUP: relay.toml has changes that need a restart of the relay; they are not applied", "keys", changed)
		}
	}
}

// restartOnly names the sections of relay.toml (or keys, for [relay]) whose
// values differ between a and b, except what a reload applies.
func restartOnly(a, b *config.Config) []string {
	var out []string
	diff := func(name string, x, y any) {
		if !reflect.DeepEqual(x, y) {
			out = append(out, name)
		}
	}
	diff("relay.name", a.Relay.Name, b.Relay.Name)
	diff("relay.log_format", a.Relay.LogFormat, b.Relay.LogFormat)
	diff("[postgres]", a.Postgres, b.Postgres)
	diff("[kafka]", a.Kafka, b.Kafka)
	diff("[batch]", a.Batch, b.Batch)
	diff("[metrics]", a.Metrics, b.Metrics)
	diff("[[mapping]]", a.Mappings, b.Mappings)
	return out
}
