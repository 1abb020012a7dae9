/* Avro record writers and readers for the codec's hot path, in C.
 *
 * A Record holds one message type's layout, taken from its schema by
 * apex/avro_compiled.py: for each field, its attribute, its Avro kind and the
 * conversions to and from the wire. write() turns a message into header + body;
 * read() turns header + body back into a message. They are a shortcut, never the
 * authority: any value or byte they were not written for raises, and the codec
 * then asks fastavro, whose result or error is the one returned. So this code
 * must only ever succeed with what fastavro would give; tests/unit/test_codec.py
 * checks that they agree, byte for byte, on every message type.
 *
 * Fields of a slotted class are read and stored through their slots' offsets
 * (what object.__setattr__ and the member descriptors do), and a message is
 * built without running __init__ (apex.domain.frozen.constructor's contract:
 * only for classes without __post_init__ or default factories).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

enum kind { K_STRING, K_LONG, K_BOOLEAN, K_ENUM, K_OPT_STRING, K_OPT_LONG };

typedef struct {
    PyObject *name;      /* attribute name */
    Py_ssize_t offset;   /* slot offset in the message, or -1: use getattr */
    int kind;
    PyObject *to_wire;   /* callable or NULL */
    PyObject *from_wire; /* callable or NULL */
    PyObject *symbols;   /* enum: tuple of str */
    PyObject *index;     /* enum: dict str -> int */
} Field;

typedef struct {
    PyObject_HEAD
    PyObject *header; /* bytes */
    PyObject *cls;
    PyObject *make;   /* NULL: store into slots of cls; else called with values in order */
    Py_ssize_t nfields;
    Field *fields;
} Record;

/* -- varints --------------------------------------------------------------------------- */

#define BODY_INLINE 512

typedef struct {
    char *data;
    Py_ssize_t len, cap;
    char inline_[BODY_INLINE];
} Buffer;

static int
buffer_reserve(Buffer *b, Py_ssize_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->len + more)
        cap *= 2;
    char *data = PyMem_Malloc(cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(data, b->data, b->len);
    if (b->data != b->inline_)
        PyMem_Free(b->data);
    b->data = data;
    b->cap = cap;
    return 0;
}

static int
write_long(Buffer *b, int64_t value)
{
    if (buffer_reserve(b, 10) < 0)
        return -1;
    uint64_t n = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    unsigned char *out = (unsigned char *)b->data + b->len;
    while (n > 0x7F) {
        *out++ = (unsigned char)(n & 0x7F) | 0x80;
        n >>= 7;
    }
    *out++ = (unsigned char)n;
    b->len = (char *)out - b->data;
    return 0;
}

static int
write_bytes(Buffer *b, const char *data, Py_ssize_t len)
{
    if (write_long(b, len) < 0 || buffer_reserve(b, len) < 0)
        return -1;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

static int
write_byte(Buffer *b, unsigned char byte)
{
    if (buffer_reserve(b, 1) < 0)
        return -1;
    b->data[b->len++] = (char)byte;
    return 0;
}

/* An int as an Avro long; OverflowError beyond 64 bits, TypeError if not an int. */
static int
write_int(Buffer *b, PyObject *value)
{
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow) {
        PyErr_SetString(PyExc_OverflowError, "does not fit an Avro long");
        return -1;
    }
    if (n == -1 && PyErr_Occurred())
        return -1;
    return write_long(b, n);
}

static int
write_str(Buffer *b, PyObject *value)
{
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(value, &len); /* strict: no lone surrogates */
    if (utf8 == NULL)
        return -1;
    return write_bytes(b, utf8, len);
}

