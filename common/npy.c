/*
 * common/npy.c: NumPy .npy int32 matrices (format in npy.h).
 */
#include "common/npy.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define NPY_ALIGN 64

int npy_write_i32(const char *path, const int32_t *data, int rows, int cols) {
    if (rows < 0 || cols < 0 || (rows > 0 && cols > 0 && !data)) { errno = EINVAL; return -1; }
    char dict[128];
    int dl = snprintf(dict, sizeof dict, "{'descr': '<i4', 'fortran_order': False, 'shape': (%d, %d), }",
                      rows, cols);
    /* preamble 10 bytes + dict + spaces + '\n', total a multiple of 64 */
    size_t hdr_total = (size_t)(10 + dl + 1 + NPY_ALIGN - 1) / NPY_ALIGN * NPY_ALIGN;
    size_t hlen = hdr_total - 10;
    size_t nbytes = (size_t)rows * (size_t)cols * 4;
    unsigned char *buf = xmalloc(hdr_total + nbytes);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = 1;
    buf[7] = 0;
    buf[8] = (unsigned char)(hlen & 0xff);
    buf[9] = (unsigned char)(hlen >> 8);
    memset(buf + 10, ' ', hlen);
    memcpy(buf + 10, dict, (size_t)dl);
    buf[hdr_total - 1] = '\n';
    /* little-endian int32, byte by byte so the file is the same on any host */
    unsigned char *p = buf + hdr_total;
    for (size_t i = 0; i < (size_t)rows * (size_t)cols; i++) {
        uint32_t v = (uint32_t)data[i];
        p[4 * i + 0] = (unsigned char)(v);
        p[4 * i + 1] = (unsigned char)(v >> 8);
        p[4 * i + 2] = (unsigned char)(v >> 16);
        p[4 * i + 3] = (unsigned char)(v >> 24);
    }
    int rc = write_file_atomic(path, buf, hdr_total + nbytes);
    int saved = errno;
    free(buf);
    errno = saved;
    return rc;
}

/* Position just after `key` (quoted with ' or ") and the following ':' in the dict text, or NULL. */
static const char *dict_value_(const char *h, const char *key) {
    size_t kl = strlen(key);
    for (const char *p = h; *p; p++) {
        if ((*p == '\'' || *p == '"') && strncmp(p + 1, key, kl) == 0 && p[1 + kl] == *p) {
            const char *q = p + 2 + kl;
            while (*q == ' ') q++;
            if (*q != ':') return NULL;
            q++;
            while (*q == ' ') q++;
            return q;
        }
    }
    return NULL;
}

