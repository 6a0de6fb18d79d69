#!/usr/bin/env bash
# Runs a fleet on loopback, each part its own process, in the foreground until Ctrl-C, then
# stops all of it:
#   PostgreSQL (its own cluster under DIR/pg, on a free port from 55440)
#   front: the silo's DNS 127.0.0.1:5353, balancers c1 127.0.1.1:2525 and c2 127.0.1.2:2525,
#          the control endpoint 127.0.0.1:8025            (data dir DIR/front)
#   mail servers c1-s1 c1-s2 c2-s1 c2-s2 on 127.0.2.1-4:2525 (data dirs DIR/c1-s1 ...)
#   the demo sink 127.0.0.1:2526, mailboxes under DIR/mailbox
# The configuration is examples/fleet.toml with store.url pointed at that PostgreSQL
# (DIR/fleet.toml). DIR is kept: run it again and the fleet starts where it stopped.
#
#   bash scripts/fleet.sh /tmp/fleet
#   mailsilo lb show --data-dir /tmp/fleet/front        (queue, trace, domain, config show alike)
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: scripts/fleet.sh DIR" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
mkdir -p "$1"
dir=$(cd "$1" && pwd)
chmod 755 "$dir"   # PostgreSQL runs as its own user when this runs as root

. "$root/scripts/pg.sh"
pg_install
if [ -z "${MAILSILO:-}" ]; then
  (cd "$root" && cargo build --release -q -p mailsilo)
  MAILSILO=${CARGO_TARGET_DIR:-$root/target}/release/mailsilo
fi

pg_start "$dir/pg" 55440
url=$(pg_database mailsilo)
sed "s|^url = .*|url = \"$url\"|" "$root/examples/fleet.toml" >"$dir/fleet.toml"

names=()
pids=()
stopped=
stop() {
  [ -z "$stopped" ] || return 0
  stopped=1
  echo
  echo "stopping the fleet"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pg_stop "$dir/pg"
  echo "stopped; state kept in $dir"
}
trap 'stop; exit 130' INT TERM
trap stop EXIT
start() { # name command...
  local name=$1
  shift
  "$@" >>"$dir/$name.log" 2>&1 &
  names+=("$name")
  pids+=($!)
}
wait_port() { # host port
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on $1:$2: see the logs in $dir" >&2
  exit 1
}

start sink "$MAILSILO" sink --listen 127.0.0.1:2526 --data-dir "$dir/sink" --mailbox "$dir/mailbox"
n=0
for s in c1-s1 c1-s2 c2-s1 c2-s2; do
  n=$((n + 1))
  start "$s" "$MAILSILO" up --config "$dir/fleet.toml" --data-dir "$dir/$s" --only "server:$s"
done
# The front last, once the mail servers listen: its first health checks then find them up.
for i in 1 2 3 4; do wait_port "127.0.2.$i" 2525; done
start front "$MAILSILO" up --config "$dir/fleet.toml" --data-dir "$dir/front" --only dns,balancer,control
wait_port 127.0.0.1 2526
for a in 127.0.1.1:2525 127.0.1.2:2525 127.0.0.1:8025; do wait_port "${a%:*}" "${a#*:}"; done
# Something else on one of these addresses (another fleet, a demo `up`) would answer the
# waits above for a process of ours that could not bind: each must still run.
sleep 0.5
for i in "${!pids[@]}"; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    echo "${names[$i]} did not start:" >&2
    tail -n 5 "$dir/${names[$i]}.log" >&2
    exit 1
  fi
done

echo "mailsilo fleet in $dir (PostgreSQL $url)"
printf '  %-10s %-8s %s\n' ROLE PID LOG
printf '  %-10s %-8s %s\n' postgresql "$(head -n 1 "$dir/pg/data/postmaster.pid")" "$dir/pg/log"
for i in "${!names[@]}"; do
  case ${names[$i]} in
    front) role="front (dns 127.0.0.1:5353, balancers c1 127.0.1.1:2525 c2 127.0.1.2:2525, control 127.0.0.1:8025)" ;;
    sink) role="sink (127.0.0.1:2526 -> $dir/mailbox)" ;;
    *) role="mail server ${names[$i]}" ;;
  esac
  printf '  %-10s %-8s %s\n' "${names[$i]}" "${pids[$i]}" "$dir/${names[$i]}.log   $role"
done
echo "try: swaks --server 127.0.1.1:2525 --to alice@example.com"
echo "     $MAILSILO lb show --data-dir $dir/front   (also: queue list, trace --to alice@example.com, domain list, config show)"
echo "Ctrl-C stops the fleet."

# Until interrupted; a process that dies (say, one killed to watch the others take over its
# mail) is reported once and the rest keep running.
declare -A reported=()
while true; do
  for i in "${!pids[@]}"; do
    if [ -z "${reported[$i]:-}" ] && ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "${names[$i]} (PID ${pids[$i]}) has stopped; see $dir/${names[$i]}.log"
      reported[$i]=1
    fi
  done
  # In the background, so that a signal is handled at once rather than after the sleep.
  sleep 1 &
  wait $! || true
done
