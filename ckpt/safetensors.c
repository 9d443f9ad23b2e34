/*
 * ckpt/safetensors.c: safetensors reader (mmap + full header validation) and durable F32 writer.
 * The format is specified in safetensors.h.
 */
#include "ckpt/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c copies tensor bytes as host floats: little-endian hosts only"
#endif

#define ST_MAX_HEADER (100u << 20)   /* the reference implementation's limit */

static const struct { const char *name; size_t size; } dtypes_[] = {
    [ST_F64] = {"F64", 8},  [ST_F32] = {"F32", 4},  [ST_F16] = {"F16", 2},  [ST_BF16] = {"BF16", 2},
    [ST_I64] = {"I64", 8},  [ST_I32] = {"I32", 4},  [ST_I16] = {"I16", 2},  [ST_I8] = {"I8", 1},
    [ST_U64] = {"U64", 8},  [ST_U32] = {"U32", 4},  [ST_U16] = {"U16", 2},  [ST_U8] = {"U8", 1},
    [ST_BOOL] = {"BOOL", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};
#define ST_NUM_DTYPES ((int)(sizeof dtypes_ / sizeof dtypes_[0]))

const char *st_dtype_name(StDtype d) { return dtypes_[d].name; }
size_t st_dtype_size(StDtype d) { return dtypes_[d].size; }

/* IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. */
float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t e = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (e == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);               /* inf / nan */
    } else if (e != 0) {
        bits = sign | ((e + 127 - 15) << 23) | (man << 13);     /* normal */
    } else if (man == 0) {
        bits = sign;                                           /* +-0 */
    } else {                                                   /* subnormal: man * 2^-24 */
        int shift = 0;
        while (!(man & 0x400)) { man <<= 1; shift++; }
        man &= 0x3ff;
        bits = sign | ((uint32_t)(127 - 15 + 1 - shift) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* bfloat16 is the upper half of a float32. */
float st_bf16_to_f32(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void st_close(StFile *f) {
    if (!f) return;
    if (f->map) munmap((void *)f->map, f->file_size);
    for (int i = 0; i < f->num_tensors; i++) free(f->tensors[i].name);
    for (int i = 0; i < f->num_meta; i++) { free(f->meta_keys[i]); free(f->meta_values[i]); }
    free(f->tensors);
    free(f->meta_keys);
    free(f->meta_values);
    free(f->path);
    memset(f, 0, sizeof *f);
}

static int cmp_begin_(const void *a, const void *b) {
    const StTensorInfo *x = *(const StTensorInfo *const *)a, *y = *(const StTensorInfo *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Parse one tensor entry; 0 or -1 with err set. */
static int parse_entry_(const char *path, const char *name, json_t *v, size_t data_size,
                        StTensorInfo *t, char *err, size_t errlen) {
    if (!json_is_object(v)) {
        set_error(err, errlen, "%s: tensor '%s': header entry is not a JSON object", path, name);
        return -1;
    }
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo)) {
        set_error(err, errlen, "%s: tensor '%s': needs string \"dtype\", array \"shape\" and array "
                "\"data_offsets\"", path, name);
        return -1;
    }
    const char *ds = json_string_value(jd);
    int dt = -1;
    for (int i = 0; i < ST_NUM_DTYPES; i++)
        if (strcmp(ds, dtypes_[i].name) == 0) dt = i;
    if (dt < 0) {
        set_error(err, errlen, "%s: tensor '%s': unknown dtype \"%s\"", path, name, ds);
        return -1;
    }
    t->dtype = (StDtype)dt;
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS) {
        set_error(err, errlen, "%s: tensor '%s': %zu dimensions (at most %d supported)", path, name, nd,
                ST_MAX_DIMS);
        return -1;
    }
    t->ndim = (int)nd;
    size_t numel = 1;
    int overflow = 0;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0) {
            set_error(err, errlen, "%s: tensor '%s': shape entries must be non-negative integers", path,
                    name);
            return -1;
        }
        t->shape[i] = json_integer_value(d);
        uint64_t s = (uint64_t)t->shape[i];
        if (s != 0 && numel > SIZE_MAX / 8 / s) overflow = 1;
        else numel *= (size_t)s;
    }
    if (json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1)) || json_integer_value(json_array_get(jo, 0)) < 0 ||
        json_integer_value(json_array_get(jo, 1)) < 0) {
        set_error(err, errlen, "%s: tensor '%s': data_offsets must be [begin, end], non-negative "
                "integers", path, name);
        return -1;
    }
    t->begin = (size_t)json_integer_value(json_array_get(jo, 0));
    t->end = (size_t)json_integer_value(json_array_get(jo, 1));
    if (t->begin > t->end || t->end > data_size) {
        set_error(err, errlen, "%s: tensor '%s': data_offsets [%zu, %zu] out of range (data section is "
                "%zu bytes; truncated file?)", path, name, t->begin, t->end, data_size);
        return -1;
    }
    if (overflow || numel * dtypes_[dt].size != t->end - t->begin) {
        char need[32];
        if (overflow) snprintf(need, sizeof need, "more than %zu", (size_t)SIZE_MAX / 8);
        else snprintf(need, sizeof need, "%zu", numel * dtypes_[dt].size);
        set_error(err, errlen, "%s: tensor '%s': shape needs %s bytes of %s but data_offsets span %zu",
                path, name, need, ds, t->end - t->begin);
        return -1;
    }
    t->numel = numel;
    return 0;
}

