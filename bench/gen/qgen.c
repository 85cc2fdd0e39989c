/*
 * qgen - qserver's own load generator for beanstalkd-protocol servers.
 *
 * One thread, one epoll set, non-blocking sockets, pipelined commands. Per
 * operation it does no allocation and no formatting beyond an integer to
 * ASCII; a read is parsed in one pass and the replies it completes are
 * answered with one write per connection, so the generator costs far less CPU
 * per operation than the server it drives.
 *
 * Modes
 *   put    C connections, each keeping D puts in flight, for --seconds
 *          (after --warmup) or until --jobs puts were answered.
 *   fill   same as put, meant for --jobs N (defaults: 10 conns, depth 50).
 *   drain  C connections doing reserve-with-timeout 0 / delete, one command in
 *          flight each, until the tube is empty or --jobs jobs were deleted.
 *   cycle  P producers (put, depth D) and W workers (reserve, delete); puts
 *          are held back while more than --backlog jobs are put but not yet
 *          reserved; --rate R paces the puts at R jobs/s over all producers.
 *          Each body starts with the CLOCK_MONOTONIC time of its put, so the
 *          latency reported is end-to-end (put sent -> RESERVED received).
 *
 * Every reply is checked (INSERTED / RESERVED / DELETED / TIMED_OUT expected,
 * anything else fails the run), job ids are tracked in bitmaps (an id
 * inserted twice or reserved twice fails the run; in cycle mode, once the
 * backlog is drained, the reserved ids must equal the inserted ids), and the
 * run ends with one JSON line on stdout.
 *
 * Build: gcc -O2 -o bin/qgen qgen.c   (bench/run.py does this on demand)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

enum { M_PUT, M_FILL, M_DRAIN, M_CYCLE };
enum { R_PROD, R_WORK };
enum { C_PUT = 1, C_RES, C_DEL };
enum { PH_WARM, PH_MEASURE, PH_STOP };

#define TS_DIGITS 20

/* ---------------------------------------------------------------- options */
static const char *o_host = "127.0.0.1";
static int o_port = 11300, o_conns = -1, o_prod = -1, o_work = -1;
static int o_depth = -1, o_wdepth = 1, o_size = 100, o_pri = 1024, o_ttr = 120;
static long long o_jobs = 0, o_backlog = 100;
static double o_seconds = 0, o_warmup = 0, o_rate = 0, o_timeout = 120;
static const char *o_tube = "bench", *o_label = "";
static int o_srv_pid = 0, o_id_check = 1;
static int mode;

/* ---------------------------------------------------------------- time */
static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---------------------------------------------------------------- histogram
 * log-linear: exact below 128 ns, then 64 sub-buckets per power of two
 * (relative error < 1.6%). */
#define HB (128 + 57 * 64)
typedef struct { uint64_t n[HB]; uint64_t count, max; double sum; } hist;

static inline int hidx(uint64_t v) {
    if (v < 128) return (int)v;
    int e = 63 - __builtin_clzll(v);
    return 128 + (e - 7) * 64 + (int)((v >> (e - 6)) & 63);
}
static double hval(int i) {
    if (i < 128) return i;
    int e = (i - 128) / 64 + 7, sub = (i - 128) % 64;
    double lo = (double)((uint64_t)(64 + sub) << (e - 6));
    return lo + (double)(1ull << (e - 6)) / 2.0;
}
static inline void hadd(hist *h, uint64_t v) {
    h->n[hidx(v)]++; h->count++; h->sum += (double)v;
    if (v > h->max) h->max = v;
}
static double hpct(const hist *h, double p) {
    if (!h->count) return 0;
    uint64_t want = (uint64_t)(p * (double)h->count + 0.999999), acc = 0;
    if (want < 1) want = 1;
    for (int i = 0; i < HB; i++) {
        acc += h->n[i];
        if (acc >= want) return hval(i);
    }
    return (double)h->max;
}

/* ---------------------------------------------------------------- id bitmaps */
typedef struct { uint64_t *w; size_t nw; } bitmap;
/* returns the previous bit */
static int bset(bitmap *b, uint64_t id) {
    size_t wi = id >> 6;
    if (wi >= b->nw) {
        size_t nw = b->nw ? b->nw : 1024;
        while (nw <= wi) nw *= 2;
        b->w = realloc(b->w, nw * 8);
        if (!b->w) { perror("realloc"); exit(2); }
        memset(b->w + b->nw, 0, (nw - b->nw) * 8);
        b->nw = nw;
    }
    uint64_t m = 1ull << (id & 63);
    int old = (b->w[wi] & m) != 0;
    b->w[wi] |= m;
    return old;
}

