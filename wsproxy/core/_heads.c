/*
 * wsproxy.core._heads: the compiled twin of wsproxy.core.handshake's py_scan_request
 * and py_scan_response (the readable reference, and the fallback).
 *
 * Each reads one HTTP/1.1 head in its plainest form, line by line, the way
 * handshake.py's regular expressions read it (_REQUEST_LINE, _SWITCHING_LINE,
 * _HEADER_LINE: names lower-cased, values without the spaces and tabs around them),
 * and picks out the headers an upgrade (or a backend's 101) is decided by. It decides
 * nothing else: the verdicts stay in handshake.read_upgrade / read_accept, in Python,
 * for both twins. tests/unit/test_heads_twins.py holds the two to the same answers.
 *
 *   scan_request(data: bytes, max_head: int) -> tuple | None
 *       (method, target, headers, rest_at, odd, host, upgrade, connection, version,
 *        key, protocol, origin, extensions)
 *   scan_response(data: bytes) -> tuple | None
 *       (headers, rest_at, odd, upgrade, connection, accept, protocol, extensions)
 *
 * None: not the plainest form (h11 is to read it). Built by setup.py as an optional
 * extension of its own: without a C compiler the install goes on and the Python
 * twins are used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* RFC 9110 tchar, as the regular expressions' [!#$%&'*+\-.^_`|~0-9A-Za-z]. */
static unsigned char tchar[256];
/* A byte of a field value's word: [^\x00\s] of a bytes pattern (\s: space, \t, \n,
   \v, \f, \r). */
static unsigned char vchar[256];

static void
init_tables(void)
{
    const char *extra = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        tchar[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        vchar[c] = !(c == 0 || c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f'
                     || c == '\r');
    }
    for (const char *p = extra; *p; p++)
        tchar[(unsigned char)*p] = 1;
}

/* The first "\r\n\r\n" that lies wholly within data[0:limit], or -1. */
static Py_ssize_t
head_end(const unsigned char *data, Py_ssize_t n, Py_ssize_t limit)
{
    if (limit > n)
        limit = n;
    for (Py_ssize_t i = 0; i + 4 <= limit; i++) {
        const unsigned char *p = memchr(data + i, '\r', (size_t)(limit - 3 - i));
        if (p == NULL)
            return -1;
        i = p - data;
        if (i + 4 <= limit && p[1] == '\n' && p[2] == '\r' && p[3] == '\n')
            return i;
    }
    return -1;
}

/* The end of the line that starts at *start* (its "\r\n", or *end*). */
static Py_ssize_t
line_end(const unsigned char *data, Py_ssize_t start, Py_ssize_t end)
{
    Py_ssize_t i = start;
    while (i < end) {
        const unsigned char *p = memchr(data + i, '\r', (size_t)(end - i));
        if (p == NULL)
            return end;
        i = p - data;
        if (i + 1 < end && p[1] == '\n')
            return i;
        i++;
    }
    return end;
}

/* A ``token: value`` line in data[start:stop], as _HEADER_LINE reads it: the name's
   end (*colon*) and the value's bounds; 0 for any other line. */
static int
header_line(const unsigned char *data, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t *colon,
            Py_ssize_t *vstart, Py_ssize_t *vstop)
{
    Py_ssize_t i = start;
    while (i < stop && tchar[data[i]])
        i++;
    if (i == start || i == stop || data[i] != ':')
        return 0;
    *colon = i;
    i++;
    while (i < stop && (data[i] == ' ' || data[i] == '\t'))
        i++;
    Py_ssize_t j = stop;
    while (j > i && (data[j - 1] == ' ' || data[j - 1] == '\t'))
        j--;
    for (Py_ssize_t k = i; k < j; k++) {
        unsigned char c = data[k];
        if (!vchar[c] && c != ' ' && c != '\t')
            return 0;
    }
    *vstart = i;
    *vstop = j;
    return 1;
}

/* The watched headers, by kind (as handshake.py's _WATCHED_REQUEST/_WATCHED_ACCEPT). */
enum { OTHER, FRAMING, HOST, UPGRADE, CONNECTION, VERSION, KEY, PROTOCOL, ORIGIN, EXTENSIONS,
       ACCEPT };

static int
kind_of(const char *name, Py_ssize_t n, int response)
{
#define IS(s) (n == (Py_ssize_t)sizeof(s) - 1 && memcmp(name, s, sizeof(s) - 1) == 0)
    switch (n) {
    case 4:
        if (!response && IS("host"))
            return HOST;
        break;
    case 6:
        if (!response && IS("origin"))
            return ORIGIN;
        break;
    case 7:
        if (IS("upgrade"))
            return UPGRADE;
        break;
    case 10:
        if (IS("connection"))
            return CONNECTION;
        break;
    case 14:
        if (IS("content-length"))
            return FRAMING;
        break;
    case 17:
        if (IS("transfer-encoding"))
            return FRAMING;
        if (!response && IS("sec-websocket-key"))
            return KEY;
        break;
    case 20:
        if (response && IS("sec-websocket-accept"))
            return ACCEPT;
        break;
    case 21:
        if (!response && IS("sec-websocket-version"))
            return VERSION;
        break;
    case 22:
        if (IS("sec-websocket-protocol"))
            return PROTOCOL;
        break;
    case 24:
        if (IS("sec-websocket-extensions"))
            return EXTENSIONS;
        break;
    }
    return OTHER;
#undef IS
}

