/* The IP scans of rules/detectors.py in C. `re` tried the detectors' patterns at every "." and ":" of a log and
 * mostly failed there: that was most of the scrubber's time. Optional: without it, the detectors use their regexes
 * alone, which are the reference (tests/rules/test_ipanchors.py holds the two equal).
 *
 *   v4_spans(text, name) -> [(start, end, name), ...]: all of detectors._scan_ipv4 (_V4's look-arounds, octets, and
 *                         the User-Agent product versions it leaves out)
 *   v6(text) -> [p, ...]  text[p] == ":" and  (?=:|(?:[0-9A-Fa-f]{1,4}+:){5}|(?:[0-9A-Fa-f]{1,4}+:)*+:): where
 *                         _V6_CAND may match; the detectors run it only there
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define IS_DIGIT(c) ((c) >= '0' && (c) <= '9')
#define IS_ALNUM(c) (IS_DIGIT(c) || ((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))
#define IS_HEX(c) (IS_DIGIT(c) || ((c) >= 'a' && (c) <= 'f') || ((c) >= 'A' && (c) <= 'F'))

/* One body per string kind: READ(i) is the code point at i (0 past the end). */
#define DEFINE_SCANNERS(SUFFIX, CHAR_T)                                                                            \
    static Py_ssize_t digits_##SUFFIX(const CHAR_T *s, Py_ssize_t n, Py_ssize_t i, int most) {                      \
        int k = 0;                                                                                                  \
        while (k < most && i + k < n && IS_DIGIT(s[i + k])) k++;                                                    \
        return k;                                                                                                   \
    }                                                                                                               \
    /* Whether s[at] may come before a first octet: not [0-9A-Za-z.], and (chrome) not the end of "Chrome/". */   \
    static int v4_before_##SUFFIX(const CHAR_T *s, Py_ssize_t at, int chrome) {                                     \
        if (at < 0) return 1;                                                                                       \
        if (IS_ALNUM(s[at]) || s[at] == '.') return 0;                                                              \
        if (chrome && at >= 6) {                                                                                    \
            static const char name[] = "Chrome/";                                                                   \
            for (int k = 0; k < 7; k++)                                                                             \
                if (s[at - 6 + k] != (CHAR_T)name[k]) return 1;                                                     \
            return 0;                                                                                               \
        }                                                                                                           \
        return 1;                                                                                                   \
    }                                                                                                               \
    /* The look-behinds of _V4, in its order: where the first octet (1-3 digits ending at p - 1) starts, or -1. */  \
    static Py_ssize_t v4_first_##SUFFIX(const CHAR_T *s, Py_ssize_t p) {                                            \
        if (p >= 3 && IS_DIGIT(s[p - 3]) && IS_DIGIT(s[p - 2]) && IS_DIGIT(s[p - 1])) {                             \
            int v = (s[p - 3] - '0') * 100 + (s[p - 2] - '0') * 10 + (s[p - 1] - '0');                              \
            if (v >= 100 && v <= 255 && v4_before_##SUFFIX(s, p - 4, 1)) return p - 3;                              \
        }                                                                                                           \
        if (p >= 2 && s[p - 2] >= '1' && s[p - 2] <= '9' && IS_DIGIT(s[p - 1]) && v4_before_##SUFFIX(s, p - 3, 1))  \
            return p - 2;                                                                                           \
        if (p >= 1 && IS_DIGIT(s[p - 1]) && v4_before_##SUFFIX(s, p - 2, 0)) return p - 1;                          \
        return -1;                                                                                                  \
    }                                                                                                               \
    static int v4_at_##SUFFIX(const CHAR_T *s, Py_ssize_t n, Py_ssize_t p) {                                        \
        Py_ssize_t i = p + 1;                                                                                       \
        if (p < 1 || !IS_DIGIT(s[p - 1])) return 0;                                                                 \
        for (int group = 0; group < 3; group++) {                                                                   \
            Py_ssize_t k = digits_##SUFFIX(s, n, i, 3);                                                             \
            if (k == 0) return 0;                                                                                   \
            i += k;                                                                                                 \
            if (group < 2) {                                                                                        \
                if (i >= n || s[i] != '.') return 0;                                                                \
                i++;                                                                                                \
            }                                                                                                       \
        }                                                                                                           \
        if (i < n) {                                                                                                \
            Py_UCS4 c = s[i];                                                                                       \
            if (IS_ALNUM(c)) return 0;                                                                              \
            if (c == '.' && i + 1 < n && IS_DIGIT(s[i + 1])) return 0;                                              \
        }                                                                                                           \
        return v4_first_##SUFFIX(s, p) >= 0;                                                                        \
    }                                                                                                               \
    /* One "hex{1,4}+:" at i: the position after it, or -1. */                                                      \
    static Py_ssize_t hexgroup_##SUFFIX(const CHAR_T *s, Py_ssize_t n, Py_ssize_t i) {                              \
        int k = 0;                                                                                                  \
        while (k < 4 && i + k < n && IS_HEX(s[i + k])) k++;                                                         \
        if (k == 0 || i + k >= n || s[i + k] != ':') return -1;                                                     \
        return i + k + 1;                                                                                           \
    }                                                                                                               \
    static int v6_at_##SUFFIX(const CHAR_T *s, Py_ssize_t n, Py_ssize_t p) {                                        \
        Py_ssize_t j = p + 1;                                                                                       \
        int reps = 0;                                                                                               \
        if (j < n && s[j] == ':') return 1;                                                                         \
        /* One walk over "hex{1,4}+:" groups serves both: five of them, or all of them and then ":". */            \
        for (;;) {                                                                                                  \
            Py_ssize_t next = hexgroup_##SUFFIX(s, n, j);                                                           \
            if (next < 0) break;                                                                                    \
            j = next;                                                                                               \
            if (++reps == 5) return 1;                                                                              \
        }                                                                                                           \
        return j < n && s[j] == ':';                                                                                \
    }                                                                                                               \
    static int token_char_##SUFFIX(Py_UCS4 c) { return IS_ALNUM(c) || c == '_' || c == '.' || c == '-'; }          \
    /* detectors._is_product_version: s[slash] == "/" ends a User-Agent product token ("Chrome/"). */               \
    static int product_version_##SUFFIX(const CHAR_T *s, Py_ssize_t slash) {                                        \
        Py_ssize_t lo = slash > 64 ? slash - 64 : 0, k = slash;                                                     \
        while (k > lo && token_char_##SUFFIX(s[k - 1])) k--;                                                        \
        if (k == slash || !(((s[k] | 32) >= 'a') && ((s[k] | 32) <= 'z'))) return 0;                                \
        if (k > lo) {                                                                                               \
            Py_UCS4 c = s[k - 1];                                                                                   \
            return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v' || c == '(' ||        \
                   c == ';' || c == ',' || c == '"' || c == '[';                                                    \
        }                                                                                                           \
        return lo == 0;                                                                                             \
    }                                                                                                               \
    /* A digit run at i of 1-3 digits that _OCTET takes whole: 0-255, no leading zero. Its length, or 0. */         \
    static int octet_##SUFFIX(const CHAR_T *s, Py_ssize_t n, Py_ssize_t i) {                                        \
        int k = 0, v = 0;                                                                                           \
        while (k < 3 && i + k < n && IS_DIGIT(s[i + k])) v = v * 10 + (s[i + (k++)] - '0');                         \
        if (k == 0 || v > 255 || (k > 1 && s[i] == '0')) return 0;                                                  \
        return k;                                                                                                   \
    }                                                                                                               \
    /* The rest of _V4 after its look-behinds, at the anchor p: the end of the address, or -1. */                   \
    static Py_ssize_t v4_end_##SUFFIX(const CHAR_T *s, Py_ssize_t n, Py_ssize_t p) {                                \
        Py_ssize_t i = p + 1;                                                                                       \
        for (int group = 0; group < 3; group++) {                                                                   \
            int k = octet_##SUFFIX(s, n, i);                                                                        \
            if (k == 0) return -1;                                                                                  \
            i += k;                                                                                                 \
            if (group < 2) {                                                                                        \
                if (i >= n || s[i] != '.') return -1;                                                               \
                i++;                                                                                                \
            }                                                                                                       \
        }                                                                                                           \
        return i; /* the look-ahead already checked what follows */                                                \
    }                                                                                                               \
    /* detectors._scan_ipv4 whole: (start, end, name) of each address, product versions ("Chrome/1.2.3.4") left. */ \
    static int v4_spans_##SUFFIX(const CHAR_T *s, Py_ssize_t n, PyObject *name, PyObject *out) {                    \
        Py_ssize_t last = 0;                                                                                        \
        for (Py_ssize_t p = 0; p < n; p++) {                                                                        \
            if (sizeof(CHAR_T) == 1) {                                                                              \
                const void *found = memchr(s + p, '.', (size_t)(n - p));                                            \
                if (found == NULL) break;                                                                           \
                p = (const CHAR_T *)found - s;                                                                      \
            } else if (s[p] != '.') {                                                                               \
                continue;                                                                                           \
            }                                                                                                       \
            if (p < last || !v4_at_##SUFFIX(s, n, p)) continue;                                                     \
            Py_ssize_t end = v4_end_##SUFFIX(s, n, p);                                                              \
            if (end < 0) continue;                                                                                  \
            last = end;                                                                                             \
            Py_ssize_t start = v4_first_##SUFFIX(s, p);                                                             \
            if (start > 0 && s[start - 1] == '/' && product_version_##SUFFIX(s, start - 1)) continue;               \
            PyObject *span = Py_BuildValue("(nnO)", start, end, name);                                              \
            if (span == NULL || PyList_Append(out, span) < 0) {                                                     \
                Py_XDECREF(span);                                                                                   \
                return -1;                                                                                          \
            }                                                                                                       \
            Py_DECREF(span);                                                                                        \
        }                                                                                                           \
        return 0;                                                                                                   \
    }                                                                                                               \
    /* The positions of detectors.v6's anchors, as ints (name: unused). */                                          \
    static int v6_anchors_##SUFFIX(const CHAR_T *s, Py_ssize_t n, PyObject *Py_UNUSED(name), PyObject *out) {       \
        for (Py_ssize_t p = 0; p < n; p++) {                                                                        \
            if (sizeof(CHAR_T) == 1) {                                                                              \
                const void *found = memchr(s + p, ':', (size_t)(n - p));                                            \
                if (found == NULL) break;                                                                           \
                p = (const CHAR_T *)found - s;                                                                      \
            } else if (s[p] != ':') {                                                                               \
                continue;                                                                                           \
            }                                                                                                       \
            if (!v6_at_##SUFFIX(s, n, p)) continue;                                                                 \
            PyObject *pos = PyLong_FromSsize_t(p);                                                                  \
            if (pos == NULL || PyList_Append(out, pos) < 0) {                                                       \
                Py_XDECREF(pos);                                                                                    \
                return -1;                                                                                          \
            }                                                                                                       \
            Py_DECREF(pos);                                                                                         \
        }                                                                                                           \
        return 0;                                                                                                   \
    }

DEFINE_SCANNERS(1, Py_UCS1)
DEFINE_SCANNERS(2, Py_UCS2)
DEFINE_SCANNERS(4, Py_UCS4)


/* A scan of `text` by its string kind, into a new list. */
#define SCAN(FN, text, name)                                                                                        \
    do {                                                                                                            \
        Py_ssize_t n_ = PyUnicode_GET_LENGTH(text);                                                                 \
        const void *data_ = PyUnicode_DATA(text);                                                                   \
        int kind_ = PyUnicode_KIND(text), status_;                                                                  \
        PyObject *out_ = PyList_New(0);                                                                             \
        if (out_ == NULL) return NULL;                                                                              \
        if (kind_ == PyUnicode_1BYTE_KIND)                                                                          \
            status_ = FN##_1((const Py_UCS1 *)data_, n_, name, out_);                                               \
        else if (kind_ == PyUnicode_2BYTE_KIND)                                                                     \
            status_ = FN##_2((const Py_UCS2 *)data_, n_, name, out_);                                               \
        else                                                                                                        \
            status_ = FN##_4((const Py_UCS4 *)data_, n_, name, out_);                                               \
        if (status_ < 0) {                                                                                          \
            Py_DECREF(out_);                                                                                        \
            return NULL;                                                                                            \
        }                                                                                                           \
        return out_;                                                                                                \
    } while (0)

static PyObject *v4_spans(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *text, *name;
    if (!PyArg_ParseTuple(args, "UU", &text, &name)) return NULL;
    SCAN(v4_spans, text, name);
}

static PyObject *v6(PyObject *Py_UNUSED(self), PyObject *arg) {
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "a str is required");
        return NULL;
    }
    SCAN(v6_anchors, arg, Py_None);
}

static PyMethodDef methods[] = {
    {"v4_spans", v4_spans, METH_VARARGS,
     "v4_spans(text, name): rules.detectors._scan_ipv4(text), each span (start, end, name)."},
    {"v6", v6, METH_O, "Positions of the \":\" where an IPv6 candidate of rules.detectors may begin."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ipanchors", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ipanchors(void) { return PyModule_Create(&module); }
