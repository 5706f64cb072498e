/*
 * httpok - a small, fast HTTP/1.1 backend for benchmarks: every request gets the
 * same 200 with a 13-byte body.
 *
 * Single thread, epoll (level-triggered), no dependencies beyond libc.
 * Build: cc -O2 -Wall -Wextra -o bench/bin/httpok bench/httpok.c
 * Usage: httpok -p port [-q]        (listens on 127.0.0.1 only)
 *
 * - Keep-alive and pipelining: every complete request head in the input gets one
 *   response, in order; a request body with Content-Length is read and dropped.
 * - Closes after the response when the request says "Connection: close", or is
 *   HTTP/1.0 without "Connection: keep-alive".
 * - Transfer-Encoding (a chunked request body) is not supported: 501, then close.
 *   A head over MAX_HEAD bytes: 431, then close.  Header values are matched as
 *   whole, case-insensitive tokens ("close", "keep-alive"), enough for benchmark
 *   clients and proxies, not a general-purpose parser.
 * - Backpressure: a connection whose unsent output exceeds OUT_HIGH (a client
 *   that pipelines without reading) stops being read until it drains.
 * - Prints the number of requests answered on SIGTERM/SIGINT unless -q.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_HEAD 16384
#define OUT_HIGH (1024 * 1024)
#define MAX_EVENTS 512

static const char OK[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 13\r\n"
    "\r\n"
    "hello, world\n";
static const char OK_CLOSE[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 13\r\n"
    "Connection: close\r\n"
    "\r\n"
    "hello, world\n";
static const char E501[] =
    "HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
static const char E431[] =
    "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
    "Connection: close\r\n\r\n";

typedef struct {
    int fd;
    int closing;          /* close once `out` is written */
    int reading;          /* EPOLLIN armed */
    size_t in_len;
    unsigned long long body_left; /* request body bytes still to drop */
    char *out;
    size_t out_len, out_cap;
    char in[MAX_HEAD];
} conn;

static int ep;
static volatile sig_atomic_t stop;
static unsigned long long answered;

static void on_signal(int sig) { (void)sig; stop = 1; }

static int out_add(conn *c, const char *p, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + n)
            cap *= 2;
        char *q = realloc(c->out, cap);
        if (!q)
            return -1;
        c->out = q;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

/* Does the header line [p, end) named `name` hold `token` (comma-separated)? */
static int header_has(const char *p, const char *end, const char *name, const char *token)
{
    size_t nl = strlen(name), tl = strlen(token);
    if ((size_t)(end - p) <= nl || strncasecmp(p, name, nl) != 0 || p[nl] != ':')
        return 0;
    for (p += nl + 1; p < end; p++) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        const char *q = p;
        while (q < end && *q != ',' && *q != ' ' && *q != '\t')
            q++;
        if ((size_t)(q - p) == tl && strncasecmp(p, token, tl) == 0)
            return 1;
        p = q;
    }
    return 0;
}

/* Answer one request head [head, head+len) (ends with CRLF CRLF). */
static int answer(conn *c, const char *head, size_t len)
{
    const char *end = head + len, *line = head, *eol;
    int http10 = 0, close_asked = 0, keep_asked = 0;
    eol = memchr(line, '\n', (size_t)(end - line));
    if (eol && eol - line >= 9 && memcmp(eol - 9, "HTTP/1.0", 8) == 0)
        http10 = 1;
    for (line = eol + 1; line < end; line = eol + 1) {
        eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol || eol - line <= 1)
            break;
        const char *vend = eol[-1] == '\r' ? eol - 1 : eol;
        if (strncasecmp(line, "transfer-encoding:", 18) == 0) {
            c->closing = 1;
            return out_add(c, E501, sizeof E501 - 1);
        }
        if (strncasecmp(line, "content-length:", 15) == 0)
            c->body_left = strtoull(line + 15, NULL, 10);
        close_asked |= header_has(line, vend, "connection", "close");
        keep_asked |= header_has(line, vend, "connection", "keep-alive");
    }
    answered++;
    if (close_asked || (http10 && !keep_asked)) {
        c->closing = 1;
        return out_add(c, OK_CLOSE, sizeof OK_CLOSE - 1);
    }
    return out_add(c, OK, sizeof OK - 1);
}

/* Answer every complete request in c->in; keep the incomplete rest. */
static int consume(conn *c)
{
    size_t off = 0;
    while (off < c->in_len && !c->closing) {
        if (c->body_left) {
            size_t n = c->in_len - off;
            if (n > c->body_left)
                n = (size_t)c->body_left;
            c->body_left -= n;
            off += n;
            continue;
        }
        char *hend = memmem(c->in + off, c->in_len - off, "\r\n\r\n", 4);
        if (!hend)
            break;
        size_t len = (size_t)(hend + 4 - (c->in + off));
        if (answer(c, c->in + off, len) < 0)
            return -1;
        off += len;
    }
    if (!c->closing && off == 0 && c->in_len == MAX_HEAD) {
        c->closing = 1;
        return out_add(c, E431, sizeof E431 - 1);
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
    return 0;
}

static void drop(conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    free(c);
}

static void arm(conn *c)
{
    int want_read = !c->closing && c->out_len < OUT_HIGH;
    struct epoll_event ev = {.events = (want_read ? EPOLLIN : 0) | (c->out_len ? EPOLLOUT : 0),
                             .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->reading = want_read;
}

/* Write what is pending; returns -1 when the connection is to be dropped. */
static int flush(conn *c)
{
    size_t off = 0;
    while (off < c->out_len) {
        ssize_t n = write(c->fd, c->out + off, c->out_len - off);
        if (n < 0) {
            if (errno == EAGAIN)
                break;
            if (errno == EINTR)
                continue;
            return -1;
        }
        off += (size_t)n;
    }
    memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
    if (c->closing && c->out_len == 0)
        return -1;
    return 0;
}

static void on_event(conn *c, uint32_t events)
{
    int was_pending = c->out_len > 0, was_reading = c->reading;
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        ssize_t n = read(c->fd, c->in + c->in_len, MAX_HEAD - c->in_len);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            drop(c);
            return;
        }
        if (n > 0) {
            c->in_len += (size_t)n;
            if (consume(c) < 0) {
                drop(c);
                return;
            }
        }
    }
    if (c->out_len && flush(c) < 0) {
        drop(c);
        return;
    }
    int now_reading = !c->closing && c->out_len < OUT_HIGH;
    if (was_pending != (c->out_len > 0) || was_reading != now_reading)
        arm(c);
}

static void on_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or out of descriptors: try again on the next event */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->reading = 1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
        }
    }
}

int main(int argc, char **argv)
{
    int port = 0, quiet = 0, opt;
    while ((opt = getopt(argc, argv, "p:q")) != -1) {
        if (opt == 'p')
            port = atoi(optarg);
        else if (opt == 'q')
            quiet = 1;
        else
            port = -1;
    }
    if (port <= 0 || port > 65535) {
        fprintf(stderr, "usage: %s -p port [-q]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (lfd < 0) {
        perror("httpok: socket");
        return 1;
    }
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0) {
        perror("httpok: bind/listen");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    if (!quiet)
        fprintf(stderr, "httpok: listening on 127.0.0.1:%d\n", port);

    struct epoll_event evs[MAX_EVENTS];
    while (!stop) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, 1000);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL)
                on_accept(lfd);
            else
                on_event(evs[i].data.ptr, evs[i].events);
        }
    }
    if (!quiet)
        fprintf(stderr, "httpok: %llu requests answered\n", answered);
    return 0;
}
