"""A loopback DNS server for the filter's tests: serves the records of a JSON zone file
(re-read whenever it changes) over UDP and TCP, with the conventions of the OpenSPF test
suite's `zonedata`:

  {"name": [{"TXT": "text" | ["str", "ings"]}, {"SPF": "..."}, {"A": "192.0.2.1"},
            {"AAAA": "2001:db8::1"}, {"MX": [10, "host"]}, {"PTR": "host"},
            {"CNAME": "host"}, "TIMEOUT"]}

A name with SPF records and no TXT record also answers them as TXT (the suite's drivers
do so), unless it has {"TXT": "NONE"}. "TIMEOUT" in a name's list, as in the suite's own
driver: a question whose type has no record before it gets no answer at all. A name that
is not in the zone, and has no name below it, is NXDOMAIN.

    python3 zone_server.py ZONE.json PORT      (PORT 0: any free one; prints "ready PORT"
                                               once listening)
"""
import json
import os
import socket
import socketserver
import struct
import sys
import threading

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, TXT, A, DNSRecord

ZONE_PATH = sys.argv[1]
PORT = int(sys.argv[2])
_zone = {"mtime": None, "data": {}}
_lock = threading.Lock()


def zone():
    with _lock:
        try:
            mtime = os.stat(ZONE_PATH).st_mtime_ns
        except FileNotFoundError:
            return {}
        if mtime != _zone["mtime"]:
            with open(ZONE_PATH) as f:
                raw = json.load(f)
            _zone["data"] = {k.lower().rstrip("."): v for k, v in raw.items()}
            _zone["mtime"] = mtime
        return _zone["data"]


def txt_strings(value):
    parts = value if isinstance(value, list) else [value]
    return [p.encode() if isinstance(p, str) else bytes(p) for p in parts]


def records(name, records_of):
    """(rtype, rdata) pairs of `name`, with the SPF-as-TXT duplication."""
    out = []
    has_txt = any(isinstance(r, dict) and "TXT" in r for r in records_of)
    for r in records_of:
        if not isinstance(r, dict):
            continue
        for t, v in r.items():
            if t == "TXT" and v == "NONE":
                continue
            if t == "SPF":
                if not has_txt:
                    out.append(("TXT", TXT(txt_strings(v))))
                continue
            if t == "TXT":
                out.append(("TXT", TXT(txt_strings(v))))
            elif t == "A":
                out.append(("A", A(v)))
            elif t == "AAAA":
                out.append(("AAAA", AAAA(v)))
            elif t == "MX":
                out.append(("MX", MX(v[1], v[0])))
            elif t == "PTR":
                out.append(("PTR", PTR(v)))
            elif t == "CNAME":
                out.append(("CNAME", CNAME(v)))
    return out


def answer(data):
    """The reply's bytes, or None for no reply (a TIMEOUT name)."""
    try:
        request = DNSRecord.parse(data)
    except Exception:
        return None
    reply = request.reply()
    z = zone()
    qname = str(request.q.qname).lower().rstrip(".")
    qtype = QTYPE[request.q.qtype]
    name = qname
    for _ in range(10):  # follow CNAMEs (a loop ends here)
        entry = z.get(name)
        if entry is None:
            if not any(k.endswith("." + name) for k in z):
                reply.header.rcode = RCODE.NXDOMAIN
            return reply.pack()
        if "TIMEOUT" in entry:
            before = entry[: entry.index("TIMEOUT")]
            if not any(isinstance(r, dict) and r.get(qtype, "NONE") != "NONE" for r in before):
                return None
            entry = before
        rrs = records(name, entry)
        cname = [d for t, d in rrs if t == "CNAME"]
        if cname and qtype != "CNAME":
            reply.add_answer(RR(name + ".", QTYPE.CNAME, rdata=cname[0], ttl=60))
            name = str(cname[0].label).lower().rstrip(".")
            continue
        for t, d in rrs:
            if t == qtype:
                reply.add_answer(RR(name + ".", getattr(QTYPE, t), rdata=d, ttl=60))
        return reply.pack()
    return reply.pack()


class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        out = answer(data)
        if out is not None:
            if len(out) > 512:
                r = DNSRecord.parse(out)
                r.header.tc = 1
                r.rr = []
                out = r.pack()
            sock.sendto(out, self.client_address)


class Tcp(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            head = self.request.recv(2)
            if len(head) < 2:
                return
            (n,) = struct.unpack("!H", head)
            data = b""
            while len(data) < n:
                chunk = self.request.recv(n - len(data))
                if not chunk:
                    return
                data += chunk
            out = answer(data)
            if out is not None:
                self.request.sendall(struct.pack("!H", len(out)) + out)
        except OSError:
            pass


class ThreadedUdp(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True


class ThreadedTcp(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


# Port 0: a free port for both UDP and TCP, found here (the UDP port a test picks may be
# in use over TCP by another test's connection).
for attempt in range(100):
    udp = ThreadedUdp(("127.0.0.1", PORT), Udp)
    port = udp.server_address[1]
    try:
        tcp = ThreadedTcp(("127.0.0.1", port), Tcp)
        break
    except OSError:
        udp.server_close()
        if PORT:
            raise
else:
    sys.exit("no port free for both UDP and TCP")
threading.Thread(target=tcp.serve_forever, daemon=True).start()
print(f"ready {port}", flush=True)
udp.serve_forever()
