package config

import (
	"strings"
	"testing"
)

func TestTracingSection(t *testing.T) {
	for _, c := range []struct {
		extra string
		on    bool
	}{
		{"", false},
		{"[tracing]\n", true},
		{"[tracing]\nenabled = false\n", false},
		{"tracing.endpoint = \"http://collector:4318\"\n", true}, // a dotted key is the section too
	} {
		cfg := mustParse(t, c.extra+minimal, nil)
		if cfg.Tracing.On() != c.on {
			t.Errorf("%q: tracing on = %v, want %v", c.extra, cfg.Tracing.On(), c.on)
		}
	}
	cfg := mustParse(t, minimal+`
[tracing]
endpoint = "https://collector:4318"
headers = { "x-api-key" = "${TRACE_KEY}" }
sample_ratio = 0.25
timeout = "2s"
`, map[string]string{"TRACE_KEY": "s3cret"})
	if cfg.Tracing.Headers["x-api-key"] != "s3cret" || *cfg.Tracing.SampleRatio != 0.25 || cfg.Tracing.Timeout.String() != "2s" {
		t.Errorf("tracing %+v", cfg.Tracing)
	}
	if r := cfg.Redacted(); r.Tracing.Headers["x-api-key"] != Mask || cfg.Tracing.Headers["x-api-key"] != "s3cret" {
		t.Errorf("redacted headers %v (original %v)", r.Tracing.Headers, cfg.Tracing.Headers)
	}
}

func TestTracingErrors(t *testing.T) {
	for _, c := range []struct{ extra, key string }{
		{"protocol = \"http/json\"", "tracing.protocol"},
		{"sample_ratio = 1.5", "tracing.sample_ratio"},
		{"endpoint = \"collector:4318\"", "tracing.endpoint"},
		{"queue_size = -1", "tracing.queue_size"},
		{"timeout = \"-1s\"", "tracing.timeout"},
		{"endpont = \"http://c\"", "tracing.endpont"},
	} {
		_, err := parse(t, minimal+"\n[tracing]\n"+c.extra+"\n", nil)
		if err == nil || !strings.Contains(err.Error(), c.key) {
			t.Errorf("%s: error %v, want one naming %s", c.extra, err, c.key)
		}
	}
}
