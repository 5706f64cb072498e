/* Links: the engine's socket layer (issue 18), the compiled twin of wsproxy/io/links.py.
 *
 * links.py says what and why; this is the same logic in C. One Engine per event loop
 * holds an epoll descriptor, which is the loop's one reader for every link and listener
 * of it (`loop.add_reader(engine.fileno(), engine.ready)`, as the hub of
 * wsproxy.io.hub). A Listener accepts on a listening socket, a Link is one connected
 * socket with the part of asyncio.Transport that wsproxy uses, with its semantics:
 * connection_made, data_received, eof_received, pause_writing/resume_writing and
 * connection_lost (exactly once, through loop.call_soon) on its protocol; write,
 * writelines, write_eof, close, abort, pause_reading/resume_reading and the rest for
 * the protocol to call.
 *
 * Ownership: the engine's list of members (an intrusive, doubly linked list) holds a
 * reference to each link and listener until it closes; ready() holds each member of a
 * batch until the batch is done, so that a callback that closes another member of the
 * same batch leaves no dangling pointer behind (that member is then skipped). A link
 * drops its protocol once connection_lost has been called.
 *
 * Level-triggered epoll. A link's interest follows what it wants (reading: EPOLLIN;
 * something buffered or a connect in progress: EPOLLOUT); one that wants nothing is out
 * of the epoll set, so that a reset peer (EPOLLERR, always reported) cannot keep a
 * paused link ready for ever.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#ifdef __linux__
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* How much a link reads at once (one recv() a readiness), as the pump. */
#define READ_SIZE (256 * 1024)
/* Connections a listener accepts per readiness: a flood must not starve the loop. */
#define ACCEPT_BURST 16
/* How long a listener rests after running out of descriptors or memory. */
#define ACCEPT_REST 0.1
/* The bound on an engine's `limit` (its events are on the stack). */
#define MAX_EVENTS 1024
/* asyncio's default write limits. */
#define HIGH_WATER (64 * 1024)

static char read_buffer[READ_SIZE];

typedef struct Engine Engine;

enum { LINK = 1, LISTENER = 2 };

/* What links and listeners share, first in both: the engine's list and the epoll set. */
#define MEMBER_HEAD            \
    PyObject_HEAD              \
    int kind;                  \
    int fd;                    \
    int in_list;               \
    uint32_t events; /* the interest in the epoll set; 0: not in it */ \
    unsigned long seen; /* the engine's round when it was last handled */ \
    Engine *engine;            \
    struct Member *prev, *next;

typedef struct Member {
    MEMBER_HEAD
} Member;

typedef struct Link {
    MEMBER_HEAD
    PyObject *protocol;   /* NULL once connection_lost was called (or never made) */
    PyObject *future;     /* a dial's, until it is settled */
    PyObject *lost_exc;   /* what connection_lost gets (NULL: None) */
    PyObject *peername;   /* made on first ask */
    PyObject *chunks;     /* [bytes] not sent yet (NULL: none), the first from `offset` on:
                             references, not copies, as uvloop keeps them */
    Py_ssize_t offset;
    size_t buffered;      /* their bytes, from `offset` on */
    Py_ssize_t high, low;
    unsigned connecting : 1, made : 1, reading : 1, closing : 1, eof_pending : 1,
        eof_sent : 1, peer_eof : 1, paused : 1, lost_due : 1;
    socklen_t peer_len;
    struct sockaddr_in6 peer; /* large enough for IPv4 and IPv6 */
} Link;

typedef struct Listener {
    MEMBER_HEAD
    PyObject *factory;
    int closed, resting;
    int nodelay; /* its clients' TCP_NODELAY: 0 not known yet, 1 inherited, -1 set each */
} Listener;

struct Engine {
    PyObject_HEAD
    int epfd;           /* -1 once closed */
    int reserve;        /* a descriptor kept for the listeners' EMFILE answer, or -1 */
    int limit;
    unsigned long round; /* ready() calls so far */
    PyObject *loop;
    PyObject *lost;     /* [link]: connection_lost due (delivered by _deliver_lost) */
    Member *head;       /* the members */
    Py_ssize_t count;
};

typedef struct {
    PyObject *engine_type, *link_type, *listener_type;
} LinksState;

static struct PyModuleDef module_def;

/* Interned names of the methods called. */
static PyObject *s_data_received, *s_eof_received, *s_connection_made, *s_connection_lost,
    *s_pause_writing, *s_resume_writing, *s_call_soon,
    *s_call_exception_handler, *s_set_result, *s_set_exception, *s_done, *s_deliver_lost,
    *s_wake, *s_message, *s_exception, *s_transport, *s_protocol;

/* ---- the member list and the epoll set ---------------------------------------------- */

static void
list_add(Engine *engine, Member *member)
{
    Py_INCREF(member);
    member->prev = NULL;
    member->next = engine->head;
    if (engine->head != NULL)
        engine->head->prev = member;
    engine->head = member;
    member->in_list = 1;
    engine->count++;
}

/* Out of the list: drops the list's reference (the caller holds its own). */
static void
list_remove(Engine *engine, Member *member)
{
    if (!member->in_list)
        return;
    if (member->prev != NULL)
        member->prev->next = member->next;
    else
        engine->head = member->next;
    if (member->next != NULL)
        member->next->prev = member->prev;
    member->prev = member->next = NULL;
    member->in_list = 0;
    engine->count--;
    Py_DECREF(member);
}

/* The member's interest in the epoll set made *events* (0: out of it). 0 or -1 (errno). */
static int
watch(Member *member, uint32_t events)
{
    Engine *engine = member->engine;
    if (events == member->events || member->fd < 0 || engine == NULL || engine->epfd < 0)
        return 0;
    struct epoll_event ev = {.events = events, .data.ptr = member};
    int op = member->events == 0 ? EPOLL_CTL_ADD : events == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (epoll_ctl(engine->epfd, op, member->fd, &ev) < 0)
        return -1;
    member->events = events;
    return 0;
}

/* ---- reporting ------------------------------------------------------------------------ */

/* The error set now to the loop's exception handler (as asyncio reports a protocol's
   failing callback), with *message*, *link* and *protocol* (either may be NULL): 0, or
   -1 when it must go on up (not an Exception: KeyboardInterrupt, SystemExit), still set. */
