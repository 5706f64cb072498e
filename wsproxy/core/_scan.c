/*
 * wsproxy.core._scan: the compiled twin of wsproxy.core.scan.py_whole_messages and
 * py_whole_read.
 *
 * The spec is in wsproxy/core/scan.py's docstring, and py_whole_messages there is the
 * readable reference: this file does the same, step for step, without creating a
 * Python object per frame. tests/unit/test_scan.py holds the two to the same answers.
 *
 *   whole_messages(data: bytes, pos: int, mask_bit: int, rsv_allowed: int,
 *                  max_size: int) -> tuple[int, int]
 *   whole_read(data: bytes, remaining: int, mask_bit: int, rsv_allowed: int,
 *              max_size: int) -> tuple[int, int] | None
 *
 * Built by setup.py as an optional extension: without a C compiler the install goes
 * on and the Python implementation is used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <structmember.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>
#ifdef __linux__
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

static PyObject *scan(const unsigned char *data, const uint64_t n, PyObject *const *args);
static PyObject *read_whole(const unsigned char *data, const uint64_t n, PyObject *const *args);

typedef PyObject *(*Body)(const unsigned char *, uint64_t, PyObject *const *);

/* Both functions take (data, an offset, mask_bit, rsv_allowed, max_size): *data* as
   bytes directly, anything else with the buffer protocol (bytearray, memoryview)
   through a Py_buffer, released at the end. */
static PyObject *
with_data(const char *name, Body body, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "%s() takes 5 arguments (%zd given)", name, nargs);
        return NULL;
    }
    Py_buffer view = {0};
    const unsigned char *data;
    uint64_t n;
    if (PyBytes_Check(args[0])) {
        data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
        n = (uint64_t)PyBytes_GET_SIZE(args[0]);
    } else {
        if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
            return NULL;
        data = (const unsigned char *)view.buf;
        n = (uint64_t)view.len;
    }
    PyObject *result = body(data, n, args);
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    return result;
}

static PyObject *
whole_messages(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return with_data("whole_messages", scan, args, nargs);
}

static PyObject *
whole_read(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return with_data("whole_read", read_whole, args, nargs);
}

/* The walk itself (py_whole_messages' loop): from pos, over the frames that are whole
   text or binary messages; the end of the last one (which may lie past n) comes back,
   and *messages counts them. */
static uint64_t
walk(const unsigned char *data, const uint64_t n, uint64_t pos, const long mask_bit,
     const long rsv_allowed, const long long max_size, Py_ssize_t *messages)
{
    /* What py_whole_messages' table says: FIN and opcode 1 or 2 once the allowed
       reserved bits are taken away. */
    const unsigned keep = (unsigned char)~rsv_allowed;
    const uint64_t key_len = mask_bit ? 4 : 0;
    /* A 7-bit length (< 126) is within max_size whenever 125 is: then a short frame
       needs no more checks (the common case, walked without the general path's). */
    const unsigned long short_below = max_size >= 125 ? 126 : 0;
    const uint64_t short_head = 2 + key_len;
    /* Counted here, not through *messages: a store through a pointer the data (bytes)
       may alias would be made on every frame. */
    Py_ssize_t count = 0;

    while (pos + 1 < n) {
        /* Short frames first, in a loop of their own: both header bytes are there. */
        const uint64_t last = n - 1;
        do {
            /* 0x81 or 0x82: b0 - 0x81 is 0 or 1 (anything below 0x81 wraps around). The
               7-bit length when the mask bit is what it must be; 128 or more if not. */
            const unsigned b0 = (data[pos] & keep) - 0x81u;
            const long length7 = (long)data[pos + 1] ^ mask_bit;
            if (b0 > 1 || (unsigned long)length7 >= short_below)
                break;
            pos += short_head + (uint64_t)length7;
            count++;
        } while (pos < last);
        if (pos >= last)
            break;
        /* One frame by the general rules (its first byte is checked again). */
        if ((unsigned)((data[pos] & keep) - 0x81) > 1)
            break;
        const long length7 = (long)data[pos + 1] ^ mask_bit;
        uint64_t head, length;
        if (length7 < 126) {
            head = 2 + key_len;
            length = (uint64_t)length7;
        } else if (length7 == 126) {
            if (n - pos < 4)
                break;
            head = 4 + key_len;
            length = ((uint64_t)data[pos + 2] << 8) | data[pos + 3];
        } else if (length7 == 127) {
            if (n - pos < 10)
                break;
            head = 10 + key_len;
            length = 0;
            for (int i = 2; i < 10; i++)
                length = (length << 8) | data[pos + i];
            if (length >> 63)
                break; /* §5.2: a malformed length, the session's to fail */
        } else {
            break; /* the wrong mask bit */
        }
        if ((long long)length > max_size)
            break;
        count++;
        /* pos < n <= PY_SSIZE_T_MAX and length < 2^63: no overflow. */
        pos += head + length;
    }
    *messages += count;
    return pos;
}

static int
small_int(PyObject *arg, long *value)
{
    int overflow = 0;
    *value = PyLong_AsLongAndOverflow(arg, &overflow);
    if (*value == -1 && !overflow && PyErr_Occurred())
        return -1;
    if (overflow)
        *value = overflow > 0 ? LONG_MAX : LONG_MIN; /* out of every allowed range */
    return 0;
}

/* The offset (args[1]) and the flow's arguments, checked as py_whole_messages and
   py_whole_read check them; *what* starts the ValueError's message. */
static int
checked_args(PyObject *const *args, const char *what, long *start, long *mask_bit,
             long *rsv_allowed)
{
    if (small_int(args[1], start) < 0 || small_int(args[2], mask_bit) < 0
        || small_int(args[3], rsv_allowed) < 0)
        return -1;
    if (*start < 0 || (*mask_bit != 0 && *mask_bit != 0x80) || (*rsv_allowed & ~0x70L)) {
        PyErr_Format(PyExc_ValueError,
                     "%s, or mask_bit not 0 or 0x80, or rsv_allowed not reserved bits", what);
        return -1;
    }
    return 0;
}

/* max_size: past the range of long long, every length (< 2^63) is within it; below,
   none is. */
static int
limit(PyObject *arg, long long *max_size)
{
    int overflow = 0;
    *max_size = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (*max_size == -1 && !overflow && PyErr_Occurred())
        return -1;
    if (overflow > 0)
        *max_size = INT64_MAX;
    else if (overflow < 0)
        *max_size = -1;
    return 0;
}

static PyObject *
pair(PyObject *first, PyObject *second)  /* steals both references, NULL-safe */
{
    PyObject *result = NULL;
    if (first != NULL && second != NULL)
        result = PyTuple_Pack(2, first, second);
    Py_XDECREF(first);
    Py_XDECREF(second);
    return result;
}

static PyObject *
scan(const unsigned char *data, const uint64_t n, PyObject *const *args)
{
    long start, mask_bit, rsv_allowed;
    if (checked_args(args, "whole_messages(): pos < 0", &start, &mask_bit, &rsv_allowed) < 0)
        return NULL;
    Py_ssize_t messages = 0;
    PyObject *end;
    if ((uint64_t)start >= n) {  /* nothing to walk: pos comes back as it was given */
        end = Py_NewRef(args[1]);
        goto pack;
    }
    long long max_size;
    if (limit(args[4], &max_size) < 0)
        return NULL;
    uint64_t pos = walk(data, n, (uint64_t)start, mask_bit, rsv_allowed, max_size, &messages);
    end = PyLong_FromUnsignedLongLong(pos);
    if (end == NULL)
        return NULL;
pack:
    return pair(end, PyLong_FromSsize_t(messages));
}

