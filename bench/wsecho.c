/*
 * wsecho - a small, fast WebSocket echo server for benchmarks.
 *
 * Single thread, epoll (level-triggered), no dependencies beyond libc.
 * Build: cc -O2 -Wall -Wextra -o bench/bin/wsecho bench/wsecho.c
 * Usage: wsecho [-H host] -p port [-q]
 *
 * - RFC 6455 server handshake (SHA-1 + base64 for Sec-WebSocket-Accept are
 *   implemented below).
 * - Echoes every data frame back, frame by frame, unmasked, with the same
 *   FIN bit and opcode (so fragmented messages come back as the same
 *   fragments).  Payloads are unmasked and streamed as they arrive, so a
 *   frame of any size (1 MiB and more) needs no reassembly buffer, and frame
 *   headers or payloads split across reads are handled.
 * - Answers ping with pong, ignores pong, answers close with close (same
 *   status code) and then closes the TCP connection once the reply is sent
 *   (the server closes first, as RFC 6455 section 7.1.1 asks).
 * - Backpressure: a connection whose unsent output exceeds OUT_HIGH stops
 *   being read until it has drained below OUT_LOW.
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
#include <unistd.h>

#define READ_BUF (256 * 1024)
#define MAX_HEAD 16384
#define OUT_HIGH (4 * 1024 * 1024)
#define OUT_LOW (1 * 1024 * 1024)
#define MAX_EVENTS 512

/* ------------------------------------------------------------------ SHA-1 */

typedef struct {
    uint32_t h[5];
    uint64_t len;
    unsigned char buf[64];
    size_t n;
} sha1_ctx;

static uint32_t rol32(uint32_t x, int s) { return (x << s) | (x >> (32 - s)); }

static void sha1_block(sha1_ctx *c, const unsigned char *p)
{
    uint32_t w[80], a, b, d, e, f, k, t, cc;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (i = 16; i < 80; i++)
        w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    a = c->h[0]; b = c->h[1]; cc = c->h[2]; d = c->h[3]; e = c->h[4];
    for (i = 0; i < 80; i++) {
        if (i < 20) { f = (b & cc) | (~b & d); k = 0x5A827999; }
        else if (i < 40) { f = b ^ cc ^ d; k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & cc) | (b & d) | (cc & d); k = 0x8F1BBCDC; }
        else { f = b ^ cc ^ d; k = 0xCA62C1D6; }
        t = rol32(a, 5) + f + e + k + w[i];
        e = d; d = cc; cc = rol32(b, 30); b = a; a = t;
    }
    c->h[0] += a; c->h[1] += b; c->h[2] += cc; c->h[3] += d; c->h[4] += e;
}

static void sha1_init(sha1_ctx *c)
{
    c->h[0] = 0x67452301; c->h[1] = 0xEFCDAB89; c->h[2] = 0x98BADCFE;
    c->h[3] = 0x10325476; c->h[4] = 0xC3D2E1F0;
    c->len = 0; c->n = 0;
}

static void sha1_update(sha1_ctx *c, const void *data, size_t len)
{
    const unsigned char *p = data;
    c->len += len;
    while (len > 0) {
        size_t take = 64 - c->n;
        if (take > len) take = len;
        memcpy(c->buf + c->n, p, take);
        c->n += take; p += take; len -= take;
        if (c->n == 64) { sha1_block(c, c->buf); c->n = 0; }
    }
}

static void sha1_final(sha1_ctx *c, unsigned char out[20])
{
    uint64_t bits = c->len * 8;
    unsigned char pad = 0x80, zero = 0, lenb[8];
    int i;
    sha1_update(c, &pad, 1);
    while (c->n != 56) sha1_update(c, &zero, 1);
    for (i = 0; i < 8; i++) lenb[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha1_update(c, lenb, 8);
    for (i = 0; i < 5; i++) {
        out[4 * i] = (unsigned char)(c->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(c->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(c->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)c->h[i];
    }
}

static void base64(const unsigned char *in, size_t n, char *out)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tab[v >> 18]; out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63]; out[o++] = tab[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = tab[v >> 18]; out[o++] = tab[(v >> 12) & 63];
        out[o++] = '='; out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = tab[v >> 18]; out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63]; out[o++] = '=';
    }
    out[o] = 0;
}

