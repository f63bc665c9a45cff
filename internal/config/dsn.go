package config

import (
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// FollowPrimary completes a DSN that names several hosts ("host=a,b" or
// "postgres://a,b/db", as libpq and pgx allow) but not which server it wants:
// it adds target_session_attrs=primary, so that every connection of the
// relay - replication, lock, slot poller, backfill reader - reaches
// whichever host is the primary now, also after a failover. A DSN with one
// host, an explicit target_session_attrs (or $PGTARGETSESSIONATTRS), or one
// that does not parse is returned as it is.
func FollowPrimary(dsn string) string {
	if targetSessionAttrs(dsn) != "" || len(dsnHosts(dsn)) < 2 {
		return dsn
	}
	if isURL(dsn) {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		return dsn + sep + "target_session_attrs=primary"
	}
	return strings.TrimSpace(dsn) + " target_session_attrs=primary"
}

// DSNHosts lists the distinct "host:port" servers a DSN names, in order.
func DSNHosts(dsn string) []string { return dsnHosts(dsn) }

func dsnHosts(dsn string) []string {
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil
	}
	var out []string
	seen := map[string]bool{}
	add := func(host string, port uint16) {
		hp := fmt.Sprintf("%s:%d", host, port)
		if !seen[hp] {
			seen[hp] = true
			out = append(out, hp)
		}
	}
	add(pc.Host, pc.Port)
	for _, f := range pc.Fallbacks {
		add(f.Host, f.Port)
	}
	return out
}

var kvTargetSessionAttrs = regexp.MustCompile(`(?:^|\s)target_session_attrs\s*=\s*'?([a-z-]*)`)

// targetSessionAttrs is the target_session_attrs a DSN asks for (or
// $PGTARGETSESSIONATTRS), "" when neither says.
func targetSessionAttrs(dsn string) string {
	if isURL(dsn) {
		if u, err := url.Parse(dsn); err == nil {
			if v := u.Query().Get("target_session_attrs"); v != "" {
				return v
			}
		} else if i := strings.Index(dsn, "target_session_attrs="); i >= 0 {
			// A multi-host URL that net/url refuses; pgconn reads it.
			v := dsn[i+len("target_session_attrs="):]
			if j := strings.IndexByte(v, '&'); j >= 0 {
				v = v[:j]
			}
			return v
		}
	} else if m := kvTargetSessionAttrs.FindStringSubmatch(dsn); m != nil {
		return m[1]
	}
	return os.Getenv("PGTARGETSESSIONATTRS")
}

func isURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}
