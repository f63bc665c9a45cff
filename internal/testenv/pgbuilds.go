package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// EnvPostgresBuilds names the directory that holds the unpacked server builds
// of the test matrix as postgres-<version>/ (default: the cache that `make
// pg-builds` fills, ${XDG_CACHE_HOME:-$HOME/.cache}/cdcrelay).
const EnvPostgresBuilds = "CDCRELAY_PG_BUILDS"

// PostgresVersionsFile lists the pinned server builds, relative to the
// repository's root.
const PostgresVersionsFile = "testdata/postgres/versions.txt"

// PostgresBuild is one PostgreSQL server: a pinned build from
// [PostgresVersionsFile], or the machine's own server.
type PostgresBuild struct {
	Major   int    // 14, 15, ...
	Version string // "17.11.0" for a pinned build, the server's own version for the machine's
	BinDir  string // holds initdb, pg_ctl and postgres
}

// PinnedPostgresVersions reads [PostgresVersionsFile]: the versions of the
// builds `make pg-builds` fetches, in file order.
func PinnedPostgresVersions() ([]string, error) {
	_, file, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(file), "..", "..", PostgresVersionsFile)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if v := strings.TrimSpace(line); v != "" {
			out = append(out, v)
		}
	}
	return out, sc.Err()
}

// DefaultPostgresBuildsDir is where `make pg-builds` unpacks the builds:
// ${XDG_CACHE_HOME:-$HOME/.cache}/cdcrelay, next to the Kafka jars.
func DefaultPostgresBuildsDir() string {
	return filepath.Dir(DefaultKafkaJarDir())
}

func majorOf(version string) int {
	m, _ := strconv.Atoi(strings.SplitN(version, ".", 2)[0])
	return m
}

