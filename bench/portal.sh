#!/usr/bin/env bash
# The portal's API latency over a store holding a million message traces (and 100,000
# quarantined messages, and 30 days of statistics), in the embedded store and in
# PostgreSQL (a cluster of the script's own): an organisation's admin (2 of 100 client
# domains, 2 % of the mail, 50 users each) searches the trace and the quarantine and reads
# the statistics; each search is run ROUNDS times with varying arguments; median and p99
# per search.
#
#   bash bench/portal.sh [TRACES] [HELD] [ROUNDS]      (defaults: 1000000 100000 200)
set -euo pipefail
cd "$(dirname "$0")/.."
TRACES=${1:-1000000}
HELD=${2:-100000}
ROUNDS=${3:-200}
. bench/common.sh portal
. scripts/pg.sh
pg_install
NOW=$(date +%s)

config() { # CONTROL_PORT [STORE_URL]
  cat <<CONF
[smtp]
hostname = "mx.bench.test"
listen = []
[control]
listen = "127.0.0.1:$1"
[digest]
schedule = "off"
[[silo]]
name = "silo.bench.test"
[[silo.cluster]]
name = "c1"
address = "127.0.1.61:$(( $1 + 1 ))"
[[silo.cluster.server]]
name = "c1-s1"
address = "127.0.2.61:$(( $1 + 2 ))"
loading = 1
[[organisation]]
name = "Org 7"
domains = ["d7.example", "d8.example"]
[[account]]
name = "admin@d7.example"
role = "admin"
organisation = "Org 7"
password = "bench-pass"
CONF
  for i in $(seq 0 99); do printf '[[domain]]\nname = "d%d.example"\ndestination = "127.0.0.1:9"\n' "$i"; done
  if [ -n "${2:-}" ]; then printf '[store]\nurl = "%s"\n' "$2"; fi
}

run() { # NAME CONTROL_PORT FILL_KIND FILL_WHERE [STORE_URL]
  local name=$1 port=$2
  config "$port" "${5:-}" > "$WORK/$name.toml"
  # A first start makes the schema; the tables are then filled while nothing runs.
  "$BIN" up --config "$WORK/$name.toml" --data-dir "$WORK/$name" >"$WORK/$name.out" 2>"$WORK/$name.log" &
  local pid=$!
  wait_port 127.0.0.1 "$port"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 bench/portal.py fill "$3" "$4" "$TRACES" "$HELD" "$NOW"
  "$BIN" up --config "$WORK/$name.toml" --data-dir "$WORK/$name" >>"$WORK/$name.out" 2>>"$WORK/$name.log" &
  pid=$!
  PIDS+=("$pid")
  wait_port 127.0.0.1 "$port"
  echo "== $name: $TRACES traces, $HELD held, an admin of 2 of 100 domains, $ROUNDS rounds"
  python3 bench/portal.py measure "http://127.0.0.1:$port" admin@d7.example bench-pass 7 "$ROUNDS" "$NOW"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%F)"
run embedded 10060 embedded "$WORK/embedded/queue/queue.db"
pg_start "$WORK/pg" 10070
STOP_HOOKS+=('pg_stop "$WORK/pg" immediate')
url=$(pg_database portal)
run postgres 10064 postgres "$url" "$url"
