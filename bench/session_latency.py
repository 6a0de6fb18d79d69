"""Per-session latency through several SMTP targets, interleaved so that the machine's noise
falls on all of them alike: one whole session (banner, EHLO, MAIL, RCPT, DATA, QUIT) to each
target in turn, N times; prints the median session time of each, in microseconds.

    python3 bench/session_latency.py N HOST:PORT [HOST:PORT ...]
"""
import socket
import statistics
import sys
import time

SESSION = [
    b"EHLO bench.mailsilo.test\r\n",
    b"MAIL FROM:<bench@outside.net>\r\n",
    b"RCPT TO:<rcpt@example.com>\r\n",
    b"DATA\r\n",
    b"Subject: latency\r\n\r\nbody\r\n.\r\n",
    b"QUIT\r\n",
]


def reply(f):
    while True:
        line = f.readline()
        if not line or line[3:4] != b"-":
            return line


def session(host, port):
    start = time.perf_counter()
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    assert reply(f).startswith(b"220")
    for command in SESSION:
        s.sendall(command)
        r = reply(f)
        assert r[:1] in (b"2", b"3"), r
    s.close()
    return (time.perf_counter() - start) * 1e6


def main():
    n = int(sys.argv[1])
    targets = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in sys.argv[2:]]
    times = [[] for _ in targets]
    for _ in range(n):
        for i, (host, port) in enumerate(targets):
            times[i].append(session(host, port))
    print(" ".join(f"{statistics.median(t):.0f}" for t in times))


main()