/* ---------------------------------------------------------------- connections */
typedef struct conn {
    int fd, role, idx, want_out, done;
    char *in; size_t in_len, in_cap;
    char *out; size_t out_len, out_off, out_cap;
    /* FIFO of outstanding commands: type and send time */
    uint8_t *qt; uint64_t *qs; unsigned qh, qn, qmask;
    int puts_inflight;
} conn;

static conn *conns; static int nconns;
static int epfd;

/* ---------------------------------------------------------------- run state */
static int phase = PH_WARM;
static uint64_t t_start, t_ws, t_we, t_end, t_deadline;
static long long puts_sent, inserted, reserves_sent, reserved, deleted, timed_out;
static long long deadline_soon;
static long long ops_win;            /* operations completed inside the window */
static long long e2e_bad_ts;
static hist lat, put_lat;            /* lat: main latency of the mode */
static bitmap ins_ids, res_ids;
static long long dup_ins, dup_res;
static char errbuf[512];
static int failed;
static int conns_done;
static int rr_next;
static char *put_tmpl; static size_t put_len, body_off;
static int ts_in_body;
static double srv_cpu0, srv_cpu1;
static double gen_cpu0, gen_cpu1;
static long srv_rss_kb = -1;
static uint64_t win_start_actual, win_end_actual;

static void fail(const char *fmt, ...) {
    if (failed) return;
    va_list ap; va_start(ap, fmt);
    vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
    failed = 1;
}

static double proc_cpu_s(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    /* fields after ")": state(3) ... utime(14) stime(15) */
    unsigned long long ut = 0, st = 0;
    int field = 2;
    for (char *s = p + 1; *s && field < 15; s++) {
        if (*s == ' ') {
            field++;
            if (field == 14) ut = strtoull(s + 1, NULL, 10);
            if (field == 15) st = strtoull(s + 1, NULL, 10);
        }
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_rss_kb(int pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) { kb = strtol(line + 6, NULL, 10); break; }
    fclose(f);
    return kb;
}

/* time spent runnable but waiting for a CPU, seconds (/proc/PID/schedstat field 2) */
static double runq_s(int pid) {
    char path[64], buf[128];
    if (pid) snprintf(path, sizeof path, "/proc/%d/schedstat", pid);
    else snprintf(path, sizeof path, "/proc/self/schedstat");
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    unsigned long long run = 0, wait = 0;
    if (sscanf(buf, "%llu %llu", &run, &wait) != 2) return 0;
    return (double)wait / 1e9;
}

/* steal time of the whole machine, seconds (/proc/stat "cpu" line, field 8) */
static double steal_s(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    unsigned long long v[8] = {0};
    int k = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    return k == 8 ? (double)v[7] / (double)sysconf(_SC_CLK_TCK) : 0;
}

static double gen_rq0, gen_rq1, srv_rq0, srv_rq1, steal0, steal1;
static void snap(int end) {
    double g = runq_s(0), s = o_srv_pid ? runq_s(o_srv_pid) : 0, st = steal_s();
    if (end) { gen_rq1 = g; srv_rq1 = s; steal1 = st; }
    else { gen_rq0 = g; srv_rq0 = s; steal0 = st; }
}

static double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* ---------------------------------------------------------------- output buffer */
static inline void out_need(conn *c, size_t n) {
    if (c->out_len + n <= c->out_cap) return;
    if (c->out_off) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off; c->out_off = 0;
        if (c->out_len + n <= c->out_cap) return;
    }
    while (c->out_len + n > c->out_cap) c->out_cap *= 2;
    c->out = realloc(c->out, c->out_cap);
    if (!c->out) { perror("realloc"); exit(2); }
}

static inline void q_push(conn *c, int type, uint64_t ts) {
    if (c->qn > c->qmask) { fail("internal: command queue overflow"); return; }
    unsigned i = (c->qh + c->qn) & c->qmask;
    c->qt[i] = (uint8_t)type; c->qs[i] = ts; c->qn++;
}

static inline char *u64a(char *p, uint64_t v) {   /* writes v, returns end */
    char tmp[24]; int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

static void flush(conn *c) {
    size_t left = c->out_len - c->out_off;
    if (!left) return;
    ssize_t n = write(c->fd, c->out + c->out_off, left);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) { fail("write: %s", strerror(errno)); return; }
        n = 0;
    }
    c->out_off += (size_t)n;
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->want_out) {
            struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
            epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
            c->want_out = 0;
        }
    } else if (!c->want_out) {
        struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.ptr = c };
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = 1;
    }
}