static int
report(Engine *engine, const char *message, PyObject *link, PyObject *protocol)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL)
        PyException_SetTraceback(value, traceback);
    PyObject *context = PyDict_New();
    PyObject *text = PyUnicode_FromString(message);
    int ok = context != NULL && text != NULL
        && PyDict_SetItem(context, s_message, text) == 0
        && PyDict_SetItem(context, s_exception, value != NULL ? value : Py_None) == 0
        && (link == NULL || PyDict_SetItem(context, s_transport, link) == 0)
        && (protocol == NULL || PyDict_SetItem(context, s_protocol, protocol) == 0);
    PyObject *result = NULL;
    if (ok && engine != NULL && engine->loop != NULL) {
        result = PyObject_CallMethodOneArg(engine->loop, s_call_exception_handler, context);
    } else if (ok) {  /* no loop to tell (the engine is being cleared): stderr */
        PyErr_Restore(Py_XNewRef(type), Py_XNewRef(value), Py_XNewRef(traceback));
    }
    if (result == NULL && PyErr_Occurred())
        PyErr_WriteUnraisable(link != NULL ? link : Py_None);
    Py_XDECREF(result);
    Py_XDECREF(text);
    Py_XDECREF(context);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return 0;
}

static PyObject *
os_error(int err)
{
    return PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
}

/* ---- links: closing ----------------------------------------------------------------- */

static int schedule_lost(Engine *engine);

/* The socket closed and out of everything; connection_lost due if connection_made was
   called. The caller holds a reference to *link*. 0 or -1 (an error set). */
static int
link_finish(Link *link)
{
    Engine *engine = link->engine;
    if (link->fd >= 0) {
        watch((Member *)link, 0);
        close(link->fd);
        link->fd = -1;
    }
    Py_CLEAR(link->chunks);
    link->offset = 0;
    link->buffered = 0;
    link->closing = 1;
    link->connecting = 0;
    int failed = 0;
    if (link->made && !link->lost_due && engine != NULL && engine->lost != NULL) {
        link->lost_due = 1;
        failed = PyList_Append(engine->lost, (PyObject *)link) < 0
                 || schedule_lost(engine) < 0;
    }
    if (engine != NULL)
        list_remove(engine, (Member *)link);
    return failed ? -1 : 0;
}

static int
link_update(Link *link)
{
    if (link->fd < 0)
        return 0;
    uint32_t events = 0;
    if (link->reading && !link->closing && !link->peer_eof)
        events |= EPOLLIN;
    if (link->connecting || link->buffered)
        events |= EPOLLOUT;
    return watch((Member *)link, events);
}

/* A socket error: the link ends, connection_lost(OSError(err)). */
static int
link_fatal(Link *link, int err)
{
    if (link->lost_exc == NULL && (link->lost_exc = os_error(err)) == NULL)
        PyErr_Clear();  /* (no memory for it: connection_lost(None) then) */
    return link_finish(link);
}

/* A protocol callback failed (the error is set): reported, the link aborted. -1 only for
   what goes on up (report()'s). */
static int
link_callback_failed(Link *link, const char *message)
{
    PyObject *protocol = link->protocol;
    Py_XINCREF(protocol);
    int result = report(link->engine, message, (PyObject *)link, protocol);
    Py_XDECREF(protocol);
    if (result < 0)
        return -1;
    return link_finish(link);
}

/* protocol.<name>() (no argument, or *arg*): the result (new), or NULL (error set). */
static PyObject *
link_call(Link *link, PyObject *name, PyObject *arg)
{
    if (link->protocol == NULL)
        Py_RETURN_NONE;
    PyObject *protocol = Py_NewRef(link->protocol);
    PyObject *args[2] = {protocol, arg};
    PyObject *result = PyObject_VectorcallMethod(name, args, arg == NULL ? 1 : 2, NULL);
    Py_DECREF(protocol);
    return result;
}

/* ---- links: writing ----------------------------------------------------------------- */

