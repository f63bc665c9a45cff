package relay

import (
	"time"

	"github.com/cdcrelay/cdcrelay/replication"
)

// Observer is told what the daemon does, for metrics and health. Calls come
// from the daemon's goroutine and must not block.
type Observer interface {
	// Streaming: a session holds the slot and the producer and streams.
	Streaming()
	// SessionEnded: the session stopped; err is nil on a requested stop.
	SessionEnded(err error)
	// Committed: a Kafka transaction committed.
	Committed(c CommitInfo)
	// CommitFailed: a Kafka transaction failed; the session restarts.
	CommitFailed(err error)
	// DeadLettered: a change went to the dead-letter topic.
	DeadLettered(table, reason string)
	// Position: the server's WAL end and the durable (checkpointed) position.
	Position(serverWALEnd, durable replication.LSN)
	// BackfillProgress: rows published so far of a table's backfill, of an
	// estimated total.
	BackfillProgress(table string, done, total int64)
	// TraceContextInvalid: a row of table carried an invalid trace
	// context; its event went out without it. (Called from the mapping.)
	TraceContextInvalid(table string)
}

// CommitInfo describes one committed Kafka transaction.
type CommitInfo struct {
	Seq    int64
	Events map[string]int // by topic
	Took   time.Duration
	LSN    replication.LSN
	// SourceCommitTime is the commit time in Postgres of the last
	// transaction fully published (zero when none was in this batch).
	SourceCommitTime time.Time
}

type nopObserver struct{}

func (nopObserver) Streaming()                                {}
func (nopObserver) SessionEnded(error)                        {}
func (nopObserver) Committed(CommitInfo)                      {}
func (nopObserver) CommitFailed(error)                        {}
func (nopObserver) DeadLettered(string, string)               {}
func (nopObserver) Position(replication.LSN, replication.LSN) {}
func (nopObserver) BackfillProgress(string, int64, int64)     {}
func (nopObserver) TraceContextInvalid(string)                {}
