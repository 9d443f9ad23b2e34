/*
 * tests/unit/test_safetensors.c: ckpt/safetensors round trip (bit-identical), F16/BF16 decoding
 * of known values, every validation error (each must name the file and, where there is one, the
 * tensor), and interoperability with files built by /usr/bin/python3 + numpy from a hand-written
 * header (skipped with a message when numpy is unavailable).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt/safetensors.h"
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

/* A file from a literal header (length computed, no padding) and raw data bytes. */
static void write_st(const char *path, const char *header, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    uint64_t hl = strlen(header);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(hl >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(header, 1, hl, f);
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static void test_roundtrip(void) {
    size_t V = test_quick() ? 37 : 1000, D = test_quick() ? 8 : 64;
    float *emb = xmalloc(sizeof(float) * V * D);
    Rng r = rng_make(7, 1);
    for (size_t i = 0; i < V * D; i++) emb[i] = (float)rng_next_normal(&r);
    emb[0] = -0.0f;
    emb[1] = INFINITY;
    emb[2] = 1e-45f;   /* subnormal */
    float norm[5] = {1, 2, 3, 4, 5}, scalar = 3.25f;
    StWriteTensor ts[4] = {
        {.name = "shared.weight", .ndim = 2, .shape = {(int64_t)V, (int64_t)D}, .data = emb},
        {.name = "a \"quoted\"\\name", .ndim = 1, .shape = {5}, .data = norm},
        {.name = "scalar", .ndim = 0, .data = &scalar},
        {.name = "empty", .ndim = 2, .shape = {0, 3}, .data = NULL},
    };
    const char *meta[4] = {"step", "12", "format", "ignored"};
    char err[512] = "";
    CHECKF(st_write_f32(tpath("rt.safetensors"), ts, 4, meta, 2, err, sizeof err) == 0, "%s", err);
    StFile f;
    int rc = st_open(&f, tpath("rt.safetensors"), err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (rc != 0) { free(emb); return; }
    CHECK_EQ_INT(f.num_tensors, 4);
    CHECK_EQ_INT(f.data_start % 8, 0);
    CHECK_STR(st_meta_get(&f, "format"), "pt");
    CHECK_STR(st_meta_get(&f, "step"), "12");
    for (int i = 0; i < 4; i++) {
        int k = st_find(&f, ts[i].name);
        CHECKF(k >= 0, "%s missing", ts[i].name);
        if (k < 0) continue;
        CHECK(f.tensors[k].dtype == ST_F32);
        CHECK_EQ_INT(f.tensors[k].ndim, ts[i].ndim);
        size_t n = 1;
        for (int d = 0; d < ts[i].ndim; d++) {
            CHECK_EQ_INT(f.tensors[k].shape[d], ts[i].shape[d]);
            n *= (size_t)ts[i].shape[d];
        }
        CHECK_EQ_INT(f.tensors[k].numel, n);
        float *out = xmalloc(sizeof(float) * (n + 1));
        CHECK(st_read_f32(&f, k, out, err, sizeof err) == 0);
        int same = 1;
        for (size_t j = 0; j < n; j++) same &= fbits(out[j]) == fbits(ts[i].data[j]);
        CHECKF(same, "%s not bit-identical", ts[i].name);
        free(out);
    }
    CHECK(st_find(&f, "nope") == -1);
    st_close(&f);
    st_close(&f);   /* idempotent */
    /* an existing file survives a failed write */
    StWriteTensor dup[2] = {ts[1], ts[1]};
    CHECK(st_write_f32(tpath("rt.safetensors"), dup, 2, NULL, 0, err, sizeof err) == -1);
    CHECK(strstr(err, "twice") != NULL);
    CHECK(st_open(&f, tpath("rt.safetensors"), err, sizeof err) == 0);
    CHECK_EQ_INT(f.num_tensors, 4);
    st_close(&f);
    CHECK(st_write_f32("/nonexistent-dir/x.safetensors", ts, 1, NULL, 0, err, sizeof err) == -1);
    CHECK(strstr(err, "/nonexistent-dir/x.safetensors") != NULL);
    free(emb);
}

static void test_half_decoding(void) {
    /* expected values from the IEEE definitions, not from the code under test */
    struct { uint16_t h; double want; } f16[] = {
        {0x3C00, 1.0}, {0xC000, -2.0}, {0x7BFF, 65504.0}, {0x0001, ldexp(1, -24)},
        {0x03FF, 1023 * ldexp(1, -24)}, {0x0400, ldexp(1, -14)}, {0x3555, 0x555 * ldexp(1, -12)},
        {0x7C00, INFINITY}, {0xFC00, -INFINITY}, {0x8000, -0.0}, {0x3800, 0.5},
    };
    struct { uint16_t b; double want; } bf16[] = {
        {0x3F80, 1.0}, {0xC040, -3.0}, {0x4049, 3.140625}, {0x0001, ldexp(1, -133)},
        {0x7F80, INFINITY}, {0x8000, -0.0}, {0x3C00, ldexp(1, -7)},
    };
    uint16_t data[32];
    int nf = (int)(sizeof f16 / sizeof f16[0]), nb = (int)(sizeof bf16 / sizeof bf16[0]);
    for (int i = 0; i < nf; i++) {
        CHECKF(st_f16_to_f32(f16[i].h) == (float)f16[i].want, "f16 %04x -> %g, want %g", f16[i].h,
               st_f16_to_f32(f16[i].h), f16[i].want);
        data[i] = f16[i].h;
    }
    CHECK(signbit(st_f16_to_f32(0x8000)));
    CHECK(isnan(st_f16_to_f32(0x7E00)));
    for (int i = 0; i < nb; i++) {
        CHECKF(st_bf16_to_f32(bf16[i].b) == (float)bf16[i].want, "bf16 %04x -> %g", bf16[i].b,
               st_bf16_to_f32(bf16[i].b));
        data[nf + i] = bf16[i].b;
    }
    /* the same values through a file (little-endian bytes) */
    unsigned char bytes[64];
    for (int i = 0; i < nf + nb; i++) { bytes[2 * i] = data[i] & 0xff; bytes[2 * i + 1] = data[i] >> 8; }
    char header[256];
    snprintf(header, sizeof header,
             "{\"h\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[0,%d]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,%d],\"data_offsets\":[%d,%d]}}",
             nf, 2 * nf, nb, 2 * nf, 2 * (nf + nb));
    write_st(tpath("half.safetensors"), header, bytes, (size_t)(2 * (nf + nb)));
    StFile f;
    char err[512] = "";
    int rc = st_open(&f, tpath("half.safetensors"), err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (rc) return;
    float out[32];
    CHECK(st_read_f32(&f, st_find(&f, "h"), out, err, sizeof err) == 0);
    for (int i = 0; i < nf; i++) CHECK(out[i] == (float)f16[i].want);
    CHECK(st_read_f32(&f, st_find(&f, "b"), out, err, sizeof err) == 0);
    for (int i = 0; i < nb; i++) CHECK(out[i] == (float)bf16[i].want);
    CHECK(st_meta_get(&f, "format") == NULL);
    st_close(&f);
}

static void test_validation_errors(void) {
    unsigned char data[64] = {0};
    struct { const char *file, *header; size_t nbytes; const char *needle, *tensor; } cases[] = {
        {"trunc.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
         "out of range", "'w'"},
        {"range.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 8,
         "out of range", "'w'"},
        {"backw.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
         "out of range", "'w'"},
        {"shape.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
         "shape needs 12 bytes", "'w'"},
        {"dtype.st", "{\"w\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
         "unknown dtype", "'w'"},
        {"overlap.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
         "overlaps", "'b'"},
        {"gap.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "gap", "'b'"},
        {"trail.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 12,
         "trailing", NULL},
        {"dupkey.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "duplicate", NULL},
        {"json.st", "{\"a\":{\"dtype\":\"F32\",", 4, "bad JSON", NULL},
        {"notobj.st", "{\"a\":[1,2]}", 0, "not a JSON object", "'a'"},
        {"negshape.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
         "non-negative", "'w'"},
        {"nooff.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "data_offsets", "'w'"},
        {"meta.st", "{\"__metadata__\":{\"format\":3}}", 0, "not a string", NULL},
        {"brace.st", "[\"w\"]", 0, "'{'", NULL},
    };
    char err[512];
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        write_st(tpath(cases[k].file), cases[k].header, data, cases[k].nbytes);
        StFile f;
        err[0] = 0;
        int rc = st_open(&f, tpath(cases[k].file), err, sizeof err);
        CHECKF(rc == -1, "%s accepted", cases[k].file);
        if (rc == 0) st_close(&f);
        CHECKF(strstr(err, cases[k].needle) != NULL, "%s: '%s' lacks '%s'", cases[k].file, err,
               cases[k].needle);
        CHECKF(strstr(err, cases[k].file) != NULL, "'%s' does not name the file", err);
        if (cases[k].tensor)
            CHECKF(strstr(err, cases[k].tensor) != NULL, "'%s' does not name tensor %s", err,
                   cases[k].tensor);
    }
    /* header length larger than the file */
    FILE *fp = fopen(tpath("hlen.st"), "wb");
    fwrite("\x00\x10\x00\x00\x00\x00\x00\x00{}", 1, 10, fp);
    fclose(fp);
    StFile f;
    CHECK(st_open(&f, tpath("hlen.st"), err, sizeof err) == -1);
    CHECK(strstr(err, "header length 4096") != NULL && strstr(err, "hlen.st") != NULL);
    /* absurd header length (would overflow naive arithmetic) */
    fp = fopen(tpath("huge.st"), "wb");
    fwrite("\xff\xff\xff\xff\xff\xff\xff\xff{}", 1, 10, fp);
    fclose(fp);
    CHECK(st_open(&f, tpath("huge.st"), err, sizeof err) == -1);
    CHECK(strstr(err, "header length") != NULL);
    /* too short to hold the length */
    fp = fopen(tpath("short.st"), "wb");
    fwrite("\x02\x00", 1, 2, fp);
    fclose(fp);
    CHECK(st_open(&f, tpath("short.st"), err, sizeof err) == -1);
    CHECK(strstr(err, "too short") != NULL && strstr(err, "short.st") != NULL);
    CHECK(st_open(&f, tpath("missing.st"), err, sizeof err) == -1);
    CHECK(strstr(err, "missing.st") != NULL);
    /* valid file, but a dtype that cannot become float */
    write_st(tpath("i32.st"), "{\"ids\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}", data, 8);
    int rc = st_open(&f, tpath("i32.st"), err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (rc == 0) {
        float out[2];
        CHECK(st_read_f32(&f, 0, out, err, sizeof err) == -1);
        CHECK(strstr(err, "'ids'") && strstr(err, "I32") && strstr(err, "i32.st"));
        st_close(&f);
    }
}

static int have_numpy(void) {
    if (access("/usr/bin/python3", X_OK) != 0) return 0;
    return system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

/* Python builds a file by hand (struct + json + numpy bytes): F32, F16, BF16 tensors plus F32
 * copies of what numpy says their values are; we must decode to exactly those. Then Python reads
 * a file we wrote and checks header alignment, offsets and values. */
static void test_python_interop(void) {
    if (!have_numpy()) {
        TEST_SKIP("/usr/bin/python3 with numpy not available (apt-get install python3-numpy)");
        return;
    }
    const char *py_path = tpath("mk.py");
    FILE *fp = fopen(py_path, "w");
    fputs("import json, struct, sys\n"
          "import numpy as np\n"
          "rng = np.random.default_rng(3)\n"
          "w = rng.standard_normal((5, 7)).astype(np.float32)\n"
          "h = (rng.standard_normal(33) * 100).astype(np.float16)\n"
          "h[0] = np.float16(6e-8)\n"
          "b32 = rng.standard_normal((3, 4)).astype(np.float32)\n"
          "b = (b32.view(np.uint32) >> 16).astype(np.uint16)\n"
          "bref = (b.astype(np.uint32) << 16).view(np.float32)\n"
          "parts = [('w', 'F32', w), ('h', 'F16', h), ('b', 'BF16', b),\n"
          "         ('h_ref', 'F32', h.astype(np.float32)), ('b_ref', 'F32', bref)]\n"
          "hdr, off, blob = {'__metadata__': {'format': 'pt', 'who': 'python'}}, 0, b''\n"
          "for name, dt, a in parts:\n"
          "    by = a.astype(a.dtype.newbyteorder('<')).tobytes()\n"
          "    hdr[name] = {'dtype': dt, 'shape': list(a.shape), 'data_offsets': [off, off + len(by)]}\n"
          "    off += len(by); blob += by\n"
          "hj = json.dumps(hdr).encode()\n"
          "hj += b' ' * ((8 - len(hj) % 8) % 8)\n"
          "open(sys.argv[1], 'wb').write(struct.pack('<Q', len(hj)) + hj + blob)\n"
          "np.save(sys.argv[2], w)\n",
          fp);
    fclose(fp);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s %s", py_path, tpath("py.safetensors"),
             tpath("w.npy"));
    CHECK(system(cmd) == 0);
    StFile f;
    char err[512] = "";
    int rc = st_open(&f, tpath("py.safetensors"), err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (rc == 0) {
        CHECK_STR(st_meta_get(&f, "who"), "python");
        float a[64], ref[64];
        const char *pairs[2][2] = {{"h", "h_ref"}, {"b", "b_ref"}};
        for (int p = 0; p < 2; p++) {
            int i = st_find(&f, pairs[p][0]), j = st_find(&f, pairs[p][1]);
            CHECK(i >= 0 && j >= 0);
            if (i < 0 || j < 0) continue;
            CHECK_EQ_INT(f.tensors[i].numel, f.tensors[j].numel);
            CHECK(st_read_f32(&f, i, a, err, sizeof err) == 0);
            CHECK(st_read_f32(&f, j, ref, err, sizeof err) == 0);
            int same = 1;
            for (size_t k = 0; k < f.tensors[i].numel; k++) same &= fbits(a[k]) == fbits(ref[k]);
            CHECKF(same, "%s decoded differently from numpy", pairs[p][0]);
        }
        int wi = st_find(&f, "w");
        CHECK(wi >= 0 && f.tensors[wi].shape[0] == 5 && f.tensors[wi].shape[1] == 7);
        /* write it back with our writer; python checks it against the .npy it saved */
        if (wi >= 0) {
            CHECK(st_read_f32(&f, wi, a, err, sizeof err) == 0);
            StWriteTensor t[2] = {
                {.name = "x", .ndim = 1, .shape = {3}, .data = a},
                {.name = "w", .ndim = 2, .shape = {5, 7}, .data = a},
            };
            CHECK(st_write_f32(tpath("ours.safetensors"), t, 2, NULL, 0, err, sizeof err) == 0);
            snprintf(cmd, sizeof cmd,
                     "/usr/bin/python3 -c \"import json,struct,sys,numpy as np\n"
                     "d=open('%s','rb').read(); n=struct.unpack('<Q',d[:8])[0]; h=json.loads(d[8:8+n])\n"
                     "assert (8+n)%%8==0 and h['__metadata__']=={'format':'pt'}, h\n"
                     "e=h['w']; b,E=e['data_offsets']\n"
                     "w=np.frombuffer(d[8+n+b:8+n+E],dtype='<f4').reshape(e['shape'])\n"
                     "assert e['dtype']=='F32' and h['x']['data_offsets']==[0,12] and E==len(d)-8-n\n"
                     "assert np.array_equal(w, np.load('%s'))\"",
                     tpath("ours.safetensors"), tpath("w.npy"));
            CHECK(system(cmd) == 0);
        }
        st_close(&f);
    }
}

int main(void) {
    snprintf(dir_, sizeof dir_, "/tmp/test_safetensors.XXXXXX");
    if (!mkdtemp(dir_)) { perror("mkdtemp"); return 1; }
    RUN(test_roundtrip);
    RUN(test_half_decoding);
    RUN(test_validation_errors);
    RUN(test_python_interop);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir_);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir_);
    return TEST_EXIT();
}