// PostgresBuilds returns every server of the matrix, ordered by major
// version: the pinned builds and the machine's own server (whose major
// version the pins leave out). A pinned build that is not unpacked is an
// error that names `make pg-builds`.
func PostgresBuilds() ([]PostgresBuild, error) {
	versions, err := PinnedPostgresVersions()
	if err != nil {
		return nil, err
	}
	var out []PostgresBuild
	for _, v := range versions {
		bin, err := postgresBuildBin(v)
		if err != nil {
			return nil, err
		}
		out = append(out, PostgresBuild{Major: majorOf(v), Version: v, BinDir: bin})
	}
	if local, err := MachinePostgres(); err == nil {
		out = append(out, local)
	} else {
		return nil, err
	}
	for i := 1; i < len(out); i++ { // a handful: insertion sort by major
		for j := i; j > 0 && out[j].Major < out[j-1].Major; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out, nil
}

// PostgresBuildFor returns the server of the given major version: a pinned
// build, or the machine's server.
func PostgresBuildFor(major int) (PostgresBuild, error) {
	all, err := PostgresBuilds()
	if err != nil {
		return PostgresBuild{}, err
	}
	for _, b := range all {
		if b.Major == major {
			return b, nil
		}
	}
	return PostgresBuild{}, fmt.Errorf("no PostgreSQL %d in the test matrix (%s and the machine's server)", major, PostgresVersionsFile)
}

var machinePG struct {
	once  sync.Once
	build PostgresBuild
	err   error
}

// MachinePostgres is the machine's own server ([PostgresBinDir]) and its version.
func MachinePostgres() (PostgresBuild, error) {
	machinePG.once.Do(func() {
		bin, err := PostgresBinDir()
		if err != nil {
			machinePG.err = err
			return
		}
		out, err := exec.Command(filepath.Join(bin, "postgres"), "--version").Output()
		if err != nil {
			machinePG.err = fmt.Errorf("%s/postgres --version: %w", bin, err)
			return
		}
		// "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
		fields := strings.Fields(string(out))
		if len(fields) < 3 {
			machinePG.err = fmt.Errorf("%s/postgres --version: unexpected %q", bin, out)
			return
		}
		machinePG.build = PostgresBuild{Major: majorOf(fields[2]), Version: fields[2], BinDir: bin}
	})
	return machinePG.build, machinePG.err
}

var reachableBuilds sync.Mutex

// postgresBuildBin returns the bin directory of the pinned build version. The
// server runs as [PostgresOSUser] under root, and the cache usually lies
// under a home directory that user cannot enter: then the build is linked
// (hard links, a copy across file systems) into a directory it can reach,
// once per machine; Postgres finds its lib and share directories relative to the real
// path of its binary, so a symlink would not do.
func postgresBuildBin(version string) (string, error) {
	root := os.Getenv(EnvPostgresBuilds)
	if root == "" {
		root = DefaultPostgresBuildsDir()
	}
	dir := filepath.Join(root, "postgres-"+version)
	if fi, err := os.Stat(filepath.Join(dir, "bin", "postgres")); err != nil || fi.IsDir() {
		return "", fmt.Errorf("no PostgreSQL %s build in %s: run `make pg-builds` (or set %s)", version, dir, EnvPostgresBuilds)
	}
	osUser, _, _, err := serverOSUser()
	if err != nil {
		return "", err
	}
	if osUser == "" || searchableByOthers(dir) {
		return filepath.Abs(filepath.Join(dir, "bin"))
	}
	reachableBuilds.Lock()
	defer reachableBuilds.Unlock()
	// The system temp dir, not TempRoot: the link is reused by later runs
	// (its stamp says which build it holds).
	parent := os.TempDir()
	stamp, err := os.ReadFile(filepath.Join(dir, ".cdcrelay-stamp"))
	if err != nil {
		return "", fmt.Errorf("PostgreSQL %s build in %s has no stamp: run `make pg-builds`", version, dir)
	}
	linked := filepath.Join(parent, "cdcrelay-pgbuild-"+version)
	if b, err := os.ReadFile(filepath.Join(linked, ".cdcrelay-stamp")); err == nil && string(b) == string(stamp) {
		return filepath.Join(linked, "bin"), nil
	}
	// Another test process may link the same build at the same time: each
	// fills its own directory and renames it into place; the loser's rename
	// fails on the existing directory, which is as good.
	tmp, err := os.MkdirTemp(parent, "cdcrelay-pgbuild-"+version+".tmp")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := linkTree(dir, tmp); err != nil {
		return "", fmt.Errorf("link PostgreSQL %s build to %s: %w", version, tmp, err)
	}
	if err := os.Rename(tmp, linked); err != nil {
		if b, rerr := os.ReadFile(filepath.Join(linked, ".cdcrelay-stamp")); rerr != nil || string(b) != string(stamp) {
			// A stale copy of another build: replace it.
			if err := os.RemoveAll(linked); err != nil {
				return "", err
			}
			if err := os.Rename(tmp, linked); err != nil {
				return "", err
			}
		}
	}
	return filepath.Join(linked, "bin"), nil
}

// linkTree recreates the tree src under dst (which exists) with hard links,
// copying files where a link is not possible.
func linkTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel == "." {
			return nil
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.Mkdir(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		}
		if err := os.Link(p, target); err == nil {
			return nil
		} else if !errors.Is(err, fs.ErrPermission) && !isCrossDevice(err) {
			return err
		}
		return copyFile(p, target)
	})
}

func isCrossDevice(err error) bool {
	var le *os.LinkError
	return errors.As(err, &le) && strings.Contains(le.Err.Error(), "cross-device")
}

func copyFile(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, fi.Mode().Perm())
}

// postgresVersionNum reads server_version_num, e.g. 170011.
func postgresVersionNum(ctx context.Context, p *Postgres) (int, error) {
	v, err := p.Show(ctx, "server_version_num")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(v)
}

// NewPostgresVersion is [NewPostgres] with the server of the given major
// version from the test matrix (a pinned build, or the machine's server).
func NewPostgresVersion(t testing.TB, major int, opts PostgresOptions) *Postgres {
	t.Helper()
	b, err := PostgresBuildFor(major)
	if err != nil {
		unavailable(t, "%v", err)
	}
	opts.BinDir = b.BinDir
	return NewPostgres(t, opts)
}
