#!/usr/bin/env bash
# Relay throughput, side by side in one run: Postfix (Debian package, a throw-away instance)
# and mailsilo, each accepting mail on loopback with a durable (fsync'd) queue and relaying it
# to the same smtp-sink, both driven by the same smtp-source command.
#
#   bash bench/smtp-relay.sh [MESSAGES] [SESSIONS] [SIZE]     (defaults: 20000 20 5120)
#
# Prints, for each: the rate at which smtp-source got its 250s, the end-to-end rate (until
# the queue is empty, i.e. everything reached the sink), CPU seconds used; the ratio; and
# mailsilo's p50/p99 time from end of DATA to the durable commit that precedes the 250.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-20000}
SESSIONS=${2:-20}
SIZE=${3:-5120}
SINK_PORT=10026
PF_PORT=10025
MS_PORT=10027

if ! command -v smtp-source >/dev/null || ! command -v postfix >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
. bench/common.sh relay
STOP_HOOKS+=('postfix -c "$WORK/pf/etc" stop')

smtp-sink -u postfix 127.0.0.1:$SINK_PORT 1024 &
PIDS+=($!)

# --- Postfix: a private instance, no chroot, relaying example.com to the sink.
mkdir -p "$WORK/pf/etc" "$WORK/pf/queue" "$WORK/pf/data"
cat > "$WORK/pf/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $WORK/pf/queue
data_directory = $WORK/pf/data
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
maillog_file = $WORK/pf/maillog
EOF
sed "s/^LISTEN /127.0.0.1:$PF_PORT /" scripts/postfix-master.cf > "$WORK/pf/etc/master.cf"
postfix -c "$WORK/pf/etc" set-permissions >/dev/null 2>&1 || true
postfix -c "$WORK/pf/etc" start
wait_port 127.0.0.1 $PF_PORT

# --- mailsilo: the same relay, its queue in the same file system.
cat > "$WORK/mailsilo.toml" <<EOF
[smtp]
hostname = "bench.mailsilo.test"
listen = ["127.0.0.1:$MS_PORT"]
max_sessions_per_client = 1000
[[domain]]
name = "example.com"
destination = "127.0.0.1:$SINK_PORT"
EOF
"$BIN" --log-format json up --config "$WORK/mailsilo.toml" --data-dir "$WORK/ms" >/dev/null 2>"$WORK/ms.log" &
PIDS+=($!)
wait_port 127.0.0.1 $MS_PORT

busy() { # CPU seconds the whole machine has been busy (all processes, both cores)
  awk '/^cpu / {print ($2 + $3 + $4 + $7 + $8) / 100}' /proc/stat
}

run() { # name port queue-empty-command
  local name=$1 port=$2 empty=$3 t0 t1 t2
  c0=$(busy)
  t0=$(now)
  smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f bench@outside.net -t rcpt@example.com 127.0.0.1:"$port"
  t1=$(now)
  for _ in $(seq 6000); do eval "$empty" && break; sleep 0.05; done
  t2=$(now)
  c2=$(busy)
  python3 - "$name" "$t0" "$t1" "$t2" "$MESSAGES" "$c0" "$c2" <<'PY'
import sys
name, t0, t1, t2, n, c0, c2 = sys.argv[1], *map(float, sys.argv[2:5]), int(sys.argv[5]), *map(float, sys.argv[6:8])
print(f"{name:9} accepted {n / (t1 - t0):7.0f} msg/s | relayed end to end {n / (t2 - t0):7.0f} msg/s ({t2 - t0:.1f} s) | "
      f"machine CPU {(c2 - c0) / n * 1000:.2f} ms/msg (incl. smtp-source and smtp-sink)")
PY
  echo "$name $MESSAGES $t0 $t2" >> "$WORK/rates"
}

echo "smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE; $(nproc) cores; $(postconf -h mail_version | sed 's/^/Postfix /')"
# The load tools' own ceiling: smtp-source straight into smtp-sink, nothing in between.
run ceiling $SINK_PORT true
run postfix $PF_PORT "postqueue -c $WORK/pf/etc -p 2>/dev/null | grep -q 'Mail queue is empty'"
run mailsilo $MS_PORT "\"$BIN\" queue --data-dir \"$WORK/ms\" list 2>/dev/null | grep -q -- '-- 0 messages'"

python3 - "$WORK/rates" "$WORK/ms.log" <<'PY'
import json, sys
rates = {}
for line in open(sys.argv[1]):
    name, n, t0, t2 = line.split()
    rates[name] = int(n) / (float(t2) - float(t0))
lat = sorted(json.loads(l)["fields"]["commit_us"] for l in open(sys.argv[2])
             if '"queued"' in l and "commit_us" in l)
print(f"ratio mailsilo/postfix (end to end): {rates['mailsilo'] / rates['postfix']:.2f}x; "
      f"of the ceiling: mailsilo {rates['mailsilo'] / rates['ceiling']:.0%}, postfix {rates['postfix'] / rates['ceiling']:.0%}")
if lat:
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000
    print(f"mailsilo end of DATA -> 250 (durable commit): p50 {p(0.50):.2f} ms, p99 {p(0.99):.2f} ms over {len(lat)} messages")
PY
