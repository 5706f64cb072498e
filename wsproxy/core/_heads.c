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
#include <stdint.h>
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

static PyObject *scan_response_of(PyObject *bytes, Py_ssize_t max_head);

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
    return scan_response_of(args[0], max_head);
}

/* scan_response() of *bytes* (a bytes object) within *max_head*. */
static PyObject *
scan_response_of(PyObject *bytes, Py_ssize_t max_head)
{
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(bytes);
    Py_ssize_t n = PyBytes_GET_SIZE(bytes);
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

/* ---- The verdicts of the plainest handshakes, in one call each (issue 18, round 7) ----
 *
 *   accept_key(key: bytes) -> bytes
 *       Sec-WebSocket-Accept for *key* (handshake.py_accept_key's twin).
 *   read_request(data: bytes, max_head: int) -> tuple | None
 *       handshake.py_read_request's twin: None (h11 reads it); scan_request's tuple
 *       when the head is read but its verdict is Python's (anything but the plainest
 *       valid upgrade); else the plainest valid upgrade, checked and made:
 *       (the UpgradeRequest, rest_at). The request is made without its __init__,
 *       each of its slots set here: set_request_type(UpgradeRequest), which
 *       handshake's import calls (or the first read_request(), if it was not).
 *   accept_plain(data, key, client_key, subprotocol, client_headers) -> tuple | None
 *       handshake.py_accept_plain's twin: the backend's plainest valid 101 to our
 *       *key* (no subprotocol, no extensions chosen) and the client's 101 made of it:
 *       (the client's 101, rest_at); None for anything else (Python decides).
 *   request_head(target, host_lines, key, subprotocols, extensions, headers, skipped,
 *                forwarded_for, proto_lines, host, request_id) -> bytes | None
 *       handshake.py_request_head's twin: the backend's handshake request.
 */

/* SHA-1 (FIPS 180-4), for the accept keys only: two an upgrade. */
typedef struct {
    uint32_t h[5];
    unsigned char block[64];
    size_t used;
    uint64_t length;
} Sha1;

#define ROTL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))

/* One 64-byte block, its 80 rounds unrolled on a 16-word schedule (the public-domain
   form of Steve Reid's SHA-1): about half the instructions of a loop over 80 words. */
#define BLK0(i) (w[i] = (uint32_t)p[4 * (i)] << 24 | (uint32_t)p[4 * (i) + 1] << 16 \
                        | (uint32_t)p[4 * (i) + 2] << 8 | (uint32_t)p[4 * (i) + 3])
#define BLK(i) (w[(i) & 15] = ROTL(w[((i) + 13) & 15] ^ w[((i) + 8) & 15] \
                                   ^ w[((i) + 2) & 15] ^ w[(i) & 15], 1))
#define R0(v, w_, x, y, z, i) z += ((w_ & (x ^ y)) ^ y) + BLK0(i) + 0x5A827999 + ROTL(v, 5); \
                              w_ = ROTL(w_, 30);
#define R1(v, w_, x, y, z, i) z += ((w_ & (x ^ y)) ^ y) + BLK(i) + 0x5A827999 + ROTL(v, 5); \
                              w_ = ROTL(w_, 30);
#define R2(v, w_, x, y, z, i) z += (w_ ^ x ^ y) + BLK(i) + 0x6ED9EBA1 + ROTL(v, 5); \
                              w_ = ROTL(w_, 30);
#define R3(v, w_, x, y, z, i) z += (((w_ | x) & y) | (w_ & x)) + BLK(i) + 0x8F1BBCDC \
                                   + ROTL(v, 5); w_ = ROTL(w_, 30);
#define R4(v, w_, x, y, z, i) z += (w_ ^ x ^ y) + BLK(i) + 0xCA62C1D6 + ROTL(v, 5); \
                              w_ = ROTL(w_, 30);

