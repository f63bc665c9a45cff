package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/replication"
)

// connectStandbys connects to the primary's standbys for the failover
// checks: postgres.standby_dsns, else each host of a multi-host
// postgres.dsn that is in recovery (the primary among them is skipped). The
// returned func closes the connections.
func connectStandbys(ctx context.Context, cfg *config.Config) ([]replication.Standby, func()) {
	var out []replication.Standby
	var conns []*pgx.Conn
	closeAll := func() {
		for _, c := range conns {
			c.Close(context.Background())
		}
	}
	connect := func(pc *pgx.ConnConfig) (*pgx.Conn, error) {
		pc.RuntimeParams["application_name"] = "cdcrelay check"
		if pc.ConnectTimeout == 0 || pc.ConnectTimeout > 5*time.Second {
			pc.ConnectTimeout = 5 * time.Second
		}
		c, err := pgx.ConnectConfig(ctx, pc)
		if err == nil {
			conns = append(conns, c)
		}
		return c, err
	}
	if len(cfg.Postgres.StandbyDSNs) > 0 {
		for _, dsn := range cfg.Postgres.StandbyDSNs {
			sb := replication.Standby{Name: describeDSN(dsn)}
			pc, err := pgx.ParseConfig(dsn)
			if err == nil {
				var c *pgx.Conn
				if c, err = connect(pc); err == nil {
					sb.Conn = c
				}
			}
			sb.Err = err
			out = append(out, sb)
		}
		return out, closeAll
	}
	hosts := config.DSNHosts(cfg.Postgres.DSN)
	if len(hosts) < 2 {
		return nil, closeAll
	}
	for _, hp := range hosts {
		pc, err := pgx.ParseConfig(cfg.Postgres.DSN)
		if err != nil {
			return nil, closeAll
		}
		host, port, _ := net.SplitHostPort(hp)
		p, _ := strconv.Atoi(port)
		pc.Host, pc.Port = host, uint16(p)
		pc.Fallbacks, pc.ValidateConnect = nil, nil // this host, whatever it is
		sb := replication.Standby{Name: hp}
		c, err := connect(pc)
		if err != nil {
			sb.Err = err
			out = append(out, sb)
			continue
		}
		var recovery bool
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recovery); err == nil && !recovery {
			continue // the primary
		}
		sb.Conn = c
		out = append(out, sb)
	}
	return out, closeAll
}

// checkFailover adds the failover checks (failover slot, standby settings,
// the synchronized copy of the slot) to a check report.
func (a *app) checkFailover(ctx context.Context, cfg *config.Config, conn *pgx.Conn, r *checkReport) {
	f := readFailover(ctx, cfg, conn)
	if f == nil {
		return
	}
	for _, c := range f.Checks {
		r.add("postgres", c.Name, c.Subject, string(c.Status), c.Detail, c.Fix)
	}
}

// readFailover runs replication.CheckFailover; nil when it cannot run.
func readFailover(ctx context.Context, cfg *config.Config, conn *pgx.Conn) *replication.FailoverReport {
	standbys, closeAll := connectStandbys(ctx, cfg)
	defer closeAll()
	f, err := replication.CheckFailover(ctx, conn, cfg.Postgres.Slot, standbys)
	if err != nil {
		f = &replication.FailoverReport{Checks: []replication.CheckResult{{Name: "failover", Status: replication.CheckWarn,
			Detail: fmt.Sprintf("cannot check the standbys: %v", err)}}}
	}
	return f
}

func failoverWarning(c replication.CheckResult) string {
	if c.Fix == "" {
		return c.Detail
	}
	return c.Detail + ". Fix: " + c.Fix
}

// printFailover writes status's failover section: the slot's failover flag,
// the standbys and their copies of the slot.
func printFailover(w io.Writer, f *replication.FailoverReport) {
	if f == nil || (len(f.Streaming) == 0 && len(f.Standbys) == 0) {
		return
	}
	row := func(k, v string) { fmt.Fprintf(w, "  %-20s %s\n", k, v) }
	fmt.Fprintln(w, "Failover")
	switch {
	case !f.Supported:
		row("failover slots", "not on this PostgreSQL (17 and later have them)")
	case f.SlotFailover:
		row("failover slot", "yes")
		row("synchronized_standby_slots", orDash(f.SynchronizedStandbySlots))
	default:
		row("failover slot", "no")
	}
	for _, s := range f.Streaming {
		row("streaming to", fmt.Sprintf("%s at %s (%s, %s)", orDash(s.ApplicationName), s.ClientAddr, s.State, s.SyncState))
	}
	for _, s := range f.Standbys {
		switch {
		case s.Error != "":
			row("standby "+s.Name, "error: "+s.Error)
		case s.Slot == nil || !s.Slot.Exists:
			row("standby "+s.Name, "no copy of the slot")
		default:
			state := "synchronized"
			if !s.Slot.Synced {
				state = "not synchronized"
			}
			if s.Slot.Invalidated() {
				state += ", invalidated"
			}
			row("standby "+s.Name, fmt.Sprintf("slot copy %s, confirmed up to %s", state, s.Slot.ConfirmedFlushLSN))
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
