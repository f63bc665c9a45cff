package testenv

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresOptions configures [StartPostgres]. The zero value gives a cluster fit
// for logical replication tests.
type PostgresOptions struct {
	// ParentDir is where the cluster's own directory is created (default
	// [TempRoot]). Close removes the cluster's directory, not ParentDir.
	ParentDir string
	// Port to listen on, on 127.0.0.1. 0 picks a free one (and picks again if
	// the bind fails at start).
	Port int
	// WALLevelReplica starts the server with wal_level=replica instead of
	// logical, for tests of the relay's error when logical decoding is off.
	WALLevelReplica bool
	// Fsync turns fsync on. It is off by default: the data survives a crash of
	// the server (Restart with immediate), not of the machine, which is all a
	// throw-away cluster needs.
	Fsync bool
	// WALSenderTimeout sets wal_sender_timeout (0: the server default, 60s).
	WALSenderTimeout time.Duration
	// MaxReplicationSlots and MaxWALSenders default to 32.
	MaxReplicationSlots int
	MaxWALSenders       int
	// Settings are further postgresql.conf settings, e.g.
	// {"max_slot_wal_keep_size": "64MB"}; they override the ones above.
	Settings map[string]string
	// BinDir holds the initdb, pg_ctl and postgres to run (default:
	// [PostgresBinDir], the machine's server); [PostgresBuildFor] finds the
	// builds of the test matrix.
	BinDir string
}

// Postgres is a throw-away PostgreSQL cluster. Its superuser is "postgres", with
// trust authentication on loopback, for normal and replication connections. The
// methods are safe for concurrent use.
type Postgres struct {
	dir     string // the cluster's own directory: data/, postgres.log
	link    string // symlink to dir left in the parent directory, if any
	dataDir string
	logFile string
	bin     string
	osUser  string // "" when the server runs as the caller
	uid     int
	gid     int

	port int // fixed once StartPostgres returns

	mu       sync.Mutex // serialises Start, Stop, Restart, SetSettings
	settings map[string]string
}

// settingsFile is included from postgresql.conf; [Postgres.SetSettings] rewrites it.
const settingsFile = "cdcrelay.conf"

// StartPostgres creates a cluster in a new directory and starts it. Call Close
// to stop it and remove the directory.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	bin := opts.BinDir
	var err error
	if bin == "" {
		if bin, err = PostgresBinDir(); err != nil {
			return nil, err
		}
	}
	osUser, uid, gid, err := serverOSUser()
	if err != nil {
		return nil, err
	}
	dir, link, err := newServerDir(opts.ParentDir, "pg-", osUser)
	if err != nil {
		return nil, err
	}
	p := &Postgres{
		dir: dir, link: link,
		dataDir: filepath.Join(dir, "data"), logFile: filepath.Join(dir, "postgres.log"),
		bin: bin, osUser: osUser, uid: uid, gid: gid,
		settings: defaultSettings(opts),
	}
	if err := p.init(ctx); err != nil {
		p.removeDir()
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		p.port = opts.Port
		if p.port == 0 {
			ports, err := FreePorts(1)
			if err != nil {
				p.removeDir()
				return nil, err
			}
			p.port = ports[0]
		}
		err := p.writeSettings()
		if err == nil {
			err = p.Start(ctx)
		}
		if err == nil {
			return p, nil
		}
		if opts.Port != 0 || attempt == 3 || !strings.Contains(tailFile(p.logFile, 4096), "could not bind") {
			p.removeDir()
			return nil, err
		}
	}
}

func defaultSettings(opts PostgresOptions) map[string]string {
	s := map[string]string{
		"listen_addresses":        "'127.0.0.1'",
		"unix_socket_directories": "''", // TCP only: socket paths have a length limit
		"wal_level":               "logical",
		"max_replication_slots":   strconv.Itoa(cmp0(opts.MaxReplicationSlots, 32)),
		"max_wal_senders":         strconv.Itoa(cmp0(opts.MaxWALSenders, 32)),
		"max_connections":         "200",
		"fsync":                   "off",
		"full_page_writes":        "off",
		"log_line_prefix":         "'%m [%p] %q%a '",
		"timezone":                "'UTC'",
	}
	if opts.WALLevelReplica {
		s["wal_level"] = "replica"
	}
	if opts.Fsync {
		s["fsync"] = "on"
		s["full_page_writes"] = "on"
	}
	if opts.WALSenderTimeout > 0 {
		s["wal_sender_timeout"] = strconv.FormatInt(opts.WALSenderTimeout.Milliseconds(), 10)
	}
	maps.Copy(s, opts.Settings)
	return s
}

