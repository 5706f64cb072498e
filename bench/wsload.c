/*
 * wsload - a compiled WebSocket load generator for benchmarks.
 *
 * Single thread, epoll (level-triggered), no dependencies beyond libc.
 * Build: cc -O2 -Wall -Wextra -o bench/bin/wsload bench/wsload.c
 *
 * Usage: wsload [options] ws://127.0.0.1:PORT/path
 *   -m MODE   throughput | pingpong | latency | upgrades | idle   (throughput)
 *   -c N      connections (throughput, pingpong, latency, idle)    (100, max 20000)
 *   -d SEC    measured duration, or hold time for idle             (5, max 60)
 *   -w SEC    warm-up before measuring (not for idle/upgrades: 0)   (1, max 10)
 *   -W N      messages in flight per connection (throughput)       (16)
 *   -s BYTES  message size                                         (64, max 1 MiB)
 *   -r RATE   total msg/s across connections (latency)             (2000)
 *   -C N      concurrent attempts (upgrades)                        (50)
 *   -S N      concurrent handshakes while opening connections      (100)
 *   -k MODE   upgrades: "frame" (send close, wait for the server's
 *             close and its TCP close) or "plain" (close after 101) (frame)
 *   -T SEC    time allowed to open all connections                 (30, max 120)
 *
 * Only loopback addresses (127.0.0.0/8, "localhost") are accepted as targets.
 *
 * Every connection does the RFC 6455 client handshake with a fixed key and
 * checks for "101" and the matching Sec-WebSocket-Accept.  The response head
 * may arrive in pieces.  Frames from the server are parsed as a byte stream:
 * headers split across reads, many frames per read and payloads of any size
 * are handled.  Pings from the server are answered with pongs.
 *
 * Modes:
 *  throughput  every connection keeps W masked binary messages of S bytes in
 *              flight; an echoed message is counted and replaced.  msg/s.
 *  pingpong    the same with W = 1 (send, wait for the echo, send).
 *  latency     sends R msg/s in total, round-robin over the connections, paced
 *              by a timerfd; each payload carries its send time (CLOCK_MONOTONIC
 *              ns); reports p50/p90/p99/max round trip in microseconds.
 *  upgrades    C concurrent attempts: connect, handshake, then close; counts
 *              completed upgrades (101 received) per second.
 *  idle        opens N connections, prints "READY <n>" on stderr, holds them
 *              for D seconds (answering pings), then exits.
 *
 * On stderr it prints "MEASURE START" and "MEASURE END" lines when the measured
 * interval begins and ends, so that a runner can sample the CPU time of other
 * processes over exactly that interval.
 *
 * Output: one JSON object on one line on stdout.  It includes the load
 * generator's own CPU time over the measured interval ("cpu_util" is CPU
 * seconds / wall seconds; near 1.0 means the load generator is saturated).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define READ_BUF (256 * 1024)
#define MAX_HEAD 8192
#define MAX_CONNS 20000
#define MAX_DURATION 60.0
#define MAX_SIZE (1024 * 1024)
#define MAX_EVENTS 1024
#define CONN_TIMEOUT_NS (10ull * 1000000000ull)
#define UPG_TIMEOUT_NS (5ull * 1000000000ull)
#define CLOSE_TIMEOUT_NS (2ull * 1000000000ull)
#define OUT_LIMIT (8u * 1024u * 1024u)

enum { M_THROUGHPUT, M_PINGPONG, M_LATENCY, M_UPGRADES, M_IDLE };
static const char *mode_names[] = {"throughput", "pingpong", "latency", "upgrades", "idle"};

enum { S_FREE, S_CONNECTING, S_HS_SENT, S_OPEN, S_CLOSING, S_DEAD };

static const char WS_KEY[] = "dGhlIHNhbXBsZSBub25jZQ==";
static const char WS_ACCEPT[] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
static const unsigned char MASK[4] = {0x37, 0xfa, 0x21, 0x3d};

typedef struct conn {
    int fd;
    int state;
    uint32_t events;        /* currently registered epoll events */
    uint64_t deadline;      /* for connecting/handshake/closing states */
    /* handshake */
    char *head;
    size_t head_len;
    /* frame parser */
    unsigned char hdr[10];
    unsigned hdr_len;
    uint64_t remaining;     /* payload bytes left in the current frame */
    uint64_t flen;          /* payload length of the current frame */
    uint64_t msg_len;       /* bytes of the current (maybe fragmented) message */
    int opcode, fin, in_frame;
    unsigned char cap[128]; /* first payload bytes of the current frame */
    unsigned cap_len;
    int got_close;
    /* output: a periodic stream of identical frames, plus a byte buffer */
    uint64_t pat_pending;   /* bytes of pattern frames still to write */
    size_t pat_phase;       /* offset inside the current pattern frame */
    unsigned char *out;
    size_t out_off, out_len, out_cap;
} conn;