static int
write_field(Buffer *b, Field *f, PyObject *value)
{
    switch (f->kind) {
    case K_STRING: /* exactly str: a subclass may write itself otherwise (its encode()) */
        if (!PyUnicode_CheckExact(value))
            break;
        return write_str(b, value);
    case K_LONG:
        if (!PyLong_Check(value))
            break;
        return write_int(b, value);
    case K_BOOLEAN:
        /* fastavro writes any value's truth; only True and False (and 1, 0) here. */
        if (value == Py_True || value == Py_False)
            return write_byte(b, value == Py_True);
        if (PyLong_CheckExact(value)) {
            long n = PyLong_AsLong(value);
            if (n == 0 || n == 1)
                return write_byte(b, (unsigned char)n);
        }
        break;
    case K_ENUM: {
        PyObject *i = PyDict_GetItemWithError(f->index, value);
        if (i == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "not a symbol of the enum");
            return -1;
        }
        return write_long(b, PyLong_AsLongLong(i));
    }
    case K_OPT_STRING:
    case K_OPT_LONG:
        /* fastavro picks the branch by the value's type: exactly None, str or int here. */
        if (value == Py_None)
            return write_byte(b, 0);
        if (f->kind == K_OPT_STRING && PyUnicode_CheckExact(value))
            return write_byte(b, 2) < 0 ? -1 : write_str(b, value);
        if (f->kind == K_OPT_LONG && PyLong_CheckExact(value))
            return write_byte(b, 2) < 0 ? -1 : write_int(b, value);
        break;
    }
    PyErr_Format(PyExc_TypeError, "%R: a %s the compiled writer does not take", f->name,
                 Py_TYPE(value)->tp_name);
    return -1;
}

static PyObject *
get_field(PyObject *message, Field *f)
{
    if (f->offset < 0)
        return PyObject_GetAttr(message, f->name);
    PyObject *value = *(PyObject **)((char *)message + f->offset);
    if (value == NULL) {
        PyErr_SetObject(PyExc_AttributeError, f->name);
        return NULL;
    }
    Py_INCREF(value);
    return value;
}

static int
initialised(Record *self)
{
    if (self->header != NULL)
        return 1;
    PyErr_SetString(PyExc_TypeError, "an uninitialised Record");
    return 0;
}

static PyObject *
Record_write(Record *self, PyObject *message)
{
    if (!initialised(self))
        return NULL;
    if (Py_TYPE(message) != (PyTypeObject *)self->cls) {
        PyErr_SetString(PyExc_TypeError, "a message of another type");
        return NULL;
    }
    Buffer b;
    b.data = b.inline_;
    b.cap = BODY_INLINE;
    b.len = PyBytes_GET_SIZE(self->header);
    memcpy(b.data, PyBytes_AS_STRING(self->header), b.len);
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < self->nfields; i++) {
        Field *f = &self->fields[i];
        PyObject *value = get_field(message, f);
        if (value == NULL)
            goto done;
        if (f->to_wire != NULL) {
            PyObject *converted = PyObject_CallOneArg(f->to_wire, value);
            Py_DECREF(value);
            if (converted == NULL)
                goto done;
            value = converted;
        }
        int failed = write_field(&b, f, value);
        Py_DECREF(value);
        if (failed)
            goto done;
    }
    result = PyBytes_FromStringAndSize(b.data, b.len);
done:
    if (b.data != b.inline_)
        PyMem_Free(b.data);
    return result;
}

/* -- reading ----------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *data;
    Py_ssize_t pos, end;
} Reader;

static int
eof(void)
{
    PyErr_SetString(PyExc_EOFError, "the record ends early");
    return -1;
}

/* Only what fastavro reads alike: at most 10 bytes, nothing beyond 64 bits. */
static int
read_long(Reader *r, int64_t *out)
{
    uint64_t n = 0;
    int shift = 0;
    for (;;) {
        if (r->pos >= r->end)
            return eof();
        unsigned char byte = r->data[r->pos++];
        if (shift == 63 && (byte & 0x7E)) {
            PyErr_SetString(PyExc_ValueError, "a varint beyond 64 bits");
            return -1;
        }
        n |= (uint64_t)(byte & 0x7F) << shift;
        if (byte < 0x80)
            break;
        shift += 7;
        if (shift > 63) {
            PyErr_SetString(PyExc_ValueError, "a varint longer than 10 bytes");
            return -1;
        }
    }
    *out = (int64_t)((n >> 1) ^ (~(n & 1) + 1));
    return 0;
}

static PyObject *
read_str(Reader *r)
{
    int64_t n;
    if (read_long(r, &n) < 0)
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "negative length");
        return NULL;
    }
    if (n > r->end - r->pos) {
        eof();
        return NULL;
    }
    PyObject *s = PyUnicode_DecodeUTF8((const char *)r->data + r->pos, (Py_ssize_t)n, NULL);
    r->pos += (Py_ssize_t)n;
    return s;
}

