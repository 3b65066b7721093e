// Node service of ci/apps: the same API as counter.py (HTTP/1.1 keep-alive
// on 127.0.0.1:PORT, state in memory only; ticks from a 10 ms interval timer;
// /gc allocates 256 MiB and runs the collector: run with --expose-gc).
"use strict";
const http = require("http");
const crypto = require("crypto");
let counter = 0, ticks = 0;
const store = new Map();
const blob = crypto.randomBytes(16 << 20);
setInterval(() => { ticks++; }, 10);
const srv = http.createServer((req, res) => {
  const u = new URL(req.url, "http://127.0.0.1");
  let out;
  switch (u.pathname) {
    case "/inc": out = ++counter; break;
    case "/get": out = counter; break;
    case "/ticks": out = ticks; break;
    case "/put": for (const [k, v] of u.searchParams) store.set(k, v); out = store.size; break;
    case "/gc": {
      let junk = [];
      for (let i = 0; i < 65536; i++) junk.push(Buffer.alloc(4096, i & 255));
      out = junk.length;
      junk = null;
      global.gc();
      break;
    }
    case "/digest": {
      const s = [...store.keys()].sort().map((k) => `${k}=${store.get(k)}\n`).join("");
      out = crypto.createHash("sha256").update(blob).digest("hex") + " " +
        crypto.createHash("sha256").update(s).digest("hex");
      break;
    }
    default: res.writeHead(404); res.end(); return;
  }
  const b = Buffer.from(String(out));
  res.writeHead(200, { "Content-Length": b.length });
  res.end(b);
});
srv.keepAliveTimeout = 600000;
srv.listen(Number(process.argv[2]), "127.0.0.1");