int32_t *npy_read_i32(const char *path, int *rows, int *cols, char *err, size_t errlen) {
    size_t size = 0;
    unsigned char *buf = (unsigned char *)read_file_all(path, &size);
    if (!buf) {
        set_error(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return NULL;
    }
    int32_t *out = NULL;
    char *hdr = NULL;
    if (size < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) {
        set_error(err, errlen, "%s: not a NumPy .npy file (bad magic)", path);
        goto done;
    }
    int major = buf[6];
    size_t hlen, pre;
    if (major == 1) {
        hlen = (size_t)buf[8] | ((size_t)buf[9] << 8);
        pre = 10;
    } else if (major == 2 || major == 3) {
        if (size < 12) { set_error(err, errlen, "%s: truncated .npy header", path); goto done; }
        hlen = (size_t)buf[8] | ((size_t)buf[9] << 8) | ((size_t)buf[10] << 16) | ((size_t)buf[11] << 24);
        pre = 12;
    } else {
        set_error(err, errlen, "%s: unsupported .npy format version %d.%d", path, major, buf[7]);
        goto done;
    }
    if (hlen > size - pre) {
        set_error(err, errlen, "%s: truncated .npy header (header length %zu, file %zu bytes)", path,
                hlen, size);
        goto done;
    }
    hdr = xmalloc(hlen + 1);
    memcpy(hdr, buf + pre, hlen);
    hdr[hlen] = 0;

    const char *v = dict_value_(hdr, "descr");
    int elem;
    if (!v || (*v != '\'' && *v != '"')) {
        set_error(err, errlen, "%s: .npy header has no 'descr': %s", path, hdr);
        goto done;
    }
    if (strncmp(v + 1, "<i4", 3) == 0 && v[4] == *v) elem = 4;
    else if (strncmp(v + 1, "<i8", 3) == 0 && v[4] == *v) elem = 8;
    else {
        const char *e = strchr(v + 1, *v);
        int n = e ? (int)(e - v - 1) : 8;
        set_error(err, errlen, "%s: unsupported dtype '%.*s' (need '<i4' int32 or '<i8' int64; "
                "HINT: np.save(path, a.astype(np.int32))", path, n, v + 1);
        goto done;
    }
    v = dict_value_(hdr, "fortran_order");
    if (!v || strncmp(v, "False", 5) != 0) {
        set_error(err, errlen, "%s: only C-order arrays are supported (fortran_order must be False; "
                "HINT: np.ascontiguousarray)", path);
        goto done;
    }
    v = dict_value_(hdr, "shape");
    if (!v || *v != '(') {
        set_error(err, errlen, "%s: .npy header has no 'shape' tuple", path);
        goto done;
    }
    long dims[8];
    int nd = 0;
    const char *p = v + 1;
    for (;;) {
        while (*p == ' ') p++;
        if (*p == ')') break;
        char *end;
        errno = 0;
        long d = strtol(p, &end, 10);
        if (end == p || errno || d < 0) {
            set_error(err, errlen, "%s: bad 'shape' in .npy header: %s", path, v);
            goto done;
        }
        if (nd < 8) dims[nd] = d;
        nd++;
        p = end;
        while (*p == ' ') p++;
        if (*p == ',') p++;
        else if (*p != ')') {
            set_error(err, errlen, "%s: bad 'shape' in .npy header: %s", path, v);
            goto done;
        }
    }
    if (nd != 2) {
        set_error(err, errlen, "%s: expected a 2-D array [rows, cols], got %d dimensions", path, nd);
        goto done;
    }
    if (dims[0] > INT_MAX || dims[1] > INT_MAX ||
        (dims[1] > 0 && (size_t)dims[0] > (SIZE_MAX / 8) / (size_t)dims[1])) {
        set_error(err, errlen, "%s: array too large (%ld x %ld)", path, dims[0], dims[1]);
        goto done;
    }
    size_t n = (size_t)dims[0] * (size_t)dims[1];
    size_t need = n * (size_t)elem;
    size_t have = size - pre - hlen;
    if (have != need) {
        set_error(err, errlen, "%s: data is %zu bytes but shape (%ld, %ld) of %d-byte ints needs %zu (%s)",
                path, have, dims[0], dims[1], elem, need, have < need ? "truncated file" : "trailing bytes");
        goto done;
    }
    const unsigned char *d = buf + pre + hlen;
    out = xmalloc(n ? n * sizeof(int32_t) : 1);
    for (size_t i = 0; i < n; i++) {
        if (elem == 4) {
            uint32_t u = (uint32_t)d[4 * i] | ((uint32_t)d[4 * i + 1] << 8) |
                         ((uint32_t)d[4 * i + 2] << 16) | ((uint32_t)d[4 * i + 3] << 24);
            out[i] = (int32_t)u;
        } else {
            uint64_t u = 0;
            for (int k = 7; k >= 0; k--) u = (u << 8) | d[8 * i + (size_t)k];
            int64_t s = (int64_t)u;
            if (s < INT32_MIN || s > INT32_MAX) {
                set_error(err, errlen, "%s: value %lld at row %zu col %zu does not fit in int32", path,
                        (long long)s, i / (size_t)dims[1], i % (size_t)dims[1]);
                free(out);
                out = NULL;
                goto done;
            }
            out[i] = (int32_t)s;
        }
    }
    *rows = (int)dims[0];
    *cols = (int)dims[1];
done:
    free(hdr);
    free(buf);
    return out;
}
