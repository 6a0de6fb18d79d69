#!/usr/bin/env bash
# schemathesis (PyPI) against the OpenAPI document of a running gateway: every operation,
# generated inputs (valid and invalid), links followed from listings to their entries.
# Checks: no 5xx, every status documented, every answer's content type and body as the
# document says. Run inside a network namespace of the test's own (`unshare --net`), so no
# input it invents (a server's or a domain's address) can reach past loopback.
#
#   bash tests/api/schemathesis.sh MAILSILO_BINARY ST_BINARY WORK_DIR [MAX_EXAMPLES]
set -euo pipefail
BIN=$1 ST=$2 WORK=$3 EXAMPLES=${4:-30}
ip link set lo up
mkdir -p "$WORK"
cat > "$WORK/gateway.toml" <<CONF
[smtp]
hostname = "mx.api.test"
listen = ["127.0.0.1:2525"]
[control]
listen = "127.0.0.1:8025"
[digest]
schedule = "off"
[filter]
[[filter.rule]]
name = "TEST_HOLD"
header = "subject"
pattern = "hold me"
score = 8.0
[[domain]]
name = "example.com"
destination = "127.0.0.1:2599"
[[silo]]
name = "silo.api.test"
[[silo.cluster]]
name = "c1"
address = "127.0.1.1:2525"
[[silo.cluster.server]]
name = "c1-s1"
address = "127.0.2.1:2525"
loading = 1
[[organisation]]
name = "Example"
domains = ["example.com"]
[[account]]
name = "admin@example.com"
role = "admin"
organisation = "Example"
password = "admin-pass"
CONF
"$BIN" up --config "$WORK/gateway.toml" --data-dir "$WORK/data" >"$WORK/up.out" 2>"$WORK/up.log" &
UP=$!
trap 'kill $UP 2>/dev/null; wait $UP 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8025) 2>/dev/null && break; sleep 0.1; done
# Something in the queue (its destination refuses: deferred) and in the quarantine.
python3 - <<'PY'
import smtplib
with smtplib.SMTP("127.0.0.1", 2525) as s:
    for n in range(3):
        s.sendmail("a@outside.example", ["bob@example.com"], f"Subject: hello {n}\r\n\r\nhi\r\n")
        s.sendmail("b@outside.example", ["alice@example.com"], f"Subject: hold me {n}\r\n\r\nbuy\r\n")
PY
# From the scratch directory: schemathesis keeps a cache in its working directory.
(cd "$WORK" && "$ST" run http://127.0.0.1:8025/api/openapi.json \
  -H "Authorization: Bearer $(cat "$WORK/data/control.token")" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing,stateful \
  -n "$EXAMPLES" --workers 1 --seed 1 --generation-database none --no-color \
  --report junit --report-dir "$WORK/report")
# The gateway lived through it.
kill -0 $UP
