/*
 * wsproxy._lines: the compiled twin of wsproxy.log's closed line and clock (the readable
 * reference, and the fallback, is log.py's py_closed_line_of and _Clock).
 *
 *   render_closed(stamp, conn_id, client, backend, subject, state, duration_s,
 *                 close_code_client, close_code_upstream, initiator, reason,
 *                 messages_to_backend, messages_to_client, bytes_to_backend,
 *                 bytes_to_client, undelivered_to_client, undelivered_to_backend) -> str
 *       ``connection.closed`` as json_line renders it, with *stamp* as its timestamp:
 *       the fixed keys written once here, each value escaped as json's
 *       encode_basestring_ascii escapes it (printable ASCII other than '"' and '\\'
 *       copied as it is, anything else handed to _json's own function), None as null,
 *       the close codes as int.__repr__ writes them, the counters as an f-string does
 *       and the duration as log.millis_repr (".3f" without its trailing zeros for
 *       0 <= x < 1e9, else log's own function, set by set_fallback()).
 *   Clock(): stamp() -> str, stamp_at(ns) -> str
 *       TimeStamper(fmt="iso", utc=True)'s timestamp of time.time_ns() (or of *ns*),
 *       with the date and time of the current second formatted once a second.
 *
 * An f-string of the same line cost ~26k instructions under callgrind, this ~3k
 * (issue 18; ~4k with the line gathered in pieces first and every duration formatted by
 * PyOS_double_to_string). tests/unit/test_lines_twins.py holds the two to the same strings.
 * Built by setup.py as an optional extension of its own.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static PyObject *encode_ascii;   /* _json.encode_basestring_ascii */
static PyObject *millis_fallback; /* log.millis_repr, for what ".3f" does not write */

/* Room for a line on the stack: a usual line takes ~450 characters. */
#define LINE_ROOM 1024
#define NUM_ROOM 24

/* The line, written as it goes: into `stack` while it fits, else into memory of its
   own (pieces gathered first and copied into the str in a second pass cost ~1.4k
   instructions a line). A failed allocation is sticky: `failed` set and the error
   raised once, later writes do nothing. */
typedef struct {
    char *text;
    Py_ssize_t len;
    Py_ssize_t room;
    int failed;
    char stack[LINE_ROOM];
} Line;

static int
grow(Line *line, Py_ssize_t more)
{
    if (line->failed)
        return -1;
    Py_ssize_t room = line->room;
    while (room - line->len < more) {
        if (room > PY_SSIZE_T_MAX / 2) {
            line->failed = 1;
            PyErr_NoMemory();
            return -1;
        }
        room *= 2;
    }
    char *text = line->text == line->stack ? PyMem_Malloc((size_t)room)
                                           : PyMem_Realloc(line->text, (size_t)room);
    if (text == NULL) {
        line->failed = 1;
        PyErr_NoMemory();
        return -1;
    }
    if (line->text == line->stack)
        memcpy(text, line->stack, (size_t)line->len);
    line->text = text;
    line->room = room;
    return 0;
}

static inline void
put(Line *line, const char *text, Py_ssize_t len)
{
    if (line->room - line->len < len && grow(line, len) < 0)
        return;
    memcpy(line->text + line->len, text, (size_t)len);
    line->len += len;
}

#define PUT_LITERAL(line, s) put((line), (s), (Py_ssize_t)sizeof(s) - 1)

/* The decimal digits of *n* written into *room* (NUM_ROOM bytes); their count.
   (snprintf's "%lld" cost ~700 instructions a number.) */
