package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RegistryVersion is the Apicurio Registry release the test environment runs
// (the Makefile's APICURIO_VERSION; a test checks that they agree). It names
// the default cache directory.
const RegistryVersion = "3.3.3"

// RegistryMinJava is the oldest Java that Apicurio Registry 3.x runs on.
const RegistryMinJava = 21

// RegistryOptions configures [StartRegistry].
type RegistryOptions struct {
	// ParentDir is where the registry's own directory is created (default
	// [TempRoot]).
	ParentDir string
	// DistDir holds the unpacked registry (default [RegistryDistDir]).
	DistDir string
	// Port on 127.0.0.1; 0 picks a free one.
	Port int
	// HeapMB is the JVM's maximum heap (default 160: the in-memory storage of
	// a test run holds a few hundred schemas).
	HeapMB int
	// Detach starts it in its own session so that it outlives the caller
	// (devenv up). Otherwise it is killed when the caller dies.
	Detach bool
	// ReadyTimeout bounds the wait for the registry to answer (default 90s).
	ReadyTimeout time.Duration
}

// Registry is an Apicurio Registry 3.x server (a Quarkus application, its
// in-memory storage) in a JVM of its own. Clients speak its
// Confluent-compatible API at [Registry.URL]. The methods are safe for
// concurrent use.
type Registry struct {
	opts    RegistryOptions
	dir     string
	distDir string
	java    string
	port    int

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	waited error
}

// registryPIDFile marks a registry's directory for [FindServers].
const registryPIDFile = "registry.pid"

// StartRegistry starts a registry and returns once its Confluent-compatible
// API answers. It needs a Java of version [RegistryMinJava] or newer
// ([RegistryJava] finds one). Call Close to stop it and remove its directory.
func StartRegistry(ctx context.Context, opts RegistryOptions) (*Registry, error) {
	dist := opts.DistDir
	if dist == "" {
		var err error
		if dist, err = RegistryDistDir(); err != nil {
			return nil, err
		}
	}
	java, err := RegistryJava()
	if err != nil {
		return nil, err
	}
	dir, _, err := newServerDir(opts.ParentDir, "registry-", "")
	if err != nil {
		return nil, err
	}
	r := &Registry{opts: opts, dir: dir, distDir: dist, java: java, port: opts.Port}
	for attempt := 1; ; attempt++ {
		if opts.Port == 0 {
			ports, err := FreePorts(1)
			if err != nil {
				return nil, err
			}
			r.port = ports[0]
		}
		err := r.start(ctx)
		if err == nil {
			return r, nil
		}
		r.kill()
		bindFailed := strings.Contains(tailFile(r.LogFile(), 1<<16), "Address already in use")
		if opts.Port != 0 || !bindFailed || attempt == 3 || ctx.Err() != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

func (r *Registry) start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	out, err := os.OpenFile(r.LogFile(), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	args := []string{
		fmt.Sprintf("-Xmx%dm", cmp0(r.opts.HeapMB, 160)), "-Xss512k",
		// A test server: quick start and a small footprint matter, peak
		// throughput does not.
		"-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:+ExitOnOutOfMemoryError",
		"-Djava.awt.headless=true",
		// Names the directory on the command line, where FindServers looks.
		"-Dcdcrelay.testenv.dir=" + r.dir,
		"-Dquarkus.http.host=127.0.0.1",
		"-Dquarkus.http.port=" + strconv.Itoa(r.port),
		// The management interface would bind 0.0.0.0:9000: two registries
		// (or anything else there) would clash.
		"-Dquarkus.management.enabled=false",
		"-Dquarkus.log.level=WARN",
		"-Dquarkus.log.category.\"io.apicurio\".level=WARN",
		"-Dquarkus.http.access-log.enabled=false",
		"-jar", filepath.Join(r.distDir, "quarkus-run.jar"),
	}
	// Not CommandContext: the registry must outlive ctx.
	cmd := exec.Command(r.java, args...)
	cmd.Dir = r.dir
	cmd.Stdout, cmd.Stderr = out, out
	if r.opts.Detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start registry: %w", err)
	}
	r.cmd = cmd
	r.exited = make(chan struct{})
	go func(exited chan struct{}) {
		r.waited = cmd.Wait()
		close(exited)
	}(r.exited)
	if err := os.WriteFile(filepath.Join(r.dir, registryPIDFile), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		return err
	}
	return r.waitReady(ctx)
}

func (r *Registry) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, cmpDuration(r.opts.ReadyTimeout, 90*time.Second))
	defer cancel()
	hc := &http.Client{Timeout: 2 * time.Second}
	var err error
	for {
		select {
		case <-r.exited:
			return fmt.Errorf("registry exited during start (%v)\n--- %s (tail) ---\n%s", r.waited, r.LogFile(), tailFile(r.LogFile(), 4096))
		default:
		}
		var resp *http.Response
		if resp, err = hc.Get(r.URL() + "/config"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET /config: %s", resp.Status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("registry in %s not ready: %w\n--- %s (tail) ---\n%s", r.dir, err, r.LogFile(), tailFile(r.LogFile(), 4096))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (r *Registry) kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	select {
	case <-r.exited:
	default:
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
}

// Close kills the registry and removes its directory.
func (r *Registry) Close() error {
	r.kill()
	return os.RemoveAll(r.dir)
}

// URL is the base of the Confluent-compatible API,
// "http://127.0.0.1:PORT/apis/ccompat/v7".
func (r *Registry) URL() string { return "http://" + r.Addr() + "/apis/ccompat/v7" }

// Addr is the registry's host:port, the target of a [Proxy] in front of it.
func (r *Registry) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// Dir is the registry's own directory (its pid file and log).
func (r *Registry) Dir() string { return r.dir }

// LogFile is the registry's output.
func (r *Registry) LogFile() string { return filepath.Join(r.dir, "registry.log") }

// PID is the registry's process id.
func (r *Registry) PID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// DefaultRegistryDistDir is where `make registry-dist` unpacks the registry:
// ${XDG_CACHE_HOME:-$HOME/.cache}/cdcrelay/apicurio-registry-<RegistryVersion>.
func DefaultRegistryDistDir() string {
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		cache = filepath.Join(os.Getenv("HOME"), ".cache")
	}
	return filepath.Join(cache, "cdcrelay", "apicurio-registry-"+RegistryVersion)
}

