/*
 * tests/unit/test_npy.c: common/npy round trips, the exact header bytes, interoperability with
 * NumPy (/usr/bin/python3, skipped with a message when unavailable) and every read error.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/npy.h"
#include "common/util.h"
#include "tests/unit/test.h"

static char dir_[256];

static const char *tpath(const char *name) {
    static char buf[16][512];
    static int k = 0;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir_, name);
    return buf[k];
}

static void write_raw(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    fwrite(data, 1, n, f);
    fclose(f);
}

/* Build a v1.0 file by hand: header text (padded to 64 by us), then raw data bytes. */
static void write_handmade(const char *path, const char *dict, const void *data, size_t n) {
    unsigned char buf[4096];
    size_t dl = strlen(dict);
    size_t total = (10 + dl + 1 + 63) / 64 * 64;
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)((total - 10) & 0xff);
    buf[9] = (unsigned char)((total - 10) >> 8);
    memset(buf + 10, ' ', total - 10);
    memcpy(buf + 10, dict, dl);
    buf[total - 1] = '\n';
    memcpy(buf + total, data, n);
    write_raw(path, buf, total + n);
}

static void test_roundtrip(void) {
    int R = test_quick() ? 3 : 17, C = test_quick() ? 5 : 129;
    int32_t *a = xmalloc(sizeof(int32_t) * (size_t)R * (size_t)C);
    for (int i = 0; i < R * C; i++) a[i] = (i * 7919) ^ (i % 3 ? -i : i << 20);
    a[0] = INT32_MIN;
    a[1] = INT32_MAX;
    CHECK(npy_write_i32(tpath("rt.npy"), a, R, C) == 0);
    int r = -1, c = -1;
    char err[256] = "";
    int32_t *b = npy_read_i32(tpath("rt.npy"), &r, &c, err, sizeof err);
    CHECKF(b != NULL, "%s", err);
    CHECK_EQ_INT(r, R);
    CHECK_EQ_INT(c, C);
    if (b) CHECK(memcmp(a, b, sizeof(int32_t) * (size_t)R * (size_t)C) == 0);
    free(b);
    /* empty arrays are legal */
    CHECK(npy_write_i32(tpath("empty.npy"), a, 0, 4) == 0);
    b = npy_read_i32(tpath("empty.npy"), &r, &c, err, sizeof err);
    CHECKF(b != NULL, "%s", err);
    CHECK_EQ_INT(r, 0);
    CHECK_EQ_INT(c, 4);
    free(b);
    CHECK(npy_write_i32(tpath("bad.npy"), a, -1, 4) == -1);
    free(a);
}

static void test_header_bytes(void) {
    int32_t v[6] = {1, 2, 3, 4, 5, 6};
    CHECK(npy_write_i32(tpath("h.npy"), v, 2, 3) == 0);
    size_t n = 0;
    char *f = read_file_all(tpath("h.npy"), &n);
    CHECK(f != NULL);
    if (!f) return;
    const char *want = "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }";
    /* 10 + 59 + '\n' = 70 bytes, padded to the next multiple of 64 */
    CHECK_EQ_INT(strlen(want), 59);
    CHECK_EQ_INT(n, 128 + 24);
    CHECK(memcmp(f, "\x93NUMPY\x01\x00", 8) == 0);
    CHECK_EQ_INT((unsigned char)f[8] | ((unsigned char)f[9] << 8), 128 - 10);
    CHECK(strncmp(f + 10, want, strlen(want)) == 0);
    CHECK(f[127] == '\n');
    for (size_t i = 10 + strlen(want); i < 127; i++) CHECK(f[i] == ' ');
    unsigned char *d = (unsigned char *)f + 128;
    CHECK(d[0] == 1 && d[1] == 0 && d[2] == 0 && d[3] == 0);   /* little-endian */
    CHECK(d[20] == 6);
    free(f);
}

