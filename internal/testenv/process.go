package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// PostgresOSUser is the unprivileged OS user that runs Postgres when the caller is
// root (Postgres refuses to run as root). It is created on first use.
const PostgresOSUser = "cdcrelaypg"

// Marker files by which [StopServers] recognises a server directory.
const (
	kafkaPIDFile    = "kafka.pid"
	postmasterPID   = "postmaster.pid"
	dirLinkPrefix   = "link-" // a symlink to a server directory placed elsewhere
	stopGracePeriod = 30 * time.Second
)

// FreePorts returns n distinct TCP ports on 127.0.0.1 that were free a moment ago.
// All n are held open together while choosing, so they differ from each other;
// another process may still take one before the caller binds it, which is why the
// servers retry with new ports when a bind fails.
func FreePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	// Servers restart during tests, leaving their port unbound for a moment.
	// A port from the kernel's ephemeral range can then be taken as the
	// local port of some client connection, and the server cannot bind it
	// again; so pick below that range.
	lo, hi := serverPortRange()
	ports := make([]int, 0, n)
	for attempt := 0; len(ports) < n; attempt++ {
		if attempt > 1000 {
			return nil, fmt.Errorf("find a free port in %d-%d: none after %d tries", lo, hi, attempt)
		}
		port := lo + mrand.IntN(hi-lo)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		ls = append(ls, l)
		ports = append(ports, port)
	}
	return ports, nil
}

// serverPortRange is where FreePorts picks: below the ephemeral range of
// /proc/sys/net/ipv4/ip_local_port_range (32768 by default).
func serverPortRange() (lo, hi int) {
	lo, hi = 20000, 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var first int
		if _, err := fmt.Sscan(string(b), &first); err == nil && first > lo+1000 {
			hi = first
		}
	}
	return lo, hi
}

// TempRoot is the directory under which servers create their own directories:
// $CDCRELAY_TESTENV_DIR if set, else the system temp dir.
func TempRoot() string {
	if d := os.Getenv(EnvDir); d != "" {
		return d
	}
	return os.TempDir()
}

// newServerDir creates a fresh directory for one server under parent (default
// [TempRoot]). If osUser must be able to reach it and cannot (an ancestor directory
// is not searchable by others, e.g. a checkout under /root), the directory is made
// under the system temp dir instead and a symlink in parent points to it, so that
// [StopServers] on parent still finds it. It returns the directory to use and the
// symlink ("" if none); the caller removes both.
func newServerDir(parent, prefix, osUser string) (dir, link string, err error) {
	if parent == "" {
		parent = TempRoot()
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", "", fmt.Errorf("create %s: %w", parent, err)
	}
	parent, err = filepath.Abs(parent)
	if err != nil {
		return "", "", err
	}
	if parent == filepath.Clean(os.TempDir()) {
		prefix = "cdcrelay-" + prefix // among everyone else's temp files
	}
	if osUser == "" || searchableByOthers(parent) {
		dir, err = os.MkdirTemp(parent, prefix)
		return dir, "", err
	}
	dir, err = os.MkdirTemp(os.TempDir(), "cdcrelay-"+prefix)
	if err != nil {
		return "", "", err
	}
	link = filepath.Join(parent, dirLinkPrefix+filepath.Base(dir))
	if err := os.Symlink(dir, link); err != nil {
		os.RemoveAll(dir)
		return "", "", fmt.Errorf("link %s: %w", link, err)
	}
	return dir, link, nil
}

// searchableByOthers reports whether every directory from / down to dir has the
// search bit for "others", so that an unrelated OS user can reach dir.
func searchableByOthers(dir string) bool {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == filepath.Dir(d) {
			return true
		}
	}
}

var osUserOnce struct {
	sync.Mutex
	ok bool
}

// serverOSUser returns the OS user Postgres must run as: "" when the caller is
// not root (the server runs as the caller), else [PostgresOSUser], created with
// useradd if missing.
func serverOSUser() (name string, uid, gid int, err error) {
	if os.Geteuid() != 0 {
		return "", -1, -1, nil
	}
	osUserOnce.Lock()
	defer osUserOnce.Unlock()
	u, err := user.Lookup(PostgresOSUser)
	if err != nil {
		out, addErr := exec.Command("useradd", "--system", "--no-create-home",
			"--shell", "/usr/sbin/nologin", PostgresOSUser).CombinedOutput()
		// Another process may have created it at the same time: look again.
		if u, err = user.Lookup(PostgresOSUser); err != nil {
			return "", 0, 0, fmt.Errorf("create OS user %s to run Postgres (it refuses to run as root): %v: %s",
				PostgresOSUser, addErr, bytes.TrimSpace(out))
		}
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return PostgresOSUser, uid, gid, nil
}

// chownTree hands dir and everything below it to uid:gid.
func chownTree(dir string, uid, gid int) error {
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// processAlive reports whether pid names a live (not zombie) process.
func processAlive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	// A zombie answers kill(0) until its parent reaps it, and PID 1 in a
	// container does not always reap: read its state.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist)
	}
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z' && stat[i+2] != 'X'
	}
	return true
}

