package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

// spanCounter is the OTLP/HTTP collector of a -tracing run: it decodes
// every export request (in the benchmark's process, so the relay's CPU
// figures do not include it) and counts the spans, so the run shows that
// spans arrived, not only that tracing was switched on.
type spanCounter struct {
	url   string
	spans atomic.Int64
	srv   *http.Server
}

func startSpanCounter() (*spanCounter, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c := &spanCounter{url: "http://" + ln.Addr().String()}
	c.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(body, &req)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				c.spans.Add(int64(len(ss.Spans)))
			}
		}
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})}
	go func() { _ = c.srv.Serve(ln) }()
	return c, nil
}

// toml is the [tracing] section that points the relay at the counter.
func (c *spanCounter) toml(ratio float64) string {
	return fmt.Sprintf("[tracing]\nendpoint = %q\nsample_ratio = %g\n", c.url, ratio)
}

func (c *spanCounter) close() { _ = c.srv.Close() }