static void
sha1_block(Sha1 *s, const unsigned char *p)
{
    uint32_t w[16];
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4];
    R0(a, b, c, d, e, 0) R0(e, a, b, c, d, 1) R0(d, e, a, b, c, 2) R0(c, d, e, a, b, 3)
    R0(b, c, d, e, a, 4) R0(a, b, c, d, e, 5) R0(e, a, b, c, d, 6) R0(d, e, a, b, c, 7)
    R0(c, d, e, a, b, 8) R0(b, c, d, e, a, 9) R0(a, b, c, d, e, 10) R0(e, a, b, c, d, 11)
    R0(d, e, a, b, c, 12) R0(c, d, e, a, b, 13) R0(b, c, d, e, a, 14) R0(a, b, c, d, e, 15)
    R1(e, a, b, c, d, 16) R1(d, e, a, b, c, 17) R1(c, d, e, a, b, 18) R1(b, c, d, e, a, 19)
    R2(a, b, c, d, e, 20) R2(e, a, b, c, d, 21) R2(d, e, a, b, c, 22) R2(c, d, e, a, b, 23)
    R2(b, c, d, e, a, 24) R2(a, b, c, d, e, 25) R2(e, a, b, c, d, 26) R2(d, e, a, b, c, 27)
    R2(c, d, e, a, b, 28) R2(b, c, d, e, a, 29) R2(a, b, c, d, e, 30) R2(e, a, b, c, d, 31)
    R2(d, e, a, b, c, 32) R2(c, d, e, a, b, 33) R2(b, c, d, e, a, 34) R2(a, b, c, d, e, 35)
    R2(e, a, b, c, d, 36) R2(d, e, a, b, c, 37) R2(c, d, e, a, b, 38) R2(b, c, d, e, a, 39)
    R3(a, b, c, d, e, 40) R3(e, a, b, c, d, 41) R3(d, e, a, b, c, 42) R3(c, d, e, a, b, 43)
    R3(b, c, d, e, a, 44) R3(a, b, c, d, e, 45) R3(e, a, b, c, d, 46) R3(d, e, a, b, c, 47)
    R3(c, d, e, a, b, 48) R3(b, c, d, e, a, 49) R3(a, b, c, d, e, 50) R3(e, a, b, c, d, 51)
    R3(d, e, a, b, c, 52) R3(c, d, e, a, b, 53) R3(b, c, d, e, a, 54) R3(a, b, c, d, e, 55)
    R3(e, a, b, c, d, 56) R3(d, e, a, b, c, 57) R3(c, d, e, a, b, 58) R3(b, c, d, e, a, 59)
    R4(a, b, c, d, e, 60) R4(e, a, b, c, d, 61) R4(d, e, a, b, c, 62) R4(c, d, e, a, b, 63)
    R4(b, c, d, e, a, 64) R4(a, b, c, d, e, 65) R4(e, a, b, c, d, 66) R4(d, e, a, b, c, 67)
    R4(c, d, e, a, b, 68) R4(b, c, d, e, a, 69) R4(a, b, c, d, e, 70) R4(e, a, b, c, d, 71)
    R4(d, e, a, b, c, 72) R4(c, d, e, a, b, 73) R4(b, c, d, e, a, 74) R4(a, b, c, d, e, 75)
    R4(e, a, b, c, d, 76) R4(d, e, a, b, c, 77) R4(c, d, e, a, b, 78) R4(b, c, d, e, a, 79)
    s->h[0] += a;
    s->h[1] += b;
    s->h[2] += c;
    s->h[3] += d;
    s->h[4] += e;
}

static void
sha1_init(Sha1 *s)
{
    s->h[0] = 0x67452301;
    s->h[1] = 0xEFCDAB89;
    s->h[2] = 0x98BADCFE;
    s->h[3] = 0x10325476;
    s->h[4] = 0xC3D2E1F0;
    s->used = 0;
    s->length = 0;
}

static void
sha1_update(Sha1 *s, const unsigned char *p, size_t n)
{
    s->length += n;
    while (n > 0) {
        size_t take = 64 - s->used;
        if (take > n)
            take = n;
        memcpy(s->block + s->used, p, take);
        s->used += take;
        p += take;
        n -= take;
        if (s->used == 64) {
            sha1_block(s, s->block);
            s->used = 0;
        }
    }
}

static void
sha1_final(Sha1 *s, unsigned char out[20])
{
    uint64_t bits = s->length * 8;
    s->block[s->used++] = 0x80;
    if (s->used > 56) {
        memset(s->block + s->used, 0, 64 - s->used);
        sha1_block(s, s->block);
        s->used = 0;
    }
    memset(s->block + s->used, 0, 56 - s->used);
    for (int i = 0; i < 8; i++)
        s->block[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha1_block(s, s->block);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (unsigned char)(s->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)s->h[i];
    }
}