/* ---------------------------------------------------------------- commands */
static inline void send_put(conn *c, uint64_t now) {
    out_need(c, put_len);
    char *p = c->out + c->out_len;
    memcpy(p, put_tmpl, put_len);
    if (ts_in_body) {              /* 20 zero-padded digits of send time */
        char *d = p + body_off + TS_DIGITS;
        uint64_t v = now;
        for (int i = 0; i < TS_DIGITS; i++) { *--d = (char)('0' + v % 10); v /= 10; }
    }
    c->out_len += put_len;
    q_push(c, C_PUT, now);
    c->puts_inflight++;
    puts_sent++;
}

static inline void send_reserve(conn *c, uint64_t now) {
    static const char r0[] = "reserve-with-timeout 0\r\n", r[] = "reserve\r\n";
    const char *s = mode == M_DRAIN ? r0 : r;
    size_t n = mode == M_DRAIN ? sizeof r0 - 1 : sizeof r - 1;
    out_need(c, n);
    memcpy(c->out + c->out_len, s, n);
    c->out_len += n;
    q_push(c, C_RES, now);
    reserves_sent++;
}

static inline void send_delete(conn *c, uint64_t id, uint64_t ts) {
    out_need(c, 32);
    char *p = c->out + c->out_len;
    memcpy(p, "delete ", 7);
    p = u64a(p + 7, id);
    *p++ = '\r'; *p++ = '\n';
    c->out_len = (size_t)(p - c->out);
    q_push(c, C_DEL, ts);
}

/* May producer c send another put now? */
static inline int may_put(conn *c, uint64_t now) {
    if (phase == PH_STOP || c->done) return 0;
    if (c->puts_inflight >= o_depth) return 0;
    if (o_jobs && puts_sent >= o_jobs && mode != M_CYCLE) return 0;
    if (mode == M_CYCLE) {
        if (o_backlog > 0 && puts_sent - reserved >= o_backlog) return 0;
        if (o_rate > 0 && (double)puts_sent >= (double)(now - t_start) * o_rate / 1e9) return 0;
    }
    return 1;
}

static void fill_producer(conn *c, uint64_t now) {
    while (may_put(c, now)) send_put(c, now);
}

/* cycle: give every producer (round robin) the chance to send */
static void wake_producers(uint64_t now) {
    int np = o_prod;
    for (int k = 0; k < np; k++) {
        conn *c = &conns[(rr_next + k) % np];
        if (!may_put(c, now)) continue;
        fill_producer(c, now);
        flush(c);
    }
    rr_next = (rr_next + 1) % (np ? np : 1);
}

/* ---------------------------------------------------------------- replies */
static inline int measuring(void) { return phase == PH_MEASURE; }

static void finish_conn(conn *c) {
    if (!c->done) { c->done = 1; conns_done++; }
}

static inline uint64_t parse_u64(const char *s, const char **end) {
    uint64_t v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (uint64_t)(*s++ - '0');
    *end = s;
    return v;
}

#define STARTS(s, len, lit) ((len) >= sizeof(lit) - 1 && !memcmp((s), (lit), sizeof(lit) - 1))

