package relay

import (
	"testing"

	"github.com/cdcrelay/cdcrelay/mapping"
)

// Only topics the mappings can write may shape the relay's batches.
func TestTopicMatcher(t *testing.T) {
	m, err := mapping.New([]mapping.Spec{
		{Table: "public.outbox", Kind: "outbox"},
		{Table: "public.orders", Kind: "table", Topic: "shop.orders", OnError: "dead-letter"},
	}, mapping.WithRelayName("shop"))
	if err != nil {
		t.Fatal(err)
	}
	match := topicMatcher(m)
	for topic, want := range map[string]bool{
		"outbox.event.order":    true,
		"outbox.event.customer": true,
		"outbox.event.":         false,
		"shop.orders":           true,
		"shop.orders2":          false,
		"cdcrelay.dlq.shop":     true,
		"other.topic":           false,
	} {
		if got := match(topic); got != want {
			t.Errorf("match(%q) = %v, want %v", topic, got, want)
		}
	}
}