/* What the header loop found: the values are borrowed from *headers*' tuples. */
typedef struct {
    PyObject *headers; /* a list, then a tuple */
    PyObject *extensions; /* request: a list of every value */
    PyObject *value[ACCEPT + 1];
    int hosts;
    int odd;
} Found;

static void
found_clear(Found *f)
{
    Py_CLEAR(f->headers);
    Py_CLEAR(f->extensions);
}

/* Read the header lines of data[start:end] into *f*. 1: read; 0: not the plainest form
   (or a framing header); -1: an error is set. */
static int
read_headers(const unsigned char *data, Py_ssize_t start, Py_ssize_t end, int response,
             Found *f)
{
    char lower[256];
    while (start < end) {
        Py_ssize_t stop = line_end(data, start, end);
        Py_ssize_t colon, vstart, vstop;
        if (!header_line(data, start, stop, &colon, &vstart, &vstop))
            return 0;
        Py_ssize_t nlen = colon - start;
        PyObject *name;
        if (nlen <= (Py_ssize_t)sizeof(lower)) {
            for (Py_ssize_t k = 0; k < nlen; k++) {
                unsigned char c = data[start + k];
                lower[k] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            }
            name = PyBytes_FromStringAndSize(lower, nlen);
        } else {
            name = PyBytes_FromStringAndSize(NULL, nlen);
            if (name != NULL) {
                char *s = PyBytes_AS_STRING(name);
                for (Py_ssize_t k = 0; k < nlen; k++) {
                    unsigned char c = data[start + k];
                    s[k] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
                }
            }
        }
        if (name == NULL)
            return -1;
        int kind = nlen <= 24 ? kind_of(PyBytes_AS_STRING(name), nlen, response) : OTHER;
        if (kind == FRAMING) {
            Py_DECREF(name);
            return 0;
        }
        PyObject *value = PyBytes_FromStringAndSize((const char *)data + vstart,
                                                    vstop - vstart);
        if (value == NULL) {
            Py_DECREF(name);
            return -1;
        }
        PyObject *header = PyTuple_New(2);
        if (header == NULL) {
            Py_DECREF(name);
            Py_DECREF(value);
            return -1;
        }
        PyTuple_SET_ITEM(header, 0, name);
        PyTuple_SET_ITEM(header, 1, value);
        int failed = PyList_Append(f->headers, header);
        Py_DECREF(header);
        if (failed)
            return -1;
        switch (kind) {
        case OTHER:
            break;
        case HOST:
            f->hosts++;
            f->value[HOST] = value;
            break;
        case ORIGIN:
            if (f->value[ORIGIN] == NULL)
                f->value[ORIGIN] = value;
            break;
        case EXTENSIONS:
            if (!response) {
                if (PyList_Append(f->extensions, value))
                    return -1;
                break;
            }
            /* fall through: a 101's extensions header is one of a kind */
        default:
            if (f->value[kind] != NULL)
                f->odd = 1;
            f->value[kind] = value;
        }
        start = stop + 2;
    }
    return 1;
}

static PyObject *
or_none(PyObject *o)
{
    return Py_NewRef(o != NULL ? o : Py_None);
}