/* Handles the replies in c->in; returns bytes consumed. */
static size_t process(conn *c, uint64_t now) {
    size_t p = 0;
    while (p < c->in_len && !failed) {
        char *s = c->in + p;
        size_t avail = c->in_len - p;
        char *nl = memchr(s, '\n', avail);
        if (!nl) break;
        size_t ll = (size_t)(nl - s) + 1;
        if (!c->qn) { fail("unsolicited reply: %.*s", (int)(ll > 60 ? 60 : ll), s); break; }
        int type = c->qt[c->qh];
        uint64_t ts = c->qs[c->qh];
        const char *e;
        if (type == C_PUT) {
            if (!STARTS(s, ll, "INSERTED ")) {
                fail("put: unexpected reply %.*s", (int)(ll > 60 ? 60 : ll - 2), s); break;
            }
            uint64_t id = parse_u64(s + 9, &e);
            if (e[0] != '\r') { fail("put: malformed reply"); break; }
            inserted++;
            c->puts_inflight--;
            if (o_id_check && bset(&ins_ids, id)) dup_ins++;
            if (mode == M_CYCLE) {
                if (measuring()) hadd(&put_lat, now - ts);
            } else if (measuring()) {
                hadd(&lat, now - ts); ops_win++;
            }
            c->qh = (c->qh + 1) & c->qmask; c->qn--;
            p += ll;
            if (mode == M_CYCLE) {
                if (may_put(c, now)) fill_producer(c, now);
            } else if (may_put(c, now)) {
                send_put(c, now);
            }
        } else if (type == C_RES) {
            if (STARTS(s, ll, "RESERVED ")) {
                uint64_t id = parse_u64(s + 9, &e);
                if (*e != ' ') { fail("reserve: malformed reply"); break; }
                uint64_t bytes = parse_u64(e + 1, &e);
                if (e[0] != '\r') { fail("reserve: malformed reply"); break; }
                if (avail < ll + bytes + 2) break;          /* body not complete yet */
                const char *body = s + ll;
                if (body[bytes] != '\r' || body[bytes + 1] != '\n') { fail("reserve: body not followed by CRLF"); break; }
                if ((int)bytes != o_size) { fail("reserve: body of %llu bytes, expected %d", (unsigned long long)bytes, o_size); break; }
                reserved++;
                if (o_id_check && bset(&res_ids, id)) dup_res++;
                if (mode == M_CYCLE) {
                    uint64_t pts = 0; int ok = bytes >= TS_DIGITS;
                    for (int i = 0; ok && i < TS_DIGITS; i++) {
                        if (body[i] < '0' || body[i] > '9') ok = 0;
                        else pts = pts * 10 + (uint64_t)(body[i] - '0');
                    }
                    if (!ok || pts > now || pts < t_start) e2e_bad_ts++;
                    else if (measuring() && pts >= t_ws) hadd(&lat, now - pts);
                }
                c->qh = (c->qh + 1) & c->qmask; c->qn--;
                p += ll + bytes + 2;
                send_delete(c, id, ts);
                if (mode == M_CYCLE) {
                    if (o_wdepth >= 2) send_reserve(c, now);
                    wake_producers(now);
                }
            } else if (STARTS(s, ll, "TIMED_OUT\r")) {
                timed_out++;
                c->qh = (c->qh + 1) & c->qmask; c->qn--;
                p += ll;
                if (mode == M_DRAIN) finish_conn(c);
                else send_reserve(c, now);
            } else if (STARTS(s, ll, "DEADLINE_SOON\r")) {
                deadline_soon++;
                c->qh = (c->qh + 1) & c->qmask; c->qn--;
                p += ll;
                send_reserve(c, now);
            } else {
                fail("reserve: unexpected reply %.*s", (int)(ll > 60 ? 60 : ll - 2), s); break;
            }
        } else { /* C_DEL */
            if (!STARTS(s, ll, "DELETED\r")) {
                fail("delete: unexpected reply %.*s", (int)(ll > 60 ? 60 : ll - 2), s); break;
            }
            deleted++;
            c->qh = (c->qh + 1) & c->qmask; c->qn--;
            p += ll;
            if (mode == M_DRAIN) {
                if (measuring()) { hadd(&lat, now - ts); ops_win++; }
                send_reserve(c, now);        /* until TIMED_OUT: the tube is empty */
            } else if (mode == M_CYCLE) {
                if (measuring()) ops_win++;
                if (o_wdepth < 2) send_reserve(c, now);   /* also after the window: drain the backlog */
            }
        }
    }
    return p;
}

static void on_readable(conn *c) {
    if (c->in_cap - c->in_len < 16384) {
        c->in_cap *= 2;
        c->in = realloc(c->in, c->in_cap);
        if (!c->in) { perror("realloc"); exit(2); }
    }
    ssize_t n = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
    if (n == 0) { fail("server closed a connection"); return; }
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        fail("read: %s", strerror(errno)); return;
    }
    c->in_len += (size_t)n;
    uint64_t now = now_ns();
    size_t used = process(c, now);
    if (used == c->in_len) c->in_len = 0;
    else if (used) { memmove(c->in, c->in + used, c->in_len - used); c->in_len -= used; }
    flush(c);
}

