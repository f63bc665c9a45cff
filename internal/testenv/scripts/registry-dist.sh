#!/usr/bin/env bash
# registry-dist.sh VERSION DIR: unpack the Apicurio Registry server
# (io.apicurio:apicurio-registry-app:VERSION, classifier "all", a tar.gz of
# the Quarkus application) from Maven Central into DIR, unless DIR already
# holds that version. A stamp file records the artifact; the copy is unpacked
# into a sibling directory first and renamed into place, so an interrupted
# run never leaves a half-filled DIR behind. Like kafka-jars.sh.
set -euo pipefail

version=${1:?usage: registry-dist.sh VERSION DIR}
dir=${2:?usage: registry-dist.sh VERSION DIR}
artifact="io.apicurio:apicurio-registry-app:$version:tar.gz:all"
stamp="$dir/.cdcrelay-stamp"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$artifact" ] && [ -f "$dir/quarkus-run.jar" ]; then
	exit 0
fi

command -v mvn >/dev/null || { echo "registry-dist: mvn (Maven) is not on PATH" >&2; exit 1; }
mkdir -p "$(dirname "$dir")"
tmp=$(mktemp -d "$dir.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "registry-dist: fetching $artifact into $dir"
if ! mvn -q -B org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
	-Dartifact="$artifact" -DoutputDirectory="$tmp/download" >"$tmp/mvn.log" 2>&1; then
	cat "$tmp/mvn.log" >&2
	echo "registry-dist: mvn failed" >&2
	exit 1
fi
mkdir "$tmp/dist"
tar -xzf "$tmp"/download/*.tar.gz -C "$tmp/dist"
[ -f "$tmp/dist/quarkus-run.jar" ] || { echo "registry-dist: no quarkus-run.jar in $artifact" >&2; exit 1; }
echo "$artifact" >"$tmp/dist/.cdcrelay-stamp"
rm -rf "$dir"
mv "$tmp/dist" "$dir"
echo "registry-dist: Apicurio Registry $version in $dir"
