#!/usr/bin/env python3
"""Load client of ci/apps: one persistent TCP connection to the service under
test, kept open across its dump and restore (stasis dump --tcp-established).

  load.py http  PORT PATH PROGRESS STOP [--seq | --sha256 HEX]
  load.py redis PORT KEY  PROGRESS STOP

Requests are sent one after the other on the same connection until the file
STOP exists; the number done so far is written to PROGRESS after each one.
--seq: every body is an integer one more than the previous one (no request
lost or run twice); --sha256: every body has this digest. redis: INCR KEY
must answer 1, 2, 3... The connection is never reopened: a reset, a closed
connection or a reply missing for 30 s is a failure. Ends with one line,
`OK n=N` (exit 0) or `FAIL reason` (exit 1)."""
import hashlib
import os
import socket
import sys
import time

# The server's address (LOAD_HOST; a container's, behind a veth).
HOST = os.environ.get("LOAD_HOST", "127.0.0.1")


class Fail(Exception):
    pass


def connect(port):
    deadline = time.time() + 10
    while True:
        try:
            s = socket.create_connection((HOST, port), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


class Reader:
    def __init__(self, s):
        self.s, self.buf = s, b""

    def fill(self):
        try:
            d = self.s.recv(65536)
        except socket.timeout:
            raise Fail("no reply for 30 s")
        except OSError as e:
            raise Fail(f"connection broken: {e}")
        if not d:
            raise Fail("connection closed by the server")
        self.buf += d

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        l, self.buf = self.buf.split(b"\r\n", 1)
        return l

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d


def http_one(s, r, port, path):
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
    status = r.line()
    if b" 200 " not in status + b" ":
        raise Fail(f"status {status!r}")
    length, chunked, close = None, False, False
    while True:
        h = r.line()
        if not h:
            break
        k, _, v = h.decode("latin-1").partition(":")
        k, v = k.strip().lower(), v.strip().lower()
        if k == "content-length":
            length = int(v)
        elif k == "transfer-encoding" and "chunked" in v:
            chunked = True
        elif k == "connection" and v == "close":
            close = True
    if chunked:
        body = b""
        while True:
            n = int(r.line().split(b";")[0], 16)
            if n == 0:
                r.line()
                break
            body += r.exact(n)
            r.line()
    elif length is not None:
        body = r.exact(length)
    else:
        raise Fail("response without a length")
    if close:
        raise Fail("server closes the connection (no keep-alive)")
    return body


def main():
    mode, port, what, progress, stop = sys.argv[1:6]
    port, opts = int(port), sys.argv[6:]
    n, prev = 0, None
    s = connect(port)
    r = Reader(s)
    try:
        while not os.path.exists(stop):
            if mode == "http":
                body = http_one(s, r, port, what)
                if opts and opts[0] == "--seq":
                    v = int(body)
                    if prev is not None and v != prev + 1:
                        raise Fail(f"request {n + 1}: counter {v} after {prev}")
                    prev = v
                elif opts and opts[0] == "--sha256":
                    h = hashlib.sha256(body).hexdigest()
                    if h != opts[1]:
                        raise Fail(f"request {n + 1}: body sha256 {h} ({len(body)} bytes)")
            else:
                k = what.encode()
                s.sendall(b"*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n" % (len(k), k))
                l = r.line()
                if not l.startswith(b":") or int(l[1:]) != n + 1:
                    raise Fail(f"INCR {n + 1}: reply {l!r}")
            n += 1
            with open(progress + ".tmp", "w") as f:
                f.write(f"{n}\n")
            os.replace(progress + ".tmp", progress)
            time.sleep(0.002)
    except Fail as e:
        print(f"FAIL after {n} requests: {e}", flush=True)
        return 1
    print(f"OK n={n}" + (f" last={prev}" if prev is not None else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
