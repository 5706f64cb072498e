/*
 * wsproxy.core._scan: the compiled twin of wsproxy.core.scan.py_whole_messages.
 *
 * The spec is in wsproxy/core/scan.py's docstring, and py_whole_messages there is the
 * readable reference: this file does the same, step for step, without creating a
 * Python object per frame. tests/unit/test_scan.py holds the two to the same answers.
 *
 *   whole_messages(data: bytes, pos: int, mask_bit: int, rsv_allowed: int,
 *                  max_size: int) -> tuple[int, int]
 *
 * Built by setup.py as an optional extension: without a C compiler the install goes
 * on and the Python implementation is used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *scan(const unsigned char *data, const uint64_t n, PyObject *const *args);

static PyObject *
whole_messages(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError,
                     "whole_messages() takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    /* bytes directly; anything else with the buffer protocol (bytearray, memoryview)
       through a Py_buffer, released at the end. */
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
    PyObject *result = scan(data, n, args);
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    return result;
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

static PyObject *
scan(const unsigned char *data, const uint64_t n, PyObject *const *args)
{
    long start, mask_bit, rsv_allowed;
    if (small_int(args[1], &start) < 0 || small_int(args[2], &mask_bit) < 0
        || small_int(args[3], &rsv_allowed) < 0)
        return NULL;
    if (start < 0 || (mask_bit != 0 && mask_bit != 0x80) || (rsv_allowed & ~0x70L)) {
        PyErr_SetString(PyExc_ValueError,
                        "whole_messages(): pos < 0, or mask_bit not 0 or 0x80, or "
                        "rsv_allowed not reserved bits");
        return NULL;
    }
    Py_ssize_t messages = 0;
    PyObject *end;
    if ((uint64_t)start >= n) {  /* nothing to walk: pos comes back as it was given */
        end = Py_NewRef(args[1]);
        goto pack;
    }
    /* max_size: past the range of long long, every length (< 2^63) is within it; below,
       none is. */
    int overflow = 0;
    long long max_size = PyLong_AsLongLongAndOverflow(args[4], &overflow);
    if (max_size == -1 && !overflow && PyErr_Occurred())
        return NULL;
    if (overflow > 0)
        max_size = INT64_MAX;
    else if (overflow < 0)
        max_size = -1;

    /* What py_whole_messages' table says: FIN and opcode 1 or 2 once the allowed
       reserved bits are taken away. */
    const unsigned char keep = (unsigned char)~rsv_allowed;
    const uint64_t key_len = mask_bit ? 4 : 0;
    uint64_t pos = (uint64_t)start;

    while (pos + 1 < n) {
        const unsigned char b0 = data[pos] & keep;
        if (b0 != 0x81 && b0 != 0x82)
            break;
        /* The 7-bit length when the mask bit is what it must be; 128 or more if not. */
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
        messages++;
        /* pos < n <= PY_SSIZE_T_MAX and length < 2^63: no overflow. */
        pos += head + length;
    }
    end = PyLong_FromUnsignedLongLong(pos);
    if (end == NULL)
        return NULL;
pack:;
    PyObject *count = PyLong_FromSsize_t(messages);
    if (count == NULL) {
        Py_DECREF(end);
        return NULL;
    }
    PyObject *result = PyTuple_New(2);
    if (result == NULL) {
        Py_DECREF(end);
        Py_DECREF(count);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, end);
    PyTuple_SET_ITEM(result, 1, count);
    return result;
}

static PyMethodDef methods[] = {
    {"whole_messages", (PyCFunction)(void (*)(void))whole_messages, METH_FASTCALL,
     "whole_messages(data, pos, mask_bit, rsv_allowed, max_size) -> (pos, messages)\n\n"
     "Skip the whole text and binary messages from pos on (wsproxy.core.scan)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "wsproxy.core._scan",
    .m_doc = "The compiled frame scanner of wsproxy.core.scan (same spec, same answers).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModuleDef_Init(&module_def);
}
