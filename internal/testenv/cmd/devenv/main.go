// Command devenv starts and stops a Postgres server, a Kafka broker and a
// schema registry (Apicurio Registry) that stay up in the background: the
// shared servers of `make test`, and the development servers of `make
// dev-up` / `make dev-down`.
//
//	devenv up --dir DIR     start them, write DIR/env.sh, print the addresses
//	devenv up --dir DIR --pg-matrix
//	                        also one Postgres per pinned server build
//	                        (testdata/postgres/versions.txt), for make test
//	devenv down --dir DIR   stop every server under DIR and remove DIR
//
// DIR/env.sh exports CDCRELAY_TEST_PG_DSN, CDCRELAY_TEST_KAFKA_BROKERS,
// CDCRELAY_TEST_REGISTRY_URL and CDCRELAY_KAFKA_JARS for the tests, CDCRELAY_TESTENV_DIR so that private servers
// of tests land under DIR too (and `down` catches any a killed test left behind),
// and the Postgres data and bin directories plus a cdcrelay_pg_ctl shell function
// for scripts that want to restart the server.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cdcrelay/cdcrelay/internal/testenv"
)

const usage = `usage: devenv up --dir DIR [--pg-matrix]
                          start Postgres and Kafka in the background (and
                          one Postgres per pinned build of the test matrix)
       devenv down --dir DIR   stop them (and any other server under DIR), remove DIR`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	dir := fs.String("dir", "", "directory for the servers, their logs and env.sh")
	matrix := fs.Bool("pg-matrix", false, "up: also start one Postgres per pinned server build")
	fs.Usage = func() { fmt.Fprintln(os.Stderr, usage) }
	_ = fs.Parse(os.Args[2:])
	if *dir == "" || fs.NArg() > 0 {
		fs.Usage()
		os.Exit(2)
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch os.Args[1] {
	case "up":
		err = up(ctx, abs, *matrix)
	case "down":
		err = down(ctx, abs)
	default:
		fs.Usage()
		os.Exit(2)
	}
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "devenv:", err)
	os.Exit(1)
}

// state is what up records in DIR/devenv.json.
type state struct {
	PostgresDSN  string   `json:"postgres_dsn"`
	PostgresData string   `json:"postgres_data"`
	PostgresBin  string   `json:"postgres_bin"`
	PostgresUser string   `json:"postgres_os_user,omitempty"`
	PostgresLog  string   `json:"postgres_log"`
	KafkaBrokers []string `json:"kafka_brokers"`
	KafkaDir     string   `json:"kafka_dir"`
	KafkaJars    string   `json:"kafka_jars"`
	KafkaPID     int      `json:"kafka_pid"`
	RegistryURL  string   `json:"registry_url"`
	RegistryDir  string   `json:"registry_dir"`
	// PostgresMatrix: one server per major version, the main one among them.
	PostgresMatrix []testenv.MatrixServer `json:"postgres_matrix,omitempty"`
}