static const char b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/* The length of an accept key: base64 of a 20-byte digest. */
#define ACCEPT_LEN 28

/* base64(SHA-1(key + GUID)) into out[ACCEPT_LEN]. */
static void
accept_of(const unsigned char *key, Py_ssize_t n, char out[ACCEPT_LEN])
{
    Sha1 s;
    unsigned char digest[21];
    sha1_init(&s);
    sha1_update(&s, key, (size_t)n);
    sha1_update(&s, (const unsigned char *)guid, sizeof(guid) - 1);
    sha1_final(&s, digest);
    digest[20] = 0;
    for (int i = 0, o = 0; i < 21; i += 3, o += 4) {
        uint32_t v = (uint32_t)digest[i] << 16 | (uint32_t)digest[i + 1] << 8
                     | (i + 2 < 21 ? digest[i + 2] : 0);
        out[o] = b64[(v >> 18) & 63];
        out[o + 1] = b64[(v >> 12) & 63];
        out[o + 2] = b64[(v >> 6) & 63];
        out[o + 3] = i + 2 < 20 ? b64[v & 63] : '=';
    }
}

static PyObject *
accept_key(PyObject *module, PyObject *key)
{
    if (!PyBytes_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "accept_key(key: bytes)");
        return NULL;
    }
    char out[ACCEPT_LEN];
    accept_of((const unsigned char *)PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), out);
    return PyBytes_FromStringAndSize(out, ACCEPT_LEN);
}

static int
is_b64(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
           || c == '+' || c == '/';
}

/* Whether *v* is what handshake._key_is_valid() takes: strict base64 of 16 bytes, which
   is 22 base64 characters and "==". */
static int
key_valid(PyObject *v)
{
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(v);
    if (PyBytes_GET_SIZE(v) != 24 || p[22] != '=' || p[23] != '=')
        return 0;
    for (int i = 0; i < 22; i++)
        if (!is_b64(p[i]))
            return 0;
    return 1;
}

/* Whether *v* is bytes equal to *word* (lower case) ASCII case-insensitively
   (bytes.lower()); None is not. */
static int
is_word(PyObject *v, const char *word)
{
    size_t n = strlen(word);
    if (v == NULL || !PyBytes_Check(v) || (size_t)PyBytes_GET_SIZE(v) != n)
        return 0;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(v);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if ((c >= 'A' && c <= 'Z' ? c + 32 : c) != (unsigned char)word[i])
            return 0;
    }
    return 1;
}

/* The subprotocol offers of a Sec-WebSocket-Protocol value as handshake._offers() makes
   them (split at commas, stripped, empty ones skipped, Latin-1), when every one is a
   token; Py_None when one is not (Python refuses it); NULL on error. */
static PyObject *
offers_of(PyObject *value)
{
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(value);
    Py_ssize_t n = PyBytes_GET_SIZE(value);
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    Py_ssize_t start = 0;
    while (start <= n) {
        const unsigned char *comma = memchr(p + start, ',', (size_t)(n - start));
        Py_ssize_t stop = comma == NULL ? n : comma - p;
        Py_ssize_t i = start, j = stop;
        /* (a scanned value holds no \n, \r, \v or \f: spaces and tabs are its whitespace) */
        while (i < j && (p[i] == ' ' || p[i] == '\t'))
            i++;
        while (j > i && (p[j - 1] == ' ' || p[j - 1] == '\t'))
            j--;
        if (i < j) {
            for (Py_ssize_t k = i; k < j; k++)
                if (!tchar[p[k]]) {
                    Py_DECREF(list);
                    Py_RETURN_NONE;
                }
            PyObject *offer = PyUnicode_DecodeLatin1((const char *)p + i, j - i, NULL);
            if (offer == NULL || PyList_Append(list, offer)) {
                Py_XDECREF(offer);
                Py_DECREF(list);
                return NULL;
            }
            Py_DECREF(offer);
        }
        start = stop + 1;
    }
    PyObject *tuple = PyList_AsTuple(list);
    Py_DECREF(list);
    return tuple;
}