/* ------------------------------------------------------------ connections */

enum { ST_HANDSHAKE, ST_OPEN, ST_CLOSING };

typedef struct conn {
    int fd;
    int state;
    int reading;            /* EPOLLIN currently enabled */
    int want_out;           /* EPOLLOUT currently enabled */
    /* handshake */
    char *head;
    size_t head_len;
    /* frame parser */
    unsigned char hdr[14];  /* partial frame header */
    size_t hdr_len;
    uint64_t remaining;     /* payload bytes of the current frame still to read */
    unsigned char mask[4];
    unsigned mask_pos;
    int opcode;             /* opcode of the frame whose payload is streaming */
    int masked;
    unsigned char ctl[125]; /* control frame payload being collected */
    size_t ctl_len;
    /* output */
    unsigned char *out;
    size_t out_off, out_len, out_cap;
} conn;

static int ep;
static int quiet;
static unsigned char rbuf[READ_BUF];
static unsigned long long n_conns, n_open;

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void update_events(conn *c)
{
    struct epoll_event ev;
    size_t pending = c->out_len - c->out_off;
    int want_out = pending > 0;
    int reading = c->reading;
    if (reading && pending >= OUT_HIGH) reading = 0;
    else if (!reading && pending <= OUT_LOW) reading = 1;
    if (c->state == ST_CLOSING) reading = 0;
    if (want_out == c->want_out && reading == c->reading) return;
    c->want_out = want_out;
    c->reading = reading;
    ev.events = (reading ? EPOLLIN : 0) | (want_out ? EPOLLOUT : 0);
    ev.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_free(conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->head);
    free(c->out);
    free(c);
    n_open--;
}

static int out_reserve(conn *c, size_t extra)
{
    if (c->out_off > 0 && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + extra <= c->out_cap) return 0;
    if (c->out_off > 0) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
        if (c->out_len + extra <= c->out_cap) return 0;
    }
    size_t cap = c->out_cap ? c->out_cap : 4096;
    while (cap < c->out_len + extra) cap *= 2;
    unsigned char *p = realloc(c->out, cap);
    if (!p) return -1;
    c->out = p;
    c->out_cap = cap;
    return 0;
}

static void out_put(conn *c, const void *data, size_t n)
{
    if (out_reserve(c, n) < 0) return;
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
}

static size_t frame_header(unsigned char *h, int b0, uint64_t len)
{
    h[0] = (unsigned char)b0;
    if (len < 126) { h[1] = (unsigned char)len; return 2; }
    if (len < 65536) { h[1] = 126; h[2] = (unsigned char)(len >> 8); h[3] = (unsigned char)len; return 4; }
    h[1] = 127;
    for (int i = 0; i < 8; i++) h[2 + i] = (unsigned char)(len >> (56 - 8 * i));
    return 10;
}

/* returns -1 if the connection must be dropped now */
static int flush_out(conn *c)
{
    while (c->out_len > c->out_off) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            return -1;
        }
        c->out_off += (size_t)w;
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->out_cap > 1024 * 1024) { free(c->out); c->out = NULL; c->out_cap = 0; }
        if (c->state == ST_CLOSING) return -1; /* close reply sent: close TCP */
    }
    update_events(c);
    return 0;
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

