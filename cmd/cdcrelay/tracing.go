package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/cdcrelay/cdcrelay/internal/tracing"
)

// tracerShutdownTimeout bounds the export of the last spans at exit: a
// collector that is down must not hold up a stop.
const tracerShutdownTimeout = 5 * time.Second

func shutdownTracer(t *tracing.Tracer, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), tracerShutdownTimeout)
	defer cancel()
	if err := t.Shutdown(ctx); err != nil {
		log.Warn("tracing: the last spans were not exported", "err", err)
	}
	st := t.Stats()
	log.Info("tracing: stopped", "spans_exported", st.Exported, "spans_dropped_queue_full", st.DroppedQueueFull, "spans_dropped_export_failed", st.DroppedExportFailed)
}