/* options */
static int mode = M_THROUGHPUT;
static int nconns = 100, window = 16, conc = 50, setup_conc = 100, close_plain = 0;
static double duration = 5, warmup = 1, rate = 2000, setup_timeout = 30;
static size_t msg_size = 64;
static struct sockaddr_in target;
static char host_hdr[300], path[1024] = "/";

/* state */
static int ep, tfd = -1;
static conn *conns;
static int nslots;
static unsigned char rbuf[READ_BUF];
static unsigned char *pattern;
static size_t frame_len, pattern_len;
static uint64_t t_meas, t_end;
static int measuring, sending;

/* counters */
static uint64_t c_msgs, c_bytes, c_sent, c_upgrades, c_errors, c_connect_errors,
    c_size_errors, c_closed, c_close_timeouts, c_pings;
static uint64_t *samples;
static size_t n_samples, cap_samples;
static int n_open, n_pending;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void fatal(const char *msg)
{
    fprintf(stderr, "wsload: %s\n", msg);
    exit(2);
}

/* -------------------------------------------------------------- epoll glue */

static void set_events(conn *c, uint32_t ev)
{
    if (c->events == ev) return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

static void refresh_events(conn *c)
{
    uint32_t ev;
    if (c->state == S_CONNECTING) ev = EPOLLOUT;
    else {
        ev = EPOLLIN;
        if (c->pat_pending > 0 || c->out_len > c->out_off) ev |= EPOLLOUT;
    }
    set_events(c, ev);
}

static void conn_close(conn *c, int dead)
{
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    if (c->state == S_OPEN || c->state == S_CLOSING) n_open--;
    if (c->state == S_CONNECTING || c->state == S_HS_SENT) n_pending--;
    c->fd = -1;
    free(c->head);
    c->head = NULL;
    free(c->out);
    c->out = NULL;
    c->out_cap = c->out_len = c->out_off = 0;
    c->pat_pending = 0;
    c->pat_phase = 0;
    c->state = dead ? S_DEAD : S_FREE;
}

/* ---------------------------------------------------------------- output */

static int out_put(conn *c, const void *data, size_t n)
{
    if (c->out_off > 0 && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        if (c->out_off > 0) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + n > c->out_cap) {
            size_t cap = c->out_cap ? c->out_cap : 512;
            while (cap < c->out_len + n) cap *= 2;
            if (cap > OUT_LIMIT) return -1;
            unsigned char *p = realloc(c->out, cap);
            if (!p) return -1;
            c->out = p;
            c->out_cap = cap;
        }
    }
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
    return 0;
}

static size_t build_frame(unsigned char *dst, int b0, const unsigned char *payload, size_t n)
{
    size_t h = 0;
    dst[h++] = (unsigned char)b0;
    if (n < 126) dst[h++] = (unsigned char)(0x80 | n);
    else if (n < 65536) {
        dst[h++] = 0x80 | 126;
        dst[h++] = (unsigned char)(n >> 8);
        dst[h++] = (unsigned char)n;
    } else {
        dst[h++] = 0x80 | 127;
        for (int i = 0; i < 8; i++) dst[h++] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    }
    memcpy(dst + h, MASK, 4);
    h += 4;
    for (size_t i = 0; i < n; i++) dst[h + i] = payload[i] ^ MASK[i & 3];
    return h + n;
}

static int queue_frame(conn *c, int b0, const unsigned char *payload, size_t n)
{
    unsigned char buf[256];
    if (n > 125) return -1;
    return out_put(c, buf, build_frame(buf, b0, payload, n));
}

