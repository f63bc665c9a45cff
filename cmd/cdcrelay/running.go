package main

import (
	"bufio"
	"context"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// runningOut is what `status` learns from the metrics endpoint of a running
// relay (metrics.listen): whether it streams, and when it last committed.
// Neither Postgres nor Kafka records the time of the relay's last commit.
type runningOut struct {
	URL   string `json:"url"`
	Error string `json:"error,omitempty"`
	Ready bool   `json:"ready"`
	// LastCommit is the wall time of the relay's last Kafka commit.
	LastCommit *time.Time `json:"last_commit_time,omitempty"`
	// LastSourceCommit is when the last published Postgres transaction committed.
	LastSourceCommit *time.Time `json:"last_source_commit_time,omitempty"`
	LagSeconds       *float64   `json:"lag_seconds,omitempty"`
	LagBytes         *int64     `json:"lag_bytes,omitempty"`
}

// readRunning scrapes the relay's /metrics at listen ("host:port"; an
// unspecified host means this machine).
func readRunning(ctx context.Context, listen string) *runningOut {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return &runningOut{URL: listen, Error: err.Error()}
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	r := &runningOut{URL: "http://" + net.JoinHostPort(host, port) + "/metrics"}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL, nil)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.Error = "no relay answers there (" + err.Error() + ")"
		return r
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		r.Error = "metrics endpoint: " + resp.Status
		return r
	}
	vals := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || !strings.HasPrefix(name, "cdcrelay_") {
			continue
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			vals[name] = v
		}
	}
	if err := sc.Err(); err != nil {
		r.Error = err.Error()
		return r
	}
	stamp := func(name string) *time.Time {
		v, ok := vals[name]
		if !ok || v <= 0 || math.IsNaN(v) {
			return nil
		}
		t := time.Unix(0, int64(v*1e9)).UTC()
		return &t
	}
	r.Ready = vals["cdcrelay_ready"] == 1
	r.LastCommit = stamp("cdcrelay_last_commit_timestamp_seconds")
	r.LastSourceCommit = stamp("cdcrelay_last_source_commit_timestamp_seconds")
	if v, ok := vals["cdcrelay_replication_lag_seconds"]; ok {
		r.LagSeconds = &v
	}
	if v, ok := vals["cdcrelay_replication_lag_bytes"]; ok {
		n := int64(v)
		r.LagBytes = &n
	}
	return r
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