/* Whether *target* is a path that backend_target() returns as it is without a look
   inside: "/" and no '.', '%', '\\' or '#' before the query. */
static int
plain_target(PyObject *target)
{
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(target);
    Py_ssize_t n = PyBytes_GET_SIZE(target);
    if (n == 0 || p[0] != '/')
        return 0;
    for (Py_ssize_t i = 1; i < n; i++) {
        unsigned char c = p[i];
        if (c == '?')
            return 1;
        if (c == '.' || c == '%' || c == '\\' || c == '#')
            return 0;
    }
    return 1;
}

/* handshake.UpgradeRequest, and the descriptors of its slots in REQUEST_FIELDS' order:
   read_request() makes the request itself (set_request_type()). */
static const char *const REQUEST_FIELDS[] = {
    "method", "target", "host", "origin", "headers", "subprotocols", "key", "extensions",
    "plain_connection",
};
#define N_REQUEST_FIELDS (sizeof(REQUEST_FIELDS) / sizeof(REQUEST_FIELDS[0]))
static PyTypeObject *request_type = NULL;
static PyObject *request_slots[N_REQUEST_FIELDS];

static PyObject *
set_request_type(PyObject *module, PyObject *cls)
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "set_request_type(cls: type)");
        return NULL;
    }
    PyObject *slots[N_REQUEST_FIELDS];
    for (size_t i = 0; i < N_REQUEST_FIELDS; i++) {
        /* A slot's member descriptor, found on the class or a base (RequestHead's). */
        PyObject *d = PyObject_GetAttrString(cls, REQUEST_FIELDS[i]);
        if (d == NULL || Py_TYPE(d) != &PyMemberDescr_Type) {
            if (d != NULL)
                PyErr_Format(PyExc_TypeError, "%s is not a slot", REQUEST_FIELDS[i]);
            Py_XDECREF(d);
            while (i-- > 0)
                Py_DECREF(slots[i]);
            return NULL;
        }
        slots[i] = d;
    }
    for (size_t i = 0; i < N_REQUEST_FIELDS; i++) {
        Py_XSETREF(request_slots[i], slots[i]);
    }
    Py_INCREF(cls);
    Py_XSETREF(request_type, (PyTypeObject *)cls);
    Py_RETURN_NONE;
}

/* A request_type made without its __init__ (all its fields are set here). */
static PyObject *
new_request(PyObject *const values[N_REQUEST_FIELDS])
{
    if (request_type == NULL) { /* handshake's own import sets it; another user's, here */
        PyObject *handshake = PyImport_ImportModule("wsproxy.core.handshake");
        PyObject *cls = handshake == NULL ? NULL
                                          : PyObject_GetAttrString(handshake, "UpgradeRequest");
        PyObject *set = cls == NULL ? NULL : set_request_type(NULL, cls);
        Py_XDECREF(handshake);
        Py_XDECREF(cls);
        if (set == NULL)
            return NULL;
        Py_DECREF(set);
    }
    PyObject *request = request_type->tp_alloc(request_type, 0);
    if (request == NULL)
        return NULL;
    for (size_t i = 0; i < N_REQUEST_FIELDS; i++) {
        PyObject *d = request_slots[i];
        if (Py_TYPE(d)->tp_descr_set(d, request, values[i]) < 0) {
            Py_DECREF(request);
            return NULL;
        }
    }
    return request;
}

