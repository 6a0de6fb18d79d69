#!/usr/bin/env bash
# Relay throughput, side by side in one run: Postfix (Debian package, a throw-away instance),
# Postfix with Rspamd (Debian package, network modules off) as its milter, and mailsilo with
# its filter on, each accepting mail on loopback with a durable (fsync'd) queue and relaying it
# to the same smtp-sink, all driven by the same smtp-source command.
#
#   bash bench/smtp-relay.sh [--store postgres] [MESSAGES] [SESSIONS] [SIZE]
#                                                        (defaults: 20000 20 5120)
#
# Prints, for each: the rate at which smtp-source got its 250s, the end-to-end rate (until
# the queue is empty, i.e. everything reached the sink), CPU seconds used; the ratio; and
# mailsilo's p50/p99 time from end of DATA to the durable commit that precedes the 250.
#
# With --store postgres, in the same run: one mailsilo on PostgreSQL (a cluster of the
# script's own, Debian's postgresql with its default settings: fsync and synchronous_commit
# on) beside the embedded store, and a fleet of four mail servers (separate processes, two
# balancers) on PostgreSQL, loaded through both balancers with half the messages each.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=embedded
if [ "${1:-}" = --store ]; then
  STORE=${2:-}
  shift 2
  [ "$STORE" = postgres ] || { echo "--store postgres is the only other store" >&2; exit 2; }
fi
MESSAGES=${1:-20000}
SESSIONS=${2:-20}
SIZE=${3:-5120}
SINK_PORT=10026
PF_PORT=10025
MS_PORT=10027

need=()
command -v smtp-source >/dev/null && command -v postfix >/dev/null || need+=(postfix)
command -v rspamd >/dev/null || need+=(rspamd)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
. bench/common.sh relay

smtp-sink -u postfix 127.0.0.1:$SINK_PORT 1024 &
PIDS+=($!)

# --- Postfix: private instances, no chroot, relaying example.com to the sink; the second
# with Rspamd as its milter (every message scanned before Postfix answers, as mailsilo's is).
postfix_instance() { # dir port [milter-port]
  local dir=$1
  mkdir -p "$dir/etc" "$dir/queue" "$dir/data"
  cat > "$dir/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.mailsilo.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
relay_domains = example.com
transport_maps = inline:{ example.com=smtp:[127.0.0.1]:$SINK_PORT }
smtpd_recipient_restrictions = reject_unauth_destination
alias_maps =
alias_database =
local_transport = error:no local delivery
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file = $dir/maillog
EOF
  if [ -n "${3:-}" ]; then
    printf 'smtpd_milters = inet:127.0.0.1:%s\nmilter_default_action = tempfail\nmilter_protocol = 6\n' "$3" \
      >> "$dir/etc/main.cf"
  fi
  sed "s/^LISTEN /127.0.0.1:$2 /" scripts/postfix-master.cf > "$dir/etc/master.cf"
  postfix -c "$dir/etc" set-permissions >/dev/null 2>&1 || true
  STOP_HOOKS+=("postfix -c '$dir/etc' stop")
  postfix -c "$dir/etc" start
  wait_port 127.0.0.1 "$2"
}
postfix_instance "$WORK/pf" $PF_PORT
. bench/rspamd.sh
rspamd_start "$WORK/rspamd" 10033 10034 10036 10037
postfix_instance "$WORK/pfr" 10035 10037

# --- mailsilo: the same relay, its queue in the same file system.
mailsilo_config() { # smtp-port control-port [store-url]
  cat <<EOF
[smtp]
hostname = "bench.mailsilo.test"
listen = ["127.0.0.1:$1"]
max_sessions_per_client = 1000
[control]
listen = "127.0.0.1:$2"
[[domain]]
name = "example.com"
destination = "127.0.0.1:$SINK_PORT"
EOF
  [ -z "${3:-}" ] || printf '[store]\nurl = "%s"\n' "$3"
}
mailsilo_config $MS_PORT 10028 > "$WORK/mailsilo.toml"
"$BIN" --log-format json up --config "$WORK/mailsilo.toml" --data-dir "$WORK/ms" >/dev/null 2>"$WORK/ms.log" &
MS_PID=$!
PIDS+=($!)
wait_port 127.0.0.1 $MS_PORT
# Empty when the gateway's control API lists no message.
queue_empty() { # config data-dir
  "$BIN" queue --config "$1" --data-dir "$2" list 2>/dev/null | grep -q -- '-- 0 messages'
}

