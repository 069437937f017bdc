#!/usr/bin/env python3
"""Servers and clients the end-to-end tests run inside their namespaces.

Every client has a timeout; every server prints "ready" once it listens. Only addresses the
tests pass in are used (loopback and the tests' own namespaces).
"""
import hashlib
import http.server
import socket
import socketserver
import struct
import sys
import threading
import time

TIMEOUT = 20


def pattern(n):
    block = bytes(range(256)) * 256
    out = bytearray()
    while len(out) < n:
        out += block
    return bytes(out[:n])


# ---------------------------------------------------------------- servers
def dns_server(addr, port, *records):
    """A tiny authoritative DNS responder, UDP and TCP: NAME=IP records, NXDOMAIN else."""
    table = {}
    for r in records:
        name, ip = r.split("=")
        table[name.lower().rstrip(".")] = socket.inet_aton(ip)

    def answer(q):
        if len(q) < 12:
            return None
        qid, flags, qd = struct.unpack("!HHH", q[:6])
        if flags & 0x8000 or qd != 1:
            return None
        i, labels = 12, []
        while i < len(q) and q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode("ascii", "replace"))
            i += 1 + q[i]
        i += 1
        qtype, _ = struct.unpack("!HH", q[i:i + 4])
        question = q[12:i + 4]
        name = ".".join(labels).lower()
        ip = table.get(name)
        rflags = 0x8400 | (flags & 0x0100)
        if ip is None:
            return struct.pack("!HHHHHH", qid, rflags | 3, 1, 0, 0, 0) + question
        if qtype != 1:
            return struct.pack("!HHHHHH", qid, rflags, 1, 0, 0, 0) + question
        rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + ip
        return struct.pack("!HHHHHH", qid, rflags, 1, 1, 0, 0) + question + rr

    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((addr, int(port)))
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, int(port)))
    t.listen(16)

    def tcp_loop():
        while True:
            c, _ = t.accept()
            c.settimeout(5)
            try:
                n = struct.unpack("!H", recv_exact(c, 2))[0]
                a = answer(recv_exact(c, n))
                if a:
                    c.sendall(struct.pack("!H", len(a)) + a)
            except OSError:
                pass
            c.close()

    threading.Thread(target=tcp_loop, daemon=True).start()
    print("ready", flush=True)
    while True:
        q, peer = u.recvfrom(4096)
        a = answer(q)
        if a:
            u.sendto(a, peer)


def http_server(addr, port, directory):
    """GET serves files from DIRECTORY; POST answers with the sha256 of the body."""

    class H(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=directory, **kw)

        def log_message(self, *a):
            pass

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            h = hashlib.sha256()
            while n > 0:
                d = self.rfile.read(min(n, 1 << 20))
                if not d:
                    break
                h.update(d)
                n -= len(d)
            body = (h.hexdigest() + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    srv = S((addr, int(port)), H)
    print("ready", flush=True)
    srv.serve_forever()


def tcp_echo(addr, port):
    """Echoes every connection; prints each client's address ("peer IP:PORT")."""
    class H(socketserver.BaseRequestHandler):
        def handle(self):
            print("peer %s:%d" % self.client_address, flush=True)
            while True:
                try:
                    d = self.request.recv(65536)
                except OSError:
                    return
                if not d:
                    return
                self.request.sendall(d)

    class S(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    srv = S((addr, int(port)), H)
    print("ready", flush=True)
    srv.serve_forever()


def udp_echo(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, int(port)))
    print("ready", flush=True)
    while True:
        d, peer = s.recvfrom(65536)
        s.sendto(d, peer)


def halfclose_server(addr, port, nbytes):
    """Sends NBYTES, then closes its sending side; keeps reading until the client closes."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(8)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.sendall(pattern(int(nbytes)))
        c.shutdown(socket.SHUT_WR)
        c.settimeout(30)
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass
        c.close()


# ---------------------------------------------------------------- clients
def recv_exact(s, n):
    out = b""
    while len(out) < n:
        d = s.recv(n - len(out))
        if not d:
            raise OSError("eof after %d of %d bytes" % (len(out), n))
        out += d
    return out


def read_all(host, port, expect_bytes):
    """Connects, reads until EOF; checks the byte count and pattern of a halfclose server."""
    s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    got = bytearray()
    while True:
        d = s.recv(65536)
        if not d:
            break
        got += d
    # The server waits for our close after its own: the connection is half-closed now.
    s.close()
    ok = bytes(got) == pattern(int(expect_bytes))
    print("received %d bytes, pattern %s" % (len(got), "ok" if ok else "WRONG"))
    sys.exit(0 if ok else 1)


def tcp_rr(host, port, n="10"):
    s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    for i in range(int(n)):
        msg = b"ping %d" % i
        s.sendall(msg)
        if recv_exact(s, len(msg)) != msg:
            sys.exit(1)
    s.close()
    print("ok")


def udp_rr(host, port, n="10"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((host, int(port)))
    ok = 0
    for i in range(int(n)):
        msg = b"udp %d" % i
        for _ in range(3):
            s.send(msg)
            try:
                if s.recv(2048) == msg:
                    ok += 1
                    break
            except OSError:
                pass
    print("%d/%s" % (ok, n))
    sys.exit(0 if ok == int(n) else 1)


def connect_fails(host, port):
    """Exit 0 when a TCP connection is refused or times out (nothing listens there)."""
    try:
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"x")
        s.settimeout(3)
        d = s.recv(10)
        print("connected, read %r" % d)
        sys.exit(1)
    except OSError as e:
        print("refused: %s" % e)
        sys.exit(0)


def hold(host, port, count, seconds):
    """Opens COUNT echo connections, then round-trips data on each every 0.2 s for SECONDS;
    prints "ready" once all are open, "ok" at the end if every round trip worked."""
    conns = []
    for _ in range(int(count)):
        conns.append(socket.create_connection((host, int(port)), timeout=TIMEOUT))
    print("ready", flush=True)
    end = time.time() + float(seconds)
    rounds = 0
    while time.time() < end:
        for c in conns:
            c.sendall(b"hold")
            if recv_exact(c, 4) != b"hold":
                sys.exit(1)
        rounds += 1
        time.sleep(0.2)
    print("ok %d rounds" % rounds, flush=True)


if __name__ == "__main__":
    globals()[sys.argv[1].replace("-", "_")](*sys.argv[2:])
