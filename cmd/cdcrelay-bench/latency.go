package main

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// runLatency starts the relay on an empty outbox, then inserts single-row
// transactions at a steady rate, and measures for each event the time from
// the source commit (the record's CreateTime, which the relay sets to the
// transaction's commit time) to its arrival at a read_committed consumer.
func runLatency(ctx context.Context, o *options) (result, error) {
	r := result{name: fmt.Sprintf("latency @%d tx/s", o.latRate), latencyRun: true}
	b, err := newBench(ctx, o, "latency", "")
	if err != nil {
		return r, err
	}
	defer b.close(context.Background())
	// Start from a clean state: no checkpoint owed from earlier writes.
	if _, err := b.conn.Exec(ctx, `CHECKPOINT`); err != nil {
		return r, err
	}
	const writers = 4
	perWriter := o.latRate / writers
	total := perWriter * writers * o.latSecs
	r.events = total
	cons, err := startConsumer(o.brokers, b.topic, total+1, 5*time.Millisecond)
	if err != nil {
		return r, err
	}
	defer cons.close()
	proc, err := startRelay(o, b)
	if err != nil {
		return r, err
	}
	defer func() {
		if !proc.exited() {
			proc.stop()
		}
	}()
	// Warm up: one event through, so the relay is streaming.
	if _, err := b.fill(ctx, 1, 1, 200); err != nil {
		return r, err
	}
	for cons.seen() < 1 {
		if proc.exited() {
			return r, fmt.Errorf("relay exited: %s", tail(proc.output(), 3000))
		}
		time.Sleep(10 * time.Millisecond)
	}
	cons.mu.Lock()
	cons.keep = true
	cons.mu.Unlock()

	payload := func(i int) string {
		h := md5.Sum([]byte(fmt.Sprint(i)))
		s := hex.EncodeToString(h[:])
		return fmt.Sprintf(`{"seq":%d,"data":"%s%s%s%s%s"}`, i, s, s, s, s, s)
	}
	var wg sync.WaitGroup
	var behind atomic.Int64
	errs := make(chan error, writers)
	start := time.Now()
	interval := time.Second / time.Duration(perWriter)
	for w := 0; w < writers; w++ {
		conn, err := pgx.Connect(ctx, b.dsn)
		if err != nil {
			return r, err
		}
		defer conn.Close(context.Background())
		wg.Add(1)
		go func(w int, conn *pgx.Conn) {
			defer wg.Done()
			n := perWriter * o.latSecs
			offset := interval * time.Duration(w) / writers
			for i := 0; i < n; i++ {
				due := start.Add(offset + interval*time.Duration(i))
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				} else if d < -100*time.Millisecond {
					behind.Add(1)
				}
				seq := w*n + i
				if _, err := conn.Exec(ctx, `INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ($1, $2, 'BenchEvent', $3)`,
					b.aggType, fmt.Sprintf("agg-%d", seq%64), payload(seq)); err != nil {
					errs <- err
					return
				}
			}
		}(w, conn)
	}
	wg.Wait()
	writeSecs := since(start)
	select {
	case err := <-errs:
		return r, err
	default:
	}
	fmt.Printf("wrote %d transactions in %.1fs (%.0f tx/s; %d inserts more than 100ms behind schedule)\n",
		total, writeSecs, float64(total)/writeSecs, behind.Load())
	if err := cons.wait(ctx, time.Minute, proc); err != nil {
		return r, fmt.Errorf("%w\nrelay output (tail):\n%s", err, tail(proc.output(), 3000))
	}
	r.relaySecs = writeSecs
	r.rateNote = fmt.Sprintf("%.0f tx/s offered", float64(total)/writeSecs)
	u, err := proc.stop()
	if err != nil {
		fmt.Printf("relay stop: %v\n", err)
	}
	r.cpuSecs, r.peakRSSMB = u.cpu, u.maxRSSMB
	cons.mu.Lock()
	r.latency = percentiles(cons.lat)
	cons.mu.Unlock()
	l := r.latency
	fmt.Printf("latency commit -> read_committed consumer: p50 %s, p95 %s, p99 %s, max %s; relay CPU %.2fs (%.0f%% of a core), peak RSS %.1f MB\n",
		ms(l.p50), ms(l.p95), ms(l.p99), ms(l.max), r.cpuSecs, 100*r.cpuSecs/writeSecs, r.peakRSSMB)
	return r, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/1e6) }