FLEET_PIDS=()
if [ "$STORE" = postgres ]; then
  . scripts/pg.sh
  pg_install
  STOP_HOOKS+=('pg_stop "$WORK/pg" immediate')
  pg_start "$WORK/pg" 10040
  # One mail server on PostgreSQL, as the embedded one above.
  mailsilo_config 10029 10030 "$(pg_database single)" > "$WORK/mailsilo-pg.toml"
  "$BIN" --log-format json up --config "$WORK/mailsilo-pg.toml" --data-dir "$WORK/ms-pg" >/dev/null 2>"$WORK/ms-pg.log" &
  MSPG_PID=$!
  PIDS+=($!)
  wait_port 127.0.0.1 10029
  # The fleet: balancers c1 127.0.3.1 and c2 127.0.3.2 (PROXY v2), mail servers on
  # 127.0.4.1-4, each server its own process with its own data dir.
  {
    mailsilo_config 10031 10032 "$(pg_database fleet)" | sed 's/^listen = \["127.0.0.1:10031"\]/listen = []/'
    printf '[[silo]]\nname = "silo.bench.test"\n'
    n=0
    for c in 1 2; do
      printf '[[silo.cluster]]\nname = "c%s"\naddress = "127.0.3.%s:10031"\nproxy = true\n' $c $c
      for s in 1 2; do
        n=$((n + 1))
        printf '[[silo.cluster.server]]\nname = "c%s-s%s"\naddress = "127.0.4.%s:10031"\nloading = 1\n' $c $s $n
      done
    done
  } > "$WORK/fleet.toml"
  for s in c1-s1 c1-s2 c2-s1 c2-s2; do
    "$BIN" --log-format json up --config "$WORK/fleet.toml" --data-dir "$WORK/fleet-$s" --only "server:$s" >/dev/null 2>"$WORK/fleet-$s.log" &
    FLEET_PIDS+=($!)
    PIDS+=($!)
  done
  "$BIN" up --config "$WORK/fleet.toml" --data-dir "$WORK/fleet-front" --only balancer,control >/dev/null 2>"$WORK/fleet-front.log" &
  FLEET_PIDS+=($!)
  PIDS+=($!)
  for i in 1 2 3 4; do wait_port 127.0.4.$i 10031; done
  wait_port 127.0.3.1 10031
  wait_port 127.0.3.2 10031
  wait_port 127.0.0.1 10032
fi

busy() { # CPU seconds the whole machine has been busy (all processes, both cores)
  awk '/^cpu / {print ($2 + $3 + $4 + $7 + $8) / 100}' /proc/stat
}
# The processes whose CPU is counted apart: mailsilo's own, and PostgreSQL's (the postmaster
# and its backends).
own_mailsilo() { echo "$MS_PID"; }
own_rspamd() { pgrep -f "rspamd: " | tr '\n' ' '; }
own_mailsilo_pg() { echo "$MSPG_PID"; }
own_fleet() { echo "${FLEET_PIDS[@]}"; }
own_postgres() {
  local pm
  pm=$(head -n 1 "$WORK/pg/data/postmaster.pid" 2>/dev/null) || return 0
  echo "$pm" $(ps -o pid= --ppid "$pm")
}
ticks() { # PIDS...: "pid:ticks" of user and system CPU each has used
  local p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && awk -v p="$p" '{sub(/^.*\) /, ""); print p ":" $12 + $13}' "/proc/$p/stat"
  done
  return 0
}
spent() { # "before" "after": CPU seconds used in between, processes new since counting from 0
  python3 -c '
import sys
b = dict(x.split(":") for x in sys.argv[1].split())
a = dict(x.split(":") for x in sys.argv[2].split())
print(sum(int(v) - int(b.get(k, 0)) for k, v in a.items()) / 100)' "$1" "$2"
}