func cmp0(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// pgHBA trusts every local and loopback connection, replication included.
const pgHBA = `# written by cdcrelay's testenv: trust on loopback only
local   all          all                  trust
host    all          all   127.0.0.1/32   trust
host    all          all   ::1/128        trust
local   replication  all                  trust
host    replication  all   127.0.0.1/32   trust
host    replication  all   ::1/128        trust
`

func (p *Postgres) init(ctx context.Context) error {
	if p.osUser != "" {
		if err := chownTree(p.dir, p.uid, p.gid); err != nil {
			return err
		}
		if err := os.Chmod(p.dir, 0o700); err != nil {
			return err
		}
	}
	out, err := p.command(ctx, "initdb", "-D", p.dataDir, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions").CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb %s: %w: %s", p.dataDir, err, strings.TrimSpace(string(out)))
	}
	if err := p.writeFile("pg_hba.conf", pgHBA); err != nil {
		return err
	}
	conf := filepath.Join(p.dataDir, "postgresql.conf")
	f, err := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "\n# cdcrelay testenv settings; rewritten by SetSettings\ninclude_if_exists = '%s'\n", settingsFile)
	return errors.Join(err, f.Close())
}

// writeSettings writes the settings file from p.settings and p.port.
func (p *Postgres) writeSettings() error {
	var b strings.Builder
	b.WriteString("# written by cdcrelay's testenv\n")
	fmt.Fprintf(&b, "port = %d\n", p.port)
	for _, k := range slices.Sorted(maps.Keys(p.settings)) {
		fmt.Fprintf(&b, "%s = %s\n", k, p.settings[k])
	}
	return p.writeFile(settingsFile, b.String())
}

func (p *Postgres) writeFile(name, content string) error {
	path := filepath.Join(p.dataDir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	if p.osUser != "" {
		return os.Chown(path, p.uid, p.gid)
	}
	return nil
}

// command runs a Postgres program from the bin dir as the server's OS user.
func (p *Postgres) command(ctx context.Context, prog string, args ...string) *exec.Cmd {
	path := filepath.Join(p.bin, prog)
	var cmd *exec.Cmd
	if p.osUser != "" {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", p.osUser, "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = p.dir
	// PG* variables of the caller (PGDATA, PGPORT, ...) must not steer the tools.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "LC_ALL=C")
	return cmd
}

func (p *Postgres) pgCtl(ctx context.Context, args ...string) error {
	args = append([]string{"-D", p.dataDir}, args...)
	out, err := p.command(ctx, "pg_ctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %w: %s\n--- %s (tail) ---\n%s", strings.Join(args, " "), err,
			strings.TrimSpace(string(out)), p.logFile, tailFile(p.logFile, 2048))
	}
	return nil
}

// Running reports whether the server is running (pg_ctl status).
func (p *Postgres) Running(ctx context.Context) bool {
	return p.command(ctx, "pg_ctl", "-D", p.dataDir, "status").Run() == nil
}

// Start starts the server (if it is not running) and waits until it accepts
// connections.
func (p *Postgres) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.Running(ctx) {
		return nil
	}
	if err := p.pgCtl(ctx, "start", "-l", p.logFile, "-w", "-t", "60", "-s"); err != nil {
		return err
	}
	return p.waitReady(ctx)
}

// Stop stops the server with a fast shutdown, if it is running.
func (p *Postgres) Stop(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.Running(ctx) {
		return nil
	}
	return p.pgCtl(ctx, "stop", "-m", "fast", "-w", "-t", "60", "-s")
}

// Restart restarts the server. With immediate it is `pg_ctl restart -m
// immediate`: every server process exits at once without a checkpoint, as in a
// crash, and the start runs crash recovery. Otherwise it is a fast shutdown.
func (p *Postgres) Restart(ctx context.Context, immediate bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.restart(ctx, immediate)
}

func (p *Postgres) restart(ctx context.Context, immediate bool) error {
	mode := "fast"
	if immediate {
		mode = "immediate"
	}
	if err := p.pgCtl(ctx, "restart", "-m", mode, "-l", p.logFile, "-w", "-t", "60", "-s"); err != nil {
		return err
	}
	return p.waitReady(ctx)
}