// RegistryDistDir returns $CDCRELAY_REGISTRY_DIST or [DefaultRegistryDistDir]
// after checking that it holds the registry.
func RegistryDistDir() (string, error) {
	dir := os.Getenv(EnvRegistryDist)
	if dir == "" {
		dir = DefaultRegistryDistDir()
	}
	if !fileExists(filepath.Join(dir, "quarkus-run.jar")) {
		return "", fmt.Errorf("no Apicurio Registry in %s: run `make registry-dist` or set %s", dir, EnvRegistryDist)
	}
	return filepath.Abs(dir)
}

var (
	registryJavaOnce sync.Once
	registryJavaPath string
	registryJavaErr  error
)

// RegistryJava finds a java of version [RegistryMinJava] or newer: JAVA_HOME's,
// the one on PATH, then every /usr/lib/jvm/*/bin/java (the newest wins). The
// machine's default Java may be older (Kafka runs on 17), so the registry
// takes its own.
func RegistryJava() (string, error) {
	registryJavaOnce.Do(func() {
		var candidates []string
		if home := os.Getenv("JAVA_HOME"); home != "" {
			candidates = append(candidates, filepath.Join(home, "bin", "java"))
		}
		if p, err := exec.LookPath("java"); err == nil {
			candidates = append(candidates, p)
		}
		jvms, _ := filepath.Glob("/usr/lib/jvm/*/bin/java")
		slices.Sort(jvms)
		candidates = append(candidates, jvms...)
		best, bestVersion := "", 0
		var seen []string
		for _, c := range candidates {
			v, err := javaMajorVersion(c)
			if err != nil {
				continue
			}
			seen = append(seen, fmt.Sprintf("%s (%d)", c, v))
			if v > bestVersion {
				best, bestVersion = c, v
			}
		}
		switch {
		case bestVersion >= RegistryMinJava:
			registryJavaPath = best
		case len(seen) == 0:
			registryJavaErr = fmt.Errorf("Apicurio Registry needs Java %d or newer, and no java was found (JAVA_HOME, PATH, /usr/lib/jvm/*/bin/java)", RegistryMinJava)
		default:
			registryJavaErr = fmt.Errorf("Apicurio Registry needs Java %d or newer; found only %s: install a newer JDK (e.g. under /usr/lib/jvm) or set JAVA_HOME to one",
				RegistryMinJava, strings.Join(seen, ", "))
		}
	})
	return registryJavaPath, registryJavaErr
}

var javaVersionRe = regexp.MustCompile(`version "(\d+)(?:\.(\d+))?`)

// javaMajorVersion runs `java -version` and reads the feature release
// ("1.8.0_x" is 8, "17.0.15" is 17).
func javaMajorVersion(java string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, java, "-version").CombinedOutput()
	if err != nil {
		return 0, err
	}
	m := javaVersionRe.FindSubmatch(out)
	if m == nil {
		return 0, errors.New("no version in `java -version`: " + string(bytes.TrimSpace(out)))
	}
	v, _ := strconv.Atoi(string(m[1]))
	if v == 1 && len(m[2]) > 0 {
		v, _ = strconv.Atoi(string(m[2]))
	}
	return v, nil
}
