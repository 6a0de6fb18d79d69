#!/usr/bin/env bash
# The test command: installs what the tests drive mailsilo with (Debian packages), starts a
# throw-away PostgreSQL of its own, then runs every unit, property and integration test of the
# workspace, the fleet tests (separate processes on one PostgreSQL), and the tests that keep
# mail (outage, crash, expiry, the silo) once more with PostgreSQL as the store.
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
# DKIM signers of another make than the Python one: opendkim-tools for the filter's tests,
# the opendkim milter in front of the sending Postfix.
command -v opendkim-testmsg >/dev/null || missing+=(opendkim-tools)
[ -x /usr/sbin/opendkim ] || missing+=(opendkim)
# ClamAV's daemon: the malware tests start their own clamd with their own signatures.
[ -x /usr/sbin/clamd ] || missing+=(clamav-daemon clamav)
# 7-Zip: the malware tests make 7z archives with it (plain, solid, encrypted).
command -v 7zz >/dev/null || missing+=(7zip)
# libarchive's bsdtar: the malware tests check the RAR archives they write with it (Debian's
# 7-Zip has no RAR support, and no free tool writes RAR).
command -v bsdtar >/dev/null || missing+=(libarchive-tools)
# Chromium for the portal's browser tests (driven by playwright-core, from npm, below).
command -v chromium >/dev/null || missing+=(chromium)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # Installing postfix or ClamAV may start the system's instances; the tests need none
  # (and freshclam cannot reach its mirrors here).
  postfix stop >/dev/null 2>&1 || true
  for s in clamav-daemon clamav-freshclam opendkim; do service "$s" stop >/dev/null 2>&1 || true; done
fi

# Python peers of the filter's tests, from PyPI: a DNS server for test zones (dnslib), the
# DKIM and ARC signers (dkimpy, with authres and pynacl for ARC and Ed25519), and the
# OpenSPF RFC 7208 test suite as pyspf 2.0.14's source distribution ships it.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  dnslib dkimpy authres pynacl pyyaml
spf_suite=/var/tmp/mailsilo-pyspf-2.0.14/pyspf-2.0.14/test/rfc7208-tests.yml
if [ ! -f "$spf_suite" ]; then
  mkdir -p /var/tmp/mailsilo-pyspf-2.0.14
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    pyspf==2.0.14 -d /var/tmp/mailsilo-pyspf-2.0.14
  tar xzf /var/tmp/mailsilo-pyspf-2.0.14/pyspf-2.0.14.tar.gz -C /var/tmp/mailsilo-pyspf-2.0.14
fi
export MAILSILO_TEST_SPF_SUITE="$spf_suite"

# playwright-core (no browser download: it drives Debian's chromium), once per machine.
playwright=/var/tmp/mailsilo-playwright
if [ ! -d "$playwright/node_modules/playwright-core" ]; then
  mkdir -p "$playwright"
  (cd "$playwright" && npm install --silent --no-audit --no-fund playwright-core@1.65.1 >/dev/null)
fi
export MAILSILO_TEST_PLAYWRIGHT="$playwright/node_modules"

# schemathesis (PyPI), for the API's OpenAPI document, in a virtualenv of its own.
schemathesis=/var/tmp/mailsilo-schemathesis
if [ ! -x "$schemathesis/bin/st" ]; then
  python3 -m venv "$schemathesis"
  "$schemathesis/bin/pip" install --quiet --disable-pip-version-check schemathesis==4.32.5
fi
export MAILSILO_TEST_SCHEMATHESIS="$schemathesis/bin/st"

# PostgreSQL: a throw-away cluster of our own under /var/tmp, on a free loopback port.
. scripts/pg.sh
pg_install
pg=$(mktemp -d /var/tmp/mailsilo-test-pg.XXXXXX)
trap 'pg_stop "$pg" immediate; rm -rf "$pg"' EXIT
PG_INITDB_OPTS=--no-sync pg_start "$pg" 55432
export MAILSILO_TEST_POSTGRES="$PG_ADMIN"

cargo test --workspace --all-targets "$@" -- --skip fleet_ --skip openspf_
# The OpenSPF suite, its pass count and every explained failure printed in the log.
cargo test -p mailsilo-filter --test spf_suite "$@" -- --nocapture
# The fleet on PostgreSQL, its figures (takeover, duplicates, refusals) printed in the log.
cargo test -p mailsilo --test fleet "$@" -- --nocapture
MAILSILO_TEST_STORE=postgres cargo test -p mailsilo --test durability --test silo --test hardening --test filter --test malware --test portal "$@"
MAILSILO_TEST_STORE=postgres cargo test -p mailsilo-queue --test retry_and_dsn "$@"
