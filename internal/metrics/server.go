package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cdcrelay/cdcrelay/replication"
)

// Handler serves /metrics, /healthz and /readyz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ready, reason := m.Ready()
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready: "+reason)
			return
		}
		fmt.Fprintln(w, "ready: "+reason)
	})
	return mux
}

// Server is the HTTP listener of [Metrics.Handler].
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan error
}

// Listen binds addr (so that a taken port is an error at start, not later)
// and serves h until Close.
func Listen(addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics.listen %s: %w", addr, err)
	}
	s := &Server{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		ln:   ln,
		done: make(chan error, 1),
	}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server, waiting up to 2 seconds for scrapes in flight.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		_ = s.srv.Close()
	}
	return errors.Join(err, <-s.done)
}

// DefaultSlotPollInterval is how often [Metrics.PollSlot] reads the slot.
const DefaultSlotPollInterval = 10 * time.Second

// PollSlot reads the state of the replication slot every interval until ctx
// ends, on a connection of its own (re-opened after an error), and records it
// with [Metrics.SetSlot]. Errors are counted in cdcrelay_slot_poll_errors_total
// and logged once until the next success.
func (m *Metrics) PollSlot(ctx context.Context, dsn, slot, appName string, interval time.Duration, log *slog.Logger) {
	if interval <= 0 {
		interval = DefaultSlotPollInterval
	}
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	failing := false
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		err := func() error {
			qctx, cancel := context.WithTimeout(ctx, interval)
			defer cancel()
			if conn == nil {
				pc, err := pgx.ParseConfig(dsn)
				if err != nil {
					return err
				}
				pc.RuntimeParams["application_name"] = appName
				if pc.ConnectTimeout == 0 {
					pc.ConnectTimeout = 10 * time.Second
				}
				if conn, err = pgx.ConnectConfig(qctx, pc); err != nil {
					conn = nil
					return err
				}
			}
			si, err := replication.SlotStatus(qctx, conn, slot)
			if err != nil {
				conn.Close(context.Background())
				conn = nil
				return err
			}
			m.SetSlot(si)
			return nil
		}()
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil:
			m.slotPollErrors.Inc()
			if !failing {
				log.Warn("metrics: cannot read the replication slot", "slot", slot, "err", err)
			}
			failing = true
		case failing:
			log.Info("metrics: reading the replication slot again", "slot", slot)
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