static int have_numpy(void) {
    if (access("/usr/bin/python3", X_OK) != 0) return 0;
    return system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

static void test_numpy_interop(void) {
    if (!have_numpy()) {
        TEST_SKIP("/usr/bin/python3 with numpy not available (apt-get install python3-numpy)");
        return;
    }
    char cmd[2048];
    /* NumPy writes int32 and (default) int64 files; we read them. */
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c \"import numpy as np; a=np.arange(12).reshape(3,4)*1000-5000; "
             "np.save('%s', a.astype(np.int32)); np.save('%s', a.astype(np.int64)); "
             "np.save('%s', np.array([[1,2],[3,2**40]], dtype=np.int64)); "
             "np.save('%s', np.asfortranarray(a.astype(np.int32))); "
             "np.save('%s', a.astype('>i4')); np.save('%s', a.astype(np.float32)); "
             "np.save('%s', np.arange(3, dtype=np.int32))\"",
             tpath("np32.npy"), tpath("np64.npy"), tpath("big.npy"), tpath("fort.npy"),
             tpath("be.npy"), tpath("f32.npy"), tpath("one_d.npy"));
    CHECK(system(cmd) == 0);
    const char *names[2] = {"np32.npy", "np64.npy"};
    for (int k = 0; k < 2; k++) {
        int r = 0, c = 0;
        char err[256] = "";
        int32_t *a = npy_read_i32(tpath(names[k]), &r, &c, err, sizeof err);
        CHECKF(a != NULL, "%s", err);
        if (!a) continue;
        CHECK_EQ_INT(r, 3);
        CHECK_EQ_INT(c, 4);
        for (int i = 0; i < 12; i++) CHECK_EQ_INT(a[i], i * 1000 - 5000);
        free(a);
    }
    struct { const char *file, *needle; } bad[] = {
        {"big.npy", "does not fit in int32"},
        {"fort.npy", "C-order"},
        {"be.npy", ">i4"},
        {"f32.npy", "<f4"},
        {"one_d.npy", "2-D"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        int r = 0, c = 0;
        char err[512] = "";
        int32_t *a = npy_read_i32(tpath(bad[k].file), &r, &c, err, sizeof err);
        CHECKF(a == NULL, "%s should be rejected", bad[k].file);
        free(a);
        CHECKF(strstr(err, bad[k].needle) != NULL, "%s: '%s' lacks '%s'", bad[k].file, err, bad[k].needle);
        CHECKF(strstr(err, bad[k].file) != NULL, "message '%s' does not name the file", err);
    }
    /* NumPy reads what we write */
    int32_t v[6] = {-1, 2, -300000, 4, 2147483647, -2147483647 - 1};
    CHECK(npy_write_i32(tpath("ours.npy"), v, 3, 2) == 0);
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c \"import numpy as np, sys; a=np.load('%s'); "
             "sys.exit(0 if a.dtype==np.int32 and a.shape==(3,2) and "
             "a.ravel().tolist()==[-1,2,-300000,4,2147483647,-2147483648] else 1)\"",
             tpath("ours.npy"));
    CHECK(system(cmd) == 0);
}

static void test_errors(void) {
    char err[512];
    int r = 7, c = 9;
    int32_t data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    struct { const char *file, *dict; size_t nbytes; const char *needle; } cases[] = {
        {"trunc.npy", "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 4), }", 28, "truncated"},
        {"trail.npy", "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 4), }", 32, "trailing"},
        {"nodescr.npy", "{'fortran_order': False, 'shape': (1, 4), }", 16, "descr"},
        {"u4.npy", "{'descr': '<u4', 'fortran_order': False, 'shape': (1, 4), }", 16, "<u4"},
        {"fo.npy", "{'descr': '<i4', 'fortran_order': True, 'shape': (1, 4), }", 16, "C-order"},
        {"sh3.npy", "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 2, 2), }", 16, "3 dimensions"},
        {"shbad.npy", "{'descr': '<i4', 'fortran_order': False, 'shape': (1, x), }", 16, "shape"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        write_handmade(tpath(cases[k].file), cases[k].dict, data, cases[k].nbytes);
        err[0] = 0;
        int32_t *a = npy_read_i32(tpath(cases[k].file), &r, &c, err, sizeof err);
        CHECKF(a == NULL, "%s should be rejected", cases[k].file);
        free(a);
        CHECKF(strstr(err, cases[k].needle) != NULL, "%s: '%s' lacks '%s'", cases[k].file, err,
               cases[k].needle);
        CHECKF(strstr(err, cases[k].file) != NULL, "'%s' does not name the file", err);
    }
    CHECK_EQ_INT(r, 7);   /* unchanged on failure */
    CHECK_EQ_INT(c, 9);
    write_raw(tpath("magic.npy"), "NUMPY\x01\x00 not really", 18);
    int32_t *a = npy_read_i32(tpath("magic.npy"), &r, &c, err, sizeof err);
    CHECK(a == NULL);
    CHECK(strstr(err, "magic") != NULL);
    /* header length beyond the end of the file */
    write_raw(tpath("hlen.npy"), "\x93NUMPY\x01\x00\xff\x00{'descr'", 18);
    a = npy_read_i32(tpath("hlen.npy"), &r, &c, err, sizeof err);
    CHECK(a == NULL);
    CHECK(strstr(err, "truncated") != NULL);
    a = npy_read_i32(tpath("missing.npy"), &r, &c, err, sizeof err);
    CHECK(a == NULL);
    CHECK(strstr(err, "missing.npy") != NULL);
}

int main(void) {
    snprintf(dir_, sizeof dir_, "/tmp/test_npy.XXXXXX");
    if (!mkdtemp(dir_)) { perror("mkdtemp"); return 1; }
    RUN(test_roundtrip);
    RUN(test_header_bytes);
    RUN(test_numpy_interop);
    RUN(test_errors);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir_);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir_);
    return TEST_EXIT();
}
