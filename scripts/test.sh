#!/usr/bin/env bash
# The test command: installs what the tests drive mailsilo with (Debian packages), then runs
# every unit, property and integration test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian puts postfix and its tools in /usr/sbin, which a non-login shell may lack.
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
command -v swaks >/dev/null || missing+=(swaks)
command -v python3 >/dev/null || missing+=(python3)
command -v dig >/dev/null || missing+=(dnsutils)
# Postfix on both sides of the gateway (tests start their own instances, never the system's).
command -v postfix >/dev/null || missing+=(postfix)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # Installing postfix may start the system instance; the tests do not need it.
  postfix stop >/dev/null 2>&1 || true
fi

cargo test --workspace --all-targets "$@"