int st_open(StFile *f, const char *path, char *err, size_t errlen) {
    memset(f, 0, sizeof *f);
    json_t *root = NULL;
    StTensorInfo **order = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        set_error(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat stb;
    if (fstat(fd, &stb) != 0) {
        set_error(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    f->path = xstrdup(path);
    f->file_size = (size_t)stb.st_size;
    if (f->file_size < 8) {
        set_error(err, errlen, "%s: %zu bytes, too short for a safetensors file (needs an 8-byte "
                "header length)", path, f->file_size);
        close(fd);
        goto fail;
    }
    void *map = mmap(NULL, f->file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        set_error(err, errlen, "%s: mmap failed: %s", path, strerror(errno));
        goto fail;
    }
    f->map = map;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | f->map[i];
    if (n > f->file_size - 8 || n > ST_MAX_HEADER) {
        set_error(err, errlen, "%s: header length %llu does not fit the file (%zu bytes; limit %u): "
                "truncated or not a safetensors file", path, (unsigned long long)n, f->file_size,
                ST_MAX_HEADER);
        goto fail;
    }
    if (n < 2 || f->map[8] != '{') {
        set_error(err, errlen, "%s: header does not start with '{': not a safetensors file", path);
        goto fail;
    }
    f->data_start = 8 + (size_t)n;
    size_t data_size = f->file_size - f->data_start;
    json_error_t jerr;
    root = json_loadb((const char *)f->map + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root)) {
        set_error(err, errlen, "%s: bad JSON header: %s (line %d, column %d)", path,
                root ? "not an object" : jerr.text, jerr.line, jerr.column);
        goto fail;
    }
    size_t count = json_object_size(root);
    f->tensors = xcalloc(count ? count : 1, sizeof(StTensorInfo));
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) {
                set_error(err, errlen, "%s: \"__metadata__\" is not an object", path);
                goto fail;
            }
            size_t nm = json_object_size(val);
            f->meta_keys = xcalloc(nm ? nm : 1, sizeof(char *));
            f->meta_values = xcalloc(nm ? nm : 1, sizeof(char *));
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv)) {
                    set_error(err, errlen, "%s: \"__metadata__\" value of '%s' is not a string", path, mk);
                    goto fail;
                }
                f->meta_keys[f->num_meta] = xstrdup(mk);
                f->meta_values[f->num_meta] = xstrdup(json_string_value(mv));
                f->num_meta++;
            }
            continue;
        }
        StTensorInfo *t = &f->tensors[f->num_tensors];
        if (parse_entry_(path, key, val, data_size, t, err, errlen) != 0) goto fail;
        t->name = xstrdup(key);
        f->num_tensors++;
    }
    /* Byte ranges must tile the data section: sorted by begin, each starts where the last ended. */
    order = xmalloc(sizeof(*order) * (size_t)(f->num_tensors ? f->num_tensors : 1));
    for (int i = 0; i < f->num_tensors; i++) order[i] = &f->tensors[i];
    qsort(order, (size_t)f->num_tensors, sizeof(*order), cmp_begin_);
    size_t pos = 0;
    const char *prev = NULL;
    for (int i = 0; i < f->num_tensors; i++) {
        StTensorInfo *t = order[i];
        if (t->begin == t->end) continue;   /* empty tensors occupy no bytes */
        if (t->begin < pos) {
            set_error(err, errlen, "%s: tensor '%s' (bytes %zu..%zu) overlaps tensor '%s' (ends at %zu)",
                    path, t->name, t->begin, t->end, prev, pos);
            goto fail;
        }
        if (t->begin > pos) {
            set_error(err, errlen, "%s: tensor '%s' starts at byte %zu but the previous tensor ends at "
                    "%zu (a gap in the data section)", path, t->name, t->begin, pos);
            goto fail;
        }
        pos = t->end;
        prev = t->name;
    }
    if (pos != data_size) {
        set_error(err, errlen, "%s: the tensors cover %zu bytes of data but the file has %zu after the "
                "header (trailing bytes)", path, pos, data_size);
        goto fail;
    }
    free(order);
    json_decref(root);
    return 0;
fail:
    free(order);
    if (root) json_decref(root);
    st_close(f);
    return -1;
}

