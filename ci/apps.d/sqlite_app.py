#!/usr/bin/env python3
"""SQLite service of ci/apps: one process holding DB open in WAL mode.
A thread appends rows to table bg all the time, ten rows per transaction
(so a dump can freeze it in the middle of one); HTTP/1.1 with keep-alive on
127.0.0.1:PORT writes to table t on request:
  /write?n=N  appends N rows to t in one transaction, returns t's last id
  /pause      stops the bg thread, returns the last id it committed
  /resume     starts it again                    /status  bg's last id
Rows are (id, sha256 hex of "TABLE:id"), so a reader can check each one."""
import hashlib
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

port, path = int(sys.argv[1]), sys.argv[2]
lock = threading.Lock()
run = threading.Event()
state = {"bg": 0}


def payload(table, i):
    return hashlib.sha256(f"{table}:{i}".encode()).hexdigest()


def connect():
    c = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    c.execute("pragma journal_mode=wal")
    c.execute("pragma synchronous=normal")
    return c


db = connect()
db.execute("create table if not exists t(id integer primary key, v text not null)")
db.execute("create table if not exists bg(id integer primary key, v text not null)")
state["bg"] = db.execute("select coalesce(max(id), 0) from bg").fetchone()[0]


def writer():
    c = connect()
    while True:
        run.wait()
        c.execute("begin immediate")
        i = state["bg"]
        for j in range(i + 1, i + 11):
            c.execute("insert into bg values (?, ?)", (j, payload("bg", j)))
        c.execute("commit")
        state["bg"] = i + 10
        time.sleep(0.002)


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        u = urlsplit(self.path)
        if u.path == "/write":
            n = int(parse_qs(u.query).get("n", ["1"])[0])
            with lock:
                db.execute("begin immediate")
                last = db.execute("select coalesce(max(id), 0) from t").fetchone()[0]
                db.executemany("insert into t values (?, ?)",
                               [(i, payload("t", i)) for i in range(last + 1, last + n + 1)])
                db.execute("commit")
                out = last + n
        elif u.path == "/pause":
            run.clear()
            with lock:
                db.execute("begin immediate")   # waits for the writer's transaction
                db.execute("commit")
            out = state["bg"]
        elif u.path == "/resume":
            run.set()
            out = state["bg"]
        elif u.path == "/status":
            out = state["bg"]
        else:
            self.send_error(404)
            return
        b = str(out).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)


run.set()
threading.Thread(target=writer, daemon=True).start()
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