static int do_handshake(conn *c, const unsigned char *data, size_t n, size_t *consumed)
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    size_t old = c->head_len;
    if (!c->head) c->head = malloc(MAX_HEAD + 1);
    if (!c->head) return -1;
    size_t take = n;
    if (take > MAX_HEAD - c->head_len) take = MAX_HEAD - c->head_len;
    memcpy(c->head + c->head_len, data, take);
    c->head_len += take;
    c->head[c->head_len] = 0;
    char *end = strstr(c->head, "\r\n\r\n");
    if (!end) {
        if (c->head_len >= MAX_HEAD) return -1;
        *consumed = n;
        return 0;
    }
    size_t head_total = (size_t)(end - c->head) + 4;
    *consumed = head_total - old;
    end[2] = 0; /* keep the last header's CRLF, cut the blank line */
    size_t klen = 0;
    const char *key = find_header(c->head, "Sec-WebSocket-Key", &klen);
    if (strncmp(c->head, "GET ", 4) != 0 || !key || klen == 0 || klen > 64) {
        static const char bad[] =
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        out_put(c, bad, sizeof bad - 1);
        c->state = ST_CLOSING;
        return 1;
    }
    sha1_ctx s;
    unsigned char dig[20];
    char acc[32], resp[256];
    sha1_init(&s);
    sha1_update(&s, key, klen);
    sha1_update(&s, guid, sizeof guid - 1);
    sha1_final(&s, dig);
    base64(dig, 20, acc);
    int rl = snprintf(resp, sizeof resp,
                      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", acc);
    out_put(c, resp, (size_t)rl);
    free(c->head);
    c->head = NULL;
    c->head_len = 0;
    c->state = ST_OPEN;
    return 0;
}

static void handle_control(conn *c)
{
    unsigned char h[4];
    if (c->opcode == 0x9) { /* ping -> pong */
        size_t hl = frame_header(h, 0x8A, c->ctl_len);
        out_put(c, h, hl);
        out_put(c, c->ctl, c->ctl_len);
    } else if (c->opcode == 0x8) { /* close -> close with the same code */
        size_t n = c->ctl_len >= 2 ? 2 : 0;
        size_t hl = frame_header(h, 0x88, n);
        out_put(c, h, hl);
        out_put(c, c->ctl, n);
        c->state = ST_CLOSING;
    }
    /* pong: ignore */
}

/* Parse frames from data; echo as we go.  Returns -1 on protocol error. */
static int process_frames(conn *c, const unsigned char *p, size_t n)
{
    while (n > 0 && c->state == ST_OPEN) {
        if (c->remaining == 0) {
            /* between frames: collect header bytes (possibly split across reads) */
            size_t need;
            while (1) {
                if (c->hdr_len < 2) need = 2;
                else {
                    unsigned l7 = c->hdr[1] & 0x7F;
                    need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + ((c->hdr[1] & 0x80) ? 4 : 0);
                }
                if (c->hdr_len >= need) break;
                if (n == 0) return 0;
                size_t take = need - c->hdr_len;
                if (take > n) take = n;
                memcpy(c->hdr + c->hdr_len, p, take);
                c->hdr_len += take; p += take; n -= take;
            }
            /* full header */
            unsigned l7 = c->hdr[1] & 0x7F;
            uint64_t len;
            size_t off = 2;
            if (l7 == 126) { len = (uint64_t)c->hdr[2] << 8 | c->hdr[3]; off = 4; }
            else if (l7 == 127) {
                len = 0;
                for (int i = 0; i < 8; i++) len = len << 8 | c->hdr[2 + i];
                off = 10;
            } else len = l7;
            c->masked = (c->hdr[1] & 0x80) != 0;
            if (c->masked) memcpy(c->mask, c->hdr + off, 4);
            c->mask_pos = 0;
            c->opcode = c->hdr[0] & 0x0F;
            int b0 = c->hdr[0];
            c->hdr_len = 0;
            c->remaining = len;
            c->ctl_len = 0;
            if (c->opcode >= 0x8) {
                if (len > 125 || !(b0 & 0x80)) return -1;
                if (len == 0) { handle_control(c); continue; }
            } else {
                unsigned char h[10];
                size_t hl = frame_header(h, b0 & 0x8F, len);
                out_put(c, h, hl);
                if (len == 0) continue;
            }
        }
        /* payload bytes */
        size_t take = n;
        if ((uint64_t)take > c->remaining) take = (size_t)c->remaining;
        unsigned char *dst;
        if (c->opcode >= 0x8) {
            dst = c->ctl + c->ctl_len;
            c->ctl_len += take;
        } else {
            if (out_reserve(c, take) < 0) return -1;
            dst = c->out + c->out_len;
            c->out_len += take;
        }
        if (c->masked) {
            unsigned mp = c->mask_pos;
            size_t i = 0;
            /* align to the mask phase, then do 8 bytes at a time */
            while (i < take && (mp & 3)) { dst[i] = p[i] ^ c->mask[mp & 3]; i++; mp++; }
            if (take - i >= 8) {
                uint32_t m4;
                memcpy(&m4, c->mask, 4);
                uint64_t m8 = (uint64_t)m4 << 32 | m4;
                for (; i + 8 <= take; i += 8) {
                    uint64_t v;
                    memcpy(&v, p + i, 8);
                    v ^= m8;
                    memcpy(dst + i, &v, 8);
                }
            }
            for (; i < take; i++) { dst[i] = p[i] ^ c->mask[mp & 3]; mp++; }
            c->mask_pos = mp & 3;
        } else {
            memcpy(dst, p, take);
        }
        p += take; n -= take;
        c->remaining -= take;
        if (c->remaining == 0 && c->opcode >= 0x8) handle_control(c);
    }
    return 0;
}

