package tracing

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
)

// Config is [tracing] of relay.toml. Zero values mean "the OTEL_* variable
// if set, else the default": the exporter reads OTEL_EXPORTER_OTLP_ENDPOINT,
// _TRACES_ENDPOINT, _HEADERS, _TIMEOUT, _COMPRESSION, _CERTIFICATE,
// _CLIENT_CERTIFICATE, _CLIENT_KEY and _INSECURE itself, and relay.toml's
// keys, when given, win.
type Config struct {
	// Protocol is "http/protobuf" (default) or "grpc"; unset, the
	// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL
	// variable decides.
	Protocol string
	// Endpoint is the collector's URL ("http://otel-collector:4318"; https
	// for TLS). For HTTP a URL without a path gets "/v1/traces". Unset: the
	// OTEL_EXPORTER_OTLP_* variables, else localhost:4318 (4317 for gRPC).
	Endpoint string
	// Headers are sent with every export (authentication, tenant).
	Headers map[string]string
	// SampleRatio is the share of the traces the relay starts itself (rows
	// without a trace context) that are recorded. A row's own context
	// decides for its events: sampled upstream, recorded here. Nil: 1, or
	// OTEL_TRACES_SAMPLER_ARG with OTEL_TRACES_SAMPLER=*traceidratio.
	SampleRatio *float64
	// ServiceName is the resource's service.name. Unset: OTEL_SERVICE_NAME,
	// else "cdcrelay".
	ServiceName string
	// Timeout bounds one export (default 10s, or OTEL_EXPORTER_OTLP_TIMEOUT).
	Timeout time.Duration
	// QueueSize is how many spans of committed transactions may wait to be
	// made and exported; past it spans are dropped and counted (default 65536).
	QueueSize int

	// RelayName and Database label the resource (cdcrelay.relay,
	// db.namespace).
	RelayName, Database string
}

// Protocols.
const (
	ProtocolHTTP = "http/protobuf"
	ProtocolGRPC = "grpc"
)

const (
	defaultQueueSize   = 65536
	defaultServiceName = "cdcrelay"
	exportBatchSize    = 512
	exportInterval     = time.Second
)

// protocol resolves the protocol from the configuration and the variables.
func (c *Config) protocol(getenv func(string) string) (string, error) {
	p := c.Protocol
	if p == "" {
		p = getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	}
	if p == "" {
		p = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch p {
	case "", ProtocolHTTP:
		return ProtocolHTTP, nil
	case ProtocolGRPC:
		return ProtocolGRPC, nil
	case "http/json":
		return "", fmt.Errorf("tracing: protocol %q is not supported; use %q or %q", p, ProtocolHTTP, ProtocolGRPC)
	}
	return "", fmt.Errorf("tracing: protocol %q is not one of %q, %q", p, ProtocolHTTP, ProtocolGRPC)
}

// sampleRatio resolves the ratio for traces the relay starts.
func (c *Config) sampleRatio(getenv func(string) string) float64 {
	if c.SampleRatio != nil {
		return *c.SampleRatio
	}
	if s := getenv("OTEL_TRACES_SAMPLER"); strings.HasSuffix(s, "traceidratio") {
		if r, err := strconv.ParseFloat(getenv("OTEL_TRACES_SAMPLER_ARG"), 64); err == nil && r >= 0 && r <= 1 {
			return r
		}
	}
	return 1
}

func (c *Config) serviceName(getenv func(string) string) string {
	if c.ServiceName != "" {
		return c.ServiceName
	}
	if s := getenv("OTEL_SERVICE_NAME"); s != "" {
		return s
	}
	return defaultServiceName
}

// Validate checks what can be checked without connecting.
func (c *Config) Validate() error {
	if _, err := c.protocol(os.Getenv); err != nil {
		return err
	}
	if c.Endpoint != "" {
		if _, err := endpointURL(c.Endpoint, ProtocolHTTP); err != nil {
			return err
		}
	}
	if r := c.SampleRatio; r != nil && (*r < 0 || *r > 1) {
		return fmt.Errorf("tracing: sample_ratio %v is not between 0 and 1", *r)
	}
	if c.Timeout < 0 || c.QueueSize < 0 {
		return fmt.Errorf("tracing: timeout and queue_size must not be negative")
	}
	return nil
}

// endpointURL checks an endpoint and, for HTTP, adds the traces path to a
// URL without one (as OTEL_EXPORTER_OTLP_ENDPOINT does).
func endpointURL(s, protocol string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", fmt.Errorf("tracing: endpoint %q is not an http:// or https:// URL with a host (e.g. \"http://otel-collector:4318\")", s)
	}
	if protocol == ProtocolHTTP && (u.Path == "" || u.Path == "/") {
		u.Path = "/v1/traces"
	}
	return u.String(), nil
}

// newExporter builds the OTLP exporter. It does not connect: an endpoint
// that is down costs the spans, never the start.
func newExporter(ctx context.Context, c *Config, getenv func(string) string) (*otlptrace.Exporter, string, error) {
	protocol, err := c.protocol(getenv)
	if err != nil {
		return nil, "", err
	}
	var endpoint string
	if c.Endpoint != "" {
		if endpoint, err = endpointURL(c.Endpoint, protocol); err != nil {
			return nil, "", err
		}
	}
	// Retries stay inside one export's timeout: the queue, not the
	// exporter, absorbs an outage.
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
		if ms, err := strconv.Atoi(getenv("OTEL_EXPORTER_OTLP_TIMEOUT")); err == nil && ms > 0 {
			timeout = time.Duration(ms) * time.Millisecond
		}
	}
	switch protocol {
	case ProtocolGRPC:
		var opts []otlptracegrpc.Option
		if endpoint != "" {
			opts = append(opts, otlptracegrpc.WithEndpointURL(endpoint))
		}
		if len(c.Headers) > 0 {
			opts = append(opts, otlptracegrpc.WithHeaders(c.Headers))
		}
		opts = append(opts, otlptracegrpc.WithTimeout(timeout), otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{
			Enabled: true, InitialInterval: 250 * time.Millisecond, MaxInterval: time.Second, MaxElapsedTime: timeout}))
		exp, err := otlptracegrpc.New(ctx, opts...)
		return exp, protocol, err
	default:
		var opts []otlptracehttp.Option
		if endpoint != "" {
			opts = append(opts, otlptracehttp.WithEndpointURL(endpoint))
		}
		if len(c.Headers) > 0 {
			opts = append(opts, otlptracehttp.WithHeaders(c.Headers))
		}
		opts = append(opts, otlptracehttp.WithTimeout(timeout), otlptracehttp.WithRetry(otlptracehttp.RetryConfig{
			Enabled: true, InitialInterval: 250 * time.Millisecond, MaxInterval: time.Second, MaxElapsedTime: timeout}))
		exp, err := otlptracehttp.New(ctx, opts...)
		return exp, protocol, err
	}
}
