// Command cdcrelay tails PostgreSQL logical replication and publishes the rows
// of outbox, change and ordinary tables to Kafka exactly once.
//
// This package holds the cobra commands: flags, configuration and wiring. The
// work is done by replication (Postgres), mapping (rows to events), sink
// (Kafka) and internal/relay (the daemon loop).
//
// Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal the commands wind down; a second one kills.
		<-ctx.Done()
		stop()
	}()
	code := execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
