package config

import (
	"strings"
	"testing"
)

func TestFollowPrimary(t *testing.T) {
	t.Setenv("PGTARGETSESSIONATTRS", "")
	cases := []struct{ in, want string }{
		{"postgres://u@a:5432/db", "postgres://u@a:5432/db"},
		{"postgres://u@a:5432,b:5433/db", "postgres://u@a:5432,b:5433/db?target_session_attrs=primary"},
		{"postgres://u@a,b/db?sslmode=disable", "postgres://u@a,b/db?sslmode=disable&target_session_attrs=primary"},
		{"postgres://u@a,b/db?target_session_attrs=read-write", "postgres://u@a,b/db?target_session_attrs=read-write"},
		{"host=a,b port=5432,5433 dbname=db", "host=a,b port=5432,5433 dbname=db target_session_attrs=primary"},
		{"host=a,b dbname=db target_session_attrs=any", "host=a,b dbname=db target_session_attrs=any"},
		{"host=a dbname=db", "host=a dbname=db"},
	}
	for _, c := range cases {
		if got := FollowPrimary(c.in); got != c.want {
			t.Errorf("FollowPrimary(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestMultiHostDSNMustReachThePrimary(t *testing.T) {
	t.Setenv("PGTARGETSESSIONATTRS", "")
	for _, attrs := range []string{"any", "standby", "prefer-standby", "read-only"} {
		_, err := Parse("relay.toml", []byte(`
[relay]
name = "shop"
[postgres]
dsn = "postgres://u@a:5432,b:5432/shop?target_session_attrs=`+attrs+`"
[kafka]
brokers = ["k:9092"]
[[mapping]]
table = "public.outbox"
kind = "outbox"
`))
		if err == nil || !strings.Contains(err.Error(), "target_session_attrs="+attrs+": the relay must reach the primary") {
			t.Errorf("%s: %v", attrs, err)
		}
	}
	c, err := Parse("relay.toml", []byte(`
[relay]
name = "shop"
[postgres]
dsn = "host=a,b dbname=shop"
standby_dsns = ["host=b dbname=shop"]
[kafka]
brokers = ["k:9092"]
[[mapping]]
table = "public.outbox"
kind = "outbox"
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Postgres.DSN != "host=a,b dbname=shop target_session_attrs=primary" || !*c.Postgres.FailoverSlot {
		t.Errorf("dsn %q, failover_slot %v", c.Postgres.DSN, *c.Postgres.FailoverSlot)
	}
}
