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
command -v psql >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # Installing postfix or postgresql may start the system instances; the tests need neither.
  postfix stop >/dev/null 2>&1 || true
  pg_ctlcluster --help >/dev/null 2>&1 && for c in $(ls /etc/postgresql 2>/dev/null); do
    pg_ctlcluster "$c" main stop >/dev/null 2>&1 || true
  done
fi

# PostgreSQL: a cluster of our own under /var/tmp (initdb + pg_ctl, as the postgres user when
# run as root, since PostgreSQL refuses to run as root), on a free loopback port.
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pg=$(mktemp -d /var/tmp/mailsilo-test-pg.XXXXXX)
as=()
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$pg"
  as=(runuser -u postgres --)
fi
"${as[@]}" "$bin/initdb" -D "$pg/data" -A trust -U postgres --no-sync >"$pg/initdb.log" 2>&1
stop_pg() { "${as[@]}" "$bin/pg_ctl" -D "$pg/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$pg"; }
trap stop_pg EXIT
port=
for p in $(seq 55432 55532); do
  if "${as[@]}" "$bin/pg_ctl" -D "$pg/data" -l "$pg/log" -w -t 30 start \
      -o "-c listen_addresses=127.0.0.1 -p $p -c unix_socket_directories=$pg -c max_connections=400" >/dev/null 2>&1; then
    port=$p
    break
  fi
done
[ -n "$port" ] || { echo "PostgreSQL did not start:"; cat "$pg/log"; exit 1; }
export MAILSILO_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres"

cargo test --workspace --all-targets "$@" -- --skip fleet_
# The fleet on PostgreSQL, its figures (takeover, duplicates, refusals) printed in the log.
cargo test -p mailsilo --test fleet "$@" -- --nocapture
MAILSILO_TEST_STORE=postgres cargo test -p mailsilo --test durability --test silo --test hardening "$@"
MAILSILO_TEST_STORE=postgres cargo test -p mailsilo-queue --test retry_and_dsn "$@"
