package relay

import (
	"context"
	"sync"
	"time"

	"github.com/cdcrelay/cdcrelay/internal/config"
)

// budget bounds the bytes of decoded changes buffered between the reader and
// the committer, so memory does not grow with transaction size or with a
// slow broker.
type budget struct {
	mu    sync.Mutex
	max   int64
	used  int64
	freed chan struct{} // closed and replaced on every release
}

func newBudget(max int64) *budget {
	if max <= 0 {
		max = config.DefaultReadAheadBytes
	}
	return &budget{max: max, freed: make(chan struct{})}
}

// acquire waits until n bytes fit (a single chunk larger than the whole
// budget is let through when nothing else is buffered). While it waits it
// calls tick about once a second.
func (b *budget) acquire(ctx context.Context, n int64, tick func(context.Context) error) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		b.mu.Lock()
		if b.used+n <= b.max || b.used == 0 {
			b.used += n
			b.mu.Unlock()
			return nil
		}
		freed := b.freed
		b.mu.Unlock()
		select {
		case <-freed:
		case <-t.C:
			if err := tick(ctx); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	close(b.freed)
	b.freed = make(chan struct{})
	b.mu.Unlock()
}