func up(ctx context.Context, dir string, matrix bool) error {
	stateFile := filepath.Join(dir, "devenv.json")
	if b, err := os.ReadFile(stateFile); err == nil {
		var st state
		if err := json.Unmarshal(b, &st); err != nil {
			return fmt.Errorf("%s: %w (run `devenv down --dir %s`)", stateFile, err, dir)
		}
		var pgUp, kafkaUp, registryUp bool
		for _, s := range testenv.FindServers(dir) {
			pgUp = pgUp || s.Dir == st.PostgresData
			kafkaUp = kafkaUp || s.Dir == st.KafkaDir
			registryUp = registryUp || s.Dir == st.RegistryDir
		}
		switch {
		case pgUp && kafkaUp && registryUp:
			fmt.Printf("devenv: already up in %s\n", dir)
			printState(dir, st)
			return nil
		case pgUp || kafkaUp || registryUp:
			return fmt.Errorf("%s is half up (postgres running: %v, kafka running: %v, registry running: %v): run `devenv down --dir %s` first",
				dir, pgUp, kafkaUp, registryUp, dir)
		}
		fmt.Printf("devenv: servers in %s are gone; starting new ones\n", dir)
		if err := cleanup(ctx, dir); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// Under root the Postgres OS user must reach DIR's subdirectories.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}

	begin := time.Now()
	type pgResult struct {
		pg  *testenv.Postgres
		err error
	}
	pgc := make(chan pgResult, 1)
	go func() { // Postgres starts while the JVMs warm up
		pg, err := testenv.StartPostgres(ctx, testenv.PostgresOptions{ParentDir: dir})
		pgc <- pgResult{pg, err}
	}()
	type registryResult struct {
		r   *testenv.Registry
		err error
	}
	rc := make(chan registryResult, 1)
	go func() {
		r, err := testenv.StartRegistry(ctx, testenv.RegistryOptions{ParentDir: dir, Detach: true})
		rc <- registryResult{r, err}
	}()
	var matrixc chan matrixResult
	if matrix {
		matrixc = make(chan matrixResult, 1)
		go func() {
			servers, err := startMatrix(ctx, dir)
			matrixc <- matrixResult{servers, err}
		}()
	}
	kafka, kerr := testenv.StartKafka(ctx, testenv.KafkaOptions{ParentDir: dir, Detach: true})
	pr := <-pgc
	rr := <-rc
	var mr matrixResult
	if matrixc != nil {
		mr = <-matrixc
	}
	if err := errors.Join(pr.err, kerr, rr.err, mr.err); err != nil {
		if pr.pg != nil {
			pr.pg.Close()
		}
		for _, m := range mr.servers {
			m.pg.Close()
		}
		if kafka != nil {
			kafka.Close()
		}
		if rr.r != nil {
			rr.r.Close()
		}
		_ = cleanup(context.Background(), dir)
		return err
	}
	pg := pr.pg
	st := state{
		PostgresDSN:  pg.DSN("postgres"),
		PostgresData: pg.DataDir(),
		PostgresBin:  pg.BinDir(),
		PostgresUser: pg.OSUser(),
		PostgresLog:  pg.LogFile(),
		KafkaBrokers: kafka.Brokers(),
		KafkaDir:     kafka.Dir(),
		KafkaJars:    kafka.JarDir(),
		KafkaPID:     kafka.PID(),
		RegistryURL:  rr.r.URL(),
		RegistryDir:  rr.r.Dir(),
	}
	if matrix {
		main, err := testenv.MachinePostgres()
		if err != nil {
			return err
		}
		st.PostgresMatrix = append(st.PostgresMatrix, testenv.MatrixServer{Major: main.Major, DSN: pg.DSN("postgres")})
		for _, m := range mr.servers {
			st.PostgresMatrix = append(st.PostgresMatrix, testenv.MatrixServer{Major: m.build.Major, DSN: m.pg.DSN("postgres")})
		}
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	err := errors.Join(
		os.WriteFile(stateFile, append(b, '\n'), 0o644),
		os.WriteFile(filepath.Join(dir, "env.sh"), []byte(envScript(dir, st)), 0o644))
	if err != nil {
		_ = cleanup(context.Background(), dir)
		return err
	}
	fmt.Printf("devenv: up in %s after %.1fs\n", dir, time.Since(begin).Seconds())
	printState(dir, st)
	return nil
}

func printState(dir string, st state) {
	fmt.Printf("  postgres: %s\n  kafka:    %s\n  registry: %s\n", st.PostgresDSN, strings.Join(st.KafkaBrokers, ","), st.RegistryURL)
	for _, m := range st.PostgresMatrix {
		fmt.Printf("  pg%d:     %s\n", m.Major, m.DSN)
	}
	fmt.Printf("  use:      . %s\n", filepath.Join(dir, "env.sh"))
}

type matrixServer struct {
	build testenv.PostgresBuild
	pg    *testenv.Postgres
}

type matrixResult struct {
	servers []matrixServer
	err     error
}

// startMatrix starts one server per pinned build (the machine's own server
// is the main one), all at once: each initdb and start takes about a second.
func startMatrix(ctx context.Context, dir string) ([]matrixServer, error) {
	builds, err := testenv.PostgresBuilds()
	if err != nil {
		return nil, err
	}
	local, err := testenv.MachinePostgres()
	if err != nil {
		return nil, err
	}
	var pinned []testenv.PostgresBuild
	for _, b := range builds {
		if b.BinDir != local.BinDir {
			pinned = append(pinned, b)
		}
	}
	out := make([]matrixServer, len(pinned))
	errs := make([]error, len(pinned))
	done := make(chan int, len(pinned))
	for i, b := range pinned {
		go func() {
			pg, err := testenv.StartPostgres(ctx, testenv.PostgresOptions{ParentDir: dir, BinDir: b.BinDir})
			out[i], errs[i] = matrixServer{build: b, pg: pg}, err
			if err != nil {
				errs[i] = fmt.Errorf("PostgreSQL %s: %w", b.Version, err)
			}
			done <- i
		}()
	}
	for range pinned {
		<-done
	}
	var started []matrixServer
	for i := range out {
		if out[i].pg != nil {
			started = append(started, out[i])
		}
	}
	return started, errors.Join(errs...)
}

func envScript(dir string, st state) string {
	q := shellQuote
	var b strings.Builder
	fmt.Fprintf(&b, "# written by devenv up; source it: . %s\n", q(filepath.Join(dir, "env.sh")))
	fmt.Fprintf(&b, "export %s=%s\n", testenv.EnvPostgresDSN, q(st.PostgresDSN))
	fmt.Fprintf(&b, "export %s=%s\n", testenv.EnvKafkaBrokers, q(strings.Join(st.KafkaBrokers, ",")))
	fmt.Fprintf(&b, "export %s=%s\n", testenv.EnvKafkaJars, q(st.KafkaJars))
	fmt.Fprintf(&b, "export %s=%s\n", testenv.EnvRegistryURL, q(st.RegistryURL))
	fmt.Fprintf(&b, "export %s=%s\n", testenv.EnvPostgresBin, q(st.PostgresBin))
	if len(st.PostgresMatrix) > 0 {
		fmt.Fprintf(&b, "export %s=%s\n", testenv.EnvPostgresMatrix, q(testenv.FormatMatrix(st.PostgresMatrix)))
	}
	fmt.Fprintf(&b, "export %s=%s\n", testenv.EnvDir, q(filepath.Join(dir, "private")))
	fmt.Fprintf(&b, "export CDCRELAY_PG_DATA=%s\n", q(st.PostgresData))
	fmt.Fprintf(&b, "export CDCRELAY_PG_OS_USER=%s\n", q(st.PostgresUser))
	fmt.Fprintf(&b, "export CDCRELAY_PG_LOG=%s\n", q(st.PostgresLog))
	fmt.Fprintf(&b, "export CDCRELAY_KAFKA_LOG=%s\n", q(filepath.Join(st.KafkaDir, "logs", "server.log")))
	b.WriteString(`# cdcrelay_pg_ctl ARGS...: pg_ctl on the dev server as the user that owns it,
# e.g. cdcrelay_pg_ctl restart -m immediate
cdcrelay_pg_ctl() {
	if [ -n "$CDCRELAY_PG_OS_USER" ]; then
		runuser -u "$CDCRELAY_PG_OS_USER" -- "$CDCRELAY_PG_BIN/pg_ctl" -D "$CDCRELAY_PG_DATA" -l "$CDCRELAY_PG_LOG" -w "$@"
	else
		"$CDCRELAY_PG_BIN/pg_ctl" -D "$CDCRELAY_PG_DATA" -l "$CDCRELAY_PG_LOG" -w "$@"
	fi
}
`)
	return b.String()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func down(ctx context.Context, dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		fmt.Printf("devenv: nothing in %s\n", dir)
		return nil
	}
	return cleanup(ctx, dir)
}

// cleanup stops every server under dir and removes dir.
func cleanup(ctx context.Context, dir string) error {
	var errs []error
	for _, s := range testenv.StopServers(ctx, dir) {
		if s.Err != nil {
			errs = append(errs, fmt.Errorf("stop %s (pid %d) in %s: %w", s.Kind, s.PID, s.Dir, s.Err))
			continue
		}
		fmt.Printf("devenv: stopped %s (pid %d) in %s\n", s.Kind, s.PID, s.Dir)
	}
	if len(errs) > 0 {
		return errors.Join(errs...) // keep the directory: a server may still use it
	}
	return testenv.RemoveServerDirs(dir)
}