// processMentions reports whether the command line of pid contains s, to make
// sure a pid read from a file still names our server and not a recycled pid.
func processMentions(pid int, s string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return bytes.Contains(cmdline, []byte(s))
}

// stopProcess sends sig to pid and waits up to grace for it to exit, then kills
// it with SIGKILL and waits again.
func stopProcess(ctx context.Context, pid int, sig syscall.Signal, grace time.Duration) error {
	if !processAlive(pid) {
		return nil
	}
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal pid %d: %w", pid, err)
	}
	if waitGone(ctx, pid, grace) {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if waitGone(ctx, pid, 10*time.Second) {
		return nil
	}
	return fmt.Errorf("pid %d did not exit after SIGKILL", pid)
}

func waitGone(ctx context.Context, pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for processAlive(pid) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// readPIDFile returns the pid on the first line of path.
func readPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s: no pid on the first line", path)
	}
	return pid, nil
}

// Server is a running server process found by [FindServers].
type Server struct {
	Kind string // "postgres", "kafka" or "registry"
	Dir  string // the Postgres data directory, or the Kafka or registry directory
	PID  int
}

// FindServers lists the live Postgres and Kafka servers whose directories lie
// under root, following the symlinks that server directories leave there when
// they had to be placed elsewhere. A pid file whose process is gone, or whose pid
// now names an unrelated process, does not count.
func FindServers(root string) []Server {
	var found []Server
	visit := func(base string) {
		_ = filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			kind := map[string]string{postmasterPID: "postgres", kafkaPIDFile: "kafka", registryPIDFile: "registry"}[d.Name()]
			if kind == "" {
				return nil
			}
			dir := filepath.Dir(p)
			if pid, err := readPIDFile(p); err == nil && processAlive(pid) && processMentions(pid, dir) {
				found = append(found, Server{Kind: kind, Dir: dir, PID: pid})
			}
			return nil
		})
	}
	visit(root)
	for _, target := range serverDirLinks(root) {
		visit(target)
	}
	return found
}

// StoppedServer is a server that [StopServers] stopped, or failed to.
type StoppedServer struct {
	Server
	Err error // nil when it is stopped now
}

// StopServers stops every server that [FindServers] finds under root: Postgres
// with a fast shutdown (SIGINT), Kafka with SIGTERM (a controlled shutdown), each
// escalating to SIGKILL after a grace period. It is the safety net behind
// `devenv down`: it also catches private servers of a test binary that was killed
// before its cleanups ran.
func StopServers(ctx context.Context, root string) []StoppedServer {
	servers := FindServers(root)
	stopped := make([]StoppedServer, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sig := syscall.SIGTERM
			if s.Kind == "postgres" {
				sig = syscall.SIGINT
			}
			stopped[i] = StoppedServer{Server: s, Err: stopProcess(ctx, s.PID, sig, stopGracePeriod)}
		}()
	}
	wg.Wait()
	return stopped
}

// RemoveServerDirs removes root and the directories that symlinks under it point
// to (see [newServerDir]).
func RemoveServerDirs(root string) error {
	var errs []error
	for _, target := range serverDirLinks(root) {
		errs = append(errs, os.RemoveAll(target))
	}
	errs = append(errs, os.RemoveAll(root))
	return errors.Join(errs...)
}

// serverDirLinks lists the targets of the server-directory symlinks under root.
func serverDirLinks(root string) []string {
	var targets []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type()&fs.ModeSymlink != 0 && strings.HasPrefix(d.Name(), dirLinkPrefix) {
			if t, err := os.Readlink(p); err == nil {
				targets = append(targets, t)
			}
		}
		return nil
	})
	return targets
}

// tailFile returns the last n bytes of path, for error messages.
func tailFile(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		_, _ = f.Seek(fi.Size()-n, 0)
	}
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(f)
	return strings.TrimSpace(buf.String())
}