static PyObject *
read_field(Reader *r, Field *f)
{
    int64_t n;
    switch (f->kind) {
    case K_STRING:
        return read_str(r);
    case K_LONG:
        return read_long(r, &n) < 0 ? NULL : PyLong_FromLongLong(n);
    case K_BOOLEAN:
        if (r->pos >= r->end) {
            eof();
            return NULL;
        }
        switch (r->data[r->pos++]) {
        case 0:
            Py_RETURN_FALSE;
        case 1:
            Py_RETURN_TRUE;
        }
        PyErr_SetString(PyExc_ValueError, "a boolean neither 0 nor 1");
        return NULL;
    case K_ENUM:
        if (read_long(r, &n) < 0)
            return NULL;
        if (n < 0 || n >= PyTuple_GET_SIZE(f->symbols)) {
            PyErr_SetString(PyExc_ValueError, "bad enum index");
            return NULL;
        }
        return Py_NewRef(PyTuple_GET_ITEM(f->symbols, (Py_ssize_t)n));
    case K_OPT_STRING:
    case K_OPT_LONG:
        if (r->pos >= r->end) {
            eof();
            return NULL;
        }
        switch (r->data[r->pos++]) {
        case 0:
            Py_RETURN_NONE;
        case 2:
            if (f->kind == K_OPT_STRING)
                return read_str(r);
            return read_long(r, &n) < 0 ? NULL : PyLong_FromLongLong(n);
        }
        PyErr_SetString(PyExc_ValueError, "bad union branch");
        return NULL;
    }
    PyErr_SetString(PyExc_SystemError, "unknown field kind");
    return NULL;
}

#define MAX_FIELDS 64

/* A message of cls from its values in schema order: stored into its slots (no __init__). */
static PyObject *
construct(Record *self, PyObject **values)
{
    if (self->make != NULL)
        return PyObject_Vectorcall(self->make, values, self->nfields, NULL);
    PyTypeObject *type = (PyTypeObject *)self->cls;
    PyObject *obj = type->tp_alloc(type, 0);
    if (obj == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->nfields; i++) {
        PyObject **slot = (PyObject **)((char *)obj + self->fields[i].offset);
        *slot = Py_NewRef(values[i]);
    }
    return obj;
}

static PyObject *
Record_read(Record *self, PyObject *data)
{
    Py_buffer view;
    if (!initialised(self) || PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Reader r = {view.buf, PyBytes_GET_SIZE(self->header), view.len};
    PyObject *values[MAX_FIELDS];
    Py_ssize_t got = 0;
    PyObject *result = NULL;
    if (r.end < r.pos) {
        eof();
        goto done;
    }
    for (; got < self->nfields; got++) {
        values[got] = read_field(&r, &self->fields[got]);
        if (values[got] == NULL)
            goto done;
    }
    if (r.pos != r.end) {
        PyErr_SetString(PyExc_ValueError, "trailing bytes");
        goto done;
    }
    for (Py_ssize_t i = 0; i < self->nfields; i++) {
        PyObject *from_wire = self->fields[i].from_wire;
        if (from_wire != NULL) {
            PyObject *converted = PyObject_CallOneArg(from_wire, values[i]);
            if (converted == NULL)
                goto done;
            Py_SETREF(values[i], converted);
        }
    }
    result = construct(self, values);
done:
    for (Py_ssize_t i = 0; i < got; i++)
        Py_DECREF(values[i]);
    PyBuffer_Release(&view);
    return result;
}

/* -- the type ---------------------------------------------------------------------------- */

/* The slot offset of attribute ``name`` of ``cls``: a member descriptor holding an object. */
static Py_ssize_t
slot_offset(PyObject *cls, PyObject *name)
{
    PyObject *descr = PyObject_GetAttr(cls, name);
    if (descr == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t offset = -1;
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX && !(member->flags & READONLY))
            offset = member->offset;
    }
    Py_DECREF(descr);
    return offset;
}

static void
Record_clear_fields(Record *self)
{
    for (Py_ssize_t i = 0; i < self->nfields; i++) {
        Field *f = &self->fields[i];
        Py_XDECREF(f->name);
        Py_XDECREF(f->to_wire);
        Py_XDECREF(f->from_wire);
        Py_XDECREF(f->symbols);
        Py_XDECREF(f->index);
    }
    PyMem_Free(self->fields);
    self->fields = NULL;
    self->nfields = 0;
}

