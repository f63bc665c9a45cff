// Package metrics is the relay's Prometheus and health endpoint.
//
// [Metrics] implements [relay.Observer]: the daemon tells it about sessions,
// commits, dead letters and positions, and it keeps the cdcrelay_* series
// that /metrics serves. [Metrics.PollSlot] reads the replication slot
// (retained WAL, wal_status, the server's WAL position) on a connection of its
// own, so the numbers stay current while the daemon is stuck, for example in
// a Kafka commit that does not return. [Metrics.Handler] serves
//
//	/metrics  Prometheus text format
//	/healthz  200 while the process runs
//	/readyz   200 while a session streams and commits: after the daemon's
//	          Streaming and before the next SessionEnded; 503 otherwise (a
//	          standby waiting for the active relay, a session that failed and
//	          is being retried)
//
// Every series and its meaning is listed in the README, section Operations.
package metrics