/* returns -1 on a write error */
static int flush(conn *c)
{
    for (;;) {
        const unsigned char *p;
        size_t len;
        int from_pat;
        if (c->out_len > c->out_off && c->pat_phase == 0) {
            p = c->out + c->out_off;
            len = c->out_len - c->out_off;
            from_pat = 0;
        } else if (c->pat_pending > 0) {
            p = pattern + c->pat_phase;
            len = pattern_len - c->pat_phase;
            /* never interleave buffered frames inside a pattern frame */
            if (c->out_len > c->out_off) len = frame_len - c->pat_phase;
            if ((uint64_t)len > c->pat_pending) len = (size_t)c->pat_pending;
            from_pat = 1;
        } else break;
        ssize_t w = send(c->fd, p, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            return -1;
        }
        if (from_pat) {
            c->pat_pending -= (uint64_t)w;
            c->pat_phase = (c->pat_phase + (size_t)w) % frame_len;
        } else {
            c->out_off += (size_t)w;
            if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
        }
        if ((size_t)w < len) break;
    }
    refresh_events(c);
    return 0;
}

/* ------------------------------------------------------------- connecting */

static int start_connect(conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    memset(c, 0, sizeof *c);
    c->fd = fd;
    int r = connect(fd, (struct sockaddr *)&target, sizeof target);
    if (r < 0 && errno != EINPROGRESS) {
        close(fd);
        c->fd = -1;
        c->state = S_FREE;
        return -1;
    }
    c->state = S_CONNECTING;
    c->deadline = now_ns() + (mode == M_UPGRADES ? UPG_TIMEOUT_NS : CONN_TIMEOUT_NS);
    c->events = EPOLLOUT;
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) {
        close(fd);
        c->fd = -1;
        c->state = S_FREE;
        return -1;
    }
    n_pending++;
    return 0;
}

static void on_connected(conn *c)
{
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
        c_connect_errors++;
        conn_close(c, mode != M_UPGRADES);
        return;
    }
    char req[1600];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     path, host_hdr, WS_KEY);
    c->state = S_HS_SENT;
    if (out_put(c, req, (size_t)n) < 0 || flush(c) < 0) {
        c_connect_errors++;
        conn_close(c, mode != M_UPGRADES);
    }
}

static const char *find_header(const char *head, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    const char *p = strstr(head, "\r\n");
    while (p && p[2] != '\r' && p[2] != 0) {
        const char *line = p + 2;
        const char *eol = strstr(line, "\r\n");
        if (!eol) return NULL;
        if ((size_t)(eol - line) > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            const char *e = eol;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
            *vlen = (size_t)(e - v);
            return v;
        }
        p = eol;
    }
    return NULL;
}

/* Feed response bytes; returns bytes consumed, -1 on a bad handshake, and
 * sets *done when the head is complete and valid. */
static long feed_handshake(conn *c, const unsigned char *data, size_t n, int *done)
{
    size_t old = c->head_len;
    *done = 0;
    if (!c->head) c->head = malloc(MAX_HEAD + 1);
    if (!c->head) return -1;
    size_t take = n;
    if (take > MAX_HEAD - c->head_len) take = MAX_HEAD - c->head_len;
    memcpy(c->head + c->head_len, data, take);
    c->head_len += take;
    c->head[c->head_len] = 0;
    char *end = strstr(c->head, "\r\n\r\n");
    if (!end) return c->head_len >= MAX_HEAD ? -1 : (long)n;
    size_t total = (size_t)(end - c->head) + 4;
    end[2] = 0;
    size_t alen = 0;
    const char *acc = find_header(c->head, "Sec-WebSocket-Accept", &alen);
    if (strncmp(c->head, "HTTP/1.1 101", 12) != 0 || !acc || alen != strlen(WS_ACCEPT) ||
        memcmp(acc, WS_ACCEPT, alen) != 0) {
        static int shown;
        if (shown++ < 3) {
            char *eol = strstr(c->head, "\r\n");
            if (eol) *eol = 0;
            fprintf(stderr, "wsload: bad handshake response: %.200s\n", c->head);
        }
        return -1;
    }
    free(c->head);
    c->head = NULL;
    c->head_len = 0;
    *done = 1;
    return (long)(total - old);
}

/* ---------------------------------------------------------------- frames */

static void record_sample(uint64_t rtt)
{
    if (n_samples == cap_samples) {
        size_t nc = cap_samples ? cap_samples * 2 : 65536;
        if (nc > 50000000) return;
        uint64_t *p = realloc(samples, nc * sizeof *p);
        if (!p) return;
        samples = p;
        cap_samples = nc;
    }
    samples[n_samples++] = rtt;
}