static PyObject *
scan_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan_request(data: bytes, max_head: int)");
        return NULL;
    }
    Py_ssize_t max_head = PyLong_AsSsize_t(args[1]);
    if (max_head == -1 && PyErr_Occurred())
        return NULL;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (max_head < 0)
        Py_RETURN_NONE;
    Py_ssize_t end = head_end(data, n, max_head);
    if (end < 0)
        Py_RETURN_NONE;
    /* The request line: method SP target SP "HTTP/1.1" (_REQUEST_LINE). */
    Py_ssize_t first = line_end(data, 0, end);
    Py_ssize_t i = 0;
    while (i < first && tchar[data[i]])
        i++;
    Py_ssize_t method_end = i;
    if (method_end == 0 || i >= first || data[i] != ' ')
        Py_RETURN_NONE;
    Py_ssize_t target_start = ++i;
    while (i < first && data[i] >= 0x21 && data[i] <= 0x7e)
        i++;
    if (i == target_start || first - i != 9 || memcmp(data + i, " HTTP/1.1", 9) != 0)
        Py_RETURN_NONE;
    Py_ssize_t target_end = i;
    Found f = {0};
    f.headers = PyList_New(0);
    f.extensions = PyList_New(0);
    if (f.headers == NULL || f.extensions == NULL) {
        found_clear(&f);
        return NULL;
    }
    int read = first < end ? read_headers(data, first + 2, end, 0, &f) : 1;
    if (read <= 0 || f.hosts != 1 || f.value[UPGRADE] == NULL) {
        found_clear(&f);
        if (read < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *headers = PyList_AsTuple(f.headers);
    PyObject *extensions = PyList_AsTuple(f.extensions);
    PyObject *method = PyBytes_FromStringAndSize((const char *)data, method_end);
    PyObject *target = PyBytes_FromStringAndSize((const char *)data + target_start,
                                                 target_end - target_start);
    PyObject *rest_at = PyLong_FromSsize_t(end + 4);
    PyObject *result = NULL;
    if (headers && extensions && method && target && rest_at) {
        result = PyTuple_Pack(
            13, method, target, headers, rest_at, f.odd ? Py_True : Py_False,
            f.value[HOST], f.value[UPGRADE], Py_None, Py_None, Py_None, Py_None, Py_None,
            extensions);
        if (result != NULL) {
            /* The optional values: None where absent (PyTuple_Pack took Py_None's). */
            PyObject *optional[] = {f.value[CONNECTION], f.value[VERSION], f.value[KEY],
                                    f.value[PROTOCOL], f.value[ORIGIN]};
            for (int k = 0; k < 5; k++) {
                Py_DECREF(Py_None);
                PyTuple_SET_ITEM(result, 7 + k, or_none(optional[k]));
            }
        }
    }
    Py_XDECREF(headers);
    Py_XDECREF(extensions);
    Py_XDECREF(method);
    Py_XDECREF(target);
    Py_XDECREF(rest_at);
    found_clear(&f);
    return result;
}

static const char switching[] = "HTTP/1.1 101";

static PyObject *
scan_response(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan_response(data: bytes, max_head: int)");
        return NULL;
    }
    Py_ssize_t max_head = PyLong_AsSsize_t(args[1]);
    if (max_head == -1 && PyErr_Occurred())
        return NULL;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (max_head < 0)
        Py_RETURN_NONE;
    Py_ssize_t end = head_end(data, n, max_head);
    if (end < 0)
        Py_RETURN_NONE;
    /* The status line: "HTTP/1.1 101", then nothing or SP and printable text
       (_SWITCHING_LINE). */
    Py_ssize_t first = line_end(data, 0, end);
    Py_ssize_t k = sizeof(switching) - 1;
    if (first < k || memcmp(data, switching, (size_t)k) != 0)
        Py_RETURN_NONE;
    if (first > k) {
        if (data[k] != ' ')
            Py_RETURN_NONE;
        for (Py_ssize_t i = k + 1; i < first; i++)
            if (data[i] < 0x20 || data[i] > 0x7e)
                Py_RETURN_NONE;
    }
    Found f = {0};
    f.headers = PyList_New(0);
    if (f.headers == NULL)
        return NULL;
    int read = first < end ? read_headers(data, first + 2, end, 1, &f) : 1;
    if (read <= 0) {
        found_clear(&f);
        if (read < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *headers = PyList_AsTuple(f.headers);
    PyObject *rest_at = PyLong_FromSsize_t(end + 4);
    PyObject *result = NULL;
    if (headers && rest_at) {
        result = PyTuple_Pack(8, headers, rest_at, f.odd ? Py_True : Py_False, Py_None,
                              Py_None, Py_None, Py_None, Py_None);
        if (result != NULL) {
            PyObject *optional[] = {f.value[UPGRADE], f.value[CONNECTION], f.value[ACCEPT],
                                    f.value[PROTOCOL], f.value[EXTENSIONS]};
            for (int j = 0; j < 5; j++) {
                Py_DECREF(Py_None);
                PyTuple_SET_ITEM(result, 3 + j, or_none(optional[j]));
            }
        }
    }
    Py_XDECREF(headers);
    Py_XDECREF(rest_at);
    found_clear(&f);
    return result;
}

static PyMethodDef methods[] = {
    {"scan_request", (PyCFunction)(void (*)(void))scan_request, METH_FASTCALL,
     "The plainest upgrade request's head, read (see handshake.py_scan_request)."},
    {"scan_response", (PyCFunction)(void (*)(void))scan_response, METH_FASTCALL,
     "The plainest 101's head, read (see handshake.py_scan_response)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "wsproxy.core._heads",
    "Compiled twins of handshake.py_scan_request and py_scan_response.", 0, methods,
};

PyMODINIT_FUNC
PyInit__heads(void)
{
    init_tables();
    return PyModule_Create(&module_def);
}