static void on_readable(conn *c)
{
    for (int rounds = 0; rounds < 4; rounds++) {
        ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (r == 0) { conn_free(c); return; }
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            conn_free(c);
            return;
        }
        const unsigned char *p = rbuf;
        size_t n = (size_t)r;
        if (c->state == ST_HANDSHAKE) {
            size_t used = 0;
            int hs = do_handshake(c, p, n, &used);
            if (hs < 0) { conn_free(c); return; }
            p += used; n -= used;
        }
        if (c->state == ST_OPEN && n > 0) {
            if (process_frames(c, p, n) < 0) {
                /* protocol error: close with 1002 */
                unsigned char cl[4] = {0x88, 2, 0x03, 0xEA};
                out_put(c, cl, 4);
                c->state = ST_CLOSING;
            }
        }
        if (flush_out(c) < 0) { conn_free(c); return; }
        if (c->state != ST_OPEN && c->state != ST_HANDSHAKE) break;
        if (!c->reading) break;
        if ((size_t)r < sizeof rbuf) break;
    }
}

static void accept_all(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK && !quiet) perror("accept");
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn *c = calloc(1, sizeof *c);
        if (!c) { close(fd); continue; }
        c->fd = fd;
        c->state = ST_HANDSHAKE;
        c->reading = 1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) { close(fd); free(c); continue; }
        n_conns++;
        n_open++;
    }
}

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0, opt;
    while ((opt = getopt(argc, argv, "H:p:q")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'q': quiet = 1; break;
        default:
            fprintf(stderr, "usage: %s [-H host] -p port [-q]\n", argv[0]);
            return 2;
        }
    }
    if (port <= 0 || port > 65535) {
        fprintf(stderr, "usage: %s [-H host] -p port [-q]\n", argv[0]);
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) {
        fprintf(stderr, "wsecho: bad IPv4 address %s\n", host);
        return 2;
    }
    if (bind(lfd, (struct sockaddr *)&sin, sizeof sin) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0) die("epoll_ctl");
    if (!quiet) fprintf(stderr, "wsecho: listening on %s:%d\n", host, port);

    struct epoll_event evs[MAX_EVENTS];
    while (!stop) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (!c) { accept_all(lfd); continue; }
            uint32_t e = evs[i].events;
            if (e & EPOLLOUT) {
                if (flush_out(c) < 0) { conn_free(c); continue; }
            }
            if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (c->reading || (e & (EPOLLHUP | EPOLLERR))) on_readable(c);
            }
        }
    }
    if (!quiet) fprintf(stderr, "wsecho: stopping, %llu connections served, %llu open\n", n_conns, n_open);
    return 0;
}