run() { # name "host:port ..." queue-empty-command [own-pids-function [postgres-pids-function]]
  local name=$1 empty=$3 own=${4:-} db=${5:-} t0 t1 t2 t own0= db0= split=
  local targets=($2) pids=()
  [ -z "$own" ] || own0=$(ticks $($own))
  [ -z "$db" ] || db0=$(ticks $($db))
  c0=$(busy)
  t0=$(now)
  for t in "${targets[@]}"; do
    smtp-source -s $((SESSIONS / ${#targets[@]})) -m $((MESSAGES / ${#targets[@]})) -l "$SIZE" \
      -f bench@outside.net -t rcpt@example.com "$t" &
    pids+=($!)
  done
  for t in "${pids[@]}"; do wait "$t"; done
  t1=$(now)
  for _ in $(seq 6000); do eval "$empty" && break; sleep 0.05; done
  t2=$(now)
  c2=$(busy)
  if [ -n "$own" ]; then
    local label=mailsilo
    [ "$own" != own_rspamd ] || label=rspamd
    split="$label $(spent "$own0" "$(ticks $($own))")"
    [ -z "$db" ] || split="$split postgres $(spent "$db0" "$(ticks $($db))")"
  fi
  python3 - "$name" "$t0" "$t1" "$t2" "$MESSAGES" "$c0" "$c2" $split <<'PY'
import sys
name, t0, t1, t2, n, c0, c2 = sys.argv[1], *map(float, sys.argv[2:5]), int(sys.argv[5]), *map(float, sys.argv[6:8])
split = sys.argv[8:]
parts = ", ".join(f"{split[i]} {float(split[i + 1]) / n * 1000:.2f}" for i in range(0, len(split), 2))
print(f"{name:12} accepted {n / (t1 - t0):7.0f} msg/s | relayed end to end {n / (t2 - t0):7.0f} msg/s ({t2 - t0:.1f} s) | "
      f"machine CPU {(c2 - c0) / n * 1000:.2f} ms/msg (incl. smtp-source and smtp-sink)" + (f"; of it {parts} ms/msg" if parts else ""))
PY
  echo "$name $MESSAGES $t0 $t2" >> "$WORK/rates"
}

echo "smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE; $(nproc) cores; $(postconf -h mail_version | sed 's/^/Postfix /')"
# The load tools' own ceiling: smtp-source straight into smtp-sink, nothing in between.
run ceiling 127.0.0.1:$SINK_PORT true
run postfix 127.0.0.1:$PF_PORT "postqueue -c $WORK/pf/etc -p 2>/dev/null | grep -q 'Mail queue is empty'"
run postfix+rspamd 127.0.0.1:10035 "postqueue -c $WORK/pfr/etc -p 2>/dev/null | grep -q 'Mail queue is empty'" own_rspamd
run mailsilo 127.0.0.1:$MS_PORT "queue_empty '$WORK/mailsilo.toml' '$WORK/ms'" own_mailsilo
if [ "$STORE" = postgres ]; then
  lsn0=$(psql "$PG_ADMIN" -tAc "SELECT pg_current_wal_lsn()")
  run mailsilo-pg 127.0.0.1:10029 "queue_empty '$WORK/mailsilo-pg.toml' '$WORK/ms-pg'" own_mailsilo_pg own_postgres
  # What a message costs PostgreSQL in WAL, and what its trace keeps on disk (table and
  # indexes, after a VACUUM, for as long as trace_retention says).
  psql "${PG_ADMIN%/postgres}/single" -qc "VACUUM ANALYZE" >/dev/null
  psql "${PG_ADMIN%/postgres}/single" -tAc "
    SELECT format('mailsilo-pg: WAL %s bytes/msg; trace kept %s bytes/msg (%s messages traced); queue tables now %s',
      round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') / $MESSAGES),
      round((pg_total_relation_size('trace_message') + pg_total_relation_size('trace_recipient')
             + pg_total_relation_size('trace_event'))::numeric / greatest(count(*), 1)),
      count(*),
      pg_size_pretty(pg_total_relation_size('message') + pg_total_relation_size('recipient')))
    FROM trace_message"
  run fleet-pg "127.0.3.1:10031 127.0.3.2:10031" "queue_empty '$WORK/fleet.toml' '$WORK/fleet-front'" own_fleet own_postgres
fi

python3 - "$WORK/rates" "$WORK/ms.log" "$WORK/ms-pg.log" <<'PY'
import json, os, sys
rates = {}
for line in open(sys.argv[1]):
    name, n, t0, t2 = line.split()
    rates[name] = int(n) / (float(t2) - float(t0))
print(f"ratio mailsilo/postfix (end to end): {rates['mailsilo'] / rates['postfix']:.2f}x; "
      f"of the ceiling: mailsilo {rates['mailsilo'] / rates['ceiling']:.0%}, postfix {rates['postfix'] / rates['ceiling']:.0%}")
print(f"ratio mailsilo (scanning) / postfix+rspamd (end to end): {rates['mailsilo'] / rates['postfix+rspamd']:.2f}x; "
      f"postfix+rspamd {rates['postfix+rspamd'] / rates['ceiling']:.0%} of the ceiling")
for name in ("mailsilo-pg", "fleet-pg"):
    if name in rates:
        print(f"{name}: {rates[name] / rates['postfix']:.2f}x postfix, {rates[name] / rates['mailsilo']:.2f}x mailsilo embedded, "
              f"{rates[name] / rates['ceiling']:.0%} of the ceiling")
for log, name in zip(sys.argv[2:], ("mailsilo", "mailsilo-pg")):
    if not os.path.exists(log):
        continue
    lat = sorted(json.loads(l)["fields"]["commit_us"] for l in open(log)
                 if '"queued"' in l and "commit_us" in l)
    if lat:
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000
        print(f"{name} end of DATA -> 250 (durable commit): p50 {p(0.50):.2f} ms, p99 {p(0.99):.2f} ms over {len(lat)} messages")
PY
