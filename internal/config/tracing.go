package config

import (
	"net/url"
	"strings"
)

// Tracing is [tracing]: OpenTelemetry spans of the relay's work, exported
// over OTLP (README, "Tracing"). The section's presence turns it on.
type Tracing struct {
	// Enabled defaults to true when relay.toml has a [tracing] section,
	// false without one.
	Enabled *bool `toml:"enabled"`
	// Protocol is "http/protobuf" or "grpc". Default: the
	// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL
	// variable, else "http/protobuf".
	Protocol string `toml:"protocol"`
	// Endpoint is the collector's URL (https for TLS); for HTTP a URL
	// without a path gets /v1/traces. Default: the OTEL_EXPORTER_OTLP_*
	// variables, else http://localhost:4318 (4317 for grpc).
	Endpoint string `toml:"endpoint"`
	// Headers go with every export; values may use ${VAR}.
	Headers map[string]string `toml:"headers"`
	// SampleRatio: the share of the traces the relay starts itself (rows
	// without a trace context) that are recorded; a row's own context
	// decides for its events. Default 1 (or OTEL_TRACES_SAMPLER_ARG).
	SampleRatio *float64 `toml:"sample_ratio"`
	// ServiceName is service.name. Default OTEL_SERVICE_NAME, else "cdcrelay".
	ServiceName string `toml:"service_name"`
	// Timeout bounds one export. Default 10s (or OTEL_EXPORTER_OTLP_TIMEOUT).
	Timeout Duration `toml:"timeout"`
	// QueueSize is how many ended spans may wait for export before spans
	// are dropped (and counted). Default 65536.
	QueueSize int `toml:"queue_size"`
}

// On tells whether tracing is enabled.
func (t *Tracing) On() bool { return t.Enabled != nil && *t.Enabled }

func validateTracing(v *validator, c *Config) {
	t := &c.Tracing
	if t.Protocol != "" {
		oneOf(v, "tracing.protocol", t.Protocol, "http/protobuf", "grpc")
	}
	if r := t.SampleRatio; r != nil && (*r < 0 || *r > 1) {
		v.add("tracing.sample_ratio", "must be between 0 and 1, got %v", *r)
	}
	if t.Timeout.Duration < 0 {
		v.add("tracing.timeout", "must not be negative, got %s", t.Timeout.Duration)
	}
	if t.QueueSize < 0 {
		v.add("tracing.queue_size", "must not be negative, got %d", t.QueueSize)
	}
	if t.Endpoint != "" {
		if u, err := url.Parse(t.Endpoint); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			v.add("tracing.endpoint", "%q is not an http:// or https:// URL with a host (e.g. \"http://otel-collector:4318\")", t.Endpoint)
		}
	}
}

// hasSection reports whether the file has table name, as a [name] header or
// through a dotted key ("name.key = ...").
func (ix *index) hasSection(name string) bool {
	if ix.has(name) {
		return true
	}
	if ix == nil {
		return false
	}
	for path := range ix.byPath {
		if strings.HasPrefix(path, name+".") {
			return true
		}
	}
	return false
}