static PyObject *
read_whole(const unsigned char *data, const uint64_t n, PyObject *const *args)
{
    long remaining, mask_bit, rsv_allowed;
    if (checked_args(args, "whole_read(): remaining < 0", &remaining, &mask_bit,
                     &rsv_allowed) < 0)
        return NULL;
    if ((uint64_t)remaining >= n) {  /* the read is all payload of the frame in flight */
        PyObject *length = PyLong_FromUnsignedLongLong(n);
        if (length == NULL)
            return NULL;
        PyObject *left = PyNumber_Subtract(args[1], length);
        Py_DECREF(length);
        return pair(PyLong_FromLong(0), left);
    }
    long long max_size;
    if (limit(args[4], &max_size) < 0)
        return NULL;
    Py_ssize_t messages = 0;
    uint64_t end = walk(data, n, (uint64_t)remaining, mask_bit, rsv_allowed, max_size,
                        &messages);
    if (end < n)  /* a frame that needs the session's decision, or a header cut short */
        Py_RETURN_NONE;
    return pair(PyLong_FromSsize_t(messages), PyLong_FromUnsignedLongLong(end - n));
}

/*
 * FlowState: the frame state of one direction that a read of whole messages touches
 * (wsproxy.core.scan.PyFlowState is its Python twin, the session's _Flow subclasses
 * whichever is in use). take(data) is PyFlowState.take: one call per read.
 * FlowState(src, dst, src_leg, dst_leg, max_size, masked) also holds the rest of a
 * session's flow and starts it here: the _Flow subclass has no __init__ of its own
 * (a Python __init__ called from a class's call cost ~1.2k instructions a flow,
 * ~2.5k an upgrade end to end).
 */
typedef struct {
    PyObject_HEAD
    unsigned long long remaining; /* < 2^63: a payload's bytes after its header */
    long long messages;
    long long bytes;
    long long max_size;
    int mask_bit;
    int rsv_allowed;
    char in_message;
    PyObject *partial;
    PyObject *pending;
    PyObject *pending_close;
    /* The rest of the session's _Flow (read by the session only, as slots). */
    PyObject *src;
    PyObject *dst;
    PyObject *src_leg;
    PyObject *dst_leg;
    PyObject *masked;
    PyObject *message_room;
    PyObject *undelivered;
} FlowState;

static int
flow_traverse(FlowState *self, visitproc visit, void *arg)
{
    Py_VISIT(self->partial);
    Py_VISIT(self->pending);
    Py_VISIT(self->pending_close);
    Py_VISIT(self->src);
    Py_VISIT(self->dst);
    Py_VISIT(self->src_leg);
    Py_VISIT(self->dst_leg);
    Py_VISIT(self->masked);
    Py_VISIT(self->message_room);
    Py_VISIT(self->undelivered);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
flow_clear(FlowState *self)
{
    Py_CLEAR(self->partial);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->pending_close);
    Py_CLEAR(self->src);
    Py_CLEAR(self->dst);
    Py_CLEAR(self->src_leg);
    Py_CLEAR(self->dst_leg);
    Py_CLEAR(self->masked);
    Py_CLEAR(self->message_room);
    Py_CLEAR(self->undelivered);
    return 0;
}

/* A new state's defaults, as PyFlowState.__init__ starts them: the numbers 0 (zeroed
   by the allocation), partial b"", pending (), pending_close None, message_room and
   undelivered 0. */
static PyObject *
flow_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    FlowState *self = (FlowState *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->partial = PyBytes_FromStringAndSize(NULL, 0);
    self->pending = PyTuple_New(0);
    self->pending_close = Py_NewRef(Py_None);
    self->message_room = PyLong_FromLong(0);
    self->undelivered = PyLong_FromLong(0);
    if (self->partial == NULL || self->pending == NULL || self->message_room == NULL
        || self->undelivered == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* FlowState() (a bare state: the tests set its fields), or FlowState(src, dst, src_leg,
   dst_leg, max_size, masked): the session's flow from *src* to *dst*, the legs of those
   sides, its message size limit, and whether its frames are masked (from a client). */
static int
flow_init(FlowState *self, PyObject *args, PyObject *kwds)
{
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "FlowState() takes no keyword arguments");
        return -1;
    }
    if (PyTuple_GET_SIZE(args) == 0)
        return 0;
    PyObject *src, *dst, *src_leg, *dst_leg;
    long long max_size;
    int masked;
    if (!PyArg_ParseTuple(args, "OOOOLp:FlowState", &src, &dst, &src_leg, &dst_leg,
                          &max_size, &masked))
        return -1;
    Py_XSETREF(self->src, Py_NewRef(src));
    Py_XSETREF(self->dst, Py_NewRef(dst));
    Py_XSETREF(self->src_leg, Py_NewRef(src_leg));
    Py_XSETREF(self->dst_leg, Py_NewRef(dst_leg));
    Py_XSETREF(self->masked, PyBool_FromLong(masked));
    self->max_size = max_size;
    self->mask_bit = masked ? 0x80 : 0;
    return 0;
}

