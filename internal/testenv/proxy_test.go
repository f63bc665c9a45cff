package testenv

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// echoServer echoes every connection until EOF, then closes it. It also records
// what each connection received, in accept order.
type echoServer struct {
	ln net.Listener
	mu sync.Mutex
	rx []*bytes.Buffer
	wg sync.WaitGroup
}

func newEchoServer(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			buf := &bytes.Buffer{}
			s.mu.Lock()
			s.rx = append(s.rx, buf)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				b := make([]byte, 1024)
				for {
					n, err := c.Read(b)
					if n > 0 {
						s.mu.Lock()
						buf.Write(b[:n])
						s.mu.Unlock()
						if _, werr := c.Write(b[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

func (s *echoServer) received(i int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i >= len(s.rx) {
		return ""
	}
	return s.rx[i].String()
}

func newTestProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := NewProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func roundTrip(t *testing.T, c net.Conn, msg string, timeout time.Duration) (string, error) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	got := make([]byte, len(msg))
	n, err := io.ReadFull(c, got)
	return string(got[:n]), err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestProxyForwards(t *testing.T) {
	srv := newEchoServer(t)
	p := newTestProxy(t, srv.ln.Addr().String())
	c := dial(t, p.Addr())
	for _, msg := range []string{"hello", "world"} {
		if got, err := roundTrip(t, c, msg, 5*time.Second); err != nil || got != msg {
			t.Fatalf("round trip %q: got %q, %v", msg, got, err)
		}
	}
	if p.Accepted() != 1 {
		t.Errorf("Accepted = %d, want 1", p.Accepted())
	}
	// A half-close travels through: the echo server sees EOF and closes.
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %q, %v; want EOF", rest, err)
	}
}

func TestProxyStallDeliversLate(t *testing.T) {
	srv := newEchoServer(t)
	p := newTestProxy(t, srv.ln.Addr().String())
	c := dial(t, p.Addr())
	if _, err := roundTrip(t, c, "warm", 5*time.Second); err != nil {
		t.Fatal(err)
	}

	const stall = 600 * time.Millisecond
	start := time.Now()
	p.Stall(stall)
	if _, err := roundTrip(t, c, "held", 200*time.Millisecond); !isTimeout(err) {
		t.Fatalf("during the stall: err = %v, want a timeout", err)
	}
	if got := srv.received(0); got != "warm" {
		t.Fatalf("server received %q during the stall, want only %q", got, "warm")
	}
	// The connection stayed open: the held request and its answer arrive late.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "held" {
		t.Fatalf("after the stall: %q, %v", got, err)
	}
	if d := time.Since(start); d < stall {
		t.Fatalf("answer after %v, before the stall of %v ended", d, stall)
	}
	if got, err := roundTrip(t, c, "after", 5*time.Second); err != nil || got != "after" {
		t.Fatalf("after the stall: %q, %v", got, err)
	}
}

// A request sent during a stall reaches the server even when the client gave up
// (timed out and closed the connection) before the stall ended: the late
// request that KAFKA-17754 is about.
func TestProxyStallDeliversAfterClientLeft(t *testing.T) {
	srv := newEchoServer(t)
	p := newTestProxy(t, srv.ln.Addr().String())
	c := dial(t, p.Addr())
	if _, err := roundTrip(t, c, "1", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Stall(500 * time.Millisecond)
	if _, err := c.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let the proxy read it
	_ = c.SetLinger(0)
	c.Close()
	time.Sleep(100 * time.Millisecond)
	if got := srv.received(0); got != "1" {
		t.Fatalf("server received %q before the stall ended", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for srv.received(0) != "1late" {
		if time.Now().After(deadline) {
			t.Fatalf("server received %q, want %q", srv.received(0), "1late")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestProxyPauseResume(t *testing.T) {
	srv := newEchoServer(t)
	p := newTestProxy(t, srv.ln.Addr().String())
	c := dial(t, p.Addr())
	p.Pause()
	if _, err := roundTrip(t, c, "a", 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("while paused: err = %v, want a timeout", err)
	}
	// New connections are accepted while paused, and held too.
	c2 := dial(t, p.Addr())
	if _, err := roundTrip(t, c2, "b", 200*time.Millisecond); !isTimeout(err) {
		t.Fatalf("new connection while paused: err = %v, want a timeout", err)
	}
	p.Resume()
	for _, tc := range []struct {
		c    net.Conn
		want string
	}{{c, "a"}, {c2, "b"}} {
		_ = tc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, 1)
		if _, err := io.ReadFull(tc.c, got); err != nil || string(got) != tc.want {
			t.Fatalf("after Resume: %q, %v; want %q", got, err, tc.want)
		}
	}
}

func TestProxyResetAll(t *testing.T) {
	srv := newEchoServer(t)
	p := newTestProxy(t, srv.ln.Addr().String())
	c := dial(t, p.Addr())
	if _, err := roundTrip(t, c, "x", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.ResetAll()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after ResetAll: %v, want ECONNRESET", err)
	}
	// The proxy keeps accepting.
	c2 := dial(t, p.Addr())
	if got, err := roundTrip(t, c2, "y", 5*time.Second); err != nil || got != "y" {
		t.Fatalf("new connection after ResetAll: %q, %v", got, err)
	}
}

func TestProxyTargetDown(t *testing.T) {
	ports, err := FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		return // reset before the dial returned: closed, as it should be
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("read through a proxy to nothing: %v, want the connection closed", err)
	}
}

func TestProxyClose(t *testing.T) {
	srv := newEchoServer(t)
	p, err := NewProxy(srv.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, p.Addr())
	p.Pause() // Close must not wait for held bytes
	if _, err := c.Write([]byte("z")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs")
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Fatal("the proxy still accepts after Close")
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("read after Close: %v, want the connection closed", err)
	}
}
