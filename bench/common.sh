# Shared by the benchmark scripts (source it from the project root: `. bench/common.sh NAME`):
# a work directory (removed on exit unless BENCH_KEEP is set), the processes started stopped
# on exit, and small helpers.
WORK=$(mktemp -d "/var/tmp/mailsilo-$1.XXXXXX")
chmod 755 "$WORK"   # the peers' daemons run as their own users
PIDS=()
STOP_HOOKS=()
cleanup() {
  for h in "${STOP_HOOKS[@]}"; do eval "$h" >/dev/null 2>&1 || true; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${BENCH_KEEP:-}" ]; then echo "kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
now() { date +%s.%N; }
wait_port() { # host port
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return; sleep 0.1; done
  echo "nothing listens on $1:$2"; exit 1
}
cargo build --release -q -p mailsilo
BIN=${CARGO_TARGET_DIR:-target}/release/mailsilo
