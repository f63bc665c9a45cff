#!/usr/bin/env bash
# kafka-jars.sh POM DIR: copy the Kafka broker named by POM (and its runtime
# dependencies) into DIR with Maven, unless DIR already holds the jars for this
# exact POM. A stamp file records the POM's checksum, so a second run neither
# downloads nor copies anything; the copy goes to a sibling directory first and is
# renamed into place, so an interrupted run never leaves a half-filled DIR behind.
set -euo pipefail

pom=${1:?usage: kafka-jars.sh POM DIR}
dir=${2:?usage: kafka-jars.sh POM DIR}
stamp="$dir/.cdcrelay-stamp"
sum=$(sha256sum "$pom" | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
	exit 0
fi

command -v mvn >/dev/null || { echo "kafka-jars: mvn (Maven) is not on PATH" >&2; exit 1; }
mkdir -p "$(dirname "$dir")"
tmp=$(mktemp -d "$dir.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "kafka-jars: fetching the broker named by $pom into $dir"
# The plugin version is pinned: Maven 3.8's default (2.8) is old. Maven's output
# goes to a log that is shown only on failure (Debian's Maven prints stray colour
# codes even with -q -B).
if ! mvn -q -B -f "$pom" \
	org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
	-DincludeScope=runtime -DoutputDirectory="$tmp/jars" >"$tmp/mvn.log" 2>&1; then
	cat "$tmp/mvn.log" >&2
	echo "kafka-jars: mvn failed" >&2
	exit 1
fi

ls "$tmp"/jars/kafka_2.13-*.jar >/dev/null 2>&1 || { echo "kafka-jars: no kafka_2.13 jar in the copy" >&2; exit 1; }
echo "$sum" >"$tmp/jars/.cdcrelay-stamp"
rm -rf "$dir"
mv "$tmp/jars" "$dir"
echo "kafka-jars: $(ls "$dir"/*.jar | wc -l) jars in $dir"
