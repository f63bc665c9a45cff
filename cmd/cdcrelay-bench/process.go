package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// relayProc is the relay running as its own process, so that its CPU time and
// peak RSS come from the kernel (wait4's rusage), not from the relay.
type relayProc struct {
	cmd     *exec.Cmd
	started time.Time
	out     *lockedBuffer
	done    chan struct{}
	err     error
}

type usage struct {
	cpu      float64
	maxRSSMB float64
}

func startRelay(o *options, b *bench) (*relayProc, error) {
	var cmd *exec.Cmd
	if o.profileDir != "" {
		cmd = exec.Command(o.benchBin, "relay", "--config", b.cfgPath,
			"--cpuprofile", filepath.Join(o.profileDir, b.name+".cpu.pprof"),
			"--memprofile", filepath.Join(o.profileDir, b.name+".heap.pprof"))
	} else {
		cmd = exec.Command(o.relayBin, "run", "--config", b.cfgPath)
	}
	p := &relayProc{cmd: cmd, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if o.relayLog != "" {
		f, err := os.OpenFile(o.relayLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, err
		}
		w := io.MultiWriter(p.out, f)
		cmd.Stdout, cmd.Stderr = w, w
	}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *relayProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *relayProc) output() string { return p.out.String() }

// stop sends SIGTERM (the relay commits and exits), waits, and reads the
// process's resource usage.
func (p *relayProc) stop() (usage, error) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case <-p.done:
		err = p.err
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		err = fmt.Errorf("relay did not stop within 30s of SIGTERM")
	}
	var u usage
	if ps := p.cmd.ProcessState; ps != nil {
		u.cpu = (ps.UserTime() + ps.SystemTime()).Seconds()
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			u.maxRSSMB = float64(ru.Maxrss) / 1024 // kilobytes on Linux
		}
	}
	return u, err
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
