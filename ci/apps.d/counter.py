#!/usr/bin/env python3
"""Python service of ci/apps: HTTP/1.1 with keep-alive on 127.0.0.1:PORT,
state in memory only.
  /inc    the counter plus one (returns the new value)   /get   the counter
  /ticks  a thread's tick count (one every 10 ms)        /put?k=v  store
  /digest sha256 of 16 MiB of random bytes made at start, and of the store
  /gc     allocates 256 MiB in small pieces, drops them and collects"""
import gc
import hashlib
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

lock = threading.Lock()
state = {"counter": 0, "ticks": 0}
store = {}
blob = bytearray(os.urandom(16 << 20))


def ticker():
    while True:
        time.sleep(0.01)
        with lock:
            state["ticks"] += 1


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        u = urlsplit(self.path)
        with lock:
            if u.path == "/inc":
                state["counter"] += 1
                out = state["counter"]
            elif u.path == "/get":
                out = state["counter"]
            elif u.path == "/ticks":
                out = state["ticks"]
            elif u.path == "/put":
                store.update(parse_qsl(u.query))
                out = len(store)
            elif u.path == "/gc":
                junk = [bytes(4096) for _ in range(65536)]
                out = len(junk)
                del junk
                gc.collect()
            elif u.path == "/digest":
                s = "".join(f"{k}={store[k]}\n" for k in sorted(store))
                out = hashlib.sha256(blob).hexdigest() + " " + hashlib.sha256(s.encode()).hexdigest()
            else:
                self.send_error(404)
                return
        b = f"{out}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)


threading.Thread(target=ticker, daemon=True).start()
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