/* A complete frame (its first cap_len payload bytes are in c->cap).
 * Returns 1 if a data message completed, 0 otherwise, -1 to drop. */
static int on_frame(conn *c, uint64_t flen, uint64_t now)
{
    if (c->opcode >= 0x8) {
        if (c->opcode == 0x9) { /* ping -> pong */
            c_pings++;
            if (queue_frame(c, 0x8A, c->cap, c->cap_len) < 0) return -1;
        } else if (c->opcode == 0x8) {
            c->got_close = 1;
            if (c->state == S_OPEN) {
                /* the server closes: answer and count it as an error */
                if (mode != M_UPGRADES) { c_closed++; c_errors++; }
                unsigned char code[2] = {0x03, 0xE8};
                queue_frame(c, 0x88, code, 2);
                c->state = S_CLOSING;
                c->deadline = now + CLOSE_TIMEOUT_NS;
            }
        }
        return 0;
    }
    c->msg_len += flen;
    if (!c->fin) return 0;
    uint64_t total = c->msg_len;
    c->msg_len = 0;
    if (mode == M_LATENCY) {
        if (total >= 8 && c->cap_len >= 8) {
            uint64_t ts;
            memcpy(&ts, c->cap, 8);
            if (ts >= t_meas && now >= ts) record_sample(now - ts);
        }
    }
    if (total != msg_size && measuring) c_size_errors++;
    return 1;
}

/* Parse server frames.  Returns messages completed, or -1 on a protocol error. */
static long parse_frames(conn *c, const unsigned char *p, size_t n, uint64_t now)
{
    long msgs = 0;
    int want_cap = mode == M_LATENCY;
    while (n > 0) {
        if (!c->in_frame) {
            /* collect the header, maybe across reads */
            size_t need;
            for (;;) {
                if (c->hdr_len < 2) need = 2;
                else {
                    unsigned l7 = c->hdr[1] & 0x7F;
                    need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
                    if (c->hdr[1] & 0x80) return -1; /* servers must not mask */
                }
                if (c->hdr_len >= need) break;
                if (n == 0) return msgs;
                size_t take = need - c->hdr_len;
                if (take > n) take = n;
                memcpy(c->hdr + c->hdr_len, p, take);
                c->hdr_len += (unsigned)take;
                p += take;
                n -= take;
            }
            unsigned l7 = c->hdr[1] & 0x7F;
            uint64_t len = l7;
            if (l7 == 126) len = (uint64_t)c->hdr[2] << 8 | c->hdr[3];
            else if (l7 == 127) {
                len = 0;
                for (int i = 0; i < 8; i++) len = len << 8 | c->hdr[2 + i];
            }
            c->opcode = c->hdr[0] & 0x0F;
            c->fin = (c->hdr[0] & 0x80) != 0;
            c->hdr_len = 0;
            c->remaining = len;
            c->flen = len;
            c->cap_len = 0;
            c->in_frame = 1;
            if (c->opcode >= 0x8 && len > 125) return -1;
        }
        size_t take = n;
        if ((uint64_t)take > c->remaining) take = (size_t)c->remaining;
        if ((want_cap || c->opcode >= 0x8) && c->cap_len < 125) {
            size_t k = 125 - c->cap_len;
            if (k > take) k = take;
            memcpy(c->cap + c->cap_len, p, k);
            c->cap_len += (unsigned)k;
        }
        p += take;
        n -= take;
        c->remaining -= take;
        if (c->remaining == 0) {
            c->in_frame = 0;
            int r = on_frame(c, c->flen, now);
            if (r < 0) return -1;
            msgs += r;
        }
    }
    return msgs;
}

/* ------------------------------------------------------------ event logic */

static uint64_t retry_after;

static void restart_slot(conn *c, uint64_t now)
{
    /* upgrades mode: reuse the slot for the next attempt */
    if (mode != M_UPGRADES || !sending || now >= t_end || now < retry_after) return;
    if (start_connect(c) < 0) {
        c_connect_errors++;
        retry_after = now + 10000000ull; /* e.g. out of ports: back off 10 ms */
    }
}

static void drop(conn *c, uint64_t now)
{
    conn_close(c, mode != M_UPGRADES);
    restart_slot(c, now);
}

