package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// relayProc is the relay running as its own process, so that its CPU time
// (wait4's rusage) and peak RSS (/proc/PID/status VmHWM) come from the
// kernel, not from the relay.
//
// Peak RSS is not wait4's ru_maxrss: Linux carries the hiwater mark of the
// address space a process had before exec into it, and Go's os/exec starts
// the child sharing the harness's address space (CLONE_VM), so ru_maxrss is
// never below the harness's own RSS at that moment (several workloads then
// reported the same figure). VmHWM is the relay's own address space only.
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
	hwm, hwmErr := peakRSSMB(p.cmd.Process.Pid)
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
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok && hwmErr != nil {
			u.maxRSSMB = float64(ru.Maxrss) / 1024 // kilobytes on Linux; an upper bound, see relayProc
		}
	}
	if hwmErr == nil {
		u.maxRSSMB = hwm
	}
	return u, err
}

// peakRSSMB reads VmHWM, the peak resident set of pid's address space, in MB.
func peakRSSMB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			if err != nil {
				return 0, fmt.Errorf("VmHWM of %d: %q: %v", pid, rest, err)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
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
