package config

import (
	"net/url"
	"regexp"
	"strings"
)

// Mask replaces secrets in anything cdcrelay prints.
const Mask = "xxxxx"

// Redacted returns a copy of c that is safe to print or log: the password of
// postgres.dsn (in a URL's user info, a password= parameter or a key=value
// password), kafka.sasl.password, schema_registry.password and the values of
// tracing.headers (API keys, tokens) are masked.
func (c *Config) Redacted() *Config {
	r := *c
	r.Postgres.DSN = RedactDSN(c.Postgres.DSN)
	if c.Postgres.StandbyDSNs != nil {
		r.Postgres.StandbyDSNs = make([]string, len(c.Postgres.StandbyDSNs))
		for i, dsn := range c.Postgres.StandbyDSNs {
			r.Postgres.StandbyDSNs[i] = RedactDSN(dsn)
		}
	}
	if r.Kafka.SASL.Password != "" {
		r.Kafka.SASL.Password = Mask
	}
	if r.SchemaRegistry.Password != "" {
		r.SchemaRegistry.Password = Mask
	}
	if len(c.Tracing.Headers) > 0 {
		r.Tracing.Headers = make(map[string]string, len(c.Tracing.Headers))
		for k := range c.Tracing.Headers {
			r.Tracing.Headers[k] = Mask
		}
	}
	return &r
}

// secretParams are the libpq parameters that hold secrets.
var secretParams = map[string]bool{"password": true, "sslpassword": true}

var kvSecret = regexp.MustCompile(`(?i)\b(password|sslpassword)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]*)`)

// RedactDSN masks the passwords of a libpq connection string, URL or
// key=value form.
func RedactDSN(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		if u.User != nil {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), Mask)
			}
		}
		q := u.Query()
		changed := false
		for k := range q {
			if secretParams[k] {
				q.Set(k, Mask)
				changed = true
			}
		}
		if changed {
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	if urlUserinfo.MatchString(dsn) {
		// A URL that net/url cannot parse: mask everything between the
		// user name and the last "@".
		return urlUserinfo.ReplaceAllString(dsn, "${1}"+Mask+"${3}")
	}
	return kvSecret.ReplaceAllString(dsn, "${1}${2}"+Mask)
}

var urlUserinfo = regexp.MustCompile(`^(postgres(?:ql)?://[^:/@]*:)(.*)(@[^@]*)$`)

// dsnSecrets returns the secrets of a connection string, for scrubbing them
// from error messages of other libraries.
func dsnSecrets(dsn string) []string {
	var out []string
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			out = append(out, pw)
		}
		for k, vs := range u.Query() {
			if secretParams[k] {
				out = append(out, vs...)
			}
		}
	}
	if m := urlUserinfo.FindStringSubmatch(dsn); m != nil && m[2] != "" {
		out = append(out, m[2])
	}
	for _, m := range kvSecret.FindAllStringSubmatch(dsn, -1) {
		v := strings.Trim(m[3], "'")
		if v != "" {
			out = append(out, v, m[3])
		}
	}
	return out
}

// scrub removes the secrets of dsn from msg.
func scrub(msg, dsn string) string {
	for _, s := range dsnSecrets(dsn) {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, Mask)
		}
	}
	return msg
}
