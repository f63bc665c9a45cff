package testenv

import (
	"context"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestRegistryVersionMatchesMakefile(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^APICURIO_VERSION := (\S+)$`).FindSubmatch(mk)
	if m == nil || string(m[1]) != RegistryVersion {
		t.Fatalf("the Makefile pins APICURIO_VERSION %q, RegistryVersion is %q", m, RegistryVersion)
	}
}

func TestJavaMajorVersion(t *testing.T) {
	for _, c := range []struct {
		out  string
		want int
	}{
		{`openjdk version "17.0.15" 2025-04-15`, 17},
		{`openjdk version "25.0.3" 2026-04-21 LTS`, 25},
		{`java version "1.8.0_401"`, 8},
		{`openjdk version "21" 2023-09-19`, 21},
	} {
		m := javaVersionRe.FindStringSubmatch(c.out)
		if m == nil {
			t.Fatalf("%q: no match", c.out)
		}
		// The same reading as javaMajorVersion, without running a JVM.
		got := m[1]
		if got == "1" {
			got = m[2]
		}
		if got != itoa(c.want) {
			t.Errorf("%q: major %s, want %d", c.out, got, c.want)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestRegistryJava: the harness finds a Java 21+ (the machines have one
// beside the default 17), and says clearly when there is none.
func TestRegistryJava(t *testing.T) {
	java, err := RegistryJava()
	if err != nil {
		unavailable(t, "%v", err)
	}
	v, err := javaMajorVersion(java)
	if err != nil || v < RegistryMinJava {
		t.Fatalf("RegistryJava() = %s, version %d (%v): want >= %d", java, v, err, RegistryMinJava)
	}
}

// TestSharedRegistry: the registry that make test starts answers the
// Confluent-compatible API.
func TestSharedRegistry(t *testing.T) {
	url := RegistryURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/config", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "compatibilityLevel") {
		t.Fatalf("GET %s/config: %s %s", url, resp.Status, b)
	}
}