static Py_ssize_t
send_some(int fd, const char *data, size_t size)
{
    Py_ssize_t sent;
    do {
        sent = send(fd, data, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (sent < 0 && errno == EINTR);
    return sent;
}

/* *data* (from *offset* on) to the end of the buffer: a reference if it is bytes, else
   a copy (a bytearray may change once write() returned). 0 or -1 (an error set). */
static int
buffer_push(Link *link, PyObject *data, const char *bytes, size_t size, Py_ssize_t offset)
{
    if (link->chunks == NULL && (link->chunks = PyList_New(0)) == NULL)
        return -1;
    PyObject *chunk = PyBytes_CheckExact(data) ? Py_NewRef(data)
                      : PyBytes_FromStringAndSize(bytes + offset, (Py_ssize_t)size - offset);
    if (chunk == NULL)
        return -1;
    if (PyList_GET_SIZE(link->chunks) == 0)
        link->offset = PyBytes_CheckExact(data) ? offset : 0;
    int appended = PyList_Append(link->chunks, chunk);
    Py_DECREF(chunk);
    if (appended < 0)
        return -1;
    link->buffered += size - (size_t)offset;
    return 0;
}

/* As much of the buffer as the socket takes (sendmsg() of up to IOV_BATCH chunks at a
   time): 0 (all sent, or the socket is full) or an errno. */
#define IOV_BATCH 64
static int
buffer_send(Link *link)
{
    while (link->buffered) {
        struct iovec iov[IOV_BATCH];
        Py_ssize_t count = PyList_GET_SIZE(link->chunks);
        int n = 0;
        for (Py_ssize_t i = 0; i < count && n < IOV_BATCH; i++, n++) {
            PyObject *chunk = PyList_GET_ITEM(link->chunks, i);
            Py_ssize_t skip = i == 0 ? link->offset : 0;
            iov[n].iov_base = PyBytes_AS_STRING(chunk) + skip;
            iov[n].iov_len = (size_t)(PyBytes_GET_SIZE(chunk) - skip);
        }
        struct msghdr message = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        Py_ssize_t sent;
        do {
            sent = sendmsg(link->fd, &message, MSG_NOSIGNAL | MSG_DONTWAIT);
        } while (sent < 0 && errno == EINTR);
        if (sent < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : errno;
        link->buffered -= (size_t)sent;
        Py_ssize_t done = 0;
        for (int i = 0; i < n && sent >= (Py_ssize_t)iov[i].iov_len; i++) {
            sent -= (Py_ssize_t)iov[i].iov_len;
            done++;
            link->offset = 0;
        }
        if (done && PyList_SetSlice(link->chunks, 0, done, NULL) < 0)
            return -1;
        link->offset += sent;  /* into the first chunk left */
        if (done < n)  /* the socket took less than was offered: it is full */
            return 0;
    }
    return 0;
}

/* pause_writing() when the buffer went over `high` (asyncio's _maybe_pause_protocol: a
   failing pause_writing is reported, the link goes on). */
static int
maybe_pause(Link *link)
{
    if (link->paused || (Py_ssize_t)link->buffered <= link->high)
        return 0;
    link->paused = 1;
    PyObject *result = link_call(link, s_pause_writing, NULL);
    if (result != NULL) {
        Py_DECREF(result);
        return 0;
    }
    return report(link->engine, "protocol.pause_writing() failed", (PyObject *)link,
                  link->protocol);
}

static int
maybe_resume(Link *link)
{
    if (!link->paused || (Py_ssize_t)link->buffered > link->low)
        return 0;
    link->paused = 0;
    PyObject *result = link_call(link, s_resume_writing, NULL);
    if (result != NULL) {
        Py_DECREF(result);
        return 0;
    }
    return report(link->engine, "protocol.resume_writing() failed", (PyObject *)link,
                  link->protocol);
}

/* *data* (whose bytes are *bytes*, *size* of them) sent, or what send() did not take
   buffered: 0 or -1 (an error set). */
static int
link_send(Link *link, PyObject *data, const char *bytes, size_t size)
{
    if (size == 0)
        return 0;
    Py_ssize_t sent = 0;
    if (!link->buffered && !link->connecting) {
        sent = send_some(link->fd, bytes, size);
        if (sent < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return link_fatal(link, errno);
            sent = 0;
        }
        if ((size_t)sent == size)
            return 0;
    }
    if (buffer_push(link, data, bytes, size, sent) < 0)
        return -1;
    if (link_update(link) < 0)
        return link_fatal(link, errno);
    return maybe_pause(link);
}

/* Writable: the buffer goes on; once empty, a close or an EOF waiting for it is done. */
static int
link_flush(Link *link)
{
    int err = buffer_send(link);
    if (err < 0)
        return -1;
    if (err > 0)
        return link_fatal(link, err);
    if (link->buffered)
        return maybe_resume(link);
    Py_CLEAR(link->chunks);  /* an idle connection keeps no list */
    link->offset = 0;
    if (link->closing)  /* (resume_writing first, as asyncio's transports do) */
        return maybe_resume(link) < 0 ? -1 : link_finish(link);
    if (link->eof_pending && !link->eof_sent) {
        link->eof_sent = 1;
        shutdown(link->fd, SHUT_WR);
    }
    if (link_update(link) < 0)
        return link_fatal(link, errno);
    return maybe_resume(link);
}

/* ---- links: reading ----------------------------------------------------------------- */

static int
link_read(Link *link)
{
    Py_ssize_t n;
    do {
        n = recv(link->fd, read_buffer, sizeof read_buffer, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return link_fatal(link, errno);
    }
    if (n == 0) {
        link->peer_eof = 1;
        if (link_update(link) < 0)
            return link_fatal(link, errno);
        PyObject *keep = link_call(link, s_eof_received, NULL);
        if (keep == NULL)
            return link_callback_failed(link, "Fatal error: protocol.eof_received() call failed.");
        int open = PyObject_IsTrue(keep);
        Py_DECREF(keep);
        if (open < 0)
            return link_callback_failed(link, "Fatal error: protocol.eof_received() call failed.");
        if (!open && !link->closing) {
            link->closing = 1;
            link->reading = 0;
            if (!link->buffered)
                return link_finish(link);
            return link_update(link) < 0 ? link_fatal(link, errno) : 0;
        }
        return 0;
    }
    PyObject *data = PyBytes_FromStringAndSize(read_buffer, n);
    if (data == NULL)
        return -1;
    PyObject *result = link_call(link, s_data_received, data);
    Py_DECREF(data);
    if (result == NULL)
        return link_callback_failed(link, "Fatal error: protocol.data_received() call failed.");
    Py_DECREF(result);
    return 0;
}

/* ---- links: connecting -------------------------------------------------------------- */

/* future.<name>(value) unless the future is done; the future dropped. */
static int
settle(Link *link, PyObject *name, PyObject *value)
{
    PyObject *future = link->future;
    if (future == NULL)
        return 0;
    link->future = NULL;
    PyObject *done = PyObject_CallMethodNoArgs(future, s_done);
    int is_done = done == NULL ? -1 : PyObject_IsTrue(done);
    Py_XDECREF(done);
    PyObject *result = NULL;
    if (is_done == 0)
        result = PyObject_CallMethodOneArg(future, name, value);
    Py_DECREF(future);
    if (is_done < 0 || (is_done == 0 && result == NULL))
        return -1;
    Py_XDECREF(result);
    return is_done;  /* 1: nobody waits any more (cancelled) */
}

/* The dial failed (*err*): the socket closed, nothing called on the protocol. */
static int
connect_failed(Link *link, int err)
{
    Py_CLEAR(link->protocol);
    link_finish(link);
    PyObject *exc = os_error(err);
    if (exc == NULL)
        return -1;
    int settled = settle(link, s_set_exception, exc);
    Py_DECREF(exc);
    return settled < 0 ? -1 : 0;
}

static int
connect_done(Link *link, uint32_t events)
{
    int err = 0;
    socklen_t len = sizeof err;
    /* Writable without an error reported: connected (no getsockopt() to ask). */
    if ((events & (EPOLLERR | EPOLLHUP))
        && getsockopt(link->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err == EINPROGRESS || err == EALREADY)
        return 0;
    if (err)
        return connect_failed(link, err);
    link->connecting = 0;
    if (link->future != NULL) {
        PyObject *done = PyObject_CallMethodNoArgs(link->future, s_done);
        int gone = done == NULL ? -1 : PyObject_IsTrue(done);
        Py_XDECREF(done);
        if (gone != 0) {  /* given up on meanwhile: closed, nothing called */
            Py_CLEAR(link->future);
            Py_CLEAR(link->protocol);
            link_finish(link);
            return gone < 0 ? -1 : 0;
        }
    }
    link->reading = 1;
    if (link_update(link) < 0)
        return connect_failed(link, errno);
    link->made = 1;
    PyObject *result = link_call(link, s_connection_made, (PyObject *)link);
    if (result == NULL) {
        if (link_callback_failed(link, "Fatal error: protocol.connection_made() call failed.") < 0)
            return -1;
    } else {
        Py_DECREF(result);
    }
    int settled = settle(link, s_set_result, (PyObject *)link);
    if (settled < 0)
        return -1;
    /* Given up on from inside connection_made (its future cancelled): aborted, and
       connection_lost follows, as connection_made was called. */
    return settled == 1 ? link_finish(link) : 0;
}

/* ---- links: the type ---------------------------------------------------------------- */

static int
link_traverse(Link *self, visitproc visit, void *arg)
{
    Py_VISIT(self->protocol);
    Py_VISIT(self->future);
    Py_VISIT(self->lost_exc);
    Py_VISIT(self->peername);
    Py_VISIT(self->chunks);
    Py_VISIT((PyObject *)self->engine);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
link_clear(Link *self)
{
    /* The engine and the socket are the engine's to clear (engine_clear): a link in
       its list is referenced by it. */
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->future);
    Py_CLEAR(self->lost_exc);
    Py_CLEAR(self->peername);
    return 0;
}

static void
link_dealloc(Link *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    link_clear(self);
    if (self->fd >= 0)
        close(self->fd);
    Py_CLEAR(self->chunks);
    Py_CLEAR(self->engine);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyObject *
link_write(Link *self, PyObject *data)
{
    if (self->eof_pending) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
        return NULL;
    }
    int result = 0;
    Py_INCREF(self);
    if (PyBytes_CheckExact(data)) {
        /* As asyncio: writes to a closing transport are dropped. */
        if (!self->closing && self->fd >= 0)
            result = link_send(self, data, PyBytes_AS_STRING(data),
                               (size_t)PyBytes_GET_SIZE(data));
    } else {
        Py_buffer view;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(self);
            return NULL;
        }
        if (!self->closing && self->fd >= 0)
            result = link_send(self, data, view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
    }
    Py_DECREF(self);
    if (result < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* writelines(): every piece buffered (references), then one sendmsg() of them if
   nothing was buffered before, as uvloop's writev. */
static PyObject *
link_writelines(Link *self, PyObject *lines)
{
    if (self->eof_pending) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
        return NULL;
    }
    PyObject *pieces = PySequence_Fast(lines, "writelines() takes an iterable of bytes");
    if (pieces == NULL)
        return NULL;
    Py_INCREF(self);
    int result = 0;
    int sending = !self->closing && self->fd >= 0;
    int was_empty = !self->buffered && !self->connecting;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(pieces) && result == 0; i++) {
        PyObject *piece = PySequence_Fast_GET_ITEM(pieces, i);
        Py_buffer view;
        if (PyObject_GetBuffer(piece, &view, PyBUF_SIMPLE) < 0) {
            result = -1;
            break;
        }
        if (sending && view.len > 0)
            result = buffer_push(self, piece, view.buf, (size_t)view.len, 0);
        PyBuffer_Release(&view);
    }
    if (result == 0 && sending && self->buffered) {
        if (was_empty) {
            int err = buffer_send(self);
            result = err < 0 ? -1 : err > 0 ? link_fatal(self, err) : 0;
        }
        if (result == 0 && self->fd >= 0) {
            if (!self->buffered)
                Py_CLEAR(self->chunks);
            else if (link_update(self) < 0)
                result = link_fatal(self, errno);
            else
                result = maybe_pause(self);
        }
    }
    Py_DECREF(pieces);
    Py_DECREF(self);
    if (result < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
link_write_eof(Link *self, PyObject *unused)
{
    (void)unused;
    if (self->closing || self->eof_pending)
        Py_RETURN_NONE;
    self->eof_pending = 1;
    if (!self->buffered && self->fd >= 0 && !self->connecting) {
        self->eof_sent = 1;
        shutdown(self->fd, SHUT_WR);
    }
    Py_RETURN_NONE;
}

static PyObject *
link_can_write_eof(Link *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    Py_RETURN_TRUE;
}

static PyObject *link_abort(Link *self, PyObject *unused);

static PyObject *
link_close(Link *self, PyObject *unused)
{
    (void)unused;
    if (self->closing)
        Py_RETURN_NONE;
    if (self->connecting)  /* nothing was made yet: as abort() */
        return link_abort(self, NULL);
    self->closing = 1;
    self->reading = 0;
    Py_INCREF(self);
    int result = !self->buffered ? link_finish(self)
               : link_update(self) < 0 ? link_fatal(self, errno) : 0;
    Py_DECREF(self);
    if (result < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* The link ends now, its buffer dropped: one still connecting fails its dial
   (ECONNABORTED: nothing is called on its protocol), any other is finished
   (connection_lost follows). The caller holds a reference. */
static int
link_drop(Link *link)
{
    return link->connecting ? connect_failed(link, ECONNABORTED) : link_finish(link);
}

static PyObject *
link_abort(Link *self, PyObject *unused)
{
    (void)unused;
    if (self->fd < 0 && self->lost_due)
        Py_RETURN_NONE;
    Py_INCREF(self);
    int result = link_drop(self);
    Py_DECREF(self);
    if (result < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
link_is_closing(Link *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(self->closing);
}

static PyObject *
link_is_reading(Link *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(self->reading && !self->closing && !self->peer_eof);
}

static PyObject *
link_pause_reading(Link *self, PyObject *unused)
{
    (void)unused;
    /* Lazily: the socket stays in the epoll set for reading until it is ready (then
       ready() takes it out). The usual pause, the client's between its request and
       the backend's 101, sees no byte: no epoll_ctl() for it, nor for its resume. */
    if (!self->closing)
        self->reading = 0;
    Py_RETURN_NONE;
}

static PyObject *
link_resume_reading(Link *self, PyObject *unused)
{
    (void)unused;
    if (!self->closing && !self->reading) {
        self->reading = 1;
        if (link_update(self) < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *
link_get_write_buffer_size(Link *self, PyObject *unused)
{
    (void)unused;
    return PyLong_FromSize_t(self->buffered);
}

static PyObject *
link_set_write_buffer_limits(Link *self, PyObject *args, PyObject *kwargs)
{
    PyObject *high_obj = Py_None, *low_obj = Py_None;
    static char *names[] = {"high", "low", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO:set_write_buffer_limits", names,
                                     &high_obj, &low_obj))
        return NULL;
    Py_ssize_t high, low;
    if (high_obj == Py_None) {
        if (low_obj == Py_None) {
            high = HIGH_WATER;
        } else {
            low = PyLong_AsSsize_t(low_obj);
            if (low == -1 && PyErr_Occurred())
                return NULL;
            high = 4 * low;
        }
    } else {
        high = PyLong_AsSsize_t(high_obj);
        if (high == -1 && PyErr_Occurred())
            return NULL;
    }
    if (low_obj == Py_None) {
        low = high / 4;
    } else {
        low = PyLong_AsSsize_t(low_obj);
        if (low == -1 && PyErr_Occurred())
            return NULL;
    }
    if (!(high >= low && low >= 0)) {
        PyErr_Format(PyExc_ValueError, "high (%zd) must be >= low (%zd) must be >= 0",
                     high, low);
        return NULL;
    }
    self->high = high;
    self->low = low;
    Py_INCREF(self);
    int result = maybe_pause(self);
    Py_DECREF(self);
    if (result < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
link_get_write_buffer_limits(Link *self, PyObject *unused)
{
    (void)unused;
    return Py_BuildValue("(nn)", self->low, self->high);
}

/* A socket address as socket.getpeername() gives it. */
static PyObject *
address_tuple(const struct sockaddr *address)
{
    char text[INET6_ADDRSTRLEN];
    if (address->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)address;
        if (inet_ntop(AF_INET, &in->sin_addr, text, sizeof text) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", text, ntohs(in->sin_port));
    }
    if (address->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)address;
        if (inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siIk)", text, ntohs(in6->sin6_port),
                             (unsigned int)ntohl(in6->sin6_flowinfo),
                             (unsigned long)in6->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

static PyObject *
link_get_extra_info(Link *self, PyObject *args, PyObject *kwargs)
{
    const char *name;
    PyObject *fallback = Py_None;
    static char *names[] = {"name", "default", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|O:get_extra_info", names, &name,
                                     &fallback))
        return NULL;
    if (strcmp(name, "peername") == 0) {
        if (self->peername == NULL) {
            if (self->peer_len == 0)
                return Py_NewRef(fallback);
            self->peername = address_tuple((struct sockaddr *)&self->peer);
            if (self->peername == NULL)
                return NULL;
        }
        return Py_NewRef(self->peername);
    }
    if (strcmp(name, "sockname") == 0) {
        struct sockaddr_in6 address;
        socklen_t len = sizeof address;
        if (self->fd < 0 || getsockname(self->fd, (struct sockaddr *)&address, &len) < 0)
            return Py_NewRef(fallback);
        return address_tuple((struct sockaddr *)&address);
    }
    if (strcmp(name, "socket") == 0)  /* something with fileno(): the link itself */
        return Py_NewRef((PyObject *)self);
    return Py_NewRef(fallback);
}

static PyObject *
link_set_protocol(Link *self, PyObject *protocol)
{
    Py_XSETREF(self->protocol, Py_NewRef(protocol));
    Py_RETURN_NONE;
}

static PyObject *
link_get_protocol(Link *self, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(self->protocol != NULL ? self->protocol : Py_None);
}

static PyObject *
link_fileno(Link *self, PyObject *unused)
{
    (void)unused;
    return PyLong_FromLong(self->fd);
}

static PyMethodDef link_methods[] = {
    {"write", (PyCFunction)link_write, METH_O, "write(data): sent, or buffered."},
    {"writelines", (PyCFunction)link_writelines, METH_O, "writelines(iterable)"},
    {"write_eof", (PyCFunction)link_write_eof, METH_NOARGS,
     "Shut the writing half once the buffer is empty."},
    {"can_write_eof", (PyCFunction)link_can_write_eof, METH_NOARGS, NULL},
    {"close", (PyCFunction)link_close, METH_NOARGS,
     "Close once the buffer is sent; connection_lost(None) soon after."},
    {"abort", (PyCFunction)link_abort, METH_NOARGS,
     "Close now, the buffer dropped; connection_lost(None) soon after."},
    {"is_closing", (PyCFunction)link_is_closing, METH_NOARGS, NULL},
    {"is_reading", (PyCFunction)link_is_reading, METH_NOARGS, NULL},
    {"pause_reading", (PyCFunction)link_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", (PyCFunction)link_resume_reading, METH_NOARGS, NULL},
    {"get_write_buffer_size", (PyCFunction)link_get_write_buffer_size, METH_NOARGS, NULL},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))link_set_write_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_write_buffer_limits", (PyCFunction)link_get_write_buffer_limits, METH_NOARGS, NULL},
    {"get_extra_info", (PyCFunction)(void (*)(void))link_get_extra_info,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"set_protocol", (PyCFunction)link_set_protocol, METH_O, NULL},
    {"get_protocol", (PyCFunction)link_get_protocol, METH_NOARGS, NULL},
    {"fileno", (PyCFunction)link_fileno, METH_NOARGS, "The socket's descriptor, -1 once closed."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot link_slots[] = {
    {Py_tp_doc, "One connected socket, an asyncio transport (wsproxy.io.links.PyLink's twin)."},
    {Py_tp_dealloc, link_dealloc},
    {Py_tp_traverse, link_traverse},
    {Py_tp_clear, link_clear},
    {Py_tp_methods, link_methods},
    {0, NULL},
};

static PyType_Spec link_spec = {
    .name = "wsproxy.io._links.Link",
    .basicsize = sizeof(Link),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = link_slots,
};

/* A new link of *engine* on *fd* (owned from now on, closed if this fails). */
static Link *
link_new(Engine *engine, int fd, const struct sockaddr *peer, socklen_t peer_len,
         int nodelay)
{
    LinksState *state = PyType_GetModuleState(Py_TYPE(engine));
    PyTypeObject *type = (PyTypeObject *)state->link_type;
    Link *link = (Link *)type->tp_alloc(type, 0);
    if (link == NULL) {
        close(fd);
        return NULL;
    }
    link->kind = LINK;
    link->fd = fd;
    link->engine = (Engine *)Py_NewRef(engine);
    link->high = HIGH_WATER;
    link->low = HIGH_WATER / 4;
    if (peer_len > sizeof link->peer)
        peer_len = sizeof link->peer;
    memcpy(&link->peer, peer, peer_len);
    link->peer_len = peer_len;
    static const int one = 1;
    if (nodelay)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    list_add(engine, (Member *)link);
    return link;
}

/* ---- listeners ---------------------------------------------------------------------- */

static int
listener_traverse(Listener *self, visitproc visit, void *arg)
{
    Py_VISIT(self->factory);
    Py_VISIT((PyObject *)self->engine);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
listener_clear(Listener *self)
{
    Py_CLEAR(self->factory);
    return 0;
}

static void
listener_dealloc(Listener *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    listener_clear(self);
    Py_CLEAR(self->engine);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static int
is_capacity_error(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

/* Out of descriptors (EMFILE, ENFILE): libuv's answer, so that clients in the backlog
   hear at once that nothing is to be had here (and may go elsewhere) rather than wait
   for a timeout: the engine's reserve descriptor closed, every waiting connection
   accepted and closed at once, the reserve taken again. 0: done; 1: no reserve to
   spend (accepting rests instead). */
static int
listener_shed(Listener *self)
{
    Engine *engine = self->engine;
    if (engine->reserve < 0)
        return 1;
    close(engine->reserve);
    engine->reserve = -1;
    for (;;) {
        int fd = accept4(self->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            break;
        }
        close(fd);
    }
    engine->reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
    return 0;
}

/* Out of descriptors or memory: accepting rests ACCEPT_REST, then _wake(). */
static int
listener_rest(Listener *self)
{
    self->resting = 1;
    watch((Member *)self, 0);
    PyObject *wake = PyObject_GetAttr((PyObject *)self, s_wake);
    if (wake == NULL)
        return -1;
    PyObject *result = PyObject_CallMethod(self->engine->loop, "call_later", "dO",
                                           ACCEPT_REST, wake);
    Py_DECREF(wake);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* Whether the accepted *fd* needs TCP_NODELAY set: Linux's accepted sockets inherit it
   from the listener (listen() set it there), which the first client shows (a
   getsockopt() once, a setsockopt() an upgrade saved). */
static int
needs_nodelay(Listener *self, int fd)
{
    if (self->nodelay == 0) {
        int on = 0;
        socklen_t len = sizeof on;
        self->nodelay = getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &len) == 0 && on ? 1 : -1;
    }
    return self->nodelay < 0;
}

/* One accepted client: its link, its protocol, connection_made. */
static int
listener_serve(Listener *self, int fd, const struct sockaddr *peer, socklen_t peer_len)
{
    Link *link = link_new(self->engine, fd, peer, peer_len, needs_nodelay(self, fd));
    if (link == NULL)
        return -1;
    int result = 0;
    PyObject *protocol = PyObject_CallNoArgs(self->factory);
    if (protocol == NULL) {
        result = report(self->engine, "Fatal error: the listener's protocol factory failed.",
                        NULL, NULL);
        link_finish(link);
    } else {
        link->protocol = protocol;
        link->reading = 1;
        if (link_update(link) < 0) {  /* not made: dropped without a word */
            Py_CLEAR(link->protocol);
            result = link_finish(link);
        } else {
            link->made = 1;
            PyObject *made = link_call(link, s_connection_made, (PyObject *)link);
            if (made == NULL)
                result = link_callback_failed(
                    link, "Fatal error: protocol.connection_made() call failed.");
            Py_XDECREF(made);
        }
    }
    Py_DECREF(link);
    return result;
}

static int
listener_accept(Listener *self)
{
    for (int i = 0; i < ACCEPT_BURST && !self->closed && !self->resting; i++) {
        struct sockaddr_in6 peer;
        socklen_t len = sizeof peer;
        int fd = accept4(self->fd, (struct sockaddr *)&peer, &len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (err == EINTR || err == ECONNABORTED)
                continue;
            if (err == EAGAIN || err == EWOULDBLOCK)
                return 0;
            if ((err == EMFILE || err == ENFILE) && listener_shed(self) == 0)
                return 0;
            if (is_capacity_error(err))
                return listener_rest(self);
            PyErr_SetFromErrno(PyExc_OSError);
            return report(self->engine, "Error on accepting a connection.", NULL, NULL);
        }
        if (listener_serve(self, fd, (struct sockaddr *)&peer, len) < 0)
            return -1;
    }
    return 0;
}

static PyObject *
listener_wake(Listener *self, PyObject *unused)
{
    (void)unused;
    self->resting = 0;
    if (!self->closed && watch((Member *)self, EPOLLIN) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *
listener_close(Listener *self, PyObject *unused)
{
    (void)unused;
    if (self->closed)
        Py_RETURN_NONE;
    self->closed = 1;
    watch((Member *)self, 0);
    self->fd = -1;  /* not ours to close */
    Py_INCREF(self);
    if (self->engine != NULL)
        list_remove(self->engine, (Member *)self);
    Py_DECREF(self);
    Py_RETURN_NONE;
}

static PyMethodDef listener_methods[] = {
    {"close", (PyCFunction)listener_close, METH_NOARGS,
     "Stop accepting (the listening socket stays open: it is the caller's)."},
    {"_wake", (PyCFunction)listener_wake, METH_NOARGS, "The rest after EMFILE is over."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot listener_slots[] = {
    {Py_tp_doc, "Accepts on a listening socket (wsproxy.io.links.PyListener's twin)."},
    {Py_tp_dealloc, listener_dealloc},
    {Py_tp_traverse, listener_traverse},
    {Py_tp_clear, listener_clear},
    {Py_tp_methods, listener_methods},
    {0, NULL},
};

static PyType_Spec listener_spec = {
    .name = "wsproxy.io._links.Listener",
    .basicsize = sizeof(Listener),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = listener_slots,
};

/* ---- the engine --------------------------------------------------------------------- */

static int
engine_traverse(Engine *self, visitproc visit, void *arg)
{
    Py_VISIT(self->loop);
    Py_VISIT(self->lost);
    for (Member *member = self->head; member != NULL; member = member->next)
        Py_VISIT((PyObject *)member);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

/* Every member out: links aborted (their connection_lost due), listeners stopped. */
static void
engine_close_members(Engine *self)
{
    while (self->head != NULL) {
        Member *member = self->head;
        Py_INCREF(member);
        if (member->kind == LINK) {
            Link *link = (Link *)member;
            if (link_drop(link) < 0)
                PyErr_WriteUnraisable((PyObject *)self);
        } else {
            Py_XDECREF(listener_close((Listener *)member, NULL));
        }
        list_remove(self, member);  /* (if it is still in) */
        Py_DECREF(member);
    }
    if (self->epfd >= 0) {
        close(self->epfd);
        self->epfd = -1;
    }
    if (self->reserve >= 0) {
        close(self->reserve);
        self->reserve = -1;
    }
}

static int
engine_clear(Engine *self)
{
    /* No loop first: links closed now are not told (nothing would run their
       connection_lost, and a bound method of a dying engine would revive it). */
    Py_CLEAR(self->loop);
    engine_close_members(self);
    Py_CLEAR(self->lost);
    return 0;
}

static PyObject *
engine_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    (void)args;
    (void)kwargs;
    Engine *self = (Engine *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->epfd = self->reserve = -1;  /* (not 0: stdin is no descriptor of ours) */
    return (PyObject *)self;
}

static void
engine_dealloc(Engine *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    engine_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static int
engine_init(Engine *self, PyObject *args, PyObject *kwargs)
{
    PyObject *loop;
    int limit = 64;
    static char *names[] = {"loop", "limit", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|i:Engine", names, &loop, &limit))
        return -1;
    if (limit < 1 || limit > MAX_EVENTS) {
        PyErr_Format(PyExc_ValueError, "Engine(): limit must be within 1..%d", MAX_EVENTS);
        return -1;
    }
    engine_clear(self);
    self->epfd = -1;
    self->loop = Py_NewRef(loop);
    self->lost = PyList_New(0);
    if (self->lost == NULL)
        return -1;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);  /* (-1: rests instead) */
    self->limit = limit;
    return 0;
}

static int
engine_open(Engine *self)
{
    if (self->epfd >= 0)
        return 0;
    PyErr_SetString(PyExc_ValueError, "the engine is closed");
    return -1;
}

/* connection_lost of the links in `lost` at the loop's next turn (one call_soon a turn). */
static int
schedule_lost(Engine *engine)
{
    if (PyList_GET_SIZE(engine->lost) != 1 || engine->loop == NULL)
        return 0;  /* scheduled already (or nothing to do) */
    PyObject *deliver = PyObject_GetAttr((PyObject *)engine, s_deliver_lost);
    if (deliver == NULL)
        return -1;
    PyObject *handle = PyObject_CallMethodOneArg(engine->loop, s_call_soon, deliver);
    Py_DECREF(deliver);
    if (handle == NULL)
        return -1;
    Py_DECREF(handle);
    return 0;
}

static PyObject *
engine_deliver_lost(Engine *self, PyObject *unused)
{
    (void)unused;
    PyObject *due = self->lost;
    self->lost = PyList_New(0);
    if (self->lost == NULL) {
        self->lost = due;
        return NULL;
    }
    PyObject *saved_type = NULL, *saved_value = NULL, *saved_traceback = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(due); i++) {
        Link *link = (Link *)PyList_GET_ITEM(due, i);
        PyObject *protocol = link->protocol;
        link->protocol = NULL;  /* the link holds no protocol after connection_lost */
        if (protocol == NULL)
            continue;
        PyObject *exc = link->lost_exc != NULL ? link->lost_exc : Py_None;
        PyObject *result = PyObject_CallMethodOneArg(protocol, s_connection_lost, exc);
        if (result == NULL && report(self, "Exception in protocol.connection_lost()",
                                     (PyObject *)link, protocol) < 0) {
            /* Goes on up once every link has been told (the first such, if several). */
            if (saved_type == NULL)
                PyErr_Fetch(&saved_type, &saved_value, &saved_traceback);
            else
                PyErr_Clear();
        }
        Py_XDECREF(result);
        Py_DECREF(protocol);
        Py_CLEAR(link->lost_exc);
    }
    Py_DECREF(due);
    if (saved_type != NULL) {
        PyErr_Restore(saved_type, saved_value, saved_traceback);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* One member's events. */
static int
engine_dispatch(Member *member, uint32_t events)
{
    if (member->kind == LISTENER) {
        Listener *listener = (Listener *)member;
        return listener->closed ? 0 : listener_accept(listener);
    }
    Link *link = (Link *)member;
    if (link->connecting)
        return connect_done(link, events);
    int failed = 0;
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && !link->closing && !link->peer_eof) {
        if (link->reading)
            failed = link_read(link) < 0;
        else if (link_update(link) < 0)  /* paused (lazily, see pause_reading): now out */
            failed = link_fatal(link, errno) < 0;
    }
    if (!failed && link->fd >= 0 && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
        && link->buffered)
        failed = link_flush(link) < 0;
    return failed ? -1 : 0;
}

static int
engine_batch(Engine *self, int most)
{
    struct epoll_event events[MAX_EVENTS];
    int n;
    do {
        n = epoll_wait(self->epfd, events, most, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    for (int i = 0; i < n; i++)
        Py_INCREF((PyObject *)events[i].data.ptr);
    int failed = 0, fresh = 0;
    for (int i = 0; i < n && !failed; i++) {
        Member *member = events[i].data.ptr;
        /* Closed by an earlier callback of this batch: skipped. Handled already in this
           ready(): too (once a ready() at most: what a pass reads waits for the pass's
           end, a driver's writes, so a busy socket read again and again before it would
           pile up its bytes there). */
        if (member->in_list && member->fd >= 0 && member->seen != self->round) {
            member->seen = self->round;
            fresh++;
            failed = engine_dispatch(member, events[i].events) < 0;
        }
    }
    for (int i = 0; i < n; i++)
        Py_DECREF((PyObject *)events[i].data.ptr);
    return failed ? -1 : fresh;
}

static PyObject *
engine_ready(Engine *self, PyObject *unused)
{
    (void)unused;
    Py_INCREF(self);
    self->round++;
    int done = 0, got = 1;
    while (got > 0 && done < self->limit && self->epfd >= 0) {
        got = engine_batch(self, self->limit - done);
        done += got;
    }
    Py_DECREF(self);
    if (got < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
engine_listen(Engine *self, PyObject *args)
{
    int fd;
    PyObject *factory;
    if (!PyArg_ParseTuple(args, "iO:listen", &fd, &factory))
        return NULL;
    if (engine_open(self) < 0)
        return NULL;
    LinksState *state = PyType_GetModuleState(Py_TYPE(self));
    PyTypeObject *type = (PyTypeObject *)state->listener_type;
    Listener *listener = (Listener *)type->tp_alloc(type, 0);
    if (listener == NULL)
        return NULL;
    listener->kind = LISTENER;
    listener->fd = fd;
    listener->engine = (Engine *)Py_NewRef(self);
    listener->factory = Py_NewRef(factory);
    /* Its clients' TCP_NODELAY, inherited (needs_nodelay); an error: set on each. */
    static const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Non-blocking, or the second accept() of a round would wait for a client. */
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        || watch((Member *)listener, EPOLLIN) < 0) {
        listener->fd = -1;
        Py_DECREF(listener);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    list_add(self, (Member *)listener);
    return (PyObject *)listener;
}

static PyObject *
engine_connect(Engine *self, PyObject *args)
{
    const char *host;
    int port;
    PyObject *protocol, *future;
    if (!PyArg_ParseTuple(args, "siOO:connect", &host, &port, &protocol, &future))
        return NULL;
    if (engine_open(self) < 0)
        return NULL;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "connect(): port must be within 0..65535");
        return NULL;
    }
    struct sockaddr_in6 address;
    memset(&address, 0, sizeof address);
    socklen_t len;
    struct sockaddr_in *in = (struct sockaddr_in *)&address;
    if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        len = sizeof *in;
    } else if (inet_pton(AF_INET6, host, &address.sin6_addr) == 1) {
        address.sin6_family = AF_INET6;
        address.sin6_port = htons((uint16_t)port);
        len = sizeof address;
    } else {
        PyErr_Format(PyExc_ValueError, "connect(): not a numeric address: %s", host);
        return NULL;
    }
    int fd = socket(address.sin6_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Link *link = link_new(self, fd, (struct sockaddr *)&address, len, 1);
    if (link == NULL)
        return NULL;
    link->protocol = Py_NewRef(protocol);
    link->future = Py_NewRef(future);
    link->connecting = 1;
    int result;
    do {
        result = connect(fd, (struct sockaddr *)&address, len);
    } while (result < 0 && errno == EINTR);
    /* Connected at once or not, the protocol hears of it from ready() (writable): never
       from inside connect(). */
    int failed;
    if (result == 0 || errno == EINPROGRESS)
        failed = link_update(link) < 0 ? connect_failed(link, errno) < 0 : 0;
    else
        failed = connect_failed(link, errno) < 0;
    if (failed) {
        Py_DECREF(link);
        return NULL;
    }
    return (PyObject *)link;
}

static PyObject *
engine_fileno(Engine *self, PyObject *unused)
{
    (void)unused;
    if (engine_open(self) < 0)
        return NULL;
    return PyLong_FromLong(self->epfd);
}

static PyObject *
engine_close(Engine *self, PyObject *unused)
{
    (void)unused;
    engine_close_members(self);
    Py_RETURN_NONE;
}

static Py_ssize_t
engine_length(Engine *self)
{
    return self->count;
}

static PyMethodDef engine_methods[] = {
    {"ready", (PyCFunction)engine_ready, METH_NOARGS,
     "The descriptor is readable: each ready member's events (up to the limit)."},
    {"listen", (PyCFunction)engine_listen, METH_VARARGS,
     "listen(fd, factory) -> Listener: accept on the listening socket fd."},
    {"connect", (PyCFunction)engine_connect, METH_VARARGS,
     "connect(host, port, protocol, future) -> Link: dial a numeric address."},
    {"fileno", (PyCFunction)engine_fileno, METH_NOARGS, "The engine's epoll descriptor."},
    {"close", (PyCFunction)engine_close, METH_NOARGS,
     "Every member closed (links aborted), the descriptor closed: idempotent."},
    {"_deliver_lost", (PyCFunction)engine_deliver_lost, METH_NOARGS,
     "connection_lost() of the links that closed (loop.call_soon's callback)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef engine_members[] = {
    {"limit", T_INT, offsetof(Engine, limit), READONLY, NULL},
    {"loop", T_OBJECT, offsetof(Engine, loop), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot engine_slots[] = {
    {Py_tp_doc, "A loop's links and listeners read through one epoll descriptor "
                "(wsproxy.io.links.PyEngine's twin)."},
    {Py_tp_new, engine_new},
    {Py_tp_init, engine_init},
    {Py_tp_dealloc, engine_dealloc},
    {Py_tp_traverse, engine_traverse},
    {Py_tp_clear, engine_clear},
    {Py_tp_methods, engine_methods},
    {Py_tp_members, engine_members},
    {Py_sq_length, engine_length},
    {0, NULL},
};

static PyType_Spec engine_spec = {
    .name = "wsproxy.io._links.Engine",
    .basicsize = sizeof(Engine),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = engine_slots,
};

/* ---- the module --------------------------------------------------------------------- */

static int
intern(PyObject **slot, const char *text)
{
    if (*slot == NULL)
        *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

static int
add_type(PyObject *module, PyType_Spec *spec, const char *name, PyObject **slot)
{
    PyObject *type = PyType_FromModuleAndSpec(module, spec, NULL);
    if (type == NULL)
        return -1;
    *slot = type;
    return PyModule_AddObjectRef(module, name, type);
}

static int
module_exec(PyObject *module)
{
    if (intern(&s_data_received, "data_received") < 0
        || intern(&s_eof_received, "eof_received") < 0
        || intern(&s_connection_made, "connection_made") < 0
        || intern(&s_connection_lost, "connection_lost") < 0
        || intern(&s_pause_writing, "pause_writing") < 0
        || intern(&s_resume_writing, "resume_writing") < 0
        || intern(&s_call_soon, "call_soon") < 0
        || intern(&s_call_exception_handler, "call_exception_handler") < 0
        || intern(&s_set_result, "set_result") < 0
        || intern(&s_set_exception, "set_exception") < 0
        || intern(&s_done, "done") < 0
        || intern(&s_deliver_lost, "_deliver_lost") < 0
        || intern(&s_wake, "_wake") < 0
        || intern(&s_message, "message") < 0
        || intern(&s_exception, "exception") < 0
        || intern(&s_transport, "transport") < 0
        || intern(&s_protocol, "protocol") < 0)
        return -1;
    LinksState *state = PyModule_GetState(module);
    if (add_type(module, &engine_spec, "Engine", &state->engine_type) < 0
        || add_type(module, &link_spec, "Link", &state->link_type) < 0
        || add_type(module, &listener_spec, "Listener", &state->listener_type) < 0)
        return -1;
    return 0;
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    LinksState *state = PyModule_GetState(module);
    if (state == NULL)
        return 0;
    Py_VISIT(state->engine_type);
    Py_VISIT(state->link_type);
    Py_VISIT(state->listener_type);
    return 0;
}

static int
module_clear(PyObject *module)
{
    LinksState *state = PyModule_GetState(module);
    if (state == NULL)
        return 0;
    Py_CLEAR(state->engine_type);
    Py_CLEAR(state->link_type);
    Py_CLEAR(state->listener_type);
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

static struct PyModuleDef_Slot slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "wsproxy.io._links",
    .m_doc = "The compiled links of wsproxy.io.links (same spec, same behaviour).",
    .m_size = sizeof(LinksState),
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
    .m_slots = slots,
};

#else  /* not Linux: no epoll, no links (wsproxy.io.links keeps the loop's transports) */

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "wsproxy.io._links",
    .m_doc = "No links without epoll.",
    .m_size = 0,
};

#endif

PyMODINIT_FUNC
PyInit__links(void)
{
    return PyModuleDef_Init(&module_def);
}
