package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/internal/testenv"
	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/replication"
)

// TestCheckComparesTablesWithRegistry: check reports a table whose shape
// has no version yet, one whose shape is registered, and, after an ALTER
// TABLE the registry would refuse, what would break, naming the column,
// while registering nothing.
func TestCheckComparesTablesWithRegistry(t *testing.T) {
	dsn := testenv.NewDatabase(t)
	registry := testenv.RegistryURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `CREATE TABLE items (id bigint PRIMARY KEY, qty int)`); err != nil {
		t.Fatal(err)
	}
	topic := testenv.UniqueName(t, "items")
	path := writeConfig(t, fmt.Sprintf(`
[relay]
name = "checkschema"
[postgres]
dsn = %q
[kafka]
brokers = ["127.0.0.1:1"]
[schema_registry]
url = %q
[[mapping]]
table = "public.items"
kind = "table"
topic = %q
envelope = "avro"
`, dsn, registry, topic))
	check := func() string {
		t.Helper()
		_, out, _ := run(t, "check", "--skip-kafka", "--config", path)
		return out
	}
	if out := check(); !strings.Contains(out, topic+"-value has no version yet") {
		t.Fatalf("before any registration:\n%s", out)
	}
	// Register the table's shape as `run` would.
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := mapping.New(cfg.Mappings)
	rel, err := replication.LoadRelation(ctx, conn, "public.items")
	if err != nil {
		t.Fatal(err)
	}
	c, _, _ := m.TableContract(rel)
	body, _ := json.Marshal(map[string]string{"schema": c.Value.Text})
	resp, err := http.Post(registry+"/subjects/"+topic+"-value/versions", "application/vnd.schemaregistry.v1+json", bytes.NewReader(body))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("register: %v %v", err, resp)
	}
	resp.Body.Close()
	req, _ := http.NewRequest(http.MethodPut, registry+"/config/"+topic+"-value", strings.NewReader(`{"compatibility":"BACKWARD"}`))
	req.Header.Set("Content-Type", "application/vnd.schemaregistry.v1+json")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("set compatibility: %v %v", err, resp)
	}
	if out := check(); !strings.Contains(out, "the table's shape is registered (version 1)") {
		t.Fatalf("after registering:\n%s", out)
	}
	if _, err := conn.Exec(ctx, `ALTER TABLE items ALTER COLUMN qty TYPE text`); err != nil {
		t.Fatal(err)
	}
	out := check()
	t.Logf("check after the ALTER:\n%s", out)
	for _, want := range []string{"FAIL", "would break consumers", "BACKWARD", `column "qty" changed type from int to string`} {
		if !strings.Contains(out, want) {
			t.Errorf("after the incompatible ALTER: no %q in\n%s", want, out)
		}
	}
	if out := check(); strings.Contains(out, "version 2") {
		t.Errorf("check registered something:\n%s", out)
	}
}
