#!/usr/bin/env bash
# The balancer, side by side in one run with HAProxy (Debian package, TCP mode, the same
# weights 1/2/3, an SMTP health check each):
#  1. PROXY off, in front of three smtp-sink backends: sessions/s through each, and the
#     latency each adds to a single session (bench/session_latency.py: sessions to
#     smtp-sink directly, through HAProxy and through mailsilo in turn; medians).
#  2. PROXY v2 on (HAProxy send-proxy-v2), in front of three mailsilo mail servers (which
#     queue durably and relay to an smtp-sink): messages/s through each.
# smtp-source sends one message per connection, so messages/s is sessions/s.
#
#   bash bench/balancer.sh [MESSAGES] [SESSIONS] [SIZE]     (defaults: 20000 20 5120)
#   ROUNDS=N (default 3): alternating rounds per figure; medians are reported
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-20000}
SESSIONS=${2:-20}
SIZE=${3:-5120}
SINK_PORT=10040   # smtp-sinks on 127.0.2.21-23
LB_PORT=10041     # HAProxy on 127.0.1.21, mailsilo on 127.0.1.22
MS_SERVER_PORT=10042  # mailsilo mail servers on 127.0.2.31-33
PROXY_PORT=10043  # with PROXY v2: HAProxy on 127.0.1.30, mailsilo on 127.0.1.31

for tool in smtp-source haproxy; do
  command -v $tool >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix haproxy >/dev/null; break; }
done
. bench/common.sh balancer

for i in 1 2 3; do
  smtp-sink -u postfix 127.0.2.2$i:$SINK_PORT 1024 &
  PIDS+=($!)
done

cat > "$WORK/haproxy.cfg" <<EOF
global
  maxconn 9000   # within a 20000-descriptor limit; the load is 20 sessions
  nbthread $(nproc)
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend plain
  bind 127.0.1.21:$LB_PORT
  default_backend sinks
backend sinks
  balance roundrobin
  option smtpchk EHLO bench.mailsilo.test
  server s1 127.0.2.21:$SINK_PORT weight 1 check
  server s2 127.0.2.22:$SINK_PORT weight 2 check
  server s3 127.0.2.23:$SINK_PORT weight 3 check
frontend proxied
  bind 127.0.1.30:$PROXY_PORT
  default_backend mailsilo
backend mailsilo
  balance roundrobin
  source 127.0.1.32
  option smtpchk EHLO bench.mailsilo.test
  server p1 127.0.2.31:$MS_SERVER_PORT weight 1 check check-send-proxy send-proxy-v2
  server p2 127.0.2.32:$MS_SERVER_PORT weight 2 check check-send-proxy send-proxy-v2
  server p3 127.0.2.33:$MS_SERVER_PORT weight 3 check check-send-proxy send-proxy-v2
EOF
haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!)

cat > "$WORK/mailsilo.toml" <<EOF
[smtp]
hostname = "bench.mailsilo.test"
max_sessions_per_client = 1000
[[domain]]
name = "example.com"
destination = "127.0.2.21:$SINK_PORT"
[[silo]]
name = "silo1.mailsilo.test"
[[silo.cluster]]
name = "plain"
address = "127.0.1.22:$LB_PORT"
proxy = false
[[silo.cluster]]
name = "proxied"
address = "127.0.1.31:$PROXY_PORT"
source = "127.0.1.32"
proxy = true
EOF
for i in 1 2 3; do
  printf '[[silo.cluster.server]]\nname = "sink%s"\naddress = "127.0.2.2%s:%s"\nloading = %s\n' $i $i $SINK_PORT $i >> "$WORK/plain.part"
  printf '[[silo.cluster.server]]\nname = "p%s"\naddress = "127.0.2.3%s:%s"\nloading = %s\nmaxconn = 10000\n' $i $i $MS_SERVER_PORT $i >> "$WORK/proxied.part"
