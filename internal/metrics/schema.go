package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cdcrelay/cdcrelay/internal/relay"
)

var _ relay.SchemaRegistryObserver = (*Metrics)(nil)

// schemaMetrics are the schema registry's series.
type schemaMetrics struct {
	requests *prometheus.CounterVec
	up       prometheus.Gauge
}

func newSchemaMetrics(f factory) *schemaMetrics {
	return &schemaMetrics{
		requests: f.counterVec("cdcrelay_schema_registry_requests_total",
			"Requests to the schema registry, by operation and result (ok: it answered; error: no answer, or a 5xx; these are retried, and past schema_registry's retry time the session restarts as after a Kafka outage).", "op", "result"),
		up: f.gauge("cdcrelay_schema_registry_up",
			"1 when the last request to the schema registry got an answer, 0 when it failed; absent until the first request."),
	}
}

// SchemaRegistryRequest implements [relay.SchemaRegistryObserver].
func (m *Metrics) SchemaRegistryRequest(op string, err error) {
	result, up := "ok", 1.0
	if err != nil {
		result, up = "error", 0
	}
	m.schema.requests.WithLabelValues(op, result).Inc()
	m.schema.up.Set(up)
}
