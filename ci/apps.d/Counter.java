// JVM service of ci/apps: the same API as counter.py (HTTP/1.1 keep-alive
// through com.sun.net.httpserver on 127.0.0.1:PORT, state in memory only;
// ticks from a thread sleeping 10 ms; /gc allocates 256 MiB and collects).
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.util.HexFormat;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.Executors;

public class Counter {
    static long counter = 0, ticks = 0;
    static final TreeMap<String, String> store = new TreeMap<>();
    static final byte[] blob = new byte[16 << 20];

    static String sha256(byte[] b) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(b));
    }

    static synchronized String handle(String path, String query) throws Exception {
        switch (path) {
            case "/inc": return Long.toString(++counter);
            case "/get": return Long.toString(counter);
            case "/ticks": return Long.toString(ticks);
            case "/put":
                if (query != null)
                    for (String kv : query.split("&")) {
                        String[] p = kv.split("=", 2);
                        store.put(URLDecoder.decode(p[0], StandardCharsets.UTF_8),
                                  p.length > 1 ? URLDecoder.decode(p[1], StandardCharsets.UTF_8) : "");
                    }
                return Integer.toString(store.size());
            case "/gc": {
                java.util.ArrayList<byte[]> junk = new java.util.ArrayList<>();
                for (int i = 0; i < 65536; i++) {
                    junk.add(new byte[4096]);
                    if (junk.size() == 8192) junk.clear();
                }
                System.gc();
                return "65536";
            }
            case "/digest": {
                StringBuilder s = new StringBuilder();
                for (Map.Entry<String, String> e : store.entrySet())
                    s.append(e.getKey()).append('=').append(e.getValue()).append('\n');
                return sha256(blob) + " " + sha256(s.toString().getBytes(StandardCharsets.UTF_8));
            }
            default: return null;
        }
    }

    public static void main(String[] args) throws Exception {
        new SecureRandom().nextBytes(blob);
        Thread t = new Thread(() -> {
            while (true) {
                try { Thread.sleep(10); } catch (InterruptedException e) { return; }
                synchronized (Counter.class) { ticks++; }
            }
        });
        t.setDaemon(true);
        t.start();
        HttpServer srv = HttpServer.create(new InetSocketAddress("127.0.0.1", Integer.parseInt(args[0])), 64);
        srv.setExecutor(Executors.newFixedThreadPool(4));
        srv.createContext("/", (HttpExchange x) -> {
            try {
                String out = handle(x.getRequestURI().getPath(), x.getRequestURI().getRawQuery());
                if (out == null) { x.sendResponseHeaders(404, -1); return; }
                byte[] b = out.getBytes(StandardCharsets.UTF_8);
                x.sendResponseHeaders(200, b.length);
                x.getResponseBody().write(b);
            } catch (Exception e) {
                x.sendResponseHeaders(500, -1);
            } finally {
                x.close();
            }
        });
        srv.start();
    }
}
