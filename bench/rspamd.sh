# A throw-away Rspamd (Debian's rspamd) for the benchmarks, sourced after bench/common.sh:
# its Bayes in a Redis of its own, one normal worker, a controller that takes learning from
# loopback, optionally a proxy in milter mode scanning itself (for Postfix's smtpd_milters),
# and no network: DNS goes to a closed loopback port and the modules that live on the
# network (DNS lists, fuzzy hashes, sender authentication, neural, ratelimit) are off.
#
#   rspamd_start DIR NORMAL_PORT CONTROLLER_PORT REDIS_PORT [MILTER_PORT]
rspamd_start() {
  local dir=$1 normal=$2 controller=$3 redis=$4 milter=${5:-} m
  mkdir -p "$dir/local.d" "$dir/override.d" "$dir/db" "$dir/run" "$dir/log" "$dir/redis"
  redis-server --port "$redis" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir/redis" \
    >"$dir/redis.log" 2>&1 &
  PIDS+=($!)
  wait_port 127.0.0.1 "$redis"
  echo "servers = \"127.0.0.1:$redis\";" > "$dir/local.d/redis.conf"
  echo "autolearn = false;" > "$dir/local.d/classifier-bayes.conf"
  printf 'bind_socket = "127.0.0.1:%s";\ncount = 1;\n' "$normal" > "$dir/local.d/worker-normal.inc"
  printf 'bind_socket = "127.0.0.1:%s";\nsecure_ip = "127.0.0.1";\ncount = 1;\n' "$controller" \
    > "$dir/local.d/worker-controller.inc"
  if [ -n "$milter" ]; then
    printf 'bind_socket = "127.0.0.1:%s";\nmilter = yes;\ntimeout = 120s;\ncount = 1;\nupstream "local" {\n  default = yes;\n  self_scan = yes;\n}\n' \
      "$milter" > "$dir/local.d/worker-proxy.inc"
  else
    echo "enabled = false;" > "$dir/local.d/worker-proxy.inc"
  fi
  echo "enabled = false;" > "$dir/local.d/worker-fuzzy.inc"
  echo 'dns { nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 1; }' > "$dir/local.d/options.inc"
  for m in rbl fuzzy_check spf dkim dmarc arc asn emails phishing neural ratelimit replies; do
    echo "enabled = false;" > "$dir/local.d/$m.conf"
  done
  rspamd -f -u root -g root -c /etc/rspamd/rspamd.conf \
    --var="LOCAL_CONFDIR=$dir" --var="DBDIR=$dir/db" --var="RUNDIR=$dir/run" --var="LOGDIR=$dir/log" \
    >"$dir/rspamd.out" 2>&1 &
  PIDS+=($!)
  wait_port 127.0.0.1 "$normal"
  wait_port 127.0.0.1 "$controller"
  [ -z "$milter" ] || wait_port 127.0.0.1 "$milter"
}

# CPU seconds Rspamd's workers (every rspamd process) have used.
rspamd_cpu() {
  local total=0 p ut st
  for p in $(pgrep -f "rspamd: "); do
    read -r ut st < <(awk '{sub(/^.*\) /, ""); print $12, $13}' "/proc/$p/stat")
    total=$((total + ut + st))
  done
  echo "scale=2; $total / $(getconf CLK_TCK)" | bc
}
