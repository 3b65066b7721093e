/* Workloads for the engine's acceptance tests (engine/tests/acceptance.rs).
 * Each sets up its state, writes "ready" to OUT, and on SIGUSR1 checks its
 * state from inside and writes "ok ..." or "bad ..." to OUT.
 *
 *   workload mem MIB OUT      MIB of anonymous memory, a pattern per word
 *   workload threads N OUT    N threads, each with its own mask and TLS value
 *   workload fds N DIR OUT    N fds: files at offsets, pipes holding data
 *   workload tree N OUT       N processes in sessions and groups, a zombie,
 *                             a stopped one (shape checked from outside)
 *   workload vfork 0 OUT      a parent stuck in vfork (uninterruptible) and
 *                             its child writing a counter to OUT.count
 *   workload kinds DIR OUT    one of many object kinds: a memfd (fd and
 *                             mapping), a FIFO holding data, a file deleted
 *                             while open, shared anonymous memory, a POSIX
 *                             timer, a seccomp filter, a guard page
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static const char *out;

static void on_usr1(int s) { (void)s; asked = 1; }

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    char tmp[4096], path[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    snprintf(path, sizeof path, "%s.tmp", out);
    FILE *f = fopen(path, "w");
    if (!f) exit(3);
    fputs(tmp, f);
    fclose(f);
    rename(path, out);
}

static void wait_asked(void) {
    while (!asked) usleep(10000);
}

static uint64_t word(uint64_t i) { return (i * 0x9E3779B97F4A7C15ull) ^ (i >> 7); }

static int mem(long mib) {
    size_t n = (size_t)mib << 17; /* 8-byte words */
    uint64_t *p = mmap(NULL, n * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 2;
    for (size_t i = 0; i < n; i++) p[i] = word(i);
    say("ready\n");
    wait_asked();
    for (size_t i = 0; i < n; i++)
        if (p[i] != word(i)) {
            say("bad word %zu: %llx\n", i, (unsigned long long)p[i]);
            return 1;
        }
    say("ok %zu words\n", n);
    return 0;
}

static __thread long tls_value;
static volatile int thread_ok[64];

static void *thread_main(void *arg) {
    long i = (long)arg;
    tls_value = 1000 * i + 7;
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGRTMIN + (int)(i % 16));
    sigaddset(&m, SIGUSR2);
    pthread_sigmask(SIG_SETMASK, &m, NULL);
    while (!asked) usleep(5000);
    sigset_t cur;
    pthread_sigmask(SIG_SETMASK, NULL, &cur);
    int good = tls_value == 1000 * i + 7;
    for (int s = 1; s < SIGRTMAX; s++)
        if (s != SIGKILL && s != SIGSTOP && sigismember(&cur, s) != sigismember(&m, s))
            good = 0;
    thread_ok[i] = good ? 1 : 2;
    return NULL;
}

static int threads(long n) {
    if (n < 1 || n > 64) return 2;
    pthread_t t[64];
    /* Threads block SIGUSR1: only the main thread takes it. */
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &m, NULL);
    for (long i = 1; i < n; i++) pthread_create(&t[i], NULL, thread_main, (void *)i);
    pthread_sigmask(SIG_UNBLOCK, &m, NULL);
    tls_value = 7;
    say("ready\n");
    wait_asked();
    int bad = 0;
    for (long i = 1; i < n; i++) {
        while (thread_ok[i] == 0) usleep(1000);
        if (thread_ok[i] != 1) bad++;
    }
    if (tls_value != 7) bad++;
    say(bad ? "bad %d threads\n" : "ok %d threads\n", bad ? bad : (int)n);
    return bad != 0;
}

static int fds(long n, const char *dir) {
    /* Files at offset 7*i (every 5th O_APPEND), and pipes holding "pipe i";
     * fd numbers are recorded, not assumed (inherited fds may sit between). */
    static int fdv[4096];
    static long idx[4096];
    if (n < 1 || n > 4000) return 2;
    long count = 0;
    char path[4096];
    for (long i = 0; count < n; i++) {
        if (i % 3 != 2) {
            snprintf(path, sizeof path, "%s/f%ld", dir, i);
            int fd = open(path, O_RDWR | O_CREAT | (i % 5 == 0 ? O_APPEND : 0), 0600);
            if (fd < 0) return 2;
            char buf[4096];
            memset(buf, 'a' + (int)(i % 26), sizeof buf);
            if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) return 2;
            lseek(fd, 7 * i, SEEK_SET);
            fdv[count] = fd;
            idx[count++] = i;
        } else {
            int p[2];
            if (pipe(p)) return 2;
            char msg[64];
            int len = snprintf(msg, sizeof msg, "pipe %ld", i);
            if (write(p[1], msg, (size_t)len) != len) return 2;
            fdv[count] = p[0];
            idx[count++] = i;
            fdv[count] = p[1];
            idx[count++] = -1;
        }
    }
    say("ready\n");
    wait_asked();
    int bad = 0;
    for (long k = 0; k < count; k++) {
        long i = idx[k];
        int fd = fdv[k];
        if (i < 0) {
            if ((fcntl(fd, F_GETFL) & O_ACCMODE) != O_WRONLY) bad++;
        } else if (i % 3 != 2) {
            if (lseek(fd, 0, SEEK_CUR) != 7 * i) bad++;
            int fl = fcntl(fd, F_GETFL);
            if (((fl & O_APPEND) != 0) != (i % 5 == 0)) bad++;
        } else {
            char msg[64], got[64] = {0};
            int len = snprintf(msg, sizeof msg, "pipe %ld", i);
            if (read(fd, got, sizeof got) != len || memcmp(got, msg, (size_t)len)) bad++;
        }
    }
    if (bad)
        say("bad %d fds\n", bad);
    else
        say("ok %ld fds\n", count);
    return bad != 0;
}