static PyObject *
read_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *scanned = scan_request(module, args, nargs);
    if (scanned == NULL || scanned == Py_None)
        return scanned;
    PyObject **item = &PyTuple_GET_ITEM(scanned, 0);
    /* (method, target, headers, rest_at, odd, host, upgrade, connection, version, key,
        protocol, origin, extensions) */
    PyObject *method = item[0], *target = item[1], *version = item[8], *key = item[9];
    if (item[4] == Py_True || PyBytes_GET_SIZE(method) != 3
        || memcmp(PyBytes_AS_STRING(method), "GET", 3) != 0
        || !is_word(item[6], "websocket") || item[7] == Py_None
        || !is_word(item[7], "upgrade") || version == Py_None
        || PyBytes_GET_SIZE(version) != 2 || memcmp(PyBytes_AS_STRING(version), "13", 2) != 0
        || key == Py_None || !key_valid(key) || !plain_target(target))
        return scanned;
    PyObject *subprotocols;
    if (item[10] == Py_None) {
        subprotocols = PyTuple_New(0);
    } else {
        subprotocols = offers_of(item[10]);
        if (subprotocols == Py_None) {
            Py_DECREF(subprotocols);
            return scanned;
        }
    }
    if (subprotocols == NULL) {
        Py_DECREF(scanned);
        return NULL;
    }
    PyObject *origin = item[11] == Py_None
        ? Py_NewRef(Py_None)
        : PyUnicode_DecodeLatin1(PyBytes_AS_STRING(item[11]), PyBytes_GET_SIZE(item[11]), NULL);
    PyObject *result = NULL;
    if (origin != NULL) {
        /* (REQUEST_FIELDS' order; plain_connection: the headers, one Connection header) */
        PyObject *values[N_REQUEST_FIELDS] = {
            method, target, item[5], origin, item[2], subprotocols, key, item[12], item[2],
        };
        PyObject *request = new_request(values);
        if (request != NULL) {
            result = PyTuple_Pack(2, request, item[3]);
            Py_DECREF(request);
        }
    }
    Py_DECREF(subprotocols);
    Py_XDECREF(origin);
    Py_DECREF(scanned);
    return result;
}

/* Whether the client's 101 leaves a backend's header *name* out: handshake's
   _NOT_FORWARDED and "date". */
static int
not_repeated(const char *name, Py_ssize_t n)
{
    static const char *const names[] = {
        "connection", "keep-alive", "proxy-connection", "te", "trailer",
        "transfer-encoding", "upgrade", "proxy-authenticate", "proxy-authorization",
        "content-length", "host", "sec-websocket-key", "sec-websocket-version",
        "sec-websocket-accept", "sec-websocket-protocol", "sec-websocket-extensions", "date",
        NULL,
    };
    for (const char *const *p = names; *p != NULL; p++)
        if ((size_t)n == strlen(*p) && memcmp(name, *p, (size_t)n) == 0)
            return 1;
    return 0;
}

static const char our_101[] =
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Accept: ";

/* Append bytes to a growing buffer (a bytes object resized as it grows). */
typedef struct {
    PyObject *out;
    Py_ssize_t used;
} Buffer;

static int
put(Buffer *b, const char *p, Py_ssize_t n)
{
    Py_ssize_t size = PyBytes_GET_SIZE(b->out);
    if (b->used + n > size) {
        Py_ssize_t want = size * 2 > b->used + n ? size * 2 : b->used + n;
        if (_PyBytes_Resize(&b->out, want))
            return -1;
    }
    memcpy(PyBytes_AS_STRING(b->out) + b->used, p, (size_t)n);
    b->used += n;
    return 0;
}

static int
put_bytes(Buffer *b, PyObject *v)
{
    return put(b, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
}

/* "\r\n" name ": " value, for each (name, value) of bytes in *headers* (a tuple). */
static int
put_headers(Buffer *b, PyObject *headers, int skip_not_repeated)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(headers); i++) {
        PyObject *h = PyTuple_GET_ITEM(headers, i);
        if (!PyTuple_Check(h) || PyTuple_GET_SIZE(h) != 2
            || !PyBytes_Check(PyTuple_GET_ITEM(h, 0)) || !PyBytes_Check(PyTuple_GET_ITEM(h, 1))) {
            PyErr_SetString(PyExc_TypeError, "headers are (bytes, bytes) pairs");
            return -1;
        }
        PyObject *name = PyTuple_GET_ITEM(h, 0);
        if (skip_not_repeated && not_repeated(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name)))
            continue;
        if (put(b, "\r\n", 2) || put_bytes(b, name) || put(b, ": ", 2)
            || put_bytes(b, PyTuple_GET_ITEM(h, 1)))
            return -1;
    }
    return 0;
}