static void on_handshake_done(conn *c, uint64_t now)
{
    n_pending--;
    if (mode == M_UPGRADES) {
        if (measuring) c_upgrades++;
        if (close_plain) {
            c->state = S_CLOSING; /* counted open until closed */
            n_open++;
            drop(c, now);
            return;
        }
        unsigned char code[2] = {0x03, 0xE8};
        queue_frame(c, 0x88, code, 2);
        c->state = S_CLOSING;
        c->deadline = now + CLOSE_TIMEOUT_NS;
        n_open++;
        return;
    }
    c->state = S_OPEN;
    n_open++;
}

static void on_readable(conn *c)
{
    uint64_t now = now_ns();
    ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
    if (r <= 0) {
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
        if (c->state == S_CLOSING) {
            /* normal end of a closing handshake */
        } else if (c->state == S_HS_SENT || c->state == S_CONNECTING) {
            c_connect_errors++;
        } else {
            c_closed++;
            c_errors++;
        }
        drop(c, now);
        return;
    }
    const unsigned char *p = rbuf;
    size_t n = (size_t)r;
    if (c->state == S_HS_SENT) {
        int done = 0;
        long used = feed_handshake(c, p, n, &done);
        if (used < 0) {
            c_connect_errors++;
            drop(c, now);
            return;
        }
        p += used;
        n -= (size_t)used;
        if (done) {
            on_handshake_done(c, now);
            if (c->state == S_FREE || c->state == S_DEAD || c->fd < 0) return;
            if (c->state == S_CONNECTING) return; /* slot was restarted */
        }
    }
    if (n > 0 && (c->state == S_OPEN || c->state == S_CLOSING)) {
        long m = parse_frames(c, p, n, now);
        if (m < 0) {
            c_errors++;
            drop(c, now);
            return;
        }
        if (m > 0 && c->state == S_OPEN && (mode == M_THROUGHPUT || mode == M_PINGPONG)) {
            if (measuring) {
                c_msgs += (uint64_t)m;
                c_bytes += (uint64_t)m * msg_size;
            }
            if (sending) {
                c->pat_pending += (uint64_t)m * frame_len;
                if (measuring) c_sent += (uint64_t)m;
            }
        } else if (m > 0 && measuring) {
            c_msgs += (uint64_t)m;
            c_bytes += (uint64_t)m * msg_size;
        }
    }
    if (flush(c) < 0) {
        if (c->state != S_CLOSING) { c_errors++; c_closed++; }
        drop(c, now);
    }
}

static void on_event(conn *c, uint32_t ev)
{
    if (c->fd < 0) return;
    if (c->state == S_CONNECTING) {
        if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c);
        if (c->fd < 0 && mode == M_UPGRADES) restart_slot(c, now_ns());
        return;
    }
    if (ev & EPOLLOUT) {
        if (flush(c) < 0) {
            if (c->state != S_CLOSING) { c_errors++; c_closed++; }
            drop(c, now_ns());
            return;
        }
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
}

static void check_timeouts(uint64_t now)
{
    for (int i = 0; i < nslots; i++) {
        conn *c = &conns[i];
        if (c->fd < 0) {
            if (c->state == S_FREE && mode == M_UPGRADES) restart_slot(c, now);
            continue;
        }
        if (c->state == S_OPEN || now < c->deadline) continue;
        if (c->state == S_CLOSING) {
            if (mode == M_UPGRADES || c->got_close) c_close_timeouts++;
        } else {
            c_connect_errors++;
        }
        drop(c, now);
    }
}

static unsigned char *lat_frame;
static uint64_t lat_next, lat_period;
static int lat_rr;

