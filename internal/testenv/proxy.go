package testenv

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy is a TCP proxy on 127.0.0.1 for fault injection between a client and a
// server. Every accepted connection gets its own connection to the target, and
// bytes are copied in both directions through a buffer, so that the proxy can
// hold them back while the connection stays open:
//
//   - [Proxy.Stall] holds all bytes for a while and then delivers them all, in
//     order: a network that delays requests (and responses) beyond the client's
//     timeouts and then delivers them late. A request sent during a stall reaches
//     the server even if the client gave up and closed the connection meanwhile.
//   - [Proxy.Pause] holds them until [Proxy.Resume].
//   - [Proxy.ResetAll] kills every current connection with a TCP reset.
//
// Held bytes are buffered without limit; the proxy is for tests.
type Proxy struct {
	ln       net.Listener
	target   string
	accepted atomic.Int64

	mu         sync.Mutex
	conns      map[*proxyConn]struct{}
	paused     bool
	holdUntil  time.Time
	gateChange chan struct{} // closed and replaced when the gate may have opened
	closed     bool

	wg sync.WaitGroup
}

// NewProxy listens on a free port of 127.0.0.1 and forwards each connection to
// target (host:port). The target is dialled per connection, so it need not be up
// yet.
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy for %s: %w", target, err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[*proxyConn]struct{}{}, gateChange: make(chan struct{})}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr is the proxy's address, host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Port is the proxy's port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Target is the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Accepted counts the connections accepted so far.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Stall holds every byte in both directions from now until d has passed, then
// delivers everything held, in order. Connections stay open; new ones are
// accepted (and their bytes held too). A later Stall can extend it.
func (p *Proxy) Stall(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if until := time.Now().Add(d); until.After(p.holdUntil) {
		p.holdUntil = until
	}
	time.AfterFunc(d, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.openGate()
	})
}

// Pause holds every byte in both directions until Resume.
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paused = true
}

// Resume ends a Pause and delivers the held bytes (unless a Stall still runs).
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paused = false
	p.openGate()
}

// openGate wakes the writers so they check the gate again. Callers hold p.mu.
func (p *Proxy) openGate() {
	close(p.gateChange)
	p.gateChange = make(chan struct{})
}

// gate reports whether bytes may flow now, and a channel closed when that may
// have changed.
func (p *Proxy) gate() (open bool, changed <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.paused && !time.Now().Before(p.holdUntil), p.gateChange
}

// ResetAll closes every current connection abruptly, on both sides, with a TCP
// reset (SO_LINGER 0); bytes held for them are dropped. New connections are
// accepted as before.
func (p *Proxy) ResetAll() {
	p.mu.Lock()
	conns := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.reset()
	}
}

// Close stops accepting, resets every connection, and waits for the proxy's
// goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.ResetAll()
	p.wg.Wait()
	return err
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		p.accepted.Add(1)
		p.wg.Add(1)
		go p.serve(client.(*net.TCPConn))
	}
}

func (p *Proxy) serve(client *net.TCPConn) {
	defer p.wg.Done()
	c, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		resetConn(client)
		return
	}
	server := c.(*net.TCPConn)
	pc := &proxyConn{client: client, server: server, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		resetConn(client)
		resetConn(server)
		return
	}
	p.conns[pc] = struct{}{}
	p.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(pc, client, server) }()
	go func() { defer wg.Done(); p.pipe(pc, server, client) }()
	wg.Wait()

	p.mu.Lock()
	delete(p.conns, pc)
	p.mu.Unlock()
	client.Close()
	server.Close()
}

// pipe copies src to dst for one connection: a reader that buffers everything
// src sends (so src never blocks, even while the gate is shut) and a writer that
// passes the buffer on whenever the gate is open. When src ends, dst's write side
// is shut after the buffered bytes went out, so a half-close travels through.
func (p *Proxy) pipe(pc *proxyConn, src, dst *net.TCPConn) {
	q := &chunkQueue{signal: make(chan struct{}, 1)}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				q.push(append([]byte(nil), buf[:n]...))
			}
			if err != nil {
				q.finish()
				return
			}
		}
	}()
	defer func() {
		_ = src.CloseRead() // ends the reader if the writer stopped first
		<-readerDone
	}()
	for {
		chunk, more := q.pop(pc.done)
		if !more {
			select {
			case <-pc.done:
			default:
				_ = dst.CloseWrite()
			}
			return
		}
		for {
			open, changed := p.gate()
			if open {
				break
			}
			select {
			case <-changed:
			case <-pc.done:
				return
			}
		}
		if _, err := dst.Write(chunk); err != nil {
			return
		}
	}
}

type proxyConn struct {
	client, server *net.TCPConn
	resetOnce      sync.Once
	done           chan struct{} // closed by reset
}

func (c *proxyConn) reset() {
	c.resetOnce.Do(func() {
		close(c.done)
		resetConn(c.client)
		resetConn(c.server)
	})
}

// resetConn closes c with a TCP reset instead of a FIN.
func resetConn(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

// chunkQueue is an unbounded FIFO of byte chunks with one reader and one writer.
type chunkQueue struct {
	mu     sync.Mutex
	chunks [][]byte
	ended  bool
	signal chan struct{} // capacity 1: "something changed"
}

func (q *chunkQueue) push(b []byte) {
	q.mu.Lock()
	q.chunks = append(q.chunks, b)
	q.mu.Unlock()
	q.notify()
}

func (q *chunkQueue) finish() {
	q.mu.Lock()
	q.ended = true
	q.mu.Unlock()
	q.notify()
}

func (q *chunkQueue) notify() {
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// pop returns the next chunk, waiting for one; more is false when the source
// has ended and everything was popped, or when done is closed.
func (q *chunkQueue) pop(done <-chan struct{}) (chunk []byte, more bool) {
	for {
		q.mu.Lock()
		if len(q.chunks) > 0 {
			chunk = q.chunks[0]
			q.chunks[0] = nil
			q.chunks = q.chunks[1:]
			q.mu.Unlock()
			return chunk, true
		}
		ended := q.ended
		q.mu.Unlock()
		if ended {
			return nil, false
		}
		select {
		case <-q.signal:
		case <-done:
			return nil, false
		}
	}
}

var _ io.Closer = (*Proxy)(nil)