static void
Record_dealloc(Record *self)
{
    Record_clear_fields(self);
    Py_XDECREF(self->header);
    Py_XDECREF(self->cls);
    Py_XDECREF(self->make);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
none_to_null(PyObject *o)
{
    return o == Py_None ? NULL : Py_NewRef(o);
}

/* Record(header, cls, fields, make)
 *   fields: ((name, kind, to_wire | None, from_wire | None, symbols | None), ...) in schema order
 *   make:   None: store into cls's slots (every field must be a slot); else called with
 *           the values in schema order.
 */
static int
Record_init(Record *self, PyObject *args, PyObject *kwds)
{
    PyObject *header, *cls, *fields, *make;
    static char *names[] = {"header", "cls", "fields", "make", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "SO!O!O:Record", names, &header, &PyType_Type,
                                     &cls, &PyTuple_Type, &fields, &make))
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(fields);
    if (n > MAX_FIELDS) {
        PyErr_Format(PyExc_ValueError, "more than %d fields", MAX_FIELDS);
        return -1;
    }
    if (self->fields != NULL) { /* a Record in use must not change under its callers */
        PyErr_SetString(PyExc_TypeError, "a Record is initialised once");
        return -1;
    }
    Py_XSETREF(self->header, Py_NewRef(header));
    Py_XSETREF(self->cls, Py_NewRef(cls));
    Py_XSETREF(self->make, none_to_null(make));
    self->fields = PyMem_Calloc(n ? n : 1, sizeof(Field));
    if (self->fields == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->nfields = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *spec = PyTuple_GET_ITEM(fields, i);
        Field *f = &self->fields[i];
        PyObject *name, *to_wire, *from_wire, *symbols;
        if (!PyArg_ParseTuple(spec, "UiOOO:field", &name, &f->kind, &to_wire, &from_wire,
                              &symbols))
            return -1;
        if (f->kind < K_STRING || f->kind > K_OPT_LONG) {
            PyErr_Format(PyExc_ValueError, "field %R: unknown kind %d", name, f->kind);
            return -1;
        }
        f->name = Py_NewRef(name);
        f->to_wire = none_to_null(to_wire);
        f->from_wire = none_to_null(from_wire);
        f->offset = slot_offset(cls, name);
        if (f->kind == K_ENUM) {
            if (!PyTuple_Check(symbols)) {
                PyErr_Format(PyExc_TypeError, "field %R: an enum needs its symbols", name);
                return -1;
            }
            f->symbols = Py_NewRef(symbols);
            f->index = PyDict_New();
            if (f->index == NULL)
                return -1;
            for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(symbols); k++) {
                PyObject *key = PyLong_FromSsize_t(k);
                if (key == NULL ||
                    PyDict_SetItem(f->index, PyTuple_GET_ITEM(symbols, k), key) < 0) {
                    Py_XDECREF(key);
                    return -1;
                }
                Py_DECREF(key);
            }
        }
    }
    if (self->make == NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (self->fields[i].offset < 0) {
                PyErr_Format(PyExc_TypeError, "%R: not a slot of %R", self->fields[i].name, cls);
                return -1;
            }
        }
    }
    return 0;
}

static PyMethodDef Record_methods[] = {
    {"write", (PyCFunction)Record_write, METH_O, "The message's header and Avro body."},
    {"read", (PyCFunction)Record_read, METH_O, "The message of a header and Avro body."},
    {NULL},
};

static PyTypeObject RecordType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "apex._avro.Record",
    .tp_basicsize = sizeof(Record),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One message type's Avro writer and reader.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Record_init,
    .tp_dealloc = (destructor)Record_dealloc,
    .tp_methods = Record_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "apex._avro",
    .m_doc = "Avro record writers and readers for the codec's hot path.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__avro(void)
{
    if (PyType_Ready(&RecordType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Record", (PyObject *)&RecordType) < 0 ||
        PyModule_AddIntConstant(m, "STRING", K_STRING) < 0 ||
        PyModule_AddIntConstant(m, "LONG", K_LONG) < 0 ||
        PyModule_AddIntConstant(m, "BOOLEAN", K_BOOLEAN) < 0 ||
        PyModule_AddIntConstant(m, "ENUM", K_ENUM) < 0 ||
        PyModule_AddIntConstant(m, "OPTIONAL_STRING", K_OPT_STRING) < 0 ||
        PyModule_AddIntConstant(m, "OPTIONAL_LONG", K_OPT_LONG) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