static void arm_timer(uint64_t at)
{
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    its.it_value.tv_sec = (time_t)(at / 1000000000ull);
    its.it_value.tv_nsec = (long)(at % 1000000000ull);
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static void latency_tick(void)
{
    uint64_t exp;
    if (read(tfd, &exp, sizeof exp) < 0) { /* spurious */ }
    uint64_t now = now_ns();
    int guard = 0;
    while (sending && lat_next <= now && now < t_end && guard++ < 10000) {
        conn *c = NULL;
        for (int k = 0; k < nslots; k++) {
            conn *x = &conns[(lat_rr + k) % nslots];
            if (x->state == S_OPEN) { c = x; lat_rr = (lat_rr + k + 1) % nslots; break; }
        }
        if (!c) break;
        unsigned char payload_hdr[8];
        uint64_t ts = now_ns();
        memcpy(payload_hdr, &ts, 8);
        /* lat_frame holds the masked frame; patch the masked timestamp in */
        size_t hl = 2 + (msg_size < 126 ? 0 : msg_size < 65536 ? 2 : 8) + 4;
        for (int i = 0; i < 8; i++) lat_frame[hl + i] = payload_hdr[i] ^ MASK[i & 3];
        if (out_put(c, lat_frame, frame_len) < 0 || flush(c) < 0) {
            c_errors++;
            drop(c, now);
        } else if (measuring) c_sent++;
        lat_next += lat_period;
    }
    if (lat_next <= now && now < t_end) lat_next = now + lat_period; /* fell far behind */
    arm_timer(lat_next);
}

/* ----------------------------------------------------------------- report */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double q)
{
    if (n_samples == 0) return 0;
    size_t idx = (size_t)(q * (double)n_samples + 0.999999);
    if (idx > 0) idx--;
    if (idx >= n_samples) idx = n_samples - 1;
    return (double)samples[idx] / 1000.0;
}

static volatile sig_atomic_t interrupted;
static void on_signal(int s) { (void)s; interrupted = 1; }

