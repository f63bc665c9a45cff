#!/usr/bin/env bash
# make demo: local Postgres + Kafka (make dev-up), a sample shop database with
# an outbox, `cdcrelay setup`, the relay running, a few orders, and the events
# as a read_committed consumer sees them.
set -euo pipefail
cd "$(dirname "$0")/../../.."

bin=bin/cdcrelay
dev=.dev
. "$dev/env.sh"

admin="$CDCRELAY_TEST_PG_DSN"
export CDCRELAY_PG_DSN="${admin%/*}/shop?sslmode=disable"
export CDCRELAY_KAFKA_BROKERS="${CDCRELAY_TEST_KAFKA_BROKERS%%,*}"
cfg=relay.toml
log="$dev/demo-relay.log"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "fresh demo database 'shop' (tables orders and outbox)"
"$bin" teardown --config "$cfg" --yes >/dev/null 2>&1 || true
psql -q "$admin" -c "DROP DATABASE IF EXISTS shop WITH (FORCE)" -c "CREATE DATABASE shop"
psql -q "$CDCRELAY_PG_DSN" -f testdata/demo/schema.sql

step "cdcrelay setup (publication, slot, checkpoint topic)"
"$bin" setup --config "$cfg"
# Outbox topics are named by a template over rows (outbox.event.{aggregatetype}),
# so setup cannot know them all: create the demo's one.
java -cp "$CDCRELAY_KAFKA_JARS/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "$CDCRELAY_KAFKA_BROKERS" \
  --create --if-not-exists --topic outbox.event.order --partitions 3 2>&1 | grep -v -e SLF4J -e WARNING || true

step "cdcrelay run (in the background; log: $log)"
"$bin" run --config "$cfg" >"$log" 2>&1 &
relay=$!
trap 'kill $relay 2>/dev/null || true' EXIT
sleep 2

step "three orders, each with its outbox event in the same transaction"
psql -q "$CDCRELAY_PG_DSN" -f testdata/demo/orders.sql
psql "$CDCRELAY_PG_DSN" -c "SELECT id, customer, total FROM orders ORDER BY id"

step "the events, as a read_committed consumer sees them"
"$bin" tail outbox.event.order --config "$cfg" --from-beginning --max 4 --timeout 60s

step "cdcrelay status"
"$bin" status --config "$cfg" || true

kill -TERM $relay
wait $relay || true
trap - EXIT
printf '\nThe relay stopped cleanly; Postgres and Kafka keep running (make dev-down stops them).\n'