/* Children of the tree: every 10th starts a session, every 5th a group;
 * each has up to two children of its own. */
__attribute__((noreturn)) static void tree_node(long id, long n) {
    if (id % 10 == 0)
        setsid();
    else if (id % 5 == 0)
        setpgid(0, 0);
    for (long k = 1; k <= 2; k++) {
        long c = id * 2 + k;
        if (c >= n) break;
        pid_t p = fork();
        if (p == 0) {
            tree_node(c, n);
            _exit(0);
        }
    }
    if (id == 7) raise(SIGSTOP);
    for (;;) pause();
}

static int tree(long n) {
    /* Root is node 0; node 3 exits at once and stays a zombie of node 1. */
    for (long k = 1; k <= 2; k++) {
        pid_t p = fork();
        if (p == 0) {
            if (k == 1) {
                pid_t z = fork();
                if (z == 0) _exit(42);
            }
            tree_node(k, n);
            _exit(0);
        }
    }
    say("ready\n");
    for (;;) pause();
}

static int stuck_in_vfork(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s.count", out);
    if (vfork() == 0) {
        /* The parent waits in the kernel until this child execs or exits. */
        say("ready\n");
        for (long i = 1;; i++) {
            FILE *f = fopen(path, "w");
            if (f) {
                fprintf(f, "%ld\n", i);
                fclose(f);
            }
            usleep(50000);
        }
    }
    return 0;
}

static int kinds(const char *dir) {
    char path[4096];
    int bad = 0;
    /* memfd: an fd and a shared mapping of it */
    int mfd = memfd_create("kinds", MFD_ALLOW_SEALING);
    if (mfd < 0 || ftruncate(mfd, 8192)) return 2;
    char *mm = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (mm == MAP_FAILED) return 2;
    strcpy(mm + 4096, "memfd page");
    fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK);
    /* FIFO holding data */
    snprintf(path, sizeof path, "%s/fifo", dir);
    if (mkfifo(path, 0600)) return 2;
    int ff = open(path, O_RDWR);
    if (ff < 0 || write(ff, "fifo data", 9) != 9) return 2;
    /* a file deleted while open */
    snprintf(path, sizeof path, "%s/ghost", dir);
    int gf = open(path, O_RDWR | O_CREAT, 0600);
    if (gf < 0 || write(gf, "ghost data", 10) != 10) return 2;
    unlink(path);
    /* shared anonymous memory */
    char *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return 2;
    strcpy(sh, "shared anon");
    /* a POSIX timer, armed far ahead */
    timer_t tid;
    struct sigevent ev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN};
    if (timer_create(CLOCK_MONOTONIC, &ev, &tid)) return 2;
    struct itimerspec its = {.it_value = {.tv_sec = 1000}, .it_interval = {.tv_sec = 5}};
    timer_settime(tid, 0, &its, NULL);
    /* a guard page */
    char *g = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g == MAP_FAILED || madvise(g + 4096, 4096, 102)) return 2;
    /* a seccomp filter that allows everything */
    struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog prog = {.len = 1, .filter = allow};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog))
        return 2;
    say("ready\n");
    wait_asked();
    char buf[64] = {0};
    if (strcmp(mm + 4096, "memfd page")) bad |= 1;
    if (pread(mfd, buf, 10, 4096) != 10 || memcmp(buf, "memfd page", 10)) bad |= 2;
    if (fcntl(mfd, F_GET_SEALS) != F_SEAL_SHRINK) bad |= 4;
    if (read(ff, buf, sizeof buf) != 9 || memcmp(buf, "fifo data", 9)) bad |= 8;
    if (pread(gf, buf, 10, 0) != 10 || memcmp(buf, "ghost data", 10)) bad |= 16;
    if (strcmp(sh, "shared anon")) bad |= 32;
    timer_gettime(tid, &its);
    if (its.it_interval.tv_sec != 5 || its.it_value.tv_sec < 900) bad |= 64;
    if (bad)
        say("bad %d\n", bad);
    else
        say("ok kinds\n");
    return bad != 0;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    out = argv[argc - 1];
    signal(SIGUSR1, on_usr1);
    if (!strcmp(argv[1], "mem")) return mem(atol(argv[2]));
    if (!strcmp(argv[1], "threads")) return threads(atol(argv[2]));
    if (!strcmp(argv[1], "fds") && argc == 5) return fds(atol(argv[2]), argv[3]);
    if (!strcmp(argv[1], "tree")) return tree(atol(argv[2]));
    if (!strcmp(argv[1], "vfork")) return stuck_in_vfork();
    if (!strcmp(argv[1], "kinds")) return kinds(argv[2]);
    return 2;
}
