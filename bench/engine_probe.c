/* The usual upgrade done in C per connection, inside a Python process that is called
 * twice an upgrade: the ceiling of issue 18's next step (bench/engine_probe.py runs it;
 * bench/README.md "The engine probe" says what it measures).
 *
 * serve(listen_fd, backend_port, on_request, on_end) runs an epoll loop of its own and
 * never returns but with an error (a signal's exception, say): each connection accepted
 * on listen_fd gets a Conn that reads the client's head up to its blank line, hands it
 * to on_request(head) -> the bytes to send the backend (the verdict: Python), dials
 * 127.0.0.1:backend_port, writes them once connected, reads the backend's head up to
 * its blank line, writes it (and what came with it) to the client, then copies bytes
 * both ways until either side ends, and calls on_end() (the bookkeeping: Python).
 *
 * Only for measuring, like bench/splice.py: it trusts both peers (a head longer than
 * its buffer, a write that does not go whole, any error ends the connection), knows no
 * WebSocket frame, and holds the GIL throughout (it is the process's only thread).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { HEAD, DIALING, RESPONSE, RELAY };

#define HEAD_MAX 16384
#define MAX_FD 65536
#define EVENTS 256

typedef struct {
    int client, backend, state;
    size_t n;
    PyObject *request; /* what on_request returned, until the backend has it */
    char head[HEAD_MAX];
} Conn;

static Conn *by_fd[MAX_FD];
static char copy_buffer[1 << 16];
static const int ONE = 1;

static int watch(int ep, int op, int fd, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};
    return epoll_ctl(ep, op, fd, &ev);
}

static void forget(int ep, int fd)
{
    if (fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
        by_fd[fd] = NULL;
        close(fd);
    }
}

/* The connection is over: both sockets closed, then on_end(). -1: on_end raised. */
static int end(int ep, Conn *c, PyObject *on_end)
{
    forget(ep, c->client);
    forget(ep, c->backend);
    Py_XDECREF(c->request);
    free(c);
    PyObject *r = PyObject_CallNoArgs(on_end);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* Read what *fd* has into the head; 1: the head is whole, 0: not yet, -1: end it. */
static int read_head(Conn *c, int fd)
{
    ssize_t r = read(fd, c->head + c->n, HEAD_MAX - c->n);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (r <= 0)
        return -1;
    c->n += (size_t)r;
    if (memmem(c->head, c->n, "\r\n\r\n", 4) != NULL)
        return 1;
    return c->n == HEAD_MAX ? -1 : 0;
}

static int write_all(int fd, const char *data, size_t n)
{
    return write(fd, data, n) == (ssize_t)n ? 0 : -1;
}

static void accept_all(int ep, int listener)
{
    int fd;
    while ((fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        Conn *c = fd < MAX_FD ? calloc(1, sizeof *c) : NULL;
        if (c == NULL) {
            close(fd);
            continue;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &ONE, sizeof ONE);
        c->client = fd;
        c->backend = -1;
        by_fd[fd] = c;
        watch(ep, EPOLL_CTL_ADD, fd, EPOLLIN);
    }
}

/* One readiness of *fd*, a socket of *c*. 0: go on; -1: end the connection. */
static int step(int ep, Conn *c, int fd, const struct sockaddr_in *backend,
                PyObject *on_request)
{
    switch (c->state) {
    case HEAD: {
        int whole = read_head(c, fd);
        if (whole <= 0)
            return whole;
        PyObject *head = PyBytes_FromStringAndSize(c->head, (Py_ssize_t)c->n);
        if (head == NULL)
            return -1;
        c->request = PyObject_CallOneArg(on_request, head);
        Py_DECREF(head);
        if (c->request == NULL || !PyBytes_Check(c->request)) {
            PyErr_Clear();
            return -1;
        }
        c->n = 0;
        int b = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (b < 0 || b >= MAX_FD) {
            if (b >= 0)
                close(b);
            return -1;
        }
        setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &ONE, sizeof ONE);
        c->backend = b;
        by_fd[b] = c;
        if (connect(b, (const struct sockaddr *)backend, sizeof *backend) < 0
            && errno != EINPROGRESS)
            return -1;
        watch(ep, EPOLL_CTL_ADD, b, EPOLLOUT);
        c->state = DIALING;
        return 0;
    }
    case DIALING: {
        if (fd != c->backend)
            return 0; /* the client's early bytes wait in its socket */
        int error = 0;
        socklen_t size = sizeof error;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size);
        if (error || write_all(fd, PyBytes_AS_STRING(c->request),
                               (size_t)PyBytes_GET_SIZE(c->request)) < 0)
            return -1;
        Py_CLEAR(c->request);
        watch(ep, EPOLL_CTL_MOD, fd, EPOLLIN);
        c->state = RESPONSE;
        return 0;
    }
    case RESPONSE: {
        if (fd != c->backend)
            return 0;
        int whole = read_head(c, fd);
        if (whole <= 0)
            return whole;
        c->state = RELAY;
        return write_all(c->client, c->head, c->n);
    }
    default: {
        ssize_t r = read(fd, copy_buffer, sizeof copy_buffer);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        if (r <= 0)
            return -1;
        return write_all(fd == c->client ? c->backend : c->client, copy_buffer, (size_t)r);
    }
    }
}

static PyObject *serve(PyObject *self, PyObject *args)
{
    (void)self;
    int listener, port;
    PyObject *on_request, *on_end;
    if (!PyArg_ParseTuple(args, "iiOO", &listener, &port, &on_request, &on_end))
        return NULL;
    struct sockaddr_in backend = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    backend.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0 || watch(ep, EPOLL_CTL_ADD, listener, EPOLLIN) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    struct epoll_event events[EVENTS];
    for (;;) {
        int k = epoll_wait(ep, events, EVENTS, -1);
        if (k < 0) {
            if (errno == EINTR && PyErr_CheckSignals() == 0)
                continue;
            break;
        }
        for (int i = 0; i < k; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                accept_all(ep, listener);
                continue;
            }
            Conn *c = by_fd[fd];
            if (c != NULL && step(ep, c, fd, &backend, on_request) < 0
                && end(ep, c, on_end) < 0)
                goto out;
        }
    }
out:
    if (!PyErr_Occurred())
        PyErr_SetFromErrno(PyExc_OSError);
    close(ep);
    return NULL;
}

static PyMethodDef methods[] = {
    {"serve", serve, METH_VARARGS, "serve(listen_fd, backend_port, on_request, on_end)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_engine_probe",
    "The usual upgrade in C per connection, Python twice an upgrade (a probe).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__engine_probe(void) { return PyModule_Create(&module); }