/* ---------------------------------------------------------------- setup */
static int connect_one(struct sockaddr_storage *sa, socklen_t salen) {
    int fd = socket(sa->ss_family, SOCK_STREAM, 0);
    if (fd < 0) { perror("socket"); exit(2); }
    if (connect(fd, (struct sockaddr *)sa, salen) < 0) {
        fprintf(stderr, "qgen: connect %s:%d: %s\n", o_host, o_port, strerror(errno));
        exit(2);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* blocking command at setup time; expects the exact reply line */
static void setup_cmd(int fd, const char *cmd, const char *want) {
    char buf[256];
    size_t len = strlen(cmd);
    if (write(fd, cmd, len) != (ssize_t)len) { perror("write"); exit(2); }
    size_t got = 0;
    while (got < sizeof buf - 1) {
        ssize_t n = read(fd, buf + got, 1);
        if (n <= 0) { fprintf(stderr, "qgen: setup read failed\n"); exit(2); }
        got++;
        if (buf[got - 1] == '\n') break;
    }
    buf[got] = 0;
    if (strcmp(buf, want)) {
        fprintf(stderr, "qgen: setup: sent %s got %s (want %s)\n", cmd, buf, want);
        exit(2);
    }
}

static void usage(int code) {
    fprintf(code ? stderr : stdout,
"usage: qgen MODE [options]      MODE: put | fill | drain | cycle\n"
"  --host H --port P      server (127.0.0.1:11300)\n"
"  --conns C              put/fill/drain connections (put 1, fill 10, drain 50)\n"
"  --producers P --workers W   cycle connections (10 + 10)\n"
"  --depth D              puts in flight per producer connection (1; fill 50)\n"
"  --wdepth D             cycle workers: 1 = delete then reserve; 2 = both in one write\n"
"  --size B               body bytes (100; cycle needs >= 20 for the timestamp)\n"
"  --jobs N               put/fill: stop after N puts; drain: N jobs must be deleted\n"
"  --seconds S --warmup S measurement window after a warmup (put/cycle)\n"
"  --backlog N            cycle: max jobs put but not reserved (100; 0 = no cap)\n"
"  --rate R               cycle: put R jobs/s over all producers (0 = as fast as possible)\n"
"  --tube T               tube (bench)      --pri N --ttr N   put priority/ttr (1024/120)\n"
"  --server-pid PID       sample server CPU over the window and RSS at its end\n"
"  --no-id-check          do not track job ids\n"
"  --timeout S            hard limit for the whole run (120), exit 3\n"
"  --label L              copied into the JSON line\n"
"Output: one JSON line on stdout. Exit 0 ok, 1 failed check, 2 usage/connect, 3 timeout.\n");
    exit(code);
}

int main(int argc, char **argv) {
    if (argc < 2) usage(2);
    const char *m = argv[1];
    if (!strcmp(m, "put")) mode = M_PUT;
    else if (!strcmp(m, "fill")) mode = M_FILL;
    else if (!strcmp(m, "drain") || !strcmp(m, "reserve")) mode = M_DRAIN;
    else if (!strcmp(m, "cycle")) mode = M_CYCLE;
    else if (!strcmp(m, "-h") || !strcmp(m, "--help")) usage(0);
    else usage(2);

    static struct option lo[] = {
        {"host", 1, 0, 'H'}, {"port", 1, 0, 'p'}, {"conns", 1, 0, 'c'},
        {"producers", 1, 0, 'P'}, {"workers", 1, 0, 'W'}, {"depth", 1, 0, 'd'},
        {"wdepth", 1, 0, 'w'}, {"size", 1, 0, 's'}, {"jobs", 1, 0, 'j'},
        {"seconds", 1, 0, 'S'}, {"warmup", 1, 0, 'u'}, {"backlog", 1, 0, 'b'},
        {"rate", 1, 0, 'r'}, {"tube", 1, 0, 't'}, {"server-pid", 1, 0, 'x'},
        {"timeout", 1, 0, 'T'}, {"label", 1, 0, 'L'}, {"pri", 1, 0, 'y'},
        {"ttr", 1, 0, 'z'}, {"no-id-check", 0, 0, 'n'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    int ch;
    optind = 2;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'H': o_host = optarg; break;
        case 'p': o_port = atoi(optarg); break;
        case 'c': o_conns = atoi(optarg); break;
        case 'P': o_prod = atoi(optarg); break;
        case 'W': o_work = atoi(optarg); break;
        case 'd': o_depth = atoi(optarg); break;
        case 'w': o_wdepth = atoi(optarg); break;
        case 's': o_size = atoi(optarg); break;
        case 'j': o_jobs = atoll(optarg); break;
        case 'S': o_seconds = atof(optarg); break;
        case 'u': o_warmup = atof(optarg); break;
        case 'b': o_backlog = atoll(optarg); break;
        case 'r': o_rate = atof(optarg); break;
        case 't': o_tube = optarg; break;
        case 'x': o_srv_pid = atoi(optarg); break;
        case 'T': o_timeout = atof(optarg); break;
        case 'L': o_label = optarg; break;
        case 'y': o_pri = atoi(optarg); break;
        case 'z': o_ttr = atoi(optarg); break;
        case 'n': o_id_check = 0; break;
        case 'h': usage(0); break;
        default: usage(2);
        }
    }
    if (o_depth < 1) o_depth = mode == M_FILL ? 50 : 1;
    if (o_conns < 1) o_conns = mode == M_FILL ? 10 : mode == M_DRAIN ? 50 : 1;
    if (o_prod < 0) o_prod = mode == M_CYCLE && o_conns > 1 ? o_conns : 10;
    if (o_work < 0) o_work = mode == M_CYCLE && o_conns > 1 ? o_conns : 10;
    if (o_wdepth < 1) o_wdepth = 1;
    if (o_wdepth > 2) o_wdepth = 2;
    if (mode == M_CYCLE && o_size < TS_DIGITS) { fprintf(stderr, "qgen: cycle needs --size >= %d\n", TS_DIGITS); return 2; }
    if ((mode == M_PUT || mode == M_CYCLE) && o_seconds <= 0 && !o_jobs) o_seconds = 5;
    if (mode == M_FILL && !o_jobs) { fprintf(stderr, "qgen: fill needs --jobs\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);

    /* put command template */
    char hdr[96];
    int hl = snprintf(hdr, sizeof hdr, "put %d 0 %d %d\r\n", o_pri, o_ttr, o_size);
    put_len = (size_t)hl + (size_t)o_size + 2;
    body_off = (size_t)hl;
    put_tmpl = malloc(put_len);
    memcpy(put_tmpl, hdr, (size_t)hl);
    for (int i = 0; i < o_size; i++) put_tmpl[hl + i] = (char)('a' + i % 26);
    put_tmpl[hl + o_size] = '\r'; put_tmpl[hl + o_size + 1] = '\n';
    ts_in_body = mode == M_CYCLE;

    /* resolve */
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
    char ps[16]; snprintf(ps, sizeof ps, "%d", o_port);
    if (getaddrinfo(o_host, ps, &hints, &ai)) { fprintf(stderr, "qgen: cannot resolve %s\n", o_host); return 2; }
    struct sockaddr_storage sa; socklen_t salen = ai->ai_addrlen;
    memcpy(&sa, ai->ai_addr, salen);
    freeaddrinfo(ai);

    int np = mode == M_CYCLE ? o_prod : (mode == M_DRAIN ? 0 : o_conns);
    int nw = mode == M_CYCLE ? o_work : (mode == M_DRAIN ? o_conns : 0);
    nconns = np + nw;
    conns = calloc((size_t)nconns, sizeof *conns);
    epfd = epoll_create1(0);
    char cmd[300], want[300];
    for (int i = 0; i < nconns; i++) {
        conn *c = &conns[i];
        c->idx = i; c->role = i < np ? R_PROD : R_WORK;
        c->fd = connect_one(&sa, salen);
        if (c->role == R_PROD) {
            snprintf(cmd, sizeof cmd, "use %s\r\n", o_tube);
            snprintf(want, sizeof want, "USING %s\r\n", o_tube);
            setup_cmd(c->fd, cmd, want);
        } else {
            snprintf(cmd, sizeof cmd, "watch %s\r\n", o_tube);
            setup_cmd(c->fd, cmd, "WATCHING 2\r\n");
            setup_cmd(c->fd, "ignore default\r\n", "WATCHING 1\r\n");
        }
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        unsigned qcap = 4;
        unsigned need = (unsigned)(c->role == R_PROD ? o_depth : 2) + 2;
        while (qcap < need) qcap *= 2;
        c->qt = malloc(qcap); c->qs = malloc(qcap * sizeof(uint64_t)); c->qmask = qcap - 1;
        c->in_cap = 65536 + 4 * ((size_t)o_size + 64);
        c->in = malloc(c->in_cap);
        c->out_cap = 4096 + (size_t)(c->role == R_PROD ? o_depth : 2) * (put_len + 32);
        c->out = malloc(c->out_cap);
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    }

    /* pacing timer for --rate */
    int tfd = -1;
    if (mode == M_CYCLE && o_rate > 0) {
        double iv = 1e9 / o_rate;
        if (iv < 20000) iv = 20000;
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
        struct itimerspec its = {0};
        its.it_interval.tv_sec = (time_t)(iv / 1e9);
        its.it_interval.tv_nsec = (long)((uint64_t)iv % 1000000000ull);
        its.it_value = its.it_interval;
        timerfd_settime(tfd, 0, &its, NULL);
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
        epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev);
    }

    /* schedule */
    t_start = now_ns();
    t_deadline = t_start + (uint64_t)(o_timeout * 1e9);
    t_ws = t_start + (uint64_t)(o_warmup * 1e9);
    t_we = o_seconds > 0 ? t_ws + (uint64_t)(o_seconds * 1e9) : UINT64_MAX;
    if (o_warmup <= 0) {
        phase = PH_MEASURE; win_start_actual = t_start;
        if (o_srv_pid) srv_cpu0 = proc_cpu_s(o_srv_pid);
        gen_cpu0 = self_cpu_s(); snap(0);
    }

    /* kick off */
    for (int i = 0; i < nconns; i++) {
        conn *c = &conns[i];
        if (c->role == R_PROD) fill_producer(c, t_start);
        else send_reserve(c, t_start);
        flush(c);
    }

    struct epoll_event evs[256];
    uint64_t grace_end = 0;
    int timed_out_run = 0;
    for (;;) {
        uint64_t now = now_ns();
        /* phase changes */
        if (phase == PH_WARM && now >= t_ws) {
            phase = PH_MEASURE; win_start_actual = now;
            if (o_srv_pid) srv_cpu0 = proc_cpu_s(o_srv_pid);
            gen_cpu0 = self_cpu_s(); snap(0); snap(0);
        }
        int jobs_done = 0;
        if (o_jobs && (mode == M_PUT || mode == M_FILL) && inserted >= o_jobs) jobs_done = 1;
        if (mode == M_DRAIN && conns_done == nconns) jobs_done = 1;
        if (phase == PH_MEASURE && (now >= t_we || jobs_done)) {
            phase = PH_STOP; win_end_actual = now;
            if (o_srv_pid) { srv_cpu1 = proc_cpu_s(o_srv_pid); srv_rss_kb = proc_rss_kb(o_srv_pid); }
            gen_cpu1 = self_cpu_s(); snap(1); snap(1);
            grace_end = now + 10000000000ull;
        }
        if (failed) break;
        if (phase == PH_STOP) {
            /* wait for outstanding replies; cycle: until the backlog is drained */
            int busy = 0;
            if (mode == M_CYCLE) {
                busy = inserted < puts_sent || reserved < inserted || deleted < reserved;
            } else {
                for (int i = 0; i < nconns && !busy; i++)
                    if (conns[i].qn) busy = 1;
            }
            if (!busy) break;
            if (now >= grace_end) {
                if (mode == M_CYCLE) fail("cycle: backlog not drained 10 s after the window (put %lld inserted %lld reserved %lld deleted %lld)", puts_sent, inserted, reserved, deleted);
                else fail("replies still outstanding 10 s after the window");
                break;
            }
        }
        if (now >= t_deadline) { timed_out_run = 1; fail("timeout: run exceeded %.0f s", o_timeout); break; }

        int to = 100;
        uint64_t next = phase == PH_WARM ? t_ws : phase == PH_MEASURE ? t_we : grace_end;
        if (next != UINT64_MAX) {
            uint64_t d = next > now ? next - now : 0;
            int ms = (int)((d + 999999) / 1000000);
            if (ms < to) to = ms;
        }
        int n = epoll_wait(epfd, evs, 256, to);
        if (n < 0) { if (errno == EINTR) continue; perror("epoll_wait"); return 2; }
        for (int i = 0; i < n && !failed; i++) {
            conn *c = evs[i].data.ptr;
            if (!c) {
                uint64_t exp;
                if (read(tfd, &exp, sizeof exp) < 0) { /* spurious */ }
                wake_producers(now_ns());
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
            if (!failed && (evs[i].events & EPOLLOUT)) flush(c);
        }
    }
    if (phase != PH_STOP) {
        win_end_actual = now_ns();
        if (o_srv_pid) { srv_cpu1 = proc_cpu_s(o_srv_pid); srv_rss_kb = proc_rss_kb(o_srv_pid); }
        gen_cpu1 = self_cpu_s(); snap(1);
        if (!win_start_actual) win_start_actual = t_start;
    }
    t_end = now_ns();

    /* checks */
    if (!failed && dup_ins) fail("%lld job ids INSERTED twice", dup_ins);
    if (!failed && dup_res) fail("%lld jobs RESERVED twice", dup_res);
    if (!failed && inserted != puts_sent) fail("puts sent %lld but INSERTED %lld", puts_sent, inserted);
    if (!failed && (mode == M_DRAIN || mode == M_CYCLE) && deleted != reserved)
        fail("RESERVED %lld but DELETED %lld", reserved, deleted);
    if (!failed && mode == M_DRAIN && o_jobs && deleted != o_jobs)
        fail("drain: deleted %lld jobs, expected %lld", deleted, o_jobs);
    if (!failed && mode == M_CYCLE && o_id_check) {
        size_t nwmax = ins_ids.nw > res_ids.nw ? ins_ids.nw : res_ids.nw;
        long long mism = 0;
        for (size_t i = 0; i < nwmax; i++) {
            uint64_t a = i < ins_ids.nw ? ins_ids.w[i] : 0, b = i < res_ids.nw ? res_ids.w[i] : 0;
            mism += __builtin_popcountll(a ^ b);
        }
        if (mism) fail("cycle: %lld job ids inserted but not reserved or reserved but not inserted", mism);
    }
    if (!failed && mode == M_CYCLE && e2e_bad_ts) fail("cycle: %lld bodies without a valid timestamp", e2e_bad_ts);

    double win = (double)(win_end_actual - win_start_actual) / 1e9;
    if (win <= 0) win = 1e-9;
    double srv_cpu = o_srv_pid ? srv_cpu1 - srv_cpu0 : -1;
    double gen_cpu = gen_cpu1 - gen_cpu0;
    printf("{\"tool\":\"qgen\",\"mode\":\"%s\",\"status\":\"%s\"", m, failed ? (timed_out_run ? "timeout" : "error") : "ok");
    if (failed) {
        printf(",\"error\":\"");
        for (char *q = errbuf; *q; q++) {
            if (*q == '"' || *q == '\\') putchar('\\');
            putchar((unsigned char)*q >= 32 ? *q : ' ');
        }
        putchar('"');
    }
    printf(",\"label\":\"%s\",\"conns\":%d,\"producers\":%d,\"workers\":%d,\"depth\":%d,\"wdepth\":%d,"
           "\"size\":%d,\"backlog\":%lld,\"target_rate\":%.0f,\"jobs\":%lld",
           o_label, nconns, np, nw, o_depth, o_wdepth, o_size, o_backlog, o_rate, o_jobs);
    printf(",\"window_s\":%.4f,\"ops\":%lld,\"ops_per_s\":%.1f", win, ops_win, (double)ops_win / win);
    const char *lk = mode == M_CYCLE ? "e2e" : mode == M_DRAIN ? "job" : "put";
    printf(",\"latency\":\"%s\",\"lat_n\":%llu,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f",
           lk, (unsigned long long)lat.count, hpct(&lat, .50) / 1e3, hpct(&lat, .90) / 1e3, hpct(&lat, .99) / 1e3,
           hpct(&lat, .999) / 1e3, (double)lat.max / 1e3, lat.count ? lat.sum / (double)lat.count / 1e3 : 0.0);
    if (mode == M_CYCLE)
        printf(",\"put_p50_us\":%.1f,\"put_p99_us\":%.1f", hpct(&put_lat, .50) / 1e3, hpct(&put_lat, .99) / 1e3);
    printf(",\"puts\":%lld,\"inserted\":%lld,\"reserves\":%lld,\"reserved\":%lld,\"deleted\":%lld,\"timed_out\":%lld,\"deadline_soon\":%lld",
           puts_sent, inserted, reserves_sent, reserved, deleted, timed_out, deadline_soon);
    if (mode == M_DRAIN) printf(",\"tube_empty\":%s", conns_done == nconns && timed_out == nconns ? "true" : "false");
    printf(",\"gen_cpu_s\":%.3f,\"gen_cpu_util\":%.3f,\"gen_cpu_us_per_op\":%.3f",
           gen_cpu, gen_cpu / win, ops_win ? gen_cpu * 1e6 / (double)ops_win : 0.0);
    if (o_srv_pid)
        printf(",\"srv_pid\":%d,\"srv_cpu_s\":%.3f,\"srv_cpu_util\":%.3f,\"srv_cpu_us_per_op\":%.3f,\"srv_rss_kb\":%ld",
               o_srv_pid, srv_cpu, srv_cpu / win, ops_win ? srv_cpu * 1e6 / (double)ops_win : 0.0, srv_rss_kb);
    printf(",\"gen_runq_util\":%.4f,\"srv_runq_util\":%.4f,\"steal_util\":%.4f",
           (gen_rq1 - gen_rq0) / win, o_srv_pid ? (srv_rq1 - srv_rq0) / win : 0.0,
           (steal1 - steal0) / win / (double)sysconf(_SC_NPROCESSORS_ONLN));
    printf(",\"total_s\":%.3f}\n", (double)(t_end - t_start) / 1e9);
    fflush(stdout);
    return failed ? (timed_out_run ? 3 : 1) : 0;
}
