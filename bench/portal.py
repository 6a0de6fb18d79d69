"""The portal's API latency over a large store (used by bench/portal.sh).

  python3 bench/portal.py fill embedded DB_FILE TRACES HELD NOW
  python3 bench/portal.py fill postgres URL TRACES HELD NOW
  python3 bench/portal.py measure PORTAL_URL NAME PASSWORD ORG_INDEX ROUNDS NOW

`fill` writes TRACES message traces (each with one recipient and two events), HELD
quarantined messages and the statistics' hourly counters straight into the store's tables, spread over the last 30 days
before NOW, for 100 client domains d0.example .. d99.example (1 % of the mail each), from
5000 senders at 300 sender domains, 50 users a domain. `measure` logs in (an organisation's admin), runs each
search ROUNDS times with varying arguments, and prints one line per search: its median,
p99 and the most results one answer carried.
"""
import http.client
import json
import statistics
import subprocess
import sys
import time
import urllib.parse

SPAN = 30 * 86400


def sql(n, held, now, dialect):
    """The statements filling the tables, for sqlite or postgres."""
    if dialect == "sqlite":
        seq = lambda count: f"WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < {count - 1})"
        pad = lambda prefix: f"printf('{prefix}%08d', x)"
        src = "n"
        recipients = "'u' || ((x / 100) % 50) || '@d' || (x % 100) || '.example'"
    else:
        seq = lambda count: ""
        pad = lambda prefix: f"'{prefix}' || lpad(x::text, 8, '0')"
        src = f"generate_series(0::bigint, {{count}}) AS g(x)"
        recipients = "ARRAY['u' || ((x / 100) % 50) || '@d' || (x % 100) || '.example']"
    when = f"{now} - (x * {SPAN} / {n})"
    sender = "'s' || (x % 5000) || '@sender' || (x % 300) || '.example'"
    rcpt = "'u' || ((x / 100) % 50) || '@d' || (x % 100) || '.example'"
    frm = lambda count: src.replace("{count}", str(count - 1))
    return [
        f"""{seq(n)} INSERT INTO trace_message (id, received_at, sender, sender_lc, size, client, helo, tls, server, node)
            SELECT {pad('B')}, {when}, {sender}, {sender}, 2000, '192.0.2.' || (x % 250), 'helo.example', NULL,
                   'c1-s' || (x % 4), 'bench' FROM {frm(n)}""",
        f"""{seq(n)} INSERT INTO trace_recipient (id, address, address_lc, domain_lc, received_at)
            SELECT {pad('B')}, {rcpt}, {rcpt}, 'd' || (x % 100) || '.example', {when} FROM {frm(n)}""",
        f"""{seq(n)} INSERT INTO trace_event (id, at, node, kind, recipient, detail)
            SELECT {pad('B')}, ({when}) * 1000, 'bench', 'received', NULL,
                   'from 192.0.2.1 helo helo.example by c1-s1, 1 recipient(s), 2000 octets; scanned: clean' FROM {frm(n)}""",
        f"""{seq(n)} INSERT INTO trace_event (id, at, node, kind, recipient, detail)
            SELECT {pad('B')}, ({when}) * 1000 + 800, 'bench', 'delivered', {rcpt},
                   'mx.client.example:25: 250 2.0.0 Ok: queued' FROM {frm(n)}""",
        f"""{seq(held)} INSERT INTO quarantine (id, received_at, sender, recipients, envelope, verdict, score, reason, size, body, subject)
            SELECT {pad('Q')}, {now} - (x * {SPAN} / {held}), {sender}, {recipients}, '{{}}', 'spam', 7.5,
                   'BAYES_SPAM(5.00) URIBL(2.50)', 300, {"CAST('Subject: offer' AS BLOB)" if dialect == "sqlite" else "'Subject: offer'::bytea"},
                   'offer ' || x FROM {frm(held)}""",
        f"""{seq(held)} INSERT INTO quarantine_recipient (id, address_lc, domain_lc)
            SELECT {pad('Q')}, {rcpt}, 'd' || (x % 100) || '.example' FROM {frm(held)}""",
        # The statistics' counters: every hour of the 30 days, for each domain, two verdicts.
        f"""{seq(720 * 200)} INSERT INTO stat (metric, hour, domain, label, n)
            SELECT 'verdict', ({now} - {now} % 3600) - (x / 200) * 3600, 'd' || (x % 100) || '.example',
                   CASE WHEN x % 200 < 100 THEN 'clean' ELSE 'spam' END, 1 + x % 7 FROM {frm(720 * 200)}""",
    ]


def fill(kind, where, n, held, now):
    started = time.time()
    if kind == "embedded":
        import sqlite3

        db = sqlite3.connect(where)
        db.execute("PRAGMA synchronous = OFF")
        for s in sql(n, held, now, "sqlite"):
            db.execute(s)
            db.commit()
        db.execute("ANALYZE")
        db.commit()
        db.close()
    else:
        for s in sql(n, held, now, "postgres") + ["ANALYZE"]:
            subprocess.run(["psql", where, "-q", "-v", "ON_ERROR_STOP=1", "-c", s], check=True)
    print(f"filled {n} traces and {held} held messages in {time.time() - started:.0f} s")


class Api:
    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        self.headers = {}

    def call(self, method, path, body=None):
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        r = self.conn.getresponse()
        payload = r.read()
        if r.status != 200:
            raise SystemExit(f"{method} {path}: {r.status} {payload[:300]!r}")
        cookie = r.getheader("Set-Cookie")
        if cookie:
            self.headers["Cookie"] = cookie.split(";")[0]
        return json.loads(payload)


def measure(url, name, password, org, rounds, now):
    api = Api(url)
    api.call("POST", "/api/v1/login", {"name": name, "password": password})
    q = urllib.parse.quote
    # A sender with mail to this organisation: x = org + 100 k.
    def sender(k):
        x = org + 100 * k
        return f"s{x % 5000}@sender{x % 300}.example"

    searches = [
        ("trace, the organisation's newest 100", lambda i: "/api/v1/trace?limit=100"),
        ("trace, one recipient", lambda i: f"/api/v1/trace?to={q(f'u{i % 50}@d{org}.example')}&limit=100"),
        ("trace, one sender", lambda i: f"/api/v1/trace?from={q(sender(i))}&limit=100"),
        ("trace, since a day ago", lambda i: f"/api/v1/trace?since={now - 86400}&limit=100"),
        ("quarantine, the organisation's first 50", lambda i: "/api/v1/quarantine?limit=50"),
        ("quarantine, one recipient", lambda i: f"/api/v1/quarantine?recipient={q(f'u{i % 50}@d{org}.example')}&limit=50"),
        ("quarantine, one sender domain", lambda i: f"/api/v1/quarantine?sender={q(sender(i).split('@')[1])}&limit=50"),
        ("statistics, the last 24 hours", lambda i: "/api/v1/stats"),
    ]
    for label, path in searches:
        times, most = [], 0
        for i in range(rounds):
            t = time.perf_counter()
            answer = api.call("GET", path(i))
            times.append((time.perf_counter() - t) * 1000)
            if isinstance(answer, list):
                most = max(most, len(answer))
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"{label:<42} median {statistics.median(times):7.1f} ms   p99 {p99:7.1f} ms   results {most}")


if __name__ == "__main__":
    if sys.argv[1] == "fill":
        fill(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        measure(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]))