static int parse_url(const char *url)
{
    char host[256];
    int port = 80;
    if (strncmp(url, "ws://", 5) != 0) return -1;
    const char *h = url + 5;
    const char *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    if (hl == 0 || hl >= sizeof host) return -1;
    memcpy(host, h, hl);
    host[hl] = 0;
    snprintf(host_hdr, sizeof host_hdr, "%s", host);
    char *colon = strrchr(host, ':');
    if (colon) {
        *colon = 0;
        port = atoi(colon + 1);
        if (port <= 0 || port > 65535) return -1;
    }
    snprintf(path, sizeof path, "%s", slash ? slash : "/");
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)port);
    if (strcmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &target.sin_addr) != 1) return -1;
    if ((ntohl(target.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "wsload: refusing non-loopback target %s\n", host);
        exit(2);
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: wsload [-m throughput|pingpong|latency|upgrades|idle] [-c conns] [-d sec]\n"
            "              [-w warmup] [-W window] [-s size] [-r rate] [-C conc] [-S setup_conc]\n"
            "              [-k frame|plain] [-T setup_timeout] ws://127.0.0.1:PORT/path\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int opt;
    int warmup_set = 0;
    while ((opt = getopt(argc, argv, "m:c:d:w:W:s:r:C:S:k:T:h")) != -1) {
        switch (opt) {
        case 'm': {
            int found = -1;
            for (int i = 0; i < 5; i++)
                if (strcmp(optarg, mode_names[i]) == 0) found = i;
            if (found < 0) usage();
            mode = found;
            break;
        }
        case 'c': nconns = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); warmup_set = 1; break;
        case 'W': window = atoi(optarg); break;
        case 's': msg_size = (size_t)atol(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'C': conc = atoi(optarg); break;
        case 'S': setup_conc = atoi(optarg); break;
        case 'k':
            if (strcmp(optarg, "plain") == 0) close_plain = 1;
            else if (strcmp(optarg, "frame") == 0) close_plain = 0;
            else usage();
            break;
        case 'T': setup_timeout = atof(optarg); break;
        default: usage();
        }
    }
    if (optind != argc - 1 || parse_url(argv[optind]) < 0) usage();
    if (mode == M_PINGPONG) window = 1;
    if (mode == M_IDLE && !warmup_set) warmup = 0;
    if (mode == M_IDLE) warmup = 0;
    if (nconns < 1 || nconns > MAX_CONNS) fatal("connections must be 1..20000");
    if (!(duration > 0 && duration <= MAX_DURATION)) fatal("duration must be in (0, 60] seconds");
    if (!(warmup >= 0 && warmup <= 10)) fatal("warm-up must be in [0, 10] seconds");
    if (!(setup_timeout > 0 && setup_timeout <= 120)) fatal("setup timeout must be in (0, 120]");
    if (window < 1 || window > 4096) fatal("window must be 1..4096");
    if (msg_size > MAX_SIZE) fatal("message size must be <= 1 MiB");
    if (mode == M_LATENCY && msg_size < 8) fatal("latency mode needs messages of >= 8 bytes");
    if (mode == M_LATENCY && !(rate > 0 && rate <= 1e6)) fatal("rate must be in (0, 1e6]");
    if (conc < 1 || conc > MAX_CONNS) fatal("concurrency must be 1..20000");
    if (setup_conc < 1) setup_conc = 1;

    nslots = mode == M_UPGRADES ? conc : nconns;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)nslots + 64) {
        rlim_t want = (rlim_t)nslots + 64;
        if (rl.rlim_max < want) rl.rlim_max = want; /* works as root */
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
            getrlimit(RLIMIT_NOFILE, &rl);
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) fatal("epoll_create1 failed");
    conns = calloc((size_t)nslots, sizeof *conns);
    if (!conns) fatal("out of memory");
    for (int i = 0; i < nslots; i++) conns[i].fd = -1;

    /* the pattern: identical masked binary frames back to back */
    {
        unsigned char *payload = malloc(msg_size ? msg_size : 1);
        if (!payload) fatal("out of memory");
        for (size_t i = 0; i < msg_size; i++) payload[i] = (unsigned char)('a' + i % 26);
        unsigned char *one = malloc(msg_size + 14);
        if (!one) fatal("out of memory");
        frame_len = build_frame(one, 0x82, payload, msg_size);
        size_t reps = (256 * 1024) / frame_len + 1;
        if (reps < 2) reps = 2;
        pattern_len = reps * frame_len;
        pattern = malloc(pattern_len);
        if (!pattern) fatal("out of memory");
        for (size_t i = 0; i < reps; i++) memcpy(pattern + i * frame_len, one, frame_len);
        lat_frame = one;
        free(payload);
    }

    struct epoll_event evs[MAX_EVENTS];
    uint64_t t_start = now_ns();
    uint64_t setup_ns = 0;
    int failed = 0;

    /* ---- phase 1: open the connections (not for upgrades) */
    if (mode != M_UPGRADES) {
        uint64_t deadline = t_start + (uint64_t)(setup_timeout * 1e9);
        int next = 0;
        uint64_t last_check = t_start;
        while (!interrupted) {
            uint64_t now = now_ns();
            while (n_pending < setup_conc && next < nconns) {
                if (start_connect(&conns[next]) < 0) {
                    c_connect_errors++;
                    conns[next].state = S_DEAD;
                }
                next++;
            }
            if (next >= nconns && n_pending == 0) break;
            if (now >= deadline) break;
            int n = epoll_wait(ep, evs, MAX_EVENTS, 50);
            for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events);
            now = now_ns();
            if (now - last_check > 100000000ull) {
                check_timeouts(now);
                last_check = now;
            }
        }
        for (int i = 0; i < nslots; i++)
            if (conns[i].state != S_OPEN) {
                if (conns[i].fd >= 0) { conn_close(&conns[i], 1); c_connect_errors++; }
                failed++;
            }
        setup_ns = now_ns() - t_start;
        if (n_open == 0) {
            printf("{\"mode\":\"%s\",\"error\":\"no connection could be opened\","
                   "\"connect_errors\":%llu}\n",
                   mode_names[mode], (unsigned long long)c_connect_errors);
            return 1;
        }
    }

    /* ---- phase 2: warm-up and measurement */
    uint64_t t0 = now_ns();
    t_meas = t0 + (uint64_t)(warmup * 1e9);
    t_end = t_meas + (uint64_t)(duration * 1e9);
    sending = 1;
    if (mode == M_THROUGHPUT || mode == M_PINGPONG) {
        for (int i = 0; i < nslots; i++)
            if (conns[i].state == S_OPEN) {
                conns[i].pat_pending = (uint64_t)window * frame_len;
                if (flush(&conns[i]) < 0) { c_errors++; conn_close(&conns[i], 1); }
            }
    } else if (mode == M_LATENCY) {
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (tfd < 0) fatal("timerfd_create failed");
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = NULL};
        epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &e);
        lat_period = (uint64_t)(1e9 / rate);
        if (lat_period == 0) lat_period = 1;
        lat_next = t0;
        arm_timer(lat_next);
    } else if (mode == M_UPGRADES) {
        for (int i = 0; i < nslots; i++)
            if (start_connect(&conns[i]) < 0) c_connect_errors++;
    } else if (mode == M_IDLE) {
        fprintf(stderr, "READY %d\n", n_open);
        fflush(stderr);
    }

    double cpu0 = 0;
    uint64_t wall0 = 0, now = now_ns(), last_check = now;
    if (t_meas <= now) {
        measuring = 1;
        cpu0 = cpu_seconds();
        wall0 = now;
        fprintf(stderr, "MEASURE START\n");
        fflush(stderr);
    }
    while (!interrupted) {
        now = now_ns();
        if (!measuring && now >= t_meas) {
            measuring = 1;
            c_msgs = c_bytes = c_sent = c_upgrades = c_size_errors = 0;
            n_samples = 0;
            cpu0 = cpu_seconds();
            wall0 = now;
            fprintf(stderr, "MEASURE START\n");
            fflush(stderr);
        }
        if (now >= t_end) break;
        uint64_t next = measuring ? t_end : t_meas;
        int timeout = (int)((next - now) / 1000000ull) + 1;
        if (timeout > 100) timeout = 100;
        int n = epoll_wait(ep, evs, MAX_EVENTS, timeout);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) latency_tick();
            else on_event(evs[i].data.ptr, evs[i].events);
        }
        now = now_ns();
        if (now - last_check > 100000000ull) {
            check_timeouts(now);
            last_check = now;
        }
    }
    now = now_ns();
    sending = 0;
    fprintf(stderr, "MEASURE END\n");
    fflush(stderr);
    if (!measuring) { wall0 = now; cpu0 = cpu_seconds(); }
    double wall = (double)(now - wall0) / 1e9;
    double cpu = cpu_seconds() - cpu0;
    if (wall <= 0) wall = 1e-9;
    int held = n_open;

    qsort(samples, n_samples, sizeof *samples, cmp_u64);
    double mean = 0;
    for (size_t i = 0; i < n_samples; i++) mean += (double)samples[i];
    if (n_samples) mean /= (double)n_samples * 1000.0;

    uint64_t errors = c_errors + c_connect_errors + c_size_errors;
    printf("{\"mode\":\"%s\",\"url\":\"ws://%s%s\",\"connections\":%d,\"requested\":%d,"
           "\"window\":%d,\"size\":%zu,\"duration_s\":%.3f,\"warmup_s\":%.3f,\"setup_s\":%.3f,",
           mode_names[mode], host_hdr, path, mode == M_UPGRADES ? conc : nconns - failed,
           mode == M_UPGRADES ? conc : nconns, window, msg_size, wall, warmup,
           (double)setup_ns / 1e9);
    printf("\"messages\":%llu,\"sent\":%llu,\"msg_per_s\":%.1f,\"bytes_per_s\":%.1f,",
           (unsigned long long)c_msgs, (unsigned long long)c_sent, (double)c_msgs / wall,
           (double)c_bytes / wall);
    if (mode == M_LATENCY)
        printf("\"rate\":%.1f,\"samples\":%zu,\"latency_us\":{\"p50\":%.1f,\"p90\":%.1f,"
               "\"p99\":%.1f,\"max\":%.1f,\"mean\":%.1f},",
               rate, n_samples, pct(0.50), pct(0.90), pct(0.99),
               n_samples ? (double)samples[n_samples - 1] / 1000.0 : 0.0, mean);
    if (mode == M_UPGRADES)
        printf("\"concurrency\":%d,\"close\":\"%s\",\"upgrades\":%llu,\"upgrades_per_s\":%.1f,"
               "\"close_timeouts\":%llu,",
               conc, close_plain ? "plain" : "frame", (unsigned long long)c_upgrades,
               (double)c_upgrades / wall, (unsigned long long)c_close_timeouts);
    if (mode == M_IDLE) printf("\"held\":%d,", held);
    printf("\"pings_answered\":%llu,\"errors\":%llu,\"connect_errors\":%llu,\"size_errors\":%llu,"
           "\"unexpected_closes\":%llu,\"cpu_s\":%.3f,\"cpu_util\":%.3f,\"interrupted\":%s}\n",
           (unsigned long long)c_pings, (unsigned long long)errors,
           (unsigned long long)c_connect_errors, (unsigned long long)c_size_errors,
           (unsigned long long)c_closed, cpu, cpu / wall, interrupted ? "true" : "false");
    fflush(stdout);
    return 0;
}
