package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/cdcrelay/cdcrelay/internal/config"
	"github.com/cdcrelay/cdcrelay/mapping"
	"github.com/cdcrelay/cdcrelay/replication"
	"github.com/cdcrelay/cdcrelay/schema"
)

// Encoder puts an event in a schema registry's wire format before it is
// sent: package schema's [schema.Encoder] for the envelopes "avro" and
// "json-schema" and outbox payload_schema = "registry".
type Encoder interface {
	Encode(ctx context.Context, ev *mapping.Event) error
}

// SchemaRegistryObserver is the optional part of an [Observer] that hears
// about the requests to the schema registry (err nil: it answered).
type SchemaRegistryObserver interface {
	SchemaRegistryRequest(op string, err error)
}

// newEncoder builds the relay's encoder, or nil when no mapping needs a
// registry. It lives as long as Run: its caches outlive the sessions.
func newEncoder(cfg *config.Config, log *slog.Logger, obs Observer) (Encoder, error) {
	if _, needed := cfg.NeedsSchemaRegistry(); !needed {
		return nil, nil
	}
	sc, err := cfg.SchemaRegistry.ClientConfig()
	if err != nil {
		return nil, err
	}
	sc.Logger = log
	if o, ok := obs.(SchemaRegistryObserver); ok {
		sc.Observe = o.SchemaRegistryRequest
	}
	return schema.New(sc)
}

// encode puts a change's events in the wire format, all of them before any
// is sent: a schema the registry refuses, or an outbox payload that does
// not fit its schema, makes the change a row error (dead letter or stop,
// as on_error says) and none of its events reach their topic. A registry
// that cannot be reached ends the session, which is retried with backoff
// like a Kafka outage; nothing is published without its schema.
func (p *pipeline) encode(ctx context.Context, c *replication.Change, evs []mapping.Event) ([]mapping.Event, error) {
	enc := p.s.enc
	if enc == nil {
		return evs, nil
	}
	for i := range evs {
		ev := &evs[i]
		if ev.Contract == nil {
			continue
		}
		contract := ev.Contract
		err := enc.Encode(ctx, ev)
		if err == nil {
			continue
		}
		re := &mapping.RowError{Table: c.Relation.QualifiedName(), Pos: c.Pos}
		var ie *schema.IncompatibleError
		var pe *schema.PayloadError
		switch {
		case errors.As(err, &ie):
			re.Column, re.Reason = ie.Column(), ie.Error()
		case errors.As(err, &pe):
			re.Column = contract.PayloadColumn
			id := ""
			if v, ok := ev.Header("id"); ok {
				id = fmt.Sprintf("event id %s: ", v)
			}
			re.Reason = id + pe.Error()
		default:
			return nil, fmt.Errorf("table %s at lsn %s (change %d): %w", c.Relation.QualifiedName(), c.Pos.CommitLSN, c.Pos.Index, err)
		}
		dl, ok := p.mapper.DeadLetter(c, re)
		if !ok {
			return nil, fatal("%v; the relay stops because the mapping's on_error is \"stop\" (nothing of this change was published)", re)
		}
		p.s.obs.DeadLettered(re.Table, re.Reason)
		p.log.Warn("row sent to the dead-letter topic", "table", re.Table, "lsn", c.Pos.CommitLSN.String(), "topic", dl.Topic, "err", re)
		return []mapping.Event{dl}, nil
	}
	return evs, nil
}
