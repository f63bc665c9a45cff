package relay

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/replication"
)

// fakeChunks is a chunkSource whose reads block until the test releases
// them. Its chunks are empty, so a released chunk ends its backfill and
// nothing needs publishing.
type fakeChunks struct {
	honourCancel bool // a read returns when its context is cancelled

	mu        sync.Mutex
	active    int
	maxActive int

	entered    chan chunkRequest
	release    chan struct{}
	stop       chan struct{} // closed at the end of a test: every read returns
	watermarks chan string   // high watermarks "written into the WAL"
}

func newFakeChunks(honourCancel bool) *fakeChunks {
	return &fakeChunks{honourCancel: honourCancel, entered: make(chan chunkRequest, 16),
		release: make(chan struct{}), stop: make(chan struct{}), watermarks: make(chan string, 16)}
}

func (f *fakeChunks) read(ctx context.Context, req chunkRequest) chunkResult {
	f.mu.Lock()
	f.active++
	f.maxActive = max(f.maxActive, f.active)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.active--
		f.mu.Unlock()
	}()
	select {
	case f.entered <- req:
	case <-f.stop:
	}
	done := ctx.Done()
	if !f.honourCancel {
		done = nil
	}
	select {
	case <-f.release:
	case <-done:
		return chunkResult{id: req.id, err: ctx.Err()}
	case <-f.stop:
		return chunkResult{id: req.id, err: context.Canceled}
	}
	select {
	case f.watermarks <- req.id:
	case <-f.stop:
	}
	return chunkResult{id: req.id, snap: replication.Snapshot{Xmin: 10, Xmax: 10}}
}

func (f *fakeChunks) close() {}

func (f *fakeChunks) max() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.maxActive
}

// newTestBackfiller is a backfiller on a pipeline that has no stream and no
// Kafka: enough for chunks without rows.
func newTestBackfiller(t *testing.T, src chunkSource) *backfiller {
	t.Helper()
	specs := []mapping.Spec{{Table: "public.items", Kind: "table", Topic: "items"}, {Table: "public.other", Kind: "table", Topic: "other"}}
	mapper, err := mapping.New(specs)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{Relay: config.Relay{Name: "t"}, Mappings: specs}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := &session{cfg: cfg, log: log, mapper: mapper, obs: nopObserver{}}
	p := &pipeline{s: s, log: log, mapper: mapper}
	b := newBackfiller(context.Background(), p, src)
	p.bf = b
	t.Cleanup(func() {
		// Whatever a failed test left blocked: end the reads, take the
		// results, then close.
		if f, ok := src.(*fakeChunks); ok {
			close(f.stop)
		}
		done := make(chan struct{})
		go func() {
			for {
				select {
				case <-b.results:
				case <-done:
					return
				}
			}
		}()
		b.close()
		close(done)
	})
	return b
}

func request(t *testing.T, b *backfiller, op, table, id string) {
	t.Helper()
	raw, _ := json.Marshal(BackfillRequest{Op: op, ID: id, Table: table, ChunkSize: 10})
	if err := b.onMessage(context.Background(), &replication.LogicalMessage{Prefix: b.reqPrefix, Content: raw}); err != nil {
		t.Fatal(err)
	}
	b.maybeStart()
}

// drive runs the committer's part of the loop (results, high watermarks
// in stream order, the wake timer, maybeStart) until cond holds.
func drive(t *testing.T, b *backfiller, f *fakeChunks, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond) // for conditions no event announces
	defer tick.Stop()
	for !cond() {
		select {
		case res := <-b.pendingResults():
			b.onResult(res)
		case id := <-f.watermarks:
			msg := &replication.LogicalMessage{Prefix: b.wmPrefix, Content: []byte("high:" + id)}
			if err := b.onMessage(context.Background(), msg); err != nil {
				t.Fatal(err)
			}
		case <-b.wake():
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
		b.maybeStart()
	}
}

func status(b *backfiller, table string) BackfillState { return b.states()[table] }

