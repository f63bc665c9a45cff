package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/internal/relay"
)

// inProcessRelay is `cdcrelay-bench relay --config F [--cpuprofile F] [--memprofile F]`:
// the same relay.Run as `cdcrelay run`, under pprof, for profiling runs.
func inProcessRelay(args []string) int {
	fs := flag.NewFlagSet("relay", flag.ExitOnError)
	cfgPath := fs.String("config", "relay.toml", "relay configuration")
	cpu := fs.String("cpuprofile", "", "write a CPU profile here")
	mem := fs.String("memprofile", "", "write a heap profile here on exit")
	_ = fs.Parse(args)
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if *cpu != "" {
		f, err := os.Create(*cpu)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts := relay.Options{Logger: log}
	if opts.Tracer, err = relay.NewTracer(ctx, cfg, log); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	err = relay.Run(ctx, cfg, opts)
	if opts.Tracer != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = opts.Tracer.Shutdown(sctx)
		cancel()
	}
	if *mem != "" {
		if f, ferr := os.Create(*mem); ferr == nil {
			runtime.GC()
			_ = pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