done
python3 - "$WORK" <<'PY'
import sys
w = sys.argv[1]
t = open(f"{w}/mailsilo.toml").read()
t = t.replace('proxy = false\n', 'proxy = false\n' + open(f"{w}/plain.part").read())
t = t.replace('proxy = true\n', 'proxy = true\n' + open(f"{w}/proxied.part").read())
open(f"{w}/mailsilo.toml", "w").write(t)
PY
"$BIN" up --only balancer --config "$WORK/mailsilo.toml" --data-dir "$WORK/lb" >/dev/null 2>"$WORK/lb.log" &
PIDS+=($!)
"$BIN" --log-format json up --only server:p1,server:p2,server:p3 --config "$WORK/mailsilo.toml" --data-dir "$WORK/servers" >/dev/null 2>"$WORK/servers.log" &
PIDS+=($!)
wait_port 127.0.1.21 $LB_PORT; wait_port 127.0.1.22 $LB_PORT; wait_port 127.0.1.30 $PROXY_PORT; wait_port 127.0.1.31 $PROXY_PORT
wait_port 127.0.2.31 $MS_SERVER_PORT
sleep 3   # first health checks

rate() { # label host port sessions messages size -> prints and echoes the rate
  local t0 t1
  t0=$(now)
  smtp-source -s "$4" -m "$5" -l "$6" -f bench@outside.net -t rcpt@example.com "$2:$3"
  t1=$(now)
  python3 -c "print(f'{$5 / ($t1 - $t0):.1f}')"
}

ROUNDS=${ROUNDS:-3}
median() { python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.1f}')" "$@"; }
echo "smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE; $(nproc) cores; $(haproxy -v | head -1 | cut -d' ' -f1-3)"
echo "medians of $ROUNDS rounds, HAProxy and mailsilo alternating (this VM's run-to-run noise is large)"
echo "1. PROXY off, three smtp-sink backends (weights 1/2/3)"
D=(); H=(); M=()
for r in $(seq "$ROUNDS"); do
  D+=($(rate direct 127.0.2.21 $SINK_PORT "$SESSIONS" "$MESSAGES" "$SIZE"))
  H+=($(rate haproxy 127.0.1.21 $LB_PORT "$SESSIONS" "$MESSAGES" "$SIZE"))
  M+=($(rate mailsilo 127.0.1.22 $LB_PORT "$SESSIONS" "$MESSAGES" "$SIZE"))
done
direct=$(median "${D[@]}"); hx=$(median "${H[@]}"); ms=$(median "${M[@]}")
echo "   sessions/s: smtp-sink directly $direct | through haproxy $hx (${H[*]}) | through mailsilo $ms (${M[*]}) | ratio mailsilo/haproxy $(python3 -c "print(f'{$ms / $hx:.2f}')")x"
# Added latency: single sessions to the three targets in turn (so noise hits all alike),
# median session time of each.
read -r d1 h1 m1 < <(python3 bench/session_latency.py "${LATENCY_SESSIONS:-3000}" 127.0.2.21:$SINK_PORT 127.0.1.21:$LB_PORT 127.0.1.22:$LB_PORT)
echo "   one session at a time (median of ${LATENCY_SESSIONS:-3000}, interleaved): ${d1} us directly; added by haproxy $((h1 - d1)) us, by mailsilo $((m1 - d1)) us"

echo "2. PROXY v2 on, three mailsilo mail servers (durable queue, relaying to smtp-sink)"
H2=(); M2=()
for r in $(seq "$ROUNDS"); do
  H2+=($(rate haproxy 127.0.1.30 $PROXY_PORT "$SESSIONS" "$MESSAGES" "$SIZE"))
  M2+=($(rate mailsilo 127.0.1.31 $PROXY_PORT "$SESSIONS" "$MESSAGES" "$SIZE"))
done
hx2=$(median "${H2[@]}"); ms2=$(median "${M2[@]}")
echo "   messages/s: through haproxy $hx2 (${H2[*]}) | through mailsilo $ms2 (${M2[*]}) | ratio mailsilo/haproxy $(python3 -c "print(f'{$ms2 / $hx2:.2f}')")x"
echo "   messages the mail servers queued: $(grep -c '"message":"queued"' "$WORK/servers.log")"
