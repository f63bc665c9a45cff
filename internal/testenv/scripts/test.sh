#!/usr/bin/env bash
# test.sh [go test flags and packages]: run the tests against real servers.
#
# Starts a private Postgres and Kafka (devenv up), plus one Postgres per pinned
# server build of the test matrix (--pg-matrix), in a temp dir, exports their
# addresses plus CDCRELAY_TEST_REQUIRE_SERVERS=1 (a test that cannot reach a
# server fails instead of skipping), runs go test, and always stops the servers
# afterwards (devenv down), also when the tests fail or the run is interrupted.
# Exits with go test's status. Default arguments: -race -count=1 -timeout 25m ./...
set -euo pipefail

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cdcrelay-test.XXXXXX")
chmod 755 "$tmp" # the Postgres OS user must reach the servers' directories
devenv="$tmp/devenv"

cleanup() {
	local status=$?
	trap - EXIT INT TERM
	if [ -x "$devenv" ]; then
		"$devenv" down --dir "$tmp/env" >/dev/null || status=$((status == 0 ? 1 : status))
	fi
	rm -rf "$tmp"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

go build -o "$devenv" ./internal/testenv/cmd/devenv
"$devenv" up --dir "$tmp/env" --pg-matrix

# shellcheck source=/dev/null
. "$tmp/env/env.sh"
export CDCRELAY_TEST_REQUIRE_SERVERS=1

if [ $# -eq 0 ]; then
	set -- -race -count=1 -timeout 25m ./...
fi
status=0
go test "$@" || status=$?
exit "$status"