static PyObject *
accept_plain(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])
        || !PyBytes_Check(args[2]) || (args[3] != Py_None && !PyUnicode_Check(args[3]))
        || !PyTuple_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "accept_plain(data: bytes, key: bytes, client_key: bytes, "
                        "subprotocol: str | None, client_headers: tuple)");
        return NULL;
    }
    PyObject *scanned = scan_response_of(args[0], 16 * 1024); /* handshake._MAX_PLAIN_HEAD */
    if (scanned == NULL || scanned == Py_None)
        return scanned;
    /* (headers, rest_at, odd, upgrade, connection, accept, protocol, extensions) */
    PyObject **item = &PyTuple_GET_ITEM(scanned, 0);
    char expected[ACCEPT_LEN];
    accept_of((const unsigned char *)PyBytes_AS_STRING(args[1]), PyBytes_GET_SIZE(args[1]),
              expected);
    PyObject *accept = item[5];
    if (item[2] == Py_True || !is_word(item[3], "websocket") || item[4] == Py_None
        || !is_word(item[4], "upgrade") || accept == Py_None
        || PyBytes_GET_SIZE(accept) != ACCEPT_LEN
        || memcmp(PyBytes_AS_STRING(accept), expected, ACCEPT_LEN) != 0
        || item[6] != Py_None || item[7] != Py_None) {
        Py_DECREF(scanned);
        Py_RETURN_NONE;
    }
    PyObject *subprotocol = NULL;
    if (args[3] != Py_None) {
        subprotocol = PyUnicode_AsLatin1String(args[3]);
        if (subprotocol == NULL) {
            Py_DECREF(scanned);
            return NULL;
        }
    }
    char answer[ACCEPT_LEN];
    accept_of((const unsigned char *)PyBytes_AS_STRING(args[2]), PyBytes_GET_SIZE(args[2]),
              answer);
    Buffer b = {PyBytes_FromStringAndSize(NULL, 256), 0};
    PyObject *result = NULL;
    if (b.out != NULL && put(&b, our_101, sizeof(our_101) - 1) == 0
        && put(&b, answer, ACCEPT_LEN) == 0
        && (subprotocol == NULL
            || (put(&b, "\r\nSec-WebSocket-Protocol: ", 26) == 0 && put_bytes(&b, subprotocol) == 0))
        && put_headers(&b, item[0], 1) == 0 && put_headers(&b, args[4], 0) == 0
        && put(&b, "\r\n\r\n", 4) == 0 && _PyBytes_Resize(&b.out, b.used) == 0) {
        result = PyTuple_Pack(2, b.out, item[1]);
    }
    Py_XDECREF(b.out);
    Py_XDECREF(subprotocol);
    Py_DECREF(scanned);
    return result;
}

/* Whether *text* (a str) is what handshake._plain_value() takes, ASCII from '!' to '~'
   (printable, no space), written into *b* when it is; 0: not, and nothing written. */
static int
put_plain(Buffer *b, PyObject *text)
{
    if (!PyUnicode_IS_ASCII(text))
        return 0;
    const unsigned char *p = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] < 0x21 || p[i] > 0x7e)
            return 0;
    return put(b, (const char *)p, n) == 0 ? 1 : -1;
}

/* request_head(target, host_lines, key, subprotocols, extensions, headers, skipped,
       forwarded_for, proto_lines, host, request_id) -> bytes | None
   handshake.py_request_head's twin: the backend's handshake request without identity
   headers; None when the target or an own value needs Python's checks. */