// A superseded or cancelled chunk whose read is still running must not let
// a second chunk read start beside it.
func TestBackfillOneChunkReadAtATime(t *testing.T) {
	for _, op := range []string{"start", "cancel"} {
		t.Run(op, func(t *testing.T) {
			f := newFakeChunks(false) // a read that cannot be interrupted at once
			b := newTestBackfiller(t, f)
			request(t, b, "start", "public.items", "a")
			first := <-f.entered
			if op == "start" {
				request(t, b, "start", "public.items", "b") // supersedes a
			} else {
				request(t, b, "cancel", "public.items", "")
				request(t, b, "start", "public.other", "c")
			}
			select {
			case req := <-f.entered:
				t.Fatalf("chunk %s started while chunk %s was still being read", req.id, first.id)
			case <-time.After(300 * time.Millisecond):
			}
			f.release <- struct{}{} // the first read ends; its result is stale
			var next chunkRequest
			drive(t, b, f, "the next chunk read", func() bool {
				select {
				case next = <-f.entered:
					return true
				default:
					return false
				}
			})
			if next.id == first.id {
				t.Fatalf("the abandoned chunk was read again")
			}
			f.release <- struct{}{}
			want := "public.items"
			if op == "cancel" {
				want = "public.other"
			}
			drive(t, b, f, "the new backfill to finish", func() bool { return status(b, want).Status == BackfillDone })
			if f.max() != 1 {
				t.Fatalf("%d chunk reads ran at once", f.max())
			}
			if op == "cancel" && status(b, "public.items").Status != BackfillCancelled {
				t.Fatalf("cancelled backfill: %+v", status(b, "public.items"))
			}
		})
	}
}

// A stale result on the results channel (of a chunk no longer in flight)
// must not stand in for the result the high watermark waits for, or the
// backfill stalls: the real result then arrives after its watermark passed.
func TestBackfillIgnoresStaleResults(t *testing.T) {
	f := newFakeChunks(false)
	b := newTestBackfiller(t, f)
	request(t, b, "start", "public.items", "a")
	<-f.entered
	b.results <- chunkResult{id: "some-abandoned-chunk"} // queued before the real one
	go func() { f.release <- struct{}{} }()
	// The high watermark arrives while the stale result is first in line.
	id := <-f.watermarks
	msg := &replication.LogicalMessage{Prefix: b.wmPrefix, Content: []byte("high:" + id)}
	if err := b.onMessage(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	drive(t, b, f, "the backfill to finish", func() bool { return status(b, "public.items").Status == BackfillDone })
}

// close must return when the session ends with an error, the committer no
// longer taking results: with a read in progress, and with a read done
// whose result nobody takes.
func TestBackfillCloseDoesNotBlock(t *testing.T) {
	for _, tc := range []struct {
		name     string
		finished bool
	}{{"read in progress", false}, {"result not taken", true}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeChunks(true)
			b := newTestBackfiller(t, f)
			request(t, b, "start", "public.items", "a")
			<-f.entered
			if tc.finished {
				b.results <- chunkResult{id: "x"} // the channel is full
				f.release <- struct{}{}
				<-f.watermarks
			}
			closed := make(chan struct{})
			go func() {
				b.close()
				close(closed)
			}()
			select {
			case <-closed:
			case <-time.After(5 * time.Second):
				t.Fatal("close blocked on a chunk goroutine")
			}
		})
	}
}

// With a rate limit the next chunk starts when the wait ends, even when the
// stream brings nothing: the wake channel fires.
func TestBackfillWakesAfterRateWait(t *testing.T) {
	b := newTestBackfiller(t, newFakeChunks(true))
	start := time.Now()
	b.wakeAt(start.Add(50 * time.Millisecond))
	select {
	case <-b.wake():
	case <-time.After(5 * time.Second):
		t.Fatal("the wake channel did not fire after the rate wait")
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Fatal("woke before the rate wait ended")
	}
}

func TestChunkLimit(t *testing.T) {
	for _, tc := range []struct {
		size int
		rate float64
		want int
	}{{1024, 0, 1024}, {1024, 1000, 100}, {500, 1000, 100}, {50, 1000, 50}, {1024, 3, 1}, {1024, 100000, 1024}} {
		if got := chunkLimit(BackfillState{ChunkSize: tc.size, MaxRate: tc.rate}); got != tc.want {
			t.Errorf("chunkLimit(%d, %g) = %d, want %d", tc.size, tc.rate, got, tc.want)
		}
	}
}
