# cdcrelay: build, test, and the Postgres + Kafka servers the tests run against.
#
#   make build        bin/cdcrelay
#   make test         start private servers, go test -race ./..., stop them
#   make test TESTFLAGS='-run TestX -v' PKG=./sink/...   (narrower run)
#   make dev-up       start long-running dev servers in .dev/ (then: . .dev/env.sh)
#   make dev-down     stop them
#   make bench        throughput/latency/memory vs pg_recvlogical (docs/performance.md)
#   make kafka-jars   fetch the pinned Kafka broker into the cache (done by test/dev-up)
#   make registry-dist  fetch the pinned Apicurio Registry into the cache (done by test/dev-up)
#   make pg-builds    fetch the pinned PostgreSQL 14/16/17/18 server builds (done by test)
#   make vet | lint

SHELL := /bin/bash

GO ?= go
PKG ?= ./...
TESTFLAGS ?=
TEST_TIMEOUT ?= 25m

# The broker version pinned in testdata/kafka/pom.xml, and where its jars go.
KAFKA_POM := testdata/kafka/pom.xml
KAFKA_VERSION := $(shell sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' $(KAFKA_POM))
CACHE_HOME := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)
CDCRELAY_KAFKA_JARS ?= $(CACHE_HOME)/cdcrelay/kafka-$(KAFKA_VERSION)
export CDCRELAY_KAFKA_JARS

# The schema registry of the tests and dev servers: Apicurio Registry (a
# Quarkus app, run on a Java 21+ that the harness finds), unpacked into the cache.
APICURIO_VERSION := 3.3.3
CDCRELAY_REGISTRY_DIST ?= $(CACHE_HOME)/cdcrelay/apicurio-registry-$(APICURIO_VERSION)
export CDCRELAY_REGISTRY_DIST

# The PostgreSQL server builds of the test matrix (testdata/postgres/versions.txt),
# unpacked into the same cache as postgres-<version>/.
PG_VERSIONS := testdata/postgres/versions.txt
CDCRELAY_PG_BUILDS ?= $(CACHE_HOME)/cdcrelay
export CDCRELAY_PG_BUILDS

DEV_DIR := .dev
DEVENV := bin/devenv

.PHONY: all build test kafka-jars registry-dist pg-builds dev-up dev-down vet lint fmt-check devenv bench demo

all: build

build:
	$(GO) build -o bin/cdcrelay ./cmd/cdcrelay

# Fetches once: a stamp in the jar directory records the pom it came from.
kafka-jars:
	@internal/testenv/scripts/kafka-jars.sh $(KAFKA_POM) "$(CDCRELAY_KAFKA_JARS)"

# Fetches once, like kafka-jars.
registry-dist:
	@internal/testenv/scripts/registry-dist.sh $(APICURIO_VERSION) "$(CDCRELAY_REGISTRY_DIST)"

# Fetches each build once: a stamp in its directory records the artifact.
pg-builds:
	@internal/testenv/scripts/pg-builds.sh $(PG_VERSIONS) "$(CDCRELAY_PG_BUILDS)"

test: kafka-jars registry-dist pg-builds
	@internal/testenv/scripts/test.sh -race -count=1 -timeout $(TEST_TIMEOUT) $(TESTFLAGS) $(PKG)

devenv:
	@$(GO) build -o $(DEVENV) ./internal/testenv/cmd/devenv

dev-up: kafka-jars registry-dist devenv
	@$(DEVENV) up --dir $(DEV_DIR)

# The relay's main job on a local default: dev Postgres + Kafka, a sample
# outbox, the relay running, events printed as a read_committed consumer sees them.
demo: build dev-up
	@internal/testenv/scripts/demo.sh

dev-down: devenv
	@$(DEVENV) down --dir $(DEV_DIR)

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# golangci-lint runs when it is installed (with the repo's config, if any).
lint: fmt-check vet
	@if command -v golangci-lint >/dev/null; then golangci-lint run ./...; \
	else echo "lint: golangci-lint not installed; ran gofmt and go vet only"; fi

# The benchmark (docs/performance.md) runs on the dev servers: it starts them
# when they are not up (and leaves them running; `make dev-down` stops them).
# BENCHFLAGS are passed on, e.g. BENCHFLAGS='-only outbox-small -profile prof';
# BENCH_DIR=/tmp/x runs it on servers of its own (stop: bin/devenv down --dir /tmp/x).
BENCHFLAGS ?=
BENCH_DIR ?= $(DEV_DIR)
bench: kafka-jars registry-dist devenv
	@if [ -f $(BENCH_DIR)/env.sh ]; then echo "bench: using the dev servers in $(BENCH_DIR)"; \
	else echo "bench: dev servers not up; starting them in $(BENCH_DIR) (stop with bin/devenv down --dir $(BENCH_DIR))"; fi
	@$(DEVENV) up --dir $(BENCH_DIR) >/dev/null
	@$(GO) build -o bin/cdcrelay-bench ./cmd/cdcrelay-bench
	@. $(BENCH_DIR)/env.sh && bin/cdcrelay-bench $(BENCHFLAGS)