static PyObject *
request_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])
        || !PyBytes_Check(args[2]) || !PyTuple_Check(args[3]) || !PyTuple_Check(args[4])
        || !PyTuple_Check(args[5]) || !PyAnySet_Check(args[6]) || !PyUnicode_Check(args[7])
        || !PyBytes_Check(args[8]) || !PyBytes_Check(args[9]) || !PyUnicode_Check(args[10])) {
        PyErr_SetString(PyExc_TypeError, "request_head(target, host_lines, key, "
                        "subprotocols, extensions, headers, skipped, forwarded_for, "
                        "proto_lines, host, request_id)");
        return NULL;
    }
    PyObject *target = args[0];
    const unsigned char *t = (const unsigned char *)PyBytes_AS_STRING(target);
    Py_ssize_t tn = PyBytes_GET_SIZE(target);
    if (tn == 0)
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < tn; i++)
        if (t[i] < 0x21 || t[i] > 0x7e) /* handshake._TARGET */
            Py_RETURN_NONE;
    Buffer b = {PyBytes_FromStringAndSize(NULL, 512), 0};
    if (b.out == NULL)
        return NULL;
    if (put(&b, "GET ", 4) || put_bytes(&b, target) || put_bytes(&b, args[1])
        || put_bytes(&b, args[2]) || put(&b, "\r\nSec-WebSocket-Version: 13", 27))
        goto error;
    PyObject *subprotocols = args[3];
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(subprotocols); i++) {
        PyObject *offer = PyTuple_GET_ITEM(subprotocols, i);
        Py_ssize_t n;
        const char *utf8 = PyUnicode_Check(offer) ? PyUnicode_AsUTF8AndSize(offer, &n) : NULL;
        if (utf8 == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "subprotocols are str");
            goto error;
        }
        if (put(&b, i == 0 ? "\r\nSec-WebSocket-Protocol: " : ", ", i == 0 ? 26 : 2)
            || put(&b, utf8, n))
            goto error;
    }
    PyObject *extensions = args[4];
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(extensions); i++) {
        PyObject *value = PyTuple_GET_ITEM(extensions, i);
        if (!PyBytes_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "extensions are bytes");
            goto error;
        }
        if (put(&b, "\r\nSec-WebSocket-Extensions: ", 28) || put_bytes(&b, value))
            goto error;
    }
    PyObject *headers = args[5];
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(headers); i++) {
        PyObject *h = PyTuple_GET_ITEM(headers, i);
        if (!PyTuple_Check(h) || PyTuple_GET_SIZE(h) != 2
            || !PyBytes_Check(PyTuple_GET_ITEM(h, 0)) || !PyBytes_Check(PyTuple_GET_ITEM(h, 1))) {
            PyErr_SetString(PyExc_TypeError, "headers are (bytes, bytes) pairs");
            goto error;
        }
        int skip = PySet_Contains(args[6], PyTuple_GET_ITEM(h, 0));
        if (skip < 0)
            goto error;
        if (!skip && (put(&b, "\r\n", 2) || put_bytes(&b, PyTuple_GET_ITEM(h, 0))
                      || put(&b, ": ", 2) || put_bytes(&b, PyTuple_GET_ITEM(h, 1))))
            goto error;
    }
    int plain;
    if (put(&b, "\r\nX-Forwarded-For: ", 19))
        goto error;
    if ((plain = put_plain(&b, args[7])) <= 0)
        goto not_plain;
    if (put_bytes(&b, args[8]) || put_bytes(&b, args[9]) || put(&b, "\r\nX-Request-Id: ", 16))
        goto error;
    if ((plain = put_plain(&b, args[10])) <= 0)
        goto not_plain;
    if (put(&b, "\r\n\r\n", 4) || _PyBytes_Resize(&b.out, b.used))
        goto error;
    return b.out;
not_plain:
    if (plain < 0)
        goto error;
    Py_DECREF(b.out);
    Py_RETURN_NONE;
error:
    Py_XDECREF(b.out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan_request", (PyCFunction)(void (*)(void))scan_request, METH_FASTCALL,
     "The plainest upgrade request's head, read (see handshake.py_scan_request)."},
    {"scan_response", (PyCFunction)(void (*)(void))scan_response, METH_FASTCALL,
     "The plainest 101's head, read (see handshake.py_scan_response)."},
    {"request_head", (PyCFunction)(void (*)(void))request_head, METH_FASTCALL,
     "The backend's handshake request (see handshake.py_request_head)."},
    {"accept_key", (PyCFunction)accept_key, METH_O,
     "Sec-WebSocket-Accept for a key (see handshake.py_accept_key)."},
    {"set_request_type", (PyCFunction)set_request_type, METH_O,
     "The class read_request() makes (handshake.UpgradeRequest)."},
    {"read_request", (PyCFunction)(void (*)(void))read_request, METH_FASTCALL,
     "The plainest valid upgrade, read and checked (see handshake.py_read_request)."},
    {"accept_plain", (PyCFunction)(void (*)(void))accept_plain, METH_FASTCALL,
     "The plainest valid 101, checked, and the client's 101 (see handshake.py_accept_plain)."},
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