static void
flow_dealloc(FlowState *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    flow_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* Whether a member holds an empty object of its kind (b"" or ()); NULL (never set)
   and anything else is not. */
static int
empty(PyObject *value)
{
    if (value == NULL)
        return 0;
    if (PyBytes_CheckExact(value))
        return PyBytes_GET_SIZE(value) == 0;
    if (PyTuple_CheckExact(value))
        return PyTuple_GET_SIZE(value) == 0;
    return 0;
}

/* take() on a read held in C memory: 1 taken (and counted), 0 not (nothing changed). */
static int
flow_take_buffer(FlowState *self, const unsigned char *data, uint64_t n)
{
    if (self->in_message || self->pending_close != Py_None || !empty(self->partial)
        || !empty(self->pending))
        return 0;
    if (self->remaining >= n) {  /* all of it payload of the frame in flight */
        self->remaining -= n;
    } else {
        Py_ssize_t messages = 0;
        uint64_t end = walk(data, n, self->remaining, self->mask_bit, self->rsv_allowed,
                            self->max_size, &messages);
        if (end < n)
            return 0;
        self->remaining = end - n;
        self->messages += messages;
    }
    self->bytes += (long long)n;
    return 1;
}

/* take(data) itself: 1 taken (and counted), 0 not (nothing changed), -1 an error. */
static int
flow_take_read(FlowState *self, PyObject *arg)
{
    if (PyBytes_Check(arg))
        return flow_take_buffer(self, (const unsigned char *)PyBytes_AS_STRING(arg),
                                (uint64_t)PyBytes_GET_SIZE(arg));
    Py_buffer view = {0};
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return -1;
    int taken = flow_take_buffer(self, (const unsigned char *)view.buf, (uint64_t)view.len);
    PyBuffer_Release(&view);
    return taken;
}

static PyObject *
flow_take(FlowState *self, PyObject *arg)
{
    int taken = flow_take_read(self, arg);
    if (taken < 0)
        return NULL;
    return PyBool_FromLong(taken);
}

static PyMethodDef flow_methods[] = {
    {"take", (PyCFunction)flow_take, METH_O,
     "take(data) -> bool: count a read of whole messages (wsproxy.core.scan)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef flow_members[] = {
    {"remaining", T_ULONGLONG, offsetof(FlowState, remaining), 0, NULL},
    {"messages", T_LONGLONG, offsetof(FlowState, messages), 0, NULL},
    {"bytes", T_LONGLONG, offsetof(FlowState, bytes), 0, NULL},
    {"max_size", T_LONGLONG, offsetof(FlowState, max_size), 0, NULL},
    {"mask_bit", T_INT, offsetof(FlowState, mask_bit), 0, NULL},
    {"rsv_allowed", T_INT, offsetof(FlowState, rsv_allowed), 0, NULL},
    {"in_message", T_BOOL, offsetof(FlowState, in_message), 0, NULL},
    {"partial", T_OBJECT_EX, offsetof(FlowState, partial), 0, NULL},
    {"pending", T_OBJECT_EX, offsetof(FlowState, pending), 0, NULL},
    {"pending_close", T_OBJECT_EX, offsetof(FlowState, pending_close), 0, NULL},
    {"src", T_OBJECT_EX, offsetof(FlowState, src), 0, NULL},
    {"dst", T_OBJECT_EX, offsetof(FlowState, dst), 0, NULL},
    {"src_leg", T_OBJECT_EX, offsetof(FlowState, src_leg), 0, NULL},
    {"dst_leg", T_OBJECT_EX, offsetof(FlowState, dst_leg), 0, NULL},
    {"masked", T_OBJECT_EX, offsetof(FlowState, masked), 0, NULL},
    {"message_room", T_OBJECT_EX, offsetof(FlowState, message_room), 0, NULL},
    {"undelivered", T_OBJECT_EX, offsetof(FlowState, undelivered), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot flow_slots[] = {
    {Py_tp_doc, "The frame state of one direction (wsproxy.core.scan.PyFlowState's twin)."},
    {Py_tp_new, flow_new},
    {Py_tp_init, flow_init},
    {Py_tp_dealloc, flow_dealloc},
    {Py_tp_traverse, flow_traverse},
    {Py_tp_clear, flow_clear},
    {Py_tp_methods, flow_methods},
    {Py_tp_members, flow_members},
    {0, NULL},
};

static PyType_Spec flow_spec = {
    .name = "wsproxy.core._scan.FlowState",
    .basicsize = sizeof(FlowState),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = flow_slots,
};

/*
 * Relay: a transport's protocol while its session is OPEN (wsproxy.core.scan.PyRelay is
 * its Python twin and says what it does). data_received is Session.relay and the
 * driver's write in one C call: the session's state, the other leg's waiting frames
 * and the flow's take() decide, then the read goes to the other transport's write as
 * it came; anything else goes to the original protocol's data_received.
 */
typedef struct {
    PyObject_HEAD
    PyObject *flow;        /* a FlowState: the direction read from this transport */
    PyObject *leg;         /* the session's leg of the other side: its `out` */
    PyObject *session;     /* its `state` ... */
    PyObject *open;        /* ... is this (SessionState.OPEN) */
    PyObject *write;       /* the other transport's write */
    PyObject *original;    /* the protocol this one stands in for */
    PyObject *driver;      /* None, or the driver that `original` calls with `side` (a
                              Connection: wsproxy.io.direct sets both): called directly */
    PyObject *side;
    PyObject *transport;   /* this relay's transport, and the other transport's relay: */
    PyObject *mate;        /* for `wake` (set by wsproxy.io.direct; None otherwise) */
    PyObject *wake;        /* None, or wake(relay): called once, at the `countdown`th read
                              passed straight through (io.direct starts its feed) */
    int countdown;
    PyObject *feeder;      /* None, or what reads the other socket into this transport
                              (wsproxy.io.direct's feed): told of this one's pause and
                              resume of writing and of its loss */
    /* Where `state` and `out` are held in session and leg (their __slots__), so that
       a read costs no attribute look-up; -1: look them up by name. */
    Py_ssize_t state_offset;
    Py_ssize_t out_offset;
} Relay;

/* The offset of *obj*'s slot *name* (a member descriptor of an object's kind on its
   type), or -1. */
static Py_ssize_t
slot_offset(PyObject *obj, PyObject *name)
{
    PyObject *descr = PyObject_GetAttr((PyObject *)Py_TYPE(obj), name);
    Py_ssize_t offset = -1;
    if (descr == NULL) {
        PyErr_Clear();
        return -1;
    }
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX || member->type == T_OBJECT)
            offset = member->offset;
    }
    Py_DECREF(descr);
    return offset;
}

static PyObject *method_name(PyObject **slot, const char *name);

/* *obj*'s attribute: at its slot's offset, or by *name* (interned into *slot*: a
   module-wide str, not one a relay); a new reference, or NULL (unset, or the look-up
   failed: the error is cleared, the read falls back). */
static PyObject *
slot_value(PyObject *obj, Py_ssize_t offset, PyObject **slot, const char *name)
{
    if (offset >= 0) {
        PyObject *value = *(PyObject **)((char *)obj + offset);
        Py_XINCREF(value);
        return value;
    }
    PyObject *attr = method_name(slot, name);
    PyObject *value = attr == NULL ? NULL : PyObject_GetAttr(obj, attr);
    if (value == NULL)
        PyErr_Clear();
    return value;
}

static int
relay_traverse(Relay *self, visitproc visit, void *arg)
{
    Py_VISIT(self->flow);
    Py_VISIT(self->leg);
    Py_VISIT(self->session);
    Py_VISIT(self->open);
    Py_VISIT(self->write);
    Py_VISIT(self->original);
    Py_VISIT(self->driver);
    Py_VISIT(self->side);
    Py_VISIT(self->feeder);
    Py_VISIT(self->transport);
    Py_VISIT(self->mate);
    Py_VISIT(self->wake);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
relay_clear(Relay *self)
{
    Py_CLEAR(self->flow);
    Py_CLEAR(self->leg);
    Py_CLEAR(self->session);
    Py_CLEAR(self->open);
    Py_CLEAR(self->write);
    Py_CLEAR(self->original);
    Py_CLEAR(self->driver);
    Py_CLEAR(self->side);
    Py_CLEAR(self->feeder);
    Py_CLEAR(self->transport);
    Py_CLEAR(self->mate);
    Py_CLEAR(self->wake);
    return 0;
}

static void
relay_dealloc(Relay *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    relay_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static struct PyModuleDef module_def;

/* What a Relay's construction looks up, once per module rather than per connection
   (an upgrade pays for two relays): the FlowState type, the names, and the slot
   offsets of the last session and leg types seen (strong references: a type cannot
   go away and another take its address while it is cached). */
typedef struct {
    PyObject *flow_type;
    PyObject *state_name;
    PyObject *out_name;
    PyObject *session_type;
    PyObject *leg_type;
    Py_ssize_t state_offset;
    Py_ssize_t out_offset;
} ScanState;

static Py_ssize_t
cached_offset(PyObject *obj, PyObject *name, PyObject **type, Py_ssize_t *offset)
{
    if (*type != (PyObject *)Py_TYPE(obj)) {
        *offset = slot_offset(obj, name);
        Py_XSETREF(*type, Py_NewRef((PyObject *)Py_TYPE(obj)));
    }
    return *offset;
}

static int
relay_init(Relay *self, PyObject *args, PyObject *kwargs)
{
    PyObject *flow, *leg, *session, *open, *write, *original;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "Relay() takes no keyword arguments");
        return -1;
    }
    if (!PyArg_UnpackTuple(args, "Relay", 6, 6, &flow, &leg, &session, &open, &write,
                           &original))
        return -1;
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &module_def);
    if (module == NULL)
        return -1;
    ScanState *state = PyModule_GetState(module);
    int is_flow = PyObject_TypeCheck(flow, (PyTypeObject *)state->flow_type);
    if (!is_flow) {
        PyErr_SetString(PyExc_TypeError, "Relay(): flow must be a _scan.FlowState");
        return -1;
    }
    relay_clear(self);
    self->flow = Py_NewRef(flow);
    self->leg = Py_NewRef(leg);
    self->session = Py_NewRef(session);
    self->open = Py_NewRef(open);
    self->write = Py_NewRef(write);
    self->original = Py_NewRef(original);
    self->driver = Py_NewRef(Py_None);
    self->side = Py_NewRef(Py_None);
    self->feeder = Py_NewRef(Py_None);
    self->transport = Py_NewRef(Py_None);
    self->mate = Py_NewRef(Py_None);
    self->wake = Py_NewRef(Py_None);
    self->countdown = 0;
    self->state_offset = cached_offset(session, state->state_name, &state->session_type,
                                       &state->state_offset);
    self->out_offset = cached_offset(leg, state->out_name, &state->leg_type,
                                     &state->out_offset);
    return 0;
}

static PyObject *state_attr, *out_attr;

/* Whether a read may go straight through: the session OPEN, nothing waiting for the
   other side; then take() (which counts it) says whether it holds whole messages. */
static int
relay_pass(Relay *self, const unsigned char *data, uint64_t n)
{
    if (self->flow == NULL)
        return 0;  /* never initialised */
    PyObject *state = slot_value(self->session, self->state_offset, &state_attr, "state");
    int open = state == self->open;
    Py_XDECREF(state);
    if (!open)
        return 0;
    PyObject *out = slot_value(self->leg, self->out_offset, &out_attr, "out");
    if (out == NULL)
        return 0;
    int waiting = PyList_CheckExact(out) ? PyList_GET_SIZE(out) != 0 : PyObject_IsTrue(out);
    Py_DECREF(out);
    if (waiting)
        return waiting < 0 ? -1 : 0;
    return flow_take_buffer((FlowState *)self->flow, data, n);
}

static int
relay_direct(Relay *self, PyObject *data)
{
    if (PyBytes_Check(data))
        return relay_pass(self, (const unsigned char *)PyBytes_AS_STRING(data),
                          (uint64_t)PyBytes_GET_SIZE(data));
    Py_buffer view = {0};
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return -1;
    int direct = relay_pass(self, (const unsigned char *)view.buf, (uint64_t)view.len);
    PyBuffer_Release(&view);
    return direct;
}

/* Whether *code* may be in a close frame on the wire (wsproxy.core.closes.is_sendable). */
static int
sendable(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014)
           || (code >= 3000 && code <= 4999);
}

