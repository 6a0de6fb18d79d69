#!/usr/bin/env bash
# The test command: installs what the tests drive mailsilo with (Debian packages), starts a
# throw-away PostgreSQL of its own, then runs every unit, property and integration test of the
# workspace, the fleet tests (separate processes on one PostgreSQL), and the tests that keep
# mail (outage, crash, expiry, the silo) once more with PostgreSQL as the store.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian puts postfix and its tools in /usr/sbin, which a non-login shell may lack.
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
command -v swaks >/dev/null || missing+=(swaks)
command -v python3 >/dev/null || missing+=(python3)
command -v dig >/dev/null || missing+=(dnsutils)
# Postfix on both sides of the gateway (tests start their own instances, never the system's).
command -v postfix >/dev/null || missing+=(postfix)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # Installing postfix may start the system instance; the tests need none.
  postfix stop >/dev/null 2>&1 || true
fi

# PostgreSQL: a throw-away cluster of our own under /var/tmp, on a free loopback port.
. scripts/pg.sh
pg_install
pg=$(mktemp -d /var/tmp/mailsilo-test-pg.XXXXXX)
trap 'pg_stop "$pg" immediate; rm -rf "$pg"' EXIT
PG_INITDB_OPTS=--no-sync pg_start "$pg" 55432
export MAILSILO_TEST_POSTGRES="$PG_ADMIN"

cargo test --workspace --all-targets "$@" -- --skip fleet_
# The fleet on PostgreSQL, its figures (takeover, duplicates, refusals) printed in the log.
cargo test -p mailsilo --test fleet "$@" -- --nocapture
MAILSILO_TEST_STORE=postgres cargo test -p mailsilo --test durability --test silo --test hardening "$@"
MAILSILO_TEST_STORE=postgres cargo test -p mailsilo-queue --test retry_and_dsn "$@"