// SetSettings changes postgresql.conf settings (for example {"wal_level":
// "logical"} or {"max_wal_senders": "0"}) and, if the server is running,
// restarts it with a fast shutdown so that they take effect. Values are written
// as given: quote strings as postgresql.conf wants ('...').
func (p *Postgres) SetSettings(ctx context.Context, settings map[string]string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	maps.Copy(p.settings, settings)
	if err := p.writeSettings(); err != nil {
		return err
	}
	if !p.Running(ctx) {
		return nil
	}
	return p.restart(ctx, false)
}

// waitReady waits until a query succeeds. pg_ctl -w already waits for the
// postmaster to accept connections; this also covers the end of crash recovery.
func (p *Postgres) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, p.dsn("postgres"))
		if err == nil {
			err = conn.Ping(ctx)
			conn.Close(context.Background())
			if err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("postgres on port %d not ready: %w", p.port, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close stops the server (immediately: the data is thrown away) and removes its
// directory.
func (p *Postgres) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	if p.Running(ctx) {
		err = p.pgCtl(ctx, "stop", "-m", "immediate", "-w", "-t", "60", "-s")
	}
	if err != nil {
		return err
	}
	return p.removeDir()
}

func (p *Postgres) removeDir() error {
	err := os.RemoveAll(p.dir)
	if p.link != "" {
		err = errors.Join(err, os.Remove(p.link))
	}
	return err
}

// Port is the TCP port on 127.0.0.1.
func (p *Postgres) Port() int { return p.port }

// Addr is host:port.
func (p *Postgres) Addr() string { return fmt.Sprintf("127.0.0.1:%d", p.Port()) }

// DataDir is the cluster's data directory (PGDATA).
func (p *Postgres) DataDir() string { return p.dataDir }

// Dir is the cluster's own directory (data directory and log file).
func (p *Postgres) Dir() string { return p.dir }

// BinDir is the directory of initdb, pg_ctl and postgres used.
func (p *Postgres) BinDir() string { return p.bin }

// OSUser is the OS user the server runs as, "" for the caller.
func (p *Postgres) OSUser() string { return p.osUser }

// LogFile is the server log.
func (p *Postgres) LogFile() string { return p.logFile }

// DSN is a postgres:// URL for database db as the superuser "postgres".
// Append "&replication=database" for a logical replication connection.
func (p *Postgres) DSN(db string) string { return p.dsn(db) }

func (p *Postgres) dsn(db string) string {
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: p.Addr(), Path: "/" + db,
		RawQuery: "sslmode=disable"}
	return u.String()
}

// Connect opens a connection to database db.
func (p *Postgres) Connect(ctx context.Context, db string) (*pgx.Conn, error) {
	return pgx.Connect(ctx, p.dsn(db))
}

// ExecSQL runs sql (one or more statements when there are no args) in database db.
func (p *Postgres) ExecSQL(ctx context.Context, db, sql string, args ...any) error {
	conn, err := p.Connect(ctx, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("database %s: %w", db, err)
	}
	return nil
}

// Show returns the current value of a server setting (SHOW name).
func (p *Postgres) Show(ctx context.Context, name string) (string, error) {
	conn, err := p.Connect(ctx, "postgres")
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var v string
	err = conn.QueryRow(ctx, "SHOW "+pgx.Identifier{name}.Sanitize()).Scan(&v)
	return v, err
}

// CreateDatabase creates database name.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) error {
	return p.ExecSQL(ctx, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
}

// PostgresBinDir finds the directory holding initdb, pg_ctl and postgres:
// $CDCRELAY_PG_BIN, else the directory of initdb on PATH (symlinks resolved),
// else the newest /usr/lib/postgresql/*/bin.
func PostgresBinDir() (string, error) {
	var candidates []string
	if d := os.Getenv(EnvPostgresBin); d != "" {
		candidates = append(candidates, d)
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			candidates = append(candidates, filepath.Dir(r))
		}
	}
	globbed, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(globbed, func(a, b string) int { return pgMajor(b) - pgMajor(a) })
	candidates = append(candidates, globbed...)
	for _, d := range candidates {
		ok := true
		for _, prog := range []string{"initdb", "pg_ctl", "postgres"} {
			if fi, err := os.Stat(filepath.Join(d, prog)); err != nil || fi.IsDir() {
				ok = false
			}
		}
		if ok {
			return filepath.Abs(d)
		}
	}
	return "", fmt.Errorf("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found: set %s or put initdb on PATH", EnvPostgresBin)
}

func pgMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}
