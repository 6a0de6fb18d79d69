#!/usr/bin/env bash
# Memory under large messages: N messages of SIZE octets sent in parallel (Python smtplib,
# one session each) to a gateway that relays them to a separate `mailsilo sink`. Prints the
# gateway's resident memory before, its peak (VmHWM) during, and its RSS a minute after.
#
#   bash bench/memory.sh [N] [SIZE] [SETTLE]      (defaults: 10 25000000 60)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10}
SIZE=${2:-25000000}
SETTLE=${3:-60}
. bench/common.sh memory

cat > "$WORK/mailsilo.toml" <<EOT
[smtp]
hostname = "bench.mailsilo.test"
listen = ["127.0.0.1:10037"]
max_message_size = "30MiB"
[[domain]]
name = "example.com"
destination = "127.0.0.1:10038"
EOT
"$BIN" sink --listen 127.0.0.1:10038 --data-dir "$WORK/sink" >/dev/null 2>&1 &
PIDS+=($!)
"$BIN" up --config "$WORK/mailsilo.toml" --data-dir "$WORK/ms" >/dev/null 2>"$WORK/ms.log" &
UP=$!
PIDS+=($UP)
wait_port 127.0.0.1 10037
wait_port 127.0.0.1 10038
rss() { awk "/^$1:/ {print int(\$2 / 1024)}" /proc/$UP/status; }
before=$(rss VmRSS)
python3 - "$N" "$SIZE" <<'PY'
import smtplib, sys, threading, time
n, size = int(sys.argv[1]), int(sys.argv[2])
line = b"x" * 76 + b"\r\n"
body = b"Subject: big\r\n\r\n" + line * (size // len(line))
ok = []
def one():
    with smtplib.SMTP("127.0.0.1", 10037, timeout=600) as s:
        s.sendmail("a@outside.net", ["alice@example.com"], body)
        ok.append(1)
t0 = time.time()
ts = [threading.Thread(target=one) for _ in range(n)]
for t in ts: t.start()
for t in ts: t.join()
print(f"{len(ok)} of {n} messages of {size} octets accepted in {time.time() - t0:.1f} s")
PY
peak=$(rss VmHWM)
for _ in $(seq 600); do
  [ "$(ls "$WORK/sink/mailbox/alice@example.com/new" 2>/dev/null | wc -l)" -ge "$N" ] && break
  sleep 0.1
done
delivered=$(ls "$WORK/sink/mailbox/alice@example.com/new" | wc -l)
sleep "$SETTLE"
after=$(rss VmRSS)
echo "gateway RSS: ${before} MB before, peak ${peak} MB, ${after} MB ${SETTLE} s after ($delivered delivered)"