int st_find(const StFile *f, const char *name) {
    for (int i = 0; i < f->num_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return i;
    return -1;
}

const char *st_meta_get(const StFile *f, const char *key) {
    for (int i = 0; i < f->num_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

int st_read_f32(const StFile *f, int idx, float *out, char *err, size_t errlen) {
    if (idx < 0 || idx >= f->num_tensors) {
        set_error(err, errlen, "%s: no tensor #%d", f->path, idx);
        return -1;
    }
    const StTensorInfo *t = &f->tensors[idx];
    const unsigned char *p = f->map + f->data_start + t->begin;
    switch (t->dtype) {
    case ST_F32:
        memcpy(out, p, t->numel * 4);
        return 0;
    case ST_F16:
    case ST_BF16:
        for (size_t i = 0; i < t->numel; i++) {
            uint16_t h = (uint16_t)(p[2 * i] | (p[2 * i + 1] << 8));
            out[i] = t->dtype == ST_F16 ? st_f16_to_f32(h) : st_bf16_to_f32(h);
        }
        return 0;
    default:
        set_error(err, errlen, "%s: tensor '%s' has dtype %s; only F32, F16 and BF16 can be read as "
                "float", f->path, t->name, st_dtype_name(t->dtype));
        return -1;
    }
}

/* ---- writer ---- */

typedef struct { char *s; size_t len, cap; } Buf;

static void buf_put_(Buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}
static void buf_str_(Buf *b, const char *s) { buf_put_(b, s, strlen(s)); }
static void buf_json_str_(Buf *b, const char *s) {
    buf_put_(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') { esc[0] = '\\'; esc[1] = (char)*p; buf_put_(b, esc, 2); }
        else if (*p < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", *p); buf_put_(b, esc, 6); }
        else buf_put_(b, (const char *)p, 1);
    }
    buf_put_(b, "\"", 1);
}

static int write_all_(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int st_write_f32(const char *path, const StWriteTensor *ts, int n, const char *const *meta_kv,
                 int n_meta, char *err, size_t errlen) {
    Buf h = {0};
    buf_str_(&h, "{\"__metadata__\":{\"format\":\"pt\"");
    for (int i = 0; i < n_meta; i++) {
        if (strcmp(meta_kv[2 * i], "format") == 0) continue;
        buf_str_(&h, ",");
        buf_json_str_(&h, meta_kv[2 * i]);
        buf_str_(&h, ":");
        buf_json_str_(&h, meta_kv[2 * i + 1]);
    }
    buf_str_(&h, "}");
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        const StWriteTensor *t = &ts[i];
        if (!t->name || !*t->name || strcmp(t->name, "__metadata__") == 0 || t->ndim < 0 ||
            t->ndim > ST_MAX_DIMS) {
            set_error(err, errlen, "%s: tensor #%d: bad name or rank", path, i);
            free(h.s);
            return -1;
        }
        for (int j = 0; j < i; j++)
            if (strcmp(ts[j].name, t->name) == 0) {
                set_error(err, errlen, "%s: tensor '%s' given twice", path, t->name);
                free(h.s);
                return -1;
            }
        size_t numel = 1;
        char num[64];
        buf_str_(&h, ",");
        buf_json_str_(&h, t->name);
        buf_str_(&h, ":{\"dtype\":\"F32\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0) {
                set_error(err, errlen, "%s: tensor '%s': negative dimension", path, t->name);
                free(h.s);
                return -1;
            }
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            buf_str_(&h, num);
            numel *= (size_t)t->shape[d];
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%zu,%zu]}", off, off + numel * 4);
        buf_str_(&h, num);
        off += numel * 4;
    }
    buf_str_(&h, "}");
    while ((8 + h.len) % 8) buf_str_(&h, " ");

    size_t tl = strlen(path) + 32;
    char *tmp = xmalloc(tl);
    snprintf(tmp, tl, "%s.tmp-%ld", path, (long)getpid());
    const char *step = "create";
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) goto fail;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    step = "write";
    if (write_all_(fd, len8, 8) != 0 || write_all_(fd, h.s, h.len) != 0) goto fail;
    for (int i = 0; i < n; i++) {
        size_t numel = 1;
        for (int d = 0; d < ts[i].ndim; d++) numel *= (size_t)ts[i].shape[d];
        if (numel && write_all_(fd, ts[i].data, numel * 4) != 0) goto fail;
    }
    step = "fsync";
    if (fsync(fd) != 0) goto fail;
    step = "close";
    int rc = close(fd);
    fd = -1;
    if (rc != 0) goto fail;
    step = "rename";
    if (rename(tmp, path) != 0) goto fail;
    if (fsync_dir_of(path) != 0) {
        set_error(err, errlen, "%s: fsync of its directory failed: %s", path, strerror(errno));
        free(tmp);
        free(h.s);
        return -1;
    }
    free(tmp);
    free(h.s);
    return 0;
fail:;
    int saved = errno;
    if (fd >= 0) close(fd);
    unlink(tmp);
    set_error(err, errlen, "%s: %s %s failed: %s (HINT: check free space and permissions)", path, step,
            tmp, strerror(saved));
    free(tmp);
    free(h.s);
    errno = saved;
    return -1;
}