/* *name* as an interned str, made once into *slot* (a static): the callbacks below
   call their method by it (PyObject_VectorcallMethod), without a str made from the C
   string and a bound method each call (~1.3k instructions a callback, three an
   upgrade). NULL: an error. */
static PyObject *
method_name(PyObject **slot, const char *name)
{
    if (*slot == NULL)
        *slot = PyUnicode_InternFromString(name);
    return *slot;
}

/* Whether the relay has a driver to call directly (wsproxy.io.direct gives it one). */
static int
driven(Relay *self)
{
    return self->driver != NULL && self->driver != Py_None;
}

/* driver.<name>(side, *rest) (*name* interned into *slot*): the driver's own method,
   without the original protocol's one-line call of it (~420 instructions a call). */
static PyObject *
drive(Relay *self, PyObject **slot, const char *name, Py_ssize_t n, PyObject *const *rest)
{
    PyObject *method = method_name(slot, name);
    if (method == NULL)
        return NULL;
    PyObject *args[6] = {NULL, self->driver, self->side}; /* (args[0]: the offset's) */
    for (Py_ssize_t i = 0; i < n && i < 3; i++)
        args[3 + i] = rest[i];
    Py_INCREF(args[1]);  /* (the call may drop the relay's references) */
    Py_INCREF(args[2]);
    PyObject *result = PyObject_VectorcallMethod(
        method, args + 1, (size_t)(2 + n) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(args[1]);
    Py_DECREF(args[2]);
    return result;
}

static PyObject *receive_close_name;

/* A read that is one whole close frame as this flow expects it (FIN, no reserved bit,
   its mask bit, a payload under 126 bytes that is empty or a sendable code and a
   UTF-8 reason), with nothing of a frame in flight, no partial header and none of our
   frames waiting (Session._lone_close's conditions) and no feed: handed to
   driver.receive_close(side, frame, code, reason) (PyRelay._close's twin; called only
   with a driver, as PyRelay.data_received calls _close). 1: it took it;
   0: not (nothing changed: the read goes to the fallback); -1: an error. */
static int
relay_close(Relay *self, PyObject *data)
{
    if (self->flow == NULL || !PyBytes_CheckExact(data)
        || (self->feeder != NULL && self->feeder != Py_None))
        return 0;
    FlowState *flow = (FlowState *)self->flow;
    const unsigned char *frame = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t head = flow->mask_bit ? 6 : 2;
    Py_ssize_t length = PyBytes_GET_SIZE(data) - head;
    if (length < 0 || length >= 126 || length == 1 || frame[0] != 0x88
        || frame[1] != (flow->mask_bit | length))
        return 0;
    if (flow->remaining || flow->pending_close != Py_None || !empty(flow->partial)
        || !empty(flow->pending))
        return 0;
    unsigned char payload[125];
    for (Py_ssize_t i = 0; i < length; i++)
        payload[i] = flow->mask_bit ? frame[6 + i] ^ frame[2 + i % 4] : frame[2 + i];
    PyObject *code, *reason;
    if (length == 0) {
        code = Py_NewRef(Py_None);
        reason = PyUnicode_New(0, 0);
        if (reason == NULL) {
            Py_DECREF(code);
            return -1;
        }
    }
    else {
        int value = payload[0] << 8 | payload[1];
        if (!sendable(value))
            return 0;
        reason = PyUnicode_DecodeUTF8((const char *)payload + 2, length - 2, "strict");
        if (reason == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                return -1;
            PyErr_Clear(); /* the session's to fail (1007) */
            return 0;
        }
        code = PyLong_FromLong(value);
        if (code == NULL) {
            Py_DECREF(reason);
            return -1;
        }
    }
    PyObject *rest[3] = {data, code, reason};
    PyObject *result = drive(self, &receive_close_name, "receive_close", 3, rest);
    Py_DECREF(code);
    Py_DECREF(reason);
    if (result == NULL)
        return -1;
    int taken = PyObject_IsTrue(result);
    Py_DECREF(result);
    return taken;
}

static PyObject *receive_name, *data_received_name;

static PyObject *forward(Relay *self, PyObject **slot, const char *name, PyObject *arg);

/* A read the relay does not pass: driver.receive(side, data), or without a driver
   original.data_received(data) (the driver's own path either way). */
static int
relay_fallback(Relay *self, PyObject *data)
{
    PyObject *result = driven(self)
        ? drive(self, &receive_name, "receive", 1, &data)
        : forward(self, &data_received_name, "data_received", data);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

static PyObject *
relay_data_received(Relay *self, PyObject *data)
{
    int direct = relay_direct(self, data);
    if (direct < 0)
        return NULL;
    if (!direct) {
        int closed = driven(self) ? relay_close(self, data) : 0;
        if (closed < 0)
            return NULL;
        if (closed || relay_fallback(self, data) == 0)
            Py_RETURN_NONE;
        return NULL;
    }
    PyObject *result = PyObject_CallOneArg(self->write, data);
    if (result == NULL)
        return NULL;
    Py_DECREF(result);
    if (self->wake != NULL && self->wake != Py_None && --self->countdown <= 0) {
        PyObject *wake = self->wake;  /* once: the reference moves to this call */
        self->wake = Py_NewRef(Py_None);
        result = PyObject_CallOneArg(wake, (PyObject *)self);
        Py_DECREF(wake);
        if (result == NULL)
            return NULL;
        Py_DECREF(result);
    }
    Py_RETURN_NONE;
}

/* *target*'s method *name* (interned into *slot*) called with *arg*, or with none if
   *arg* is NULL. */
static PyObject *
call_method(PyObject *target, PyObject **slot, const char *name, PyObject *arg)
{
    PyObject *method = method_name(slot, name);
    if (method == NULL)
        return NULL;
    Py_INCREF(target);
    PyObject *args[3] = {NULL, target, arg}; /* (args[0]: the offset's) */
    PyObject *result = PyObject_VectorcallMethod(
        method, args + 1, (arg == NULL ? 1 : 2) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(target);
    return result;
}

static PyObject *connection_made_name, *eof_received_name, *connection_lost_name,
    *pause_writing_name, *resume_writing_name, *stop_name, *pause_name, *resume_name;

/* The rest of a protocol's callbacks: the original protocol's, as they were. */
static PyObject *
forward(Relay *self, PyObject **slot, const char *name, PyObject *arg)
{
    if (self->original == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Relay: not initialised");
        return NULL;
    }
    return call_method(self->original, slot, name, arg);
}

static PyObject *
relay_connection_made(Relay *self, PyObject *transport)
{
    return forward(self, &connection_made_name, "connection_made", transport);
}

static PyObject *receive_eof_name, *transport_lost_name;

static PyObject *
relay_eof_received(Relay *self, PyObject *unused)
{
    (void)unused;
    if (!driven(self))
        return forward(self, &eof_received_name, "eof_received", NULL);
    /* As the driver's protocols answer: False, the transport closes itself. */
    PyObject *result = drive(self, &receive_eof_name, "receive_eof", 0, NULL);
    if (result == NULL)
        return NULL;
    Py_DECREF(result);
    Py_RETURN_FALSE;
}

/* The original protocol's callback *name*, then the feeder's method *feeder_name* (if
   there is a feeder): a transport's pause and resume of writing and its loss
   concern what reads the other socket into it (PyRelay's twin). */
static PyObject *
forward_and_tell(Relay *self, PyObject **slot, const char *name, PyObject **feeder_slot,
                 const char *feeder_name)
{
    PyObject *result = forward(self, slot, name, NULL);
    if (result == NULL || self->feeder == NULL || self->feeder == Py_None)
        return result;
    PyObject *told = call_method(self->feeder, feeder_slot, feeder_name, NULL);
    if (told == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    Py_DECREF(told);
    return result;
}

static PyObject *
relay_connection_lost(Relay *self, PyObject *exc)
{
    /* No feed now, and no cycle left through `mate` (PyRelay's twin). */
    Py_XSETREF(self->wake, Py_NewRef(Py_None));
    Py_XSETREF(self->mate, Py_NewRef(Py_None));
    Py_XSETREF(self->transport, Py_NewRef(Py_None));
    /* The feed first: its sockets are closed before the driver hears of the loss. */
    if (self->feeder != NULL && self->feeder != Py_None) {
        PyObject *told = call_method(self->feeder, &stop_name, "stop", NULL);
        if (told == NULL)
            return NULL;
        Py_DECREF(told);
    }
    if (driven(self))
        return drive(self, &transport_lost_name, "transport_lost", 0, NULL);
    return forward(self, &connection_lost_name, "connection_lost", exc);
}

static PyObject *
relay_pause_writing(Relay *self, PyObject *unused)
{
    (void)unused;
    return forward_and_tell(self, &pause_writing_name, "pause_writing", &pause_name, "pause");
}

static PyObject *
relay_resume_writing(Relay *self, PyObject *unused)
{
    (void)unused;
    return forward_and_tell(self, &resume_writing_name, "resume_writing", &resume_name,
                            "resume");
}

static PyMethodDef relay_methods[] = {
    {"data_received", (PyCFunction)relay_data_received, METH_O,
     "A read: straight to the other transport, or to the original protocol."},
    {"connection_made", (PyCFunction)relay_connection_made, METH_O, NULL},
    {"eof_received", (PyCFunction)relay_eof_received, METH_NOARGS, NULL},
    {"connection_lost", (PyCFunction)relay_connection_lost, METH_O, NULL},
    {"pause_writing", (PyCFunction)relay_pause_writing, METH_NOARGS, NULL},
    {"resume_writing", (PyCFunction)relay_resume_writing, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef relay_members[] = {
    {"original", T_OBJECT, offsetof(Relay, original), READONLY, NULL},
    {"flow", T_OBJECT, offsetof(Relay, flow), READONLY, NULL},
    {"leg", T_OBJECT, offsetof(Relay, leg), READONLY, NULL},
    {"session", T_OBJECT, offsetof(Relay, session), READONLY, NULL},
    {"open", T_OBJECT, offsetof(Relay, open), READONLY, NULL},
    {"write", T_OBJECT, offsetof(Relay, write), READONLY, NULL},
    {"feeder", T_OBJECT, offsetof(Relay, feeder), 0, NULL},
    {"transport", T_OBJECT, offsetof(Relay, transport), 0, NULL},
    {"mate", T_OBJECT, offsetof(Relay, mate), 0, NULL},
    {"wake", T_OBJECT, offsetof(Relay, wake), 0, NULL},
    {"countdown", T_INT, offsetof(Relay, countdown), 0, NULL},
    {"driver", T_OBJECT, offsetof(Relay, driver), 0, NULL},
    {"side", T_OBJECT, offsetof(Relay, side), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot relay_slots[] = {
    {Py_tp_doc, "A transport's protocol while OPEN (wsproxy.core.scan.PyRelay's twin)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, relay_init},
    {Py_tp_dealloc, relay_dealloc},
    {Py_tp_traverse, relay_traverse},
    {Py_tp_clear, relay_clear},
    {Py_tp_methods, relay_methods},
    {Py_tp_members, relay_members},
    {0, NULL},
};

static PyType_Spec relay_spec = {
    .name = "wsproxy.core._scan.Relay",
    .basicsize = sizeof(Relay),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = relay_slots,
};

/*
 * Pump: an OPEN connection's socket read in C (wsproxy.io.pump.PyPump is its Python
 * twin and says what it does; wsproxy.io.direct starts and stops it). readable() is a
 * loop reader's callback: one recv() into a buffer of the module's, the relay's checks
 * on it, then send() straight to the other socket when the other transport has nothing
 * buffered (else, and for what send() did not take, that transport's write); a read
 * the relay does not pass goes to the original protocol's data_received as bytes, the
 * end of the stream or an error to `end(errno)`.
 */
typedef struct {
    PyObject_HEAD
    PyObject *relay;     /* the _scan.Relay on this socket's transport */
    PyObject *write;     /* the other transport's write, get_write_buffer_size, */
    PyObject *size;      /* is_closing (the last two as functions, called with */
    PyObject *closing;   /* `sink` when it is set: a bound method's own call costs ~50) */
    PyObject *sink;
    PyObject *end;       /* end(errno): 0 for the end of the stream */
    PyObject *hub;       /* the Hub that reads fd_in (it holds this pump), or NULL */
    int fd_in;           /* this socket (a duplicate the feed owns) */
    int fd_out;          /* the other one (likewise) */
} Pump;

/* How much a pump reads at once. */
#define PUMP_READ (256 * 1024)

/* One buffer for every pump read outside a hub (readable()): a read is passed on or
   copied before readable() returns, and the GIL is held throughout. */
static unsigned char pump_buffer[PUMP_READ];

static int
pump_traverse(Pump *self, visitproc visit, void *arg)
{
    Py_VISIT(self->relay);
    Py_VISIT(self->write);
    Py_VISIT(self->size);
    Py_VISIT(self->closing);
    Py_VISIT(self->sink);
    Py_VISIT(self->end);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
pump_clear(Pump *self)
{
    Py_CLEAR(self->relay);
    Py_CLEAR(self->write);
    Py_CLEAR(self->size);
    Py_CLEAR(self->closing);
    Py_CLEAR(self->sink);
    Py_CLEAR(self->end);
    return 0;
}

static void
pump_dealloc(Pump *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    pump_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static int
pump_init(Pump *self, PyObject *args, PyObject *kwargs)
{
    PyObject *relay, *sink, *end;
    int fd_in, fd_out;
    static char *names[] = {"relay", "fd_in", "fd_out", "sink", "end", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OiiOO:Pump", names, &relay, &fd_in,
                                     &fd_out, &sink, &end))
        return -1;
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &module_def);
    if (module == NULL)
        return -1;
    PyObject *relay_type = PyObject_GetAttrString(module, "Relay");
    if (relay_type == NULL)
        return -1;
    int is_relay = PyObject_TypeCheck(relay, (PyTypeObject *)relay_type);
    Py_DECREF(relay_type);
    if (!is_relay || ((Relay *)relay)->flow == NULL) {
        PyErr_SetString(PyExc_TypeError, "Pump(): relay must be an initialised _scan.Relay");
        return -1;
    }
    PyObject *write = PyObject_GetAttrString(sink, "write");
    PyObject *size = PyObject_GetAttrString(sink, "get_write_buffer_size");
    PyObject *closing = PyObject_GetAttrString(sink, "is_closing");
    if (write == NULL || size == NULL || closing == NULL) {
        Py_XDECREF(write);
        Py_XDECREF(size);
        Py_XDECREF(closing);
        return -1;
    }
    pump_clear(self);
    self->relay = Py_NewRef(relay);
    self->write = write;
    if (PyMethod_Check(size) && PyMethod_Check(closing)
            && PyMethod_GET_SELF(size) == sink && PyMethod_GET_SELF(closing) == sink) {
        self->size = Py_NewRef(PyMethod_GET_FUNCTION(size));
        self->closing = Py_NewRef(PyMethod_GET_FUNCTION(closing));
        self->sink = Py_NewRef(sink);
        Py_DECREF(size);
        Py_DECREF(closing);
    }
    else {
        self->size = size;
        self->closing = closing;
    }
    self->end = Py_NewRef(end);
    self->fd_in = fd_in;
    self->fd_out = fd_out;
    return 0;
}

/* Call *callable* with *n* bytes of *data* as a new bytes object. */
static int
call_with_bytes(PyObject *callable, const unsigned char *data, Py_ssize_t n)
{
    PyObject *chunk = PyBytes_FromStringAndSize((const char *)data, n);
    if (chunk == NULL)
        return -1;
    PyObject *result = PyObject_CallOneArg(callable, chunk);
    Py_DECREF(chunk);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* A read the relay does not pass (relay_fallback), as a new bytes object. */
static int
relay_fallback_bytes(Relay *relay, const unsigned char *data, Py_ssize_t n)
{
    PyObject *chunk = PyBytes_FromStringAndSize((const char *)data, n);
    if (chunk == NULL)
        return -1;
    int done = relay_fallback(relay, chunk);
    Py_DECREF(chunk);
    return done;
}

/* A call of the other transport's is_closing or get_write_buffer_size: with the
   transport as its argument when pump_init took the bound methods apart. */
static PyObject *
sink_call(Pump *self, PyObject *callable)
{
    if (self->sink == NULL)
        return PyObject_CallNoArgs(callable);
    return PyObject_Vectorcall(callable, &self->sink, 1, NULL);
}

/* Whether the other transport has nothing buffered and is not closing: then nothing of
   the driver's can be waiting to go before this read. -1: an error. */
static int
sink_idle(Pump *self)
{
    PyObject *closing = sink_call(self, self->closing);
    if (closing == NULL)
        return -1;
    int is_closing = PyObject_IsTrue(closing);
    Py_DECREF(closing);
    if (is_closing)
        return is_closing < 0 ? -1 : 0;
    PyObject *size = sink_call(self, self->size);
    if (size == NULL)
        return -1;
    Py_ssize_t buffered = PyLong_AsSsize_t(size);
    Py_DECREF(size);
    if (buffered < 0)
        return PyErr_Occurred() ? -1 : 0;
    return buffered == 0;
}

/* recv() and send() as the system calls themselves where we can: libc's wrappers are
   cancellation points, which cost ~60 instructions a read around the two calls (no
   thread of ours is ever cancelled). errno as theirs. */
static Py_ssize_t
socket_recv(int fd, void *buffer, size_t size)
{
#if defined(__linux__) && defined(SYS_recvfrom)
    return (Py_ssize_t)syscall(SYS_recvfrom, fd, buffer, size, 0, NULL, NULL);
#else
    return recv(fd, buffer, size, 0);
#endif
}

static Py_ssize_t
socket_send(int fd, const void *data, size_t size)
{
#if defined(__linux__) && defined(SYS_sendto)
    return (Py_ssize_t)syscall(SYS_sendto, fd, data, size, MSG_NOSIGNAL | MSG_DONTWAIT, NULL, 0);
#else
    return send(fd, data, size, MSG_NOSIGNAL | MSG_DONTWAIT);
#endif
}

/* What a read passed straight through, on its way to the other transport: sent on the
   other socket while that transport has nothing buffered and is not closing (so it
   cannot overtake the driver's own frames), the rest (all of it if it was busy, or the
   pump was detached meanwhile) to the transport's write. */
static int
pump_send(Pump *self, const unsigned char *data, Py_ssize_t n)
{
    Py_ssize_t sent = 0;
    if (self->fd_out >= 0) {
        int idle = sink_idle(self);
        if (idle < 0)
            return -1;
        if (idle) {
            do {
                sent = socket_send(self->fd_out, data, (size_t)n);
            } while (sent < 0 && errno == EINTR);
            if (sent < 0)
                sent = 0;  /* full, or an error: the transport's write meets it as its own */
        }
    }
    if (sent == n)
        return 0;
    return call_with_bytes(self->write, data + sent, n - sent);
}

#ifdef __linux__
struct Hub;
static unsigned char *hub_room(struct Hub *hub);
static int hub_hold(struct Hub *hub, Pump *pump, Py_ssize_t n);
static int hub_send(struct Hub *hub);
#else
#define hub_room(hub) NULL
#define hub_hold(hub, pump, n) 0
#define hub_send(hub) 0
#endif

/* One read. With *hub* (the Hub whose batch this read is in), what passes straight
   through is held and sent at the batch's end, and what was held is sent before the
   driver hears of anything (its read, the end); without, it is sent at once. */
static int
pump_read(Pump *self, struct Hub *hub)
{
    if (self->relay == NULL || self->fd_in < 0)
        return 0;
    unsigned char *buffer = pump_buffer;
    if (hub != NULL && (buffer = hub_room(hub)) == NULL)
        return -1;
    Py_ssize_t n;
    do {
        n = socket_recv(self->fd_in, buffer, PUMP_READ);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    int err = n < 0 ? errno : 0;
    Relay *relay = (Relay *)self->relay;
    int direct = n > 0 ? relay_pass(relay, buffer, (uint64_t)n) : 0;
    if (direct < 0)
        return -1;
    if (direct)
        return hub != NULL ? hub_hold(hub, self, n) : pump_send(self, buffer, n);
    /* The driver hears of this read, or of the end: what was held goes first (sent
       from the hub's buffer without writing into it: this read is still there after). */
    if (hub != NULL && hub_send(hub) < 0)
        return -1;
    if (n > 0)
        return relay_fallback_bytes(relay, buffer, n);
    PyObject *code = PyLong_FromLong(err);
    if (code == NULL)
        return -1;
    PyObject *result = PyObject_CallOneArg(self->end, code);
    Py_DECREF(code);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

static PyObject *
pump_readable(Pump *self, PyObject *unused)
{
    (void)unused;
    Py_INCREF(self);  /* what it calls may stop the feed and drop the last reference */
    int result = pump_read(self, NULL);
    Py_DECREF(self);
    if (result < 0)
        return NULL;
    Py_RETURN_NONE;
}

#ifdef __linux__
struct Hub;
static int hub_leave(struct Hub *hub, Pump *pump);
#endif

static PyObject *
pump_detach(Pump *self, PyObject *unused)
{
    (void)unused;
#ifdef __linux__
    if (self->hub != NULL) {
        PyObject *hub = Py_NewRef(self->hub);
        Py_INCREF(self);
        int left = hub_leave((struct Hub *)hub, self);
        Py_DECREF(self);
        Py_DECREF(hub);
        if (left < 0)
            return NULL;
    }
#endif
    self->fd_in = self->fd_out = -1;
    Py_RETURN_NONE;
}

static PyMethodDef pump_methods[] = {
    {"readable", (PyCFunction)pump_readable, METH_NOARGS,
     "The socket is readable: one read, passed on or handed to the driver."},
    {"detach", (PyCFunction)pump_detach, METH_NOARGS,
     "Forget the sockets (they are about to be closed): readable() does nothing after."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef pump_members[] = {
    {"relay", T_OBJECT, offsetof(Pump, relay), READONLY, NULL},
    {"fd_in", T_INT, offsetof(Pump, fd_in), READONLY, NULL},
    {"fd_out", T_INT, offsetof(Pump, fd_out), READONLY, NULL},
    {"hub", T_OBJECT, offsetof(Pump, hub), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot pump_slots[] = {
    {Py_tp_doc, "An OPEN connection's socket read in C (wsproxy.io.pump.PyPump's twin)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, pump_init},
    {Py_tp_dealloc, pump_dealloc},
    {Py_tp_traverse, pump_traverse},
    {Py_tp_clear, pump_clear},
    {Py_tp_methods, pump_methods},
    {Py_tp_members, pump_members},
    {0, NULL},
};

static PyType_Spec pump_spec = {
    .name = "wsproxy.core._scan.Pump",
    .basicsize = sizeof(Pump),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = pump_slots,
};

#ifdef __linux__
/*
 * Hub: the pumps of every feed of a loop read through one epoll descriptor of its own
 * (wsproxy.io.hub.PyHub is its Python twin and says what it does). The loop has one
 * reader, on the hub's descriptor (an epoll descriptor is itself readable while one of
 * its sockets is), whose callback is ready(): epoll_wait()s that do not wait, each
 * one's sockets' pumps read in C, with no loop handle and no Python call per socket,
 * until none is ready or `limit` sockets were read. Level-triggered: a socket still
 * readable after its read (or past the limit) is ready again at the next epoll_wait()
 * or wake, after those ready before it, so one busy socket cannot keep the others or
 * the loop waiting. A batch's reads go to the hub's buffer, and what they pass straight
 * through is sent at the batch's end (or before the driver hears of anything): the
 * peers see the sends back to back (fewer wake-ups across CPUs: wsproxy.io.hub).
 */
#define HUB_MAX_EVENTS 1024

/* The bytes a hub holds at most: a batch's reads stop being held (what is held is sent
   first) when a whole read might not fit any more. */
#define HUB_HELD (2 * PUMP_READ)

/* A read held until the end of its batch: *size* bytes of the hub's buffer from *offset*
   on, for *pump* to send. *pump* is borrowed: hub_batch() keeps each pump of its batch
   alive until after its last hub_send(), the only place held reads are made and sent. */
typedef struct {
    Pump *pump;
    size_t offset;
    Py_ssize_t size;
} Held;

typedef struct Hub {
    PyObject_HEAD
    PyObject *members;   /* {fd: Pump}: holds each pump while it is read */
    int epfd;            /* -1 once closed */
    int limit;           /* sockets read per ready() */
    unsigned char *buffer; /* HUB_HELD bytes: this hub's reads (NULL before __init__) */
    size_t used;
    Held *held;          /* `limit` of them: the reads of a batch, in order */
    int held_count;
} Hub;

static int
hub_traverse(Hub *self, visitproc visit, void *arg)
{
    Py_VISIT(self->members);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

/* Every pump out (their `hub` cleared: it is a borrowed pointer), the descriptor closed.
   Nothing before __init__ (members NULL: epfd is still the 0 of a new object). */
static void
hub_close_members(Hub *self)
{
    if (self->members == NULL)
        return;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(self->members, &pos, &key, &value))
        ((Pump *)value)->hub = NULL;
    PyDict_Clear(self->members);
    if (self->epfd >= 0) {
        close(self->epfd);
        self->epfd = -1;
    }
}

static int
hub_clear(Hub *self)
{
    hub_close_members(self);
    Py_CLEAR(self->members);
    return 0;
}

/* The held reads' buffers freed (nothing is held between batches). */
static void
hub_free_buffers(Hub *self)
{
    PyMem_Free(self->buffer);
    PyMem_Free(self->held);
    self->buffer = NULL;
    self->held = NULL;
    self->used = 0;
    self->held_count = 0;
}

static void
hub_dealloc(Hub *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    hub_clear(self);
    hub_free_buffers(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static int
hub_init(Hub *self, PyObject *args, PyObject *kwargs)
{
    int limit = 64;
    static char *names[] = {"limit", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|i:Hub", names, &limit))
        return -1;
    if (limit < 1 || limit > HUB_MAX_EVENTS) {
        PyErr_Format(PyExc_ValueError, "Hub(): limit must be within 1..%d", HUB_MAX_EVENTS);
        return -1;
    }
    hub_clear(self);
    hub_free_buffers(self);
    self->epfd = -1;
    self->members = PyDict_New();
    if (self->members == NULL)
        return -1;
    self->buffer = PyMem_Malloc(HUB_HELD);
    self->held = PyMem_Malloc(sizeof(Held) * (size_t)limit);
    if (self->buffer == NULL || self->held == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->limit = limit;
    return 0;
}

static int
hub_open(Hub *self)
{
    if (self->epfd >= 0 && self->members != NULL)
        return 0;
    PyErr_SetString(PyExc_ValueError, "the hub is closed");
    return -1;
}

/* Whether *obj* is a _scan.Pump: 1, 0, or -1 (an error). */
static int
is_pump(Hub *self, PyObject *obj)
{
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &module_def);
    if (module == NULL)
        return -1;
    PyObject *pump_type = PyObject_GetAttrString(module, "Pump");
    if (pump_type == NULL)
        return -1;
    int result = PyObject_TypeCheck(obj, (PyTypeObject *)pump_type);
    Py_DECREF(pump_type);
    return result;
}

static PyObject *
hub_add(Hub *self, PyObject *arg)
{
    if (hub_open(self) < 0)
        return NULL;
    int pump_given = is_pump(self, arg);
    if (pump_given <= 0) {
        if (pump_given == 0)
            PyErr_SetString(PyExc_TypeError, "Hub.add(): a _scan.Pump");
        return NULL;
    }
    Pump *pump = (Pump *)arg;
    if (pump->hub == (PyObject *)self)
        Py_RETURN_NONE;
    if (pump->hub != NULL || pump->fd_in < 0) {
        PyErr_SetString(PyExc_ValueError, "Hub.add(): the pump is detached or in a hub");
        return NULL;
    }
    PyObject *fd = PyLong_FromLong(pump->fd_in);
    if (fd == NULL)
        return NULL;
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = pump};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, pump->fd_in, &event) < 0) {
        Py_DECREF(fd);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int stored = PyDict_SetItem(self->members, fd, arg);
    Py_DECREF(fd);
    if (stored < 0) {
        epoll_ctl(self->epfd, EPOLL_CTL_DEL, pump->fd_in, NULL);
        return NULL;
    }
    pump->hub = (PyObject *)self;
    Py_RETURN_NONE;
}

/* *pump* out of *hub* (it is a member): 0, or -1 with an error set. */
static int
hub_leave(Hub *hub, Pump *pump)
{
    /* Before its descriptor is closed: epoll forgets a socket only when every
       descriptor of it is closed, and the transport holds another. */
    epoll_ctl(hub->epfd, EPOLL_CTL_DEL, pump->fd_in, NULL);
    pump->hub = NULL;
    PyObject *fd = PyLong_FromLong(pump->fd_in);
    if (fd == NULL)
        return -1;
    int removed = PyDict_DelItem(hub->members, fd);  /* may drop the pump's last reference */
    Py_DECREF(fd);
    return removed;
}

static PyObject *
hub_remove(Hub *self, PyObject *arg)
{
    int pump_given = is_pump(self, arg);
    if (pump_given < 0)
        return NULL;
    if (pump_given && ((Pump *)arg)->hub == (PyObject *)self && hub_leave(self, (Pump *)arg) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Where a pump of this hub's batch reads to: after what is held, which is sent first
   when a whole read might not fit after it (or no more reads can be held). NULL with
   an error set if that send failed. */
static unsigned char *
hub_room(Hub *hub)
{
    if ((HUB_HELD - hub->used < PUMP_READ || hub->held_count == hub->limit)
            && hub_send(hub) < 0)
        return NULL;
    return hub->buffer + hub->used;
}

/* The *n* bytes *pump* just read to hub_room()'s place, held for hub_send(). */
static int
hub_hold(Hub *hub, Pump *pump, Py_ssize_t n)
{
    Held *held = &hub->held[hub->held_count++];
    held->pump = pump;
    held->offset = hub->used;
    held->size = n;
    hub->used += (size_t)n;
    return 0;
}

/* What the batch's reads passed straight through, each sent by its pump, in the order
   read (each pump writes to a transport of its own: no two of them share one). A
   failure of one does not keep the others' bytes back: the first error is set, -1. */
static int
hub_send(Hub *hub)
{
    PyObject *type = NULL, *value = NULL, *traceback = NULL;
    /* The count taken and reset before any send: a send may call Python (a transport's
       write), which never reads into this hub (ready() does not nest); were it to, it
       would find an empty batch, not one half sent. */
    int count = hub->held_count;
    hub->held_count = 0;
    for (int i = 0; i < count; i++) {
        Held *held = &hub->held[i];
        if (pump_send(held->pump, hub->buffer + held->offset, held->size) < 0) {
            if (type == NULL)
                PyErr_Fetch(&type, &value, &traceback);
            else
                PyErr_Clear();
        }
    }
    hub->used = 0;
    if (type == NULL)
        return 0;
    PyErr_Restore(type, value, traceback);
    return -1;
}

/* One epoll_wait() that does not wait, for at most *most* sockets, and each one's pump
   read (while it is still a member): the sockets read (0: none was ready), or -1 with an
   error set. */
static int
hub_batch(Hub *self, int most)
{
    struct epoll_event events[HUB_MAX_EVENTS];
    int n;
    do {
        n = epoll_wait(self->epfd, events, most, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    /* A pump's read may stop feeds (its own or others' of this batch): each pump of the
       batch is kept alive until the end, and read only while it is still a member. */
    for (int i = 0; i < n; i++)
        Py_INCREF((PyObject *)events[i].data.ptr);
    int failed = 0;
    for (int i = 0; i < n && !failed; i++) {
        Pump *pump = events[i].data.ptr;
        if (pump->hub == (PyObject *)self)
            failed = pump_read(pump, self) < 0;
    }
    /* What the reads held goes now, after an error too (its bytes were taken). */
    if (failed) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (hub_send(self) < 0)
            PyErr_Clear();  /* the first error is the one told */
        PyErr_Restore(type, value, traceback);
    }
    else if (hub_send(self) < 0)
        failed = 1;
    for (int i = 0; i < n; i++)
        Py_DECREF((PyObject *)events[i].data.ptr);
    return failed ? -1 : n;
}

static PyObject *
hub_ready(Hub *self, PyObject *unused)
{
    (void)unused;
    /* Batches until none is ready or `limit` sockets were read: what became ready
       during a batch is read in this wake, without another turn of the loop. */
    Py_INCREF(self);
    int done = 0, got = 1;
    while (got > 0 && done < self->limit && self->epfd >= 0) {
        got = hub_batch(self, self->limit - done);
        done += got;
    }
    Py_DECREF(self);
    if (got < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
hub_fileno(Hub *self, PyObject *unused)
{
    (void)unused;
    if (hub_open(self) < 0)
        return NULL;
    return PyLong_FromLong(self->epfd);
}

static PyObject *
hub_close(Hub *self, PyObject *unused)
{
    (void)unused;
    hub_close_members(self);
    Py_RETURN_NONE;
}

static Py_ssize_t
hub_length(Hub *self)
{
    return self->members == NULL ? 0 : PyDict_GET_SIZE(self->members);
}

static PyMethodDef hub_methods[] = {
    {"add", (PyCFunction)hub_add, METH_O,
     "add(pump): read the pump's socket (a _scan.Pump) from the hub."},
    {"remove", (PyCFunction)hub_remove, METH_O,
     "remove(pump): no longer (nothing if it is not a member); before its socket closes."},
    {"ready", (PyCFunction)hub_ready, METH_NOARGS,
     "The hub's descriptor is readable: each ready socket's pump reads (up to the limit)."},
    {"fileno", (PyCFunction)hub_fileno, METH_NOARGS, "The hub's epoll descriptor."},
    {"close", (PyCFunction)hub_close, METH_NOARGS,
     "Every pump out, the descriptor closed: idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef hub_members[] = {
    {"limit", T_INT, offsetof(Hub, limit), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot hub_slots[] = {
    {Py_tp_doc, "The pumps of a loop's feeds read through one epoll descriptor "
                "(wsproxy.io.hub.PyHub's twin)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, hub_init},
    {Py_tp_dealloc, hub_dealloc},
    {Py_tp_traverse, hub_traverse},
    {Py_tp_clear, hub_clear},
    {Py_tp_methods, hub_methods},
    {Py_tp_members, hub_members},
    {Py_sq_length, hub_length},
    {0, NULL},
};

static PyType_Spec hub_spec = {
    .name = "wsproxy.core._scan.Hub",
    .basicsize = sizeof(Hub),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = hub_slots,
};
#endif  /* __linux__ */

static int
add_type(PyObject *module, PyType_Spec *spec, const char *name)
{
    PyObject *type = PyType_FromModuleAndSpec(module, spec, NULL);
    if (type == NULL)
        return -1;
    int result = PyModule_AddObjectRef(module, name, type);
    Py_DECREF(type);
    return result;
}

static int
add_types(PyObject *module)
{
    if (add_type(module, &flow_spec, "FlowState") < 0)
        return -1;
    ScanState *state = PyModule_GetState(module);
    state->flow_type = PyObject_GetAttrString(module, "FlowState");
    state->state_name = PyUnicode_InternFromString("state");
    state->out_name = PyUnicode_InternFromString("out");
    if (state->flow_type == NULL || state->state_name == NULL || state->out_name == NULL)
        return -1;
    if (add_type(module, &relay_spec, "Relay") < 0)
        return -1;
    if (add_type(module, &pump_spec, "Pump") < 0)
        return -1;
#ifdef __linux__
    if (add_type(module, &hub_spec, "Hub") < 0)
        return -1;
#endif
    return 0;
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    ScanState *state = PyModule_GetState(module);
    if (state == NULL)
        return 0;
    Py_VISIT(state->flow_type);
    Py_VISIT(state->session_type);
    Py_VISIT(state->leg_type);
    return 0;
}

static int
module_clear(PyObject *module)
{
    ScanState *state = PyModule_GetState(module);
    if (state == NULL)
        return 0;
    Py_CLEAR(state->flow_type);
    Py_CLEAR(state->state_name);
    Py_CLEAR(state->out_name);
    Py_CLEAR(state->session_type);
    Py_CLEAR(state->leg_type);
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyMethodDef methods[] = {
    {"whole_messages", (PyCFunction)(void (*)(void))whole_messages, METH_FASTCALL,
     "whole_messages(data, pos, mask_bit, rsv_allowed, max_size) -> (pos, messages)\n\n"
     "Skip the whole text and binary messages from pos on (wsproxy.core.scan)."},
    {"whole_read", (PyCFunction)(void (*)(void))whole_read, METH_FASTCALL,
     "whole_read(data, remaining, mask_bit, rsv_allowed, max_size)"
     " -> (messages, remaining) | None\n\n"
     "Whether a read holds only whole text and binary messages (wsproxy.core.scan)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot slots[] = {
    {Py_mod_exec, add_types},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "wsproxy.core._scan",
    .m_doc = "The compiled frame scanner of wsproxy.core.scan (same spec, same answers).",
    .m_size = sizeof(ScanState),
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModuleDef_Init(&module_def);
}
