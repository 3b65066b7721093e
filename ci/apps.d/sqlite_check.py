#!/usr/bin/env python3
"""Reader of ci/apps' SQLite database (another process, as the service
keeps writing): `sqlite_check.py DB [T_UPTO BG_UPTO]` prints, for t and bg,
the number of rows, the last id, the number of rows whose id or contents are
wrong (ids must run 1..last without a gap, each row hold sha256 of
"TABLE:id"), and the sha256 of the rows up to id UPTO (all rows without
UPTO), all read in one snapshot."""
import hashlib
import sqlite3
import sys

db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("begin")
out = []
upto = [int(a) for a in sys.argv[2:4]] or [None, None]
for table, lim in zip(("t", "bg"), upto):
    h, n, bad, last = hashlib.sha256(), 0, 0, 0
    for i, v in db.execute(f"select id, v from {table} order by id"):
        n += 1
        if i != n or v != hashlib.sha256(f"{table}:{i}".encode()).hexdigest():
            bad += 1
        if lim is None or i <= lim:
            h.update(f"{i}:{v}\n".encode())
        last = i
    out.append(f"{table} rows={n} last={last} bad={bad} sha={h.hexdigest()[:16]}")
db.execute("commit")
print(" ".join(out))
