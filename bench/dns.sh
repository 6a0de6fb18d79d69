#!/usr/bin/env bash
# Authoritative DNS, side by side in one run: NSD (Debian package) and mailsilo's DNS serving
# the same zone with the same 4-address RRset for silo1.mailsilo.test, each loaded by dnsperf
# for the same time with the same settings.
#
#   bash bench/dns.sh [SECONDS] [CLIENTS]        (defaults: 30 10)
#
# Both get two workers (NSD server-count 2; mailsilo one UDP socket per core) and rotate the
# RRset per answer (NSD round-robin: yes; mailsilo rotation "rotate").
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-30}
CLIENTS=${2:-10}
NSD_PORT=10053
MS_PORT=10054

if ! command -v dnsperf >/dev/null || ! command -v nsd >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsperf nsd >/dev/null
fi
. bench/common.sh dns

cat > "$WORK/mailsilo.test.zone" <<EOF
\$ORIGIN mailsilo.test.
\$TTL 900
@     IN SOA ns1.mailsilo.test. hostmaster.mailsilo.test. 1 3600 600 604800 300
@     IN NS  ns1.mailsilo.test.
ns1   IN A   127.0.0.1
silo1 IN A   127.0.1.1
silo1 IN A   127.0.1.2
silo1 IN A   127.0.1.3
silo1 IN A   127.0.1.4
EOF
cat > "$WORK/nsd.conf" <<EOF
server:
  ip-address: 127.0.0.1@$NSD_PORT
  server-count: 2
  reuseport: yes
  round-robin: yes
  rrl-ratelimit: 0          # Debian builds NSD with RRL on (200/s): off, as in mailsilo here
  username: ""
  zonesdir: "$WORK"
  database: ""
  zonelistfile: "$WORK/zone.list"
  xfrdfile: "$WORK/xfrd.state"
  pidfile: "$WORK/nsd.pid"
  logfile: "$WORK/nsd.log"
remote-control:
  control-enable: no
zone:
  name: mailsilo.test
  zonefile: mailsilo.test.zone
EOF
nsd -d -c "$WORK/nsd.conf" &
PIDS+=($!)

cat > "$WORK/mailsilo.toml" <<EOF
[smtp]
hostname = "bench.mailsilo.test"
[[domain]]
name = "example.com"
destination = "127.0.0.1:25"
[dns]
listen = ["127.0.0.1:$MS_PORT"]
[[dns.zone]]
name = "mailsilo.test"
[[dns.zone.record]]
name = "ns1"
type = "A"
value = "127.0.0.1"
[[silo]]
name = "silo1.mailsilo.test"
rotation = "rotate"
ttl = 900
EOF
for i in 1 2 3 4; do
  printf '[[silo.cluster]]\nname = "c%s"\naddress = "127.0.1.%s:10025"\n[[silo.cluster.server]]\nname = "c%s-s1"\naddress = "127.0.2.%s:10025"\nloading = 1\n' "$i" "$i" "$i" "$i" >> "$WORK/mailsilo.toml"
done
# DNS only: no balancer answers the health checks, so all clusters are "down" and, as
# designed, all four addresses are still returned (never an empty answer).
"$BIN" up --only dns --config "$WORK/mailsilo.toml" --data-dir "$WORK/ms" >/dev/null 2>"$WORK/ms.log" &
PIDS+=($!)
sleep 1
for port in $NSD_PORT $MS_PORT; do
  n=$(dig @127.0.0.1 -p $port +short silo1.mailsilo.test | wc -l)
  [ "$n" = 4 ] || { echo "server on port $port does not answer 4 addresses"; exit 1; }
done
echo "silo1.mailsilo.test A" > "$WORK/queries"

run() { # name port
  dnsperf -s 127.0.0.1 -p "$2" -d "$WORK/queries" -l "$SECONDS_EACH" -c "$CLIENTS" -T 1 -q 500 > "$WORK/$1.out" 2>&1
  python3 - "$1" "$WORK/$1.out" <<'PY'
import re, sys
name, text = sys.argv[1], open(sys.argv[2]).read()
qps = float(re.search(r"Queries per second:\s+([\d.]+)", text).group(1))
lat = re.search(r"Average Latency \(s\):\s+([\d.]+)\s+\(min ([\d.]+), max ([\d.]+)\)", text)
lost = re.search(r"Queries lost:\s+(\d+)", text).group(1)
print(f"{name:9} {qps:10.0f} queries/s   latency avg {float(lat.group(1))*1e6:7.0f} us (max {float(lat.group(3))*1e3:.1f} ms)   lost {lost}")
open(sys.argv[2] + ".qps", "w").write(str(qps))
PY
}

echo "dnsperf -l $SECONDS_EACH -c $CLIENTS -T 1 -q 500, one query name (4 A records); $(nproc) cores; $(nsd -v 2>&1 | head -1)"
run nsd $NSD_PORT
run mailsilo $MS_PORT
python3 -c "print(f'ratio mailsilo/nsd: {float(open(\"$WORK/mailsilo.out.qps\").read()) / float(open(\"$WORK/nsd.out.qps\").read()):.2f}x')"
