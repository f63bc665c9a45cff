// Package testenv runs the real servers that cdcrelay's tests need: a throw-away
// PostgreSQL cluster with wal_level=logical, a single-node Apache Kafka broker
// (KRaft, combined broker and controller) started from the jars that `make
// kafka-jars` caches, and an Apicurio Registry 3.x schema registry (its
// Confluent-compatible API; a Quarkus application unpacked by `make
// registry-dist`, run on a Java 21+ that [RegistryJava] finds). It never fakes a server; in-process fakes belong in the unit
// tests of the package that uses them.
//
// There are two ways in:
//
//   - Shared servers. `make test` starts one Postgres and one Kafka for the whole
//     run (with the devenv command in cmd/devenv) and names them in environment
//     variables. Tests reach them through [PostgresDSN], [NewDatabase] (a fresh
//     database per test, dropped afterwards), [KafkaBrokers] and [RegistryURL]. When a variable is
//     missing the test is skipped, or fails if CDCRELAY_TEST_REQUIRE_SERVERS=1 (as
//     `make test` sets it), so a test can never pass on CI by skipping.
//
//   - Private servers. A test that restarts, crashes or reconfigures a server must
//     not disturb the tests of other packages, so it starts its own with
//     [NewPostgres] / [NewKafka] (or [StartPostgres] / [StartKafka] outside of a
//     test). A [Proxy] between the clients and a server injects faults: abrupt
//     resets, pauses, and stalls that deliver held bytes late. [KafkaOptions.Proxy]
//     puts one in front of Kafka's client listener, whose advertised address is the
//     proxy's, so that clients which learn broker addresses from metadata keep
//     going through it.
//
// The server matrix: besides the machine's PostgreSQL, `make pg-builds` unpacks
// the server builds pinned in testdata/postgres/versions.txt (initdb, pg_ctl and
// postgres only); [PostgresBuildFor] and [NewPostgresVersion] start one of a
// given major version, and [NewStandby] adds a streaming standby to a private
// server by a cold copy of its data directory (no pg_basebackup needed).
//
// Postgres refuses to run as root: under uid 0 the cluster runs as the OS user
// cdcrelaypg, created on first use. Every server lives in its own directory under
// CDCRELAY_TESTENV_DIR (else the system temp dir); `devenv down --dir DIR` stops
// whatever servers it finds under DIR, including private ones that a killed test
// binary left running.
//
// Environment variables:
//
//	CDCRELAY_TEST_PG_DSN           shared Postgres, superuser DSN (set by make test)
//	CDCRELAY_TEST_KAFKA_BROKERS    shared Kafka bootstrap list, comma-separated
//	CDCRELAY_TEST_REGISTRY_URL     shared schema registry, its Confluent-compatible API
//	CDCRELAY_TEST_REQUIRE_SERVERS  1: a missing server fails the test instead of skipping it
//	CDCRELAY_KAFKA_JARS            directory with the broker jars (default: the cache
//	                               that `make kafka-jars` fills, see [DefaultKafkaJarDir])
//	CDCRELAY_REGISTRY_DIST         the unpacked Apicurio Registry (default: the cache that
//	                               `make registry-dist` fills, see [DefaultRegistryDistDir])
//	CDCRELAY_TEST_PG_MATRIX        one shared Postgres per major version, "14=DSN 15=DSN ..."
//	                               (devenv up --pg-matrix; see [PostgresMatrix])
//	CDCRELAY_PG_BIN                directory with initdb, pg_ctl, postgres (default: found on PATH)
//	CDCRELAY_PG_BUILDS             directory of the pinned server builds, postgres-<version>/
//	                               (default: the cache `make pg-builds` fills)
//	CDCRELAY_TESTENV_DIR           parent directory for the servers' own directories
package testenv