static Py_ssize_t
digits(char *room, long long n)
{
    char tmp[NUM_ROOM];
    int len = 0;
    unsigned long long u = n < 0 ? 0ULL - (unsigned long long)n : (unsigned long long)n;
    do {
        tmp[len++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    Py_ssize_t at = 0;
    if (n < 0)
        room[at++] = '-';
    while (len)
        room[at++] = tmp[--len];
    return at;
}

static void
put_digits(Line *line, long long n)
{
    char room[NUM_ROOM];
    put(line, room, digits(room, n));
}

/* An ASCII str made by Python (escaped, or a repr): its characters, and then it goes. */
static int
put_made(Line *line, PyObject *text)
{
    Py_ssize_t len;
    const char *chars = PyUnicode_AsUTF8AndSize(text, &len);
    if (chars != NULL)
        put(line, chars, len);
    Py_DECREF(text);
    return chars == NULL ? -1 : 0;
}

/* A JSON string of *value* as encode_basestring_ascii writes it. */
static int
put_str(Line *line, PyObject *value)
{
    if (PyUnicode_CheckExact(value) && PyUnicode_IS_ASCII(value)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(value);
        const Py_UCS1 *chars = PyUnicode_1BYTE_DATA(value);
        Py_ssize_t i = 0;
        for (; i < n; i++) {
            Py_UCS1 c = chars[i];
            if (c < ' ' || c > '~' || c == '"' || c == '\\')
                break;
        }
        if (i == n) { /* nothing to escape: its own characters, quoted */
            PUT_LITERAL(line, "\"");
            put(line, (const char *)chars, n);
            PUT_LITERAL(line, "\"");
            return 0;
        }
    }
    PyObject *escaped = PyObject_CallOneArg(encode_ascii, value);
    if (escaped == NULL)
        return -1;
    if (!PyUnicode_Check(escaped)) {
        Py_DECREF(escaped);
        PyErr_SetString(PyExc_TypeError, "encode_basestring_ascii() did not return a str");
        return -1;
    }
    return put_made(line, escaped);
}

static int
put_str_or_null(Line *line, PyObject *value)
{
    if (value == Py_None) {
        PUT_LITERAL(line, "null");
        return 0;
    }
    return put_str(line, value);
}

/* A close code: int.__repr__'s digits (an IntEnum's too), or null. */
static int
put_code(Line *line, PyObject *value)
{
    if (value == Py_None) {
        PUT_LITERAL(line, "null");
        return 0;
    }
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError,
                     "descriptor '__repr__' requires a 'int' object but received a '%.100s'",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (!overflow) {
        put_digits(line, n);
        return 0;
    }
    PyObject *text = PyLong_Type.tp_repr(value);
    return text == NULL ? -1 : put_made(line, text);
}

/* A counter as an f-string writes it: format(value, ""). */
static int
put_count(Line *line, PyObject *value)
{
    if (PyLong_CheckExact(value)) {
        int overflow = 0;
        long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (n == -1 && PyErr_Occurred())
            return -1;
        if (!overflow) {
            put_digits(line, n);
            return 0;
        }
    }
    PyObject *empty = PyUnicode_New(0, 0);
    if (empty == NULL)
        return -1;
    PyObject *text = PyObject_Format(value, empty);
    Py_DECREF(empty);
    if (text == NULL)
        return -1;
    if (!PyUnicode_IS_ASCII(text)) { /* (a subclass's __format__ may write anything) */
        Py_DECREF(text);
        PyErr_SetString(PyExc_ValueError, "a counter that is not written in ASCII");
        return -1;
    }
    return put_made(line, text);
}

/* *x* (0 <= x < 1e9) in thousandths as ".3f" rounds it (the nearest, a tie to even, of
   its exact value), if the product x * 1000 tells: it is within half an ulp (< 2^-13
   below 2^40) of the exact one, so when its fraction is not within 1/1024 of a half
   the nearest whole number is the same for both. Else -1 (PyOS_double_to_string's
   correctly rounded digits decide: ~600 instructions more). */
static long long
thousandths(double x)
{
    double scaled = x * 1000.0;
    double whole = floor(scaled);
    double fraction = scaled - whole; /* (exact: both below 2^40, less than 1 apart) */
    if (fabs(fraction - 0.5) < 1.0 / 1024)
        return -1;
    return (long long)whole + (fraction > 0.5);
}

/* The duration: log.millis_repr(seconds): ".3f" without its trailing zeros (one kept
   after the point). */
static int
put_millis(Line *line, PyObject *value)
{
    if (PyFloat_CheckExact(value)) {
        double x = PyFloat_AS_DOUBLE(value);
        if (x >= 0 && x < 1e9 && !signbit(x)) {
            long long n = thousandths(x);
            if (n >= 0) {
                char text[NUM_ROOM + 4];
                Py_ssize_t len = digits(text, n / 1000);
                long long fraction = n % 1000;
                text[len++] = '.';
                text[len++] = (char)('0' + fraction / 100);
                if (fraction % 100) {
                    text[len++] = (char)('0' + fraction / 10 % 10);
                    if (fraction % 10)
                        text[len++] = (char)('0' + fraction % 10);
                }
                put(line, text, len);
                return 0;
            }
        }
        if (x >= 0 && x < 1e9) { /* (-0.0 too: "-0.0") */
            char *text = PyOS_double_to_string(x, 'f', 3, 0, NULL);
            if (text == NULL)
                return -1;
            size_t n = strlen(text);
            while (n > 0 && text[n - 1] == '0')
                n--;
            int point = n > 0 && text[n - 1] == '.';
            put(line, text, (Py_ssize_t)n);
            PyMem_Free(text);
            if (point)
                PUT_LITERAL(line, "0");
            return 0;
        }
    }
    if (millis_fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_fallback() was not called");
        return -1;
    }
    PyObject *text = PyObject_CallOneArg(millis_fallback, value);
    if (text == NULL)
        return -1;
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) {
        Py_DECREF(text);
        PyErr_SetString(PyExc_TypeError, "millis_repr() did not return an ASCII str");
        return -1;
    }
    return put_made(line, text);
}

/* The line written so far, as a str (NULL: an error, raised). */
static PyObject *
build(Line *line)
{
    if (line->failed)
        return NULL;
    PyObject *result = PyUnicode_New(line->len, 127);
    if (result != NULL)
        memcpy(PyUnicode_1BYTE_DATA(result), line->text, (size_t)line->len);
    return result;
}

static PyObject *
render_closed(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 17) {
        PyErr_Format(PyExc_TypeError, "render_closed() takes 17 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *stamp = args[0];
    if (!PyUnicode_Check(stamp)) {
        PyErr_SetString(PyExc_TypeError, "render_closed(): the stamp must be a str");
        return NULL;
    }
    /* A value written, unless the line failed already (before any Python is called). */
#define WRITE(call) do { if (line.failed || (call) < 0) goto done; } while (0)
    Line line;
    line.text = line.stack;
    line.len = 0;
    line.room = LINE_ROOM;
    line.failed = 0;
    PyObject *result = NULL;
    PUT_LITERAL(&line, "{\"conn_id\": ");
    WRITE(put_str(&line, args[1]));
    PUT_LITERAL(&line, ", \"client\": ");
    WRITE(put_str(&line, args[2]));
    PUT_LITERAL(&line, ", \"backend\": ");
    WRITE(put_str_or_null(&line, args[3]));
    PUT_LITERAL(&line, ", \"subject\": ");
    WRITE(put_str_or_null(&line, args[4]));
    PUT_LITERAL(&line, ", \"state\": ");
    WRITE(put_str(&line, args[5]));
    PUT_LITERAL(&line, ", \"duration_s\": ");
    WRITE(put_millis(&line, args[6]));
    PUT_LITERAL(&line, ", \"close_code_client\": ");
    WRITE(put_code(&line, args[7]));
    PUT_LITERAL(&line, ", \"close_code_upstream\": ");
    WRITE(put_code(&line, args[8]));
    PUT_LITERAL(&line, ", \"initiator\": ");
    WRITE(put_str_or_null(&line, args[9]));
    PUT_LITERAL(&line, ", \"reason\": ");
    WRITE(put_str_or_null(&line, args[10]));
    PUT_LITERAL(&line, ", \"messages_to_backend\": ");
    WRITE(put_count(&line, args[11]));
    PUT_LITERAL(&line, ", \"messages_to_client\": ");
    WRITE(put_count(&line, args[12]));
    PUT_LITERAL(&line, ", \"bytes_to_backend\": ");
    WRITE(put_count(&line, args[13]));
    PUT_LITERAL(&line, ", \"bytes_to_client\": ");
    WRITE(put_count(&line, args[14]));
    PUT_LITERAL(&line, ", \"undelivered_to_client\": ");
    WRITE(put_count(&line, args[15]));
    PUT_LITERAL(&line, ", \"undelivered_to_backend\": ");
    WRITE(put_count(&line, args[16]));
    PUT_LITERAL(&line, ", \"event\": \"connection.closed\", \"level\": \"info\", "
                       "\"timestamp\": \"");
    if (PyUnicode_IS_ASCII(stamp)) {
        put(&line, (const char *)PyUnicode_1BYTE_DATA(stamp), PyUnicode_GET_LENGTH(stamp));
        PUT_LITERAL(&line, "\"}");
        result = build(&line);
    }
    else { /* (a stand-in clock's: the f-string writes it as it is) */
        PyObject *head = build(&line);
        if (head != NULL) {
            PyObject *tail = PyUnicode_FromFormat("%U\"}", stamp);
            if (tail != NULL) {
                result = PyUnicode_Concat(head, tail);
                Py_DECREF(tail);
            }
            Py_DECREF(head);
        }
    }
done:
#undef WRITE
    if (line.text != line.stack)
        PyMem_Free(line.text);
    return result;
}

/* The clock. */

typedef struct {
    PyObject_HEAD
    long long second; /* the second whose date and time are in prefix */
    int have;
    char prefix[64];
    Py_ssize_t prefix_len;
} Clock;

static PyObject *
clock_stamp_of(Clock *self, long long ns)
{
    long long second = ns / 1000000000LL;
    long long rest = ns % 1000000000LL;
    if (rest < 0) { /* divmod()'s floor */
        rest += 1000000000LL;
        second -= 1;
    }
    if (!self->have || second != self->second) {
        /* datetime.fromtimestamp(second, UTC) takes years 1 to 9999 only. */
        if (second < -62135596800LL || second > 253402300799LL) {
            PyErr_SetString(PyExc_ValueError, "year is out of range");
            return NULL;
        }
        time_t t = (time_t)second;
        struct tm tm;
        if (gmtime_r(&t, &tm) == NULL) {
            PyErr_SetString(PyExc_OverflowError, "timestamp out of range for platform time_t");
            return NULL;
        }
        size_t n = strftime(self->prefix, sizeof(self->prefix), "%Y-%m-%dT%H:%M:%S", &tm);
        if (n == 0) {
            PyErr_SetString(PyExc_ValueError, "the date could not be formatted");
            return NULL;
        }
        self->prefix_len = (Py_ssize_t)n;
        self->second = second;
        self->have = 1;
    }
    char text[96];
    long micro = (long)(rest / 1000);
    memcpy(text, self->prefix, (size_t)self->prefix_len);
    Py_ssize_t n = self->prefix_len;
    if (micro) { /* isoformat() leaves the fraction out when it is zero */
        text[n++] = '.';
        for (int i = 5; i >= 0; i--, micro /= 10)
            text[n + i] = (char)('0' + micro % 10);
        n += 6;
    }
    text[n++] = 'Z';
    return PyUnicode_FromStringAndSize(text, n);
}

static PyObject *
clock_stamp(Clock *self, PyObject *unused)
{
    (void)unused;
    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) != 0) /* time.time_ns()'s clock */
        return PyErr_SetFromErrno(PyExc_OSError);
    return clock_stamp_of(self, (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
}

static PyObject *
clock_stamp_at(Clock *self, PyObject *ns)
{
    long long value = PyLong_AsLongLong(ns);
    if (value == -1 && PyErr_Occurred())
        return NULL;
    return clock_stamp_of(self, value);
}

static PyMethodDef clock_methods[] = {
    {"stamp", (PyCFunction)clock_stamp, METH_NOARGS,
     "The timestamp of now, as TimeStamper(fmt=\"iso\", utc=True) writes it."},
    {"stamp_at", (PyCFunction)clock_stamp_at, METH_O,
     "The timestamp of *ns* nanoseconds since the epoch."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ClockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsproxy._lines.Clock",
    .tp_basicsize = sizeof(Clock),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_methods = clock_methods,
    .tp_doc = "log._Clock's compiled twin.",
};

static PyObject *
set_fallback(PyObject *module, PyObject *millis)
{
    (void)module;
    Py_XSETREF(millis_fallback, Py_NewRef(millis));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"render_closed", (PyCFunction)(void (*)(void))render_closed, METH_FASTCALL,
     "connection.closed's line, as log.py_closed_line_of renders it, with *stamp*."},
    {"set_fallback", set_fallback, METH_O,
     "The function that writes a duration .3f does not (log.millis_repr)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "wsproxy._lines",
    "The compiled twin of wsproxy.log's closed line and clock.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__lines(void)
{
    if (PyType_Ready(&ClockType) < 0)
        return NULL;
    PyObject *json = PyImport_ImportModule("_json");
    if (json == NULL)
        return NULL;
    encode_ascii = PyObject_GetAttrString(json, "encode_basestring_ascii");
    Py_DECREF(json);
    if (encode_ascii == NULL)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Clock", (PyObject *)&ClockType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
