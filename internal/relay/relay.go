// Package relay is the daemon loop: it wires replication -> mapping -> sink and
// holds the exactly-once argument in one place.
package relay

import (
	"context"
	"errors"
	"log/slog"

	"github.com/cdcrelay/cdcrelay/internal/config"
)

// Options are the `cdcrelay run` flags that are not part of relay.toml.
type Options struct {
	// AllowSlotAhead starts even when the slot has been moved past the Kafka
	// checkpoint (events between the two are lost; the operator accepts that).
	AllowSlotAhead bool
	Logger         *slog.Logger
}

// Run streams until ctx is cancelled (then returns nil after a clean stop) or a
// fatal error occurs.
func Run(ctx context.Context, cfg *config.Config, opts Options) error {
	return errors.New("not implemented yet")
}
