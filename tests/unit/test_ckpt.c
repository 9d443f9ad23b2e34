/*
 * tests/unit/test_ckpt.c: sharded checkpoints (ckpt/ckpt.h) and atomic Hugging Face folders.
 *
 * Run alone (an MPI singleton): round trip by any range (bit-identical) for different piece
 * splits, bad piece sets refused, crash at every commit stage (previous checkpoint loads), every
 * byte of the manifest flipped, every truncation, random files, thousands of structurally fuzzed
 * manifests with a valid checksum (a clear error naming the file or the exact data, never a wrong
 * load), flipped/truncated/missing/foreign shards, retention, background save, hf_save_folder
 * atomicity and refusal to overwrite.
 * Under `mpirun -np 2`: the same tensors written by 2 ranks with different splits, read back by
 * any range; one rank's failure fails the save on every rank; a background save next to
 * collectives on the world communicator; faults in each of the two shards.
 * T5_CKPT_FULL_DIR=DIR (a small, nearly full file system, mounted by tests/e2e/ckpt_faults.sh):
 * only the disk-full tests. `test_ckpt --bench`: zstd level / speed measurements on ~60M floats.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "ckpt/ckpt.h"
#include "ckpt/hf.h"
#include "common/util.h"
#include "pretrain/t5_config.h"
#include "pretrain/t5_model.h"
#include "tests/unit/test.h"

/* Open MPI's components (dlopen'ed, then closed) keep allocations from MPI_Init until exit that
 * LeakSanitizer cannot attribute to a library: those two calls are excluded from leak checking. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define LSAN_OFF() __lsan_disable()
#define LSAN_ON() __lsan_enable()
#else
#define LSAN_OFF() ((void)0)
#define LSAN_ON() ((void)0)
#endif

static int rank_ = 0, world_ = 1;
static char root_[512];

/* ---- helpers ---- */

static char *fmt_(const char *f, const char *a, const char *b) {
    static char buf[16][1024];
    static int k = 0;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], f, a, b);
    return buf[k];
}

static void sys_(const char *cmd) {
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "  command failed (%d): %s\n", rc, cmd);
}

static int exists_(const char *p) { struct stat st; return stat(p, &st) == 0; }

/* Test tensors: deterministic contents, a few shapes and both dtypes. */
#define NT 5
typedef struct { const char *name; CkptDtype dt; int ndim; int64_t shape[2]; size_t numel; void *data; } TT;
static TT tt_[NT];

static void tt_init_(uint64_t seed, int big) {
    static const char *names[NT] = {"param/shared.weight", "param/encoder.final_layer_norm.weight",
                                    "adafactor_r/shared.weight", "adafactor_v/x.weight", "data_cursor"};
    int64_t shapes[NT][2] = {{big ? 700 : 70, big ? 3000 : 300}, {129, 0}, {big ? 700 : 70, 0}, {33, 17}, {1000, 0}};
    int ndims[NT] = {2, 1, 1, 2, 1};
    for (int i = 0; i < NT; i++) {
        free(tt_[i].data);
        TT *t = &tt_[i];
        t->name = names[i];
        t->dt = i == 4 ? CKPT_U8 : CKPT_F32;
        t->ndim = ndims[i];
        t->shape[0] = shapes[i][0];
        t->shape[1] = shapes[i][1];
        t->numel = (size_t)shapes[i][0] * (size_t)(ndims[i] > 1 ? shapes[i][1] : 1);
        Rng r = rng_make(seed, (uint64_t)i);
        if (t->dt == CKPT_F32) {
            float *f = xmalloc(t->numel * 4);
            for (size_t j = 0; j < t->numel; j++)
                f[j] = i == 2 ? (float)(rng_next_double(&r) * 1e-3) : (float)(0.05 * rng_next_normal(&r));
            t->data = f;
        } else {
            unsigned char *u = xmalloc(t->numel);
            for (size_t j = 0; j < t->numel; j++) u[j] = (unsigned char)"{\"cursor\": 12345}"[j % 17];
            t->data = u;
        }
    }
}
static void tt_free_(void) { for (int i = 0; i < NT; i++) { free(tt_[i].data); tt_[i].data = NULL; } }
static size_t esz_(CkptDtype d) { return d == CKPT_F32 ? 4 : 1; }

/* Pieces covering [lo, hi) of tensor i cut at `cuts` random points. Appends to pc. */
static int cut_(CkptPiece *pc, int n, int i, size_t lo, size_t hi, int cuts, Rng *r) {
    size_t pts[16];
    int np = 0;
    pts[np++] = lo;
    for (int c = 0; c < cuts && hi - lo > 2; c++) pts[np++] = lo + 1 + rng_next_below(r, hi - lo - 1);
    pts[np++] = hi;
    for (int a = 1; a < np; a++)   /* sort */
        for (int b = a; b > 0 && pts[b] < pts[b - 1]; b--) { size_t t = pts[b]; pts[b] = pts[b - 1]; pts[b - 1] = t; }
    for (int k = 0; k + 1 < np; k++) {
        if (pts[k + 1] == pts[k]) continue;
        TT *t = &tt_[i];
        pc[n++] = (CkptPiece){t->name, t->dt, t->ndim, {t->shape[0], t->shape[1]}, pts[k], pts[k + 1] - pts[k],
                              (const char *)t->data + pts[k] * esz_(t->dt)};
    }
    return n;
}

/* This rank's pieces: with `split` s, rank r of W gets [r*n/W, (r+1)*n/W) of each tensor cut
 * into random sub-pieces (the seed varies the cuts); split 1 instead gives tensor i wholly to
 * rank i % W. */
static int my_pieces_(CkptPiece *pc, int split, uint64_t seed) {
    Rng r = rng_make(seed, 99 + (uint64_t)rank_);
    int n = 0;
    for (int i = 0; i < NT; i++) {
        size_t N = tt_[i].numel;
        if (split == 1) {
            if (i % world_ == rank_) n = cut_(pc, n, i, 0, N, 2, &r);
        } else {
            size_t lo = N * (size_t)rank_ / (size_t)world_, hi = N * (size_t)(rank_ + 1) / (size_t)world_;
            if (hi > lo) n = cut_(pc, n, i, lo, hi, (int)rng_next_below(&r, 4), &r);
        }
    }
    return n;
}

static const char *META = "{\"variant\": \"t5-efficient-test\", \"step\": 7, \"tokens\": 1000}";

static int save_(const char *run, long step, int split, uint64_t seed, char *err) {
    CkptPiece pc[NT * 8];
    int n = my_pieces_(pc, split, seed);
    CkptSaveArgs a = {.run_dir = run, .step = step, .meta_json = rank_ == 0 ? META : NULL};
    return ckpt_save(MPI_COMM_WORLD, &a, pc, n, err, 2048);
}

/* Every tensor equals tt_ (full read plus random ranges). Returns the number of mismatches. */
static int check_all_(Ckpt *ck, int ranges, uint64_t seed, char *err) {
    int bad = 0;
    Rng r = rng_make(seed, 7);
    for (int i = 0; i < NT; i++) {
        TT *t = &tt_[i];
        size_t es = esz_(t->dt);
        unsigned char *buf = xmalloc(t->numel * es);
        if (ckpt_read(ck, t->name, 0, t->numel, buf, err, 2048) != 0 || memcmp(buf, t->data, t->numel * es) != 0) {
            bad++;
        }
        for (int k = 0; k < ranges; k++) {
            size_t off = rng_next_below(&r, t->numel), n = 1 + rng_next_below(&r, t->numel - off);
            memset(buf, 0xAB, n * es);
            if (ckpt_read(ck, t->name, off, n, buf, err, 2048) != 0 ||
                memcmp(buf, (const char *)t->data + off * es, n * es) != 0) bad++;
        }
        free(buf);
    }
    return bad;
}

static int load_ok_(const char *run, long want_step, char *err) {
    char p[1024];
    if (ckpt_latest(run, p, sizeof p, err, 2048) != 0) return 0;
    Ckpt *ck = ckpt_open(p, err, 2048);
    if (!ck) return 0;
    int ok = ckpt_step(ck) == want_step && check_all_(ck, 3, 1, err) == 0;
    ckpt_close(ck);
    return ok;
}

static char *step_dir_(const char *run, long step) {
    static char buf[4][1024];
    static int k = 0;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/ckpt/step_%08ld", run, step);
    return buf[k];
}

static int count_tmp_(const char *run) {
    char p[1024];
    snprintf(p, sizeof p, "%s/ckpt", run);
    DIR *d = opendir(p);
    int n = 0;
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d))) n += strstr(e->d_name, ".tmp") != NULL;
    closedir(d);
    return n;
}

static unsigned char *slurp_(const char *p, size_t *n) { return (unsigned char *)read_file_all(p, n); }
static void spit_(const char *p, const void *d, size_t n) {
    FILE *f = fopen(p, "wb");
    if (!f) { perror(p); return; }
    if (n) fwrite(d, 1, n, f);
    fclose(f);
}

/* The manifest's checksum the documented way (independent of ckpt.c): body = the file without its
 * last 43 bytes; suffix ,\n  "manifest_xxh64": "<hex of XXH64(body)>"\n}\n */
static char *with_checksum_(const char *body, size_t n, size_t *outn) {
    char *o = xmalloc(n + 64);
    memcpy(o, body, n);
    int k = snprintf(o + n, 64, ",\n  \"manifest_xxh64\": \"%016llx\"\n}\n", (unsigned long long)XXH64(body, n, 0));
    *outn = n + (size_t)k;
    return o;
}
/* Dump a JSON object like the writer does and add the checksum. */
static char *dump_checked_(json_t *root, size_t *outn) {
    json_object_del(root, "manifest_xxh64");
    char *t = json_dumps(root, JSON_INDENT(2));
    size_t n = strlen(t);
    char *o = with_checksum_(t, n - 2, outn);   /* drop the final "\n}" */
    free(t);
    return o;
}

/* ---- single-process tests ---- */

static void test_roundtrip_splits(void) {
    char err[2048], run[600], run2[600];
    snprintf(run, sizeof run, "%s/rt", root_);
    snprintf(run2, sizeof run2, "%s/rt2", root_);
    tt_init_(42, !test_quick());
    CHECKF(save_(run, 5, 0, 1, err) == 0, "%s", err);
    CHECKF(save_(run2, 5, 1, 2, err) == 0, "%s", err);   /* another split of the same tensors */
    CHECK(load_ok_(run, 5, err));
    CHECK(load_ok_(run2, 5, err));
    Ckpt *a = ckpt_open(step_dir_(run, 5), err, sizeof err), *b = ckpt_open(step_dir_(run2, 5), err, sizeof err);
    CHECK(a && b);
    if (a && b) {
        CHECK_EQ_INT(check_all_(a, test_quick() ? 20 : 200, 3, err), 0);
        CHECK_EQ_INT(check_all_(b, test_quick() ? 20 : 200, 4, err), 0);
        CHECK_EQ_INT(ckpt_tensor_count(a), NT);
        CHECK_EQ_INT(ckpt_writers(a), world_);
        CHECK_EQ_INT(ckpt_step(a), 5);
        json_t *m = json_loads(ckpt_meta_json(a), 0, NULL);
        CHECK(m && json_integer_value(json_object_get(m, "tokens")) == 1000);
        json_decref(m);
        CkptDtype dt;
        int nd;
        int64_t sh[2];
        CHECK(ckpt_tensor_info(a, "param/shared.weight", &dt, &nd, sh) == 0 && dt == CKPT_F32 && nd == 2 &&
              sh[0] == tt_[0].shape[0] && sh[1] == tt_[0].shape[1]);
        CHECK(ckpt_tensor_info(a, "data_cursor", &dt, &nd, sh) == 0 && dt == CKPT_U8 && nd == 1 && sh[0] == 1000);
        CHECK(ckpt_tensor_info(a, "nope", &dt, &nd, sh) == -1);
        float x;
        CHECK(ckpt_read(a, "nope", 0, 1, &x, err, sizeof err) == -1 && strstr(err, "nope") && strstr(err, "manifest.json"));
        CHECK(ckpt_read(a, "param/encoder.final_layer_norm.weight", 129, 1, &x, err, sizeof err) == -1 &&
              strstr(err, "outside"));
        CHECK(ckpt_read(a, "param/encoder.final_layer_norm.weight", 129, 0, &x, err, sizeof err) == 0);
        uint64_t st, raw;
        ckpt_sizes(a, &st, &raw);
        size_t want_raw = 0;
        for (int i = 0; i < NT; i++) want_raw += tt_[i].numel * esz_(tt_[i].dt);
        CHECK_EQ_INT(raw, want_raw);
        CHECK(st > 0 && st < raw);
    }
    ckpt_close(a);
    ckpt_close(b);
    CHECKF(ckpt_verify(step_dir_(run, 5), err, sizeof err) == 0, "%s", err);
    /* latest is one line naming the step */
    size_t n;
    char *l = read_file_all(fmt_("%s/ckpt/latest%s", run, ""), &n);
    CHECK_STR(l, "step_00000005\n");
    free(l);
    CHECK_EQ_INT(count_tmp_(run), 0);
    /* the same step saved again (e.g. right after a resume) replaces it atomically */
    tt_init_(43, 0);
    CHECKF(save_(run, 5, 0, 9, err) == 0, "%s", err);
    CHECK(load_ok_(run, 5, err));
    CHECK_EQ_INT(count_tmp_(run), 0);
}

static void test_bad_piece_sets(void) {
    if (world_ != 1) return;
    char err[2048], run[600];
    snprintf(run, sizeof run, "%s/bad", root_);
    tt_init_(5, 0);
    CHECKF(save_(run, 1, 0, 1, err) == 0, "%s", err);
    CkptPiece pc[NT * 8];
    int n = my_pieces_(pc, 0, 1);
    CkptSaveArgs a = {.run_dir = run, .step = 2, .meta_json = META};
    /* a gap: drop a piece of tensor 1 */
    CkptPiece g[NT * 8];
    int k = 0;
    for (int i = 0; i < n; i++) if (!(strcmp(pc[i].name, tt_[1].name) == 0 && pc[i].elem_offset == 0)) g[k++] = pc[i];
    CHECK(ckpt_save(MPI_COMM_WORLD, &a, g, k, err, sizeof err) == -1 && strstr(err, tt_[1].name) && strstr(err, "no piece"));
    /* an overlap: one piece twice */
    memcpy(g, pc, (size_t)n * sizeof *pc);
    g[n] = pc[0];
    CHECK(ckpt_save(MPI_COMM_WORLD, &a, g, n + 1, err, sizeof err) == -1 && strstr(err, "overlap"));
    /* a shape disagreement */
    memcpy(g, pc, (size_t)n * sizeof *pc);
    g[n] = (CkptPiece){tt_[1].name, CKPT_F32, 1, {130, 0}, 129, 1, tt_[1].data};
    CHECK(ckpt_save(MPI_COMM_WORLD, &a, g, n + 1, err, sizeof err) == -1 && strstr(err, tt_[1].name));
    /* outside the tensor; bad meta */
    g[0] = (CkptPiece){"x", CKPT_F32, 1, {10, 0}, 5, 6, tt_[1].data};
    CHECK(ckpt_save(MPI_COMM_WORLD, &a, g, 1, err, sizeof err) == -1 && strstr(err, "'x'"));
    CkptSaveArgs a2 = {.run_dir = run, .step = 2, .meta_json = "[1, 2]"};
    CHECK(ckpt_save(MPI_COMM_WORLD, &a2, pc, n, err, sizeof err) == -1 && strstr(err, "meta_json"));
    CHECK(load_ok_(run, 1, err));
    CHECK_EQ_INT(count_tmp_(run), 0);
    CHECK(!exists_(step_dir_(run, 2)));
}

static void test_crash_points(void) {
    char err[2048], run[600];
    snprintf(run, sizeof run, "%s/crash", root_);
    tt_init_(6, 0);
    CHECKF(save_(run, 10, 0, 1, err) == 0, "%s", err);
    for (int k = 1; k <= 3; k++) {
        tt_init_(100 + (uint64_t)k, 0);   /* the new checkpoint would hold other values */
        ckpt_test_crash_point = k;
        int rc = save_(run, 20, 0, 2, err);
        ckpt_test_crash_point = 0;
        CHECK(rc == -1 && strstr(err, "simulated crash"));
        if (rank_ == 0) {
            CHECKF(k == 3 ? exists_(fmt_("%s/ckpt/step_00000020/manifest.json%s", run, ""))
                          : exists_(fmt_("%s/ckpt/step_00000020.tmp%s", run, "")), "stage %d", k);
            CHECK(k != 2 || exists_(fmt_("%s/ckpt/step_00000020.tmp/manifest.json%s", run, "")));
            CHECK(k == 3 || !exists_(step_dir_(run, 20)));
            /* a reader of the run resumes from step 10 with its values */
            tt_init_(6, 0);
            CHECKF(load_ok_(run, 10, err), "stage %d: %s", k, err);
            /* a step_N.tmp is never a checkpoint */
            Ckpt *c = ckpt_open(fmt_("%s/ckpt/step_00000020.tmp%s", run, ""), err, sizeof err);
            if (k == 1) CHECK(!c && strstr(err, "never committed"));
            ckpt_close(c);
            int n;
            long *s = ckpt_list_steps(run, &n);
            CHECK_EQ_INT(n, k == 3 ? 2 : 1);
            free(s);
        }
        MPI_Barrier(MPI_COMM_WORLD);
    }
    /* the next save cleans up the leftover and commits */
    tt_init_(7, 0);
    CHECKF(save_(run, 20, 0, 3, err) == 0, "%s", err);
    CHECK(load_ok_(run, 20, err));
    CHECK_EQ_INT(count_tmp_(run), 0);
    /* a committed directory whose manifest is gone: a clear error, and not listed */
    if (rank_ == 0) {
        char m[1024];
        snprintf(m, sizeof m, "%s/manifest.json", step_dir_(run, 10));
        unlink(m);
        Ckpt *c = ckpt_open(step_dir_(run, 10), err, sizeof err);
        CHECK(!c && strstr(err, "manifest.json"));
        int n;
        long *s = ckpt_list_steps(run, &n);
        CHECK(n == 1 && s[0] == 20);
        free(s);
        /* latest naming a missing step */
        spit_(fmt_("%s/ckpt/latest%s", run, ""), "step_00000099\n", 14);
        char p[1024];
        CHECK(ckpt_latest(run, p, sizeof p, err, sizeof err) == -1 && strstr(err, "step_00000099"));
        spit_(fmt_("%s/ckpt/latest%s", run, ""), "garbage", 7);
        CHECK(ckpt_latest(run, p, sizeof p, err, sizeof err) == -1 && strstr(err, "latest"));
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* A small checkpoint for the fault tests (rank 0's view in MPI mode). */
static void fault_setup_(const char *run) {
    char err[2048];
    tt_init_(11, 0);
    if (save_(run, 3, 0, 5, err) != 0) fprintf(stderr, "  setup save: %s\n", err);
}

/* After damaging a file: open or verify or a read must fail naming `file`; undamaged data never
 * comes back wrong. Returns 1 if the fault was caught and reported well. */
static int caught_(const char *run, const char *file) {
    char err[2048];
    const char *dir = step_dir_(run, 3);
    int vr = ckpt_verify(dir, err, sizeof err);
    int named = vr != 0 && strstr(err, file) != NULL;
    if (!named) fprintf(stderr, "  verify: rc %d, '%s' (wanted %s named)\n", vr, err, file);
    Ckpt *ck = ckpt_open(dir, err, sizeof err);
    if (ck) {
        for (int i = 0; i < NT; i++) {
            size_t es = esz_(tt_[i].dt);
            unsigned char *b = xmalloc(tt_[i].numel * es);
            if (ckpt_read(ck, tt_[i].name, 0, tt_[i].numel, b, err, sizeof err) == 0) {
                if (memcmp(b, tt_[i].data, tt_[i].numel * es) != 0) { named = 0; fprintf(stderr, "  WRONG LOAD %s\n", tt_[i].name); }
            } else if (!strstr(err, file) || !strstr(err, tt_[i].name)) {
                named = 0;
                fprintf(stderr, "  read error does not name %s and the tensor: %s\n", file, err);
            }
            free(b);
        }
        ckpt_close(ck);
    } else if (!strstr(err, file)) {
        named = 0;
        fprintf(stderr, "  open error does not name %s: %s\n", file, err);
    }
    return named;
}

static void shard_faults_(const char *run, int shard) {
    char name[64], path[1024];
    snprintf(name, sizeof name, "shard-%05d-of-%05d.zst", shard, world_);
    snprintf(path, sizeof path, "%s/%s", step_dir_(run, 3), name);
    size_t n;
    unsigned char *orig = slurp_(path, &n);
    CHECK(orig && n > 48);
    if (!orig) return;
    /* every byte flipped (quick: a stride), one at a time */
    size_t stride = test_quick() ? 1 + n / 200 : 1 + n / 4000, flips = 0, bad = 0;
    for (size_t i = 0; i < n; i += (i < 64 ? 1 : stride)) {
        orig[i] ^= 0x20;
        spit_(path, orig, n);
        orig[i] ^= 0x20;
        if (!caught_(run, name)) { bad++; fprintf(stderr, "  flip at %zu of %s not caught\n", i, name); }
        flips++;
    }
    CHECKF(bad == 0, "%zu of %zu flips in %s", bad, flips, name);
    /* truncations and an appended byte */
    size_t cuts[] = {0, 20, 47, 48, 49, n / 2, n - 1};
    for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
        spit_(path, orig, cuts[c]);
        CHECKF(caught_(run, name), "truncated to %zu", cuts[c]);
    }
    unsigned char *longer = xmalloc(n + 1);
    memcpy(longer, orig, n);
    longer[n] = 0;
    spit_(path, longer, n + 1);
    CHECK(caught_(run, name));
    free(longer);
    /* missing */
    unlink(path);
    char err[2048];
    CHECK(caught_(run, name));
    CHECK(ckpt_verify(step_dir_(run, 3), err, sizeof err) == -1 && strstr(err, "missing"));
    spit_(path, orig, n);
    CHECKF(ckpt_verify(step_dir_(run, 3), err, sizeof err) == 0, "%s", err);
    free(orig);
}

static void test_shard_faults(void) {
    if (world_ != 1) return;
    char run[600];
    snprintf(run, sizeof run, "%s/faults", root_);
    fault_setup_(run);
    shard_faults_(run, 0);
}

static void test_manifest_faults(void) {
    if (world_ != 1) return;
    char run[600], err[2048], mpath[1024];
    snprintf(run, sizeof run, "%s/mfaults", root_);
    fault_setup_(run);
    snprintf(mpath, sizeof mpath, "%s/manifest.json", step_dir_(run, 3));
    size_t n;
    unsigned char *orig = slurp_(mpath, &n);
    CHECK(orig != NULL);
    if (!orig) return;
    int cases = 0, bad = 0;
    size_t stride = test_quick() ? 1 + n / 300 : 1;
    /* 1. each byte flipped */
    for (size_t i = 0; i < n; i += stride) {
        orig[i] ^= (unsigned char)(1u << (i % 8));
        spit_(mpath, orig, n);
        orig[i] ^= (unsigned char)(1u << (i % 8));
        Ckpt *c = ckpt_open(step_dir_(run, 3), err, sizeof err);
        if (c || !strstr(err, "manifest.json")) { bad++; if (bad < 5) fprintf(stderr, "  flip %zu: %s\n", i, c ? "opened" : err); }
        ckpt_close(c);
        cases++;
    }
    /* 2. each truncation */
    for (size_t i = 0; i < n; i += stride) {
        spit_(mpath, orig, i);
        Ckpt *c = ckpt_open(step_dir_(run, 3), err, sizeof err);
        if (c || !strstr(err, "manifest.json")) { bad++; if (bad < 5) fprintf(stderr, "  truncated %zu: %s\n", i, c ? "opened" : err); }
        ckpt_close(c);
        cases++;
    }
    /* 3. random files, some ending like a manifest with a valid checksum */
    Rng r = rng_make(77, 0);
    for (int k = 0; k < (test_quick() ? 50 : 500); k++) {
        size_t len = rng_next_below(&r, 3000);
        char *b = xmalloc(len + 1);
        for (size_t i = 0; i < len; i++) b[i] = (char)(k % 2 ? (int)rng_next_below(&r, 256) : (int)"{}[]\":,0123456789abcdef -\n"[rng_next_below(&r, 27)]);
        size_t m;
        char *f = with_checksum_(b, len, &m);
        spit_(mpath, k % 3 ? f : b, k % 3 ? m : len);
        Ckpt *c = ckpt_open(step_dir_(run, 3), err, sizeof err);
        if (c || !strstr(err, "manifest.json")) { bad++; if (bad < 5) fprintf(stderr, "  random %d: %s\n", k, c ? "opened" : err); }
        ckpt_close(c);
        free(b);
        free(f);
        cases++;
    }
    CHECKF(bad == 0, "%d of %d damaged manifests not refused with a message naming manifest.json", bad, cases);
    printf("  manifest: %d flipped/truncated/random cases\n", cases);
    spit_(mpath, orig, n);
    CHECKF(ckpt_verify(step_dir_(run, 3), err, sizeof err) == 0, "%s", err);
    free(orig);
}

/* Collect every JSON node (pointer to its slot) for structural mutation. */
typedef struct { json_t *parent; const char *key; size_t index; json_t *node; } Slot;
static void walk_(json_t *parent, const char *key, size_t index, json_t *n, Slot *s, int *ns, int cap) {
    if (*ns < cap) s[(*ns)++] = (Slot){parent, key, index, n};
    if (json_is_object(n)) {
        const char *k;
        json_t *v;
        json_object_foreach(n, k, v) walk_(n, k, 0, v, s, ns, cap);
    } else if (json_is_array(n)) {
        size_t i;
        json_t *v;
        json_array_foreach(n, i, v) walk_(n, NULL, i, v, s, ns, cap);
    }
}

static json_t *random_value_(Rng *r, json_t *old) {
    switch (rng_next_below(r, 14)) {
    case 0: return json_null();
    case 1: return json_true();
    case 2: return json_string("x");
    case 3: return json_integer(-1);
    case 4: return json_integer(0);
    case 5: return json_integer((json_int_t)1 << 62);
    case 6: return json_real(1.5);
    case 7: return json_array();
    case 8: return json_object();
    case 9: return json_string("ffffffffffffffff");
    case 10: return json_integer(json_is_integer(old) ? json_integer_value(old) + 1 : 1);
    case 11: return json_integer(json_is_integer(old) ? json_integer_value(old) - 1 : 48);
    case 12: return json_integer(json_is_integer(old) ? json_integer_value(old) * 2 : 1 << 20);
    default: return json_string("../../etc/passwd");
    }
}

static void test_manifest_fuzz(void) {
    if (world_ != 1) return;
    char run[600], err[2048], mpath[1024];
    snprintf(run, sizeof run, "%s/fuzz", root_);
    fault_setup_(run);
    snprintf(mpath, sizeof mpath, "%s/manifest.json", step_dir_(run, 3));
    size_t n;
    char *orig = (char *)slurp_(mpath, &n);
    json_t *base = json_loadb(orig, n, 0, NULL);
    CHECK(base != NULL);
    if (!base) { free(orig); return; }
    Rng r = rng_make(2024, 1);
    int cases = test_quick() ? 300 : 3000, wrong = 0, unnamed = 0, opened = 0;
    enum { CAP = 4096 };
    Slot *slots = xmalloc(CAP * sizeof *slots);
    for (int c = 0; c < cases; c++) {
        json_t *m = json_deep_copy(base);
        int ns = 0;
        walk_(NULL, NULL, 0, m, slots, &ns, CAP);
        int ops = 1 + (int)rng_next_below(&r, 3);
        for (int o = 0; o < ops; o++) {
            ns = 0;
            walk_(NULL, NULL, 0, m, slots, &ns, CAP);
            Slot *s = &slots[1 + rng_next_below(&r, (uint64_t)(ns - 1))];
            int what = (int)rng_next_below(&r, 5);
            if (what == 0) {                                   /* delete */
                if (s->key) json_object_del(s->parent, s->key);
                else json_array_remove(s->parent, s->index);
            } else if (what == 1 && json_is_array(s->parent) && json_array_size(s->parent) > 0) {   /* duplicate */
                json_array_append(s->parent, json_array_get(s->parent, rng_next_below(&r, json_array_size(s->parent))));
            } else if (what == 2 && json_is_array(s->parent) && json_array_size(s->parent) > 1) {   /* swap */
                size_t a = rng_next_below(&r, json_array_size(s->parent)), b = rng_next_below(&r, json_array_size(s->parent));
                json_t *x = json_incref(json_array_get(s->parent, a)), *y = json_incref(json_array_get(s->parent, b));
                json_array_set_new(s->parent, a, y);
                json_array_set_new(s->parent, b, x);
            } else {                                           /* replace */
                json_t *v = random_value_(&r, s->node);
                if (s->key) json_object_set_new(s->parent, s->key, v);
                else json_array_set_new(s->parent, s->index, v);
            }
        }
        size_t len;
        char *text = dump_checked_(m, &len);
        json_decref(m);
        /* sometimes also a textual edit (keeping the checksum valid) */
        if (rng_next_below(&r, 4) == 0 && len > 50) {
            size_t at = rng_next_below(&r, len - 44);
            text[at] = "{}[]\":,0123456789-ex \n"[rng_next_below(&r, 22)];
            char *t2 = with_checksum_(text, len - 43, &len);
            free(text);
            text = t2;
        }
        spit_(mpath, text, len);
        free(text);
        Ckpt *ck = ckpt_open(step_dir_(run, 3), err, sizeof err);
        if (!ck) {
            if (!strstr(err, "manifest.json")) { unnamed++; if (unnamed < 5) fprintf(stderr, "  case %d: %s\n", c, err); }
            continue;
        }
        opened++;
        for (int i = 0; i < NT; i++) {
            size_t es = esz_(tt_[i].dt);
            unsigned char *b = xmalloc(tt_[i].numel * es);
            if (ckpt_read(ck, tt_[i].name, 0, tt_[i].numel, b, err, sizeof err) == 0) {
                if (memcmp(b, tt_[i].data, tt_[i].numel * es) != 0) { wrong++; fprintf(stderr, "  case %d: WRONG LOAD of %s\n", c, tt_[i].name); }
            } else if (!strstr(err, "shard-") && !strstr(err, "manifest.json")) {
                unnamed++;
                if (unnamed < 5) fprintf(stderr, "  case %d read: %s\n", c, err);
            }
            free(b);
        }
        ckpt_close(ck);
    }
    CHECK_EQ_INT(wrong, 0);
    CHECK_EQ_INT(unnamed, 0);
    printf("  fuzz: %d structurally mutated manifests with valid checksums, %d opened (harmless edits "
           "or errors at read)\n", cases, opened);
    spit_(mpath, orig, n);
    CHECKF(ckpt_verify(step_dir_(run, 3), err, sizeof err) == 0, "%s", err);
    free(slots);
    json_decref(base);
    free(orig);
}

static void test_foreign_manifest(void) {
    if (world_ != 1) return;
    char a[600], b[600], c[600], err[2048];
    snprintf(a, sizeof a, "%s/fa", root_);
    snprintf(b, sizeof b, "%s/fb", root_);
    snprintf(c, sizeof c, "%s/fc", root_);
    tt_init_(21, 0);
    CHECKF(save_(a, 3, 0, 1, err) == 0, "%s", err);
    CHECKF(save_(b, 3, 0, 1, err) == 0, "%s", err);   /* same tensors and split, another save */
    tt_init_(22, 1);                                     /* another "variant": other shapes */
    CHECKF(save_(c, 3, 0, 1, err) == 0, "%s", err);
    tt_init_(21, 0);
    char ma[1024], mb[1024], mc[1024];
    snprintf(ma, sizeof ma, "%s/manifest.json", step_dir_(a, 3));
    snprintf(mb, sizeof mb, "%s/manifest.json", step_dir_(b, 3));
    snprintf(mc, sizeof mc, "%s/manifest.json", step_dir_(c, 3));
    size_t n;
    unsigned char *keep = slurp_(ma, &n), *other;
    size_t no;
    other = slurp_(mb, &no);
    spit_(ma, other, no);
    free(other);
    CHECK(ckpt_verify(step_dir_(a, 3), err, sizeof err) == -1 && strstr(err, "another save"));
    CHECK(caught_(a, "shard-00000"));
    other = slurp_(mc, &no);
    spit_(ma, other, no);
    free(other);
    CHECK(ckpt_verify(step_dir_(a, 3), err, sizeof err) == -1 && strstr(err, "shard-00000"));
    CHECK(caught_(a, "shard-00000"));
    spit_(ma, keep, n);
    free(keep);
    CHECKF(ckpt_verify(step_dir_(a, 3), err, sizeof err) == 0, "%s", err);
}

static void test_retention(void) {
    if (world_ != 1) return;
    char run[600], err[2048];
    snprintf(run, sizeof run, "%s/keep", root_);
    tt_init_(31, 0);
    for (long s = 100; s <= 1000; s += 100) CHECKF(save_(run, s, 0, 1, err) == 0, "%s", err);
    int n;
    long *st = ckpt_list_steps(run, &n);
    CHECK(n == 10 && st[0] == 1000 && st[9] == 100);
    free(st);
    CHECK_EQ_INT(ckpt_retain(run, 0, 0, err, sizeof err), 0);   /* keep everything */
    CHECK_EQ_INT(ckpt_retain(run, 3, 500, err, sizeof err), 6);
    st = ckpt_list_steps(run, &n);
    CHECK(n == 4 && st[0] == 1000 && st[1] == 900 && st[2] == 800 && st[3] == 500);
    free(st);
    /* latest pointing at an older step (e.g. set by hand to roll back) is never deleted */
    spit_(fmt_("%s/ckpt/latest%s", run, ""), "step_00000500\n", 14);
    CHECK_EQ_INT(ckpt_retain(run, 1, 0, err, sizeof err), 2);
    st = ckpt_list_steps(run, &n);
    CHECK(n == 2 && st[0] == 1000 && st[1] == 500);
    free(st);
    CHECK(load_ok_(run, 500, err));
}

static void test_async_save(void) {
    char run[600], err[2048];
    snprintf(run, sizeof run, "%s/async", root_);
    tt_init_(41, !test_quick());
    CkptPiece pc[NT * 8];
    int n = my_pieces_(pc, 0, 3);
    CkptSaveArgs a = {.run_dir = run, .step = 8, .meta_json = rank_ == 0 ? META : NULL};
    double t0 = now_seconds();
    CkptAsync *j = ckpt_save_begin(MPI_COMM_WORLD, &a, pc, n, err, sizeof err);
    double t1 = now_seconds();
    CHECK(j != NULL);
    /* the caller changes its buffers at once; training-like collectives on the world comm */
    unsigned char **saved = xmalloc(NT * sizeof *saved);
    for (int i = 0; i < NT; i++) {
        size_t bytes = tt_[i].numel * esz_(tt_[i].dt);
        saved[i] = xmalloc(bytes);
        memcpy(saved[i], tt_[i].data, bytes);
        memset(tt_[i].data, 0x5A, bytes);
    }
    for (int k = 0; k < 50; k++) {
        double x = 1, y;
        MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        CHECK(y == world_);
    }
    int rc = ckpt_save_end(j, err, sizeof err);
    double t2 = now_seconds();
    CHECKF(rc == 0, "%s", err);
    for (int i = 0; i < NT; i++) { memcpy(tt_[i].data, saved[i], tt_[i].numel * esz_(tt_[i].dt)); free(saved[i]); }
    free(saved);
    CHECK(load_ok_(run, 8, err));
    CHECK_EQ_INT(ckpt_save_end(NULL, err, sizeof err), 0);
    if (rank_ == 0) printf("  async: begin (copy) %.1f ms, whole save %.1f ms\n", 1e3 * (t1 - t0), 1e3 * (t2 - t0));
    /* a background save that fails reports it at end */
    CkptSaveArgs bad = {.run_dir = "/proc/no-such-dir", .step = 9, .meta_json = rank_ == 0 ? META : NULL};
    j = ckpt_save_begin(MPI_COMM_WORLD, &bad, pc, n, err, sizeof err);
    CHECK(ckpt_save_end(j, err, sizeof err) == -1 && strstr(err, "/proc/no-such-dir"));
}

/* ---- Hugging Face folders ---- */

static void fill_(T5Model *m, float v) { for (size_t i = 0; i < m->num_params; i++) m->params[i] = v + (float)(i % 7); }

static void test_hf_atomic(void) {
    if (world_ != 1) return;
    char err[2048], dir[600], spm[600];
    snprintf(dir, sizeof dir, "%s/hf/final", root_);
    snprintf(spm, sizeof spm, "%s/spm.model", root_);
    spit_(spm, "not really a sentencepiece model", 32);
    T5Config cfg;
    CHECK(t5_config_from_variant("tiny-nl2-dm128", &cfg, err, sizeof err) == 0);
    T5Model m;
    t5_model_build(&m, &cfg);
    fill_(&m, 1);
    HfSaveOpts keep = {.replace = 0, .spm_path = spm}, repl = {.replace = 1};
    CHECKF(hf_save_folder(dir, &m, &keep, err, sizeof err) == 0, "%s", err);
    CHECK(exists_(fmt_("%s/spiece.model%s", dir, "")) && exists_(fmt_("%s/tokenizer_config.json%s", dir, "")) &&
          exists_(fmt_("%s/special_tokens_map.json%s", dir, "")));
    json_t *tc = json_load_file(fmt_("%s/tokenizer_config.json%s", dir, ""), 0, NULL);
    CHECK(tc && json_integer_value(json_object_get(tc, "extra_ids")) == 100 &&
          json_array_size(json_object_get(tc, "additional_special_tokens")) == 100);
    json_decref(tc);
    /* refuses an existing folder unless told */
    fill_(&m, 2);
    CHECK(hf_save_folder(dir, &m, &keep, err, sizeof err) == -1 && strstr(err, "already exists"));
    CHECK(hf_save_folder(dir, &m, NULL, err, sizeof err) == -1);
    T5Model l;
    CHECKF(hf_load(dir, &l, err, sizeof err) == 0, "%s", err);
    CHECK(l.params && l.params[0] == 1.0f);
    t5_model_free(&l);
    /* a crash after the weights: old folder intact, leftover removed by the next save */
    hf_test_crash_point = 1;
    CHECK(hf_save_folder(dir, &m, &repl, err, sizeof err) == -1);
    hf_test_crash_point = 0;
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", dir, (long)getpid());
    CHECK(exists_(tmp));
    CHECKF(hf_load(dir, &l, err, sizeof err) == 0, "%s", err);
    CHECK(l.params && l.params[0] == 1.0f && l.params[3] == 4.0f);
    t5_model_free(&l);
    CHECK(exists_(fmt_("%s/spiece.model%s", dir, "")));
    /* replace: the new weights, no tokenizer files this time (nothing of the old folder left) */
    CHECKF(hf_save_folder(dir, &m, &repl, err, sizeof err) == 0, "%s", err);
    CHECK(!exists_(tmp));
    CHECKF(hf_load(dir, &l, err, sizeof err) == 0, "%s", err);
    CHECK(l.params && l.params[0] == 2.0f);
    t5_model_free(&l);
    CHECK(!exists_(fmt_("%s/spiece.model%s", dir, "")));
    /* a missing spm: error, old folder intact */
    HfSaveOpts nospm = {.replace = 1, .spm_path = "/nonexistent/spiece.model"};
    CHECK(hf_save_folder(dir, &m, &nospm, err, sizeof err) == -1 && strstr(err, "/nonexistent/spiece.model"));
    CHECK(!exists_(tmp));
    CHECK(hf_load(dir, &l, err, sizeof err) == 0);
    t5_model_free(&l);
    /* config from JSON text as the checkpoint meta holds it */
    T5Config c2;
    CHECK(hf_config_parse("{\"d_model\": 128, \"d_kv\": 64, \"d_ff\": 1024, \"num_layers\": 2, \"num_heads\": 4, "
                          "\"vocab_size\": 32128}", "meta", "x", &c2, err, sizeof err) == 0 && c2.d_model == 128 &&
          c2.n_dec_layers == 2 && c2.tied_embedding == 1);
    CHECK(hf_config_parse("{\"d_model\": \"x\"}", "somewhere", "x", &c2, err, sizeof err) == -1 && strstr(err, "somewhere"));
    t5_model_free(&m);
}

/* ---- disk full (T5_CKPT_FULL_DIR: a small tmpfs) ---- */

static void test_disk_full(const char *fs) {
    char run[600], err[2048];
    snprintf(run, sizeof run, "%s/run", fs);
    tt_init_(51, 0);   /* ~100 KB */
    CHECKF(save_(run, 100, 0, 1, err) == 0, "%s", err);
    /* a checkpoint of incompressible bytes larger than the file system */
    size_t big = (size_t)8 << 20;
    unsigned char *junk = xmalloc(big);
    Rng r = rng_make(5, 5);
    for (size_t i = 0; i < big; i += 8) { uint64_t v = rng_next_u64(&r); memcpy(junk + i, &v, 8); }
    CkptPiece pc[NT * 8 + 1];
    int n = my_pieces_(pc, 0, 1);
    pc[n++] = (CkptPiece){"junk", CKPT_U8, 1, {(int64_t)big * world_, 0}, big * (size_t)rank_, big, junk};
    CkptSaveArgs a = {.run_dir = run, .step = 200, .meta_json = rank_ == 0 ? META : NULL};
    int rc = ckpt_save(MPI_COMM_WORLD, &a, pc, n, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "No space left") && strstr(err, "shard-") && strstr(err, "step 200"));
    if (rc == -1) printf("  disk full: %s\n", err);
    CHECK(load_ok_(run, 100, err));
    CHECK_EQ_INT(count_tmp_(run), 0);
    CHECK(!exists_(step_dir_(run, 200)));
    /* the run can go on: the next (small) checkpoint commits */
    CHECKF(save_(run, 300, 0, 2, err) == 0, "%s", err);
    CHECK(load_ok_(run, 300, err));
    /* background save, disk full: the error comes from end */
    CkptSaveArgs a2 = {.run_dir = run, .step = 400, .meta_json = rank_ == 0 ? META : NULL};
    CkptAsync *j = ckpt_save_begin(MPI_COMM_WORLD, &a2, pc, n, err, sizeof err);
    CHECK(ckpt_save_end(j, err, sizeof err) == -1 && strstr(err, "No space left"));
    CHECK(load_ok_(run, 300, err));
    free(junk);
    if (world_ == 1) {
        /* a Hugging Face folder too big for the disk: the old one stays */
        char dir[700];
        snprintf(dir, sizeof dir, "%s/final", fs);
        T5Config cfg;
        T5Model m, l;
        t5_config_from_variant("tiny-nl2-dm128", &cfg, err, sizeof err);
        cfg.n_enc_layers = cfg.n_dec_layers = 1;
        cfg.vocab_size = 1024;
        t5_model_build(&m, &cfg);
        fill_(&m, 3);
        CHECKF(hf_save_folder(dir, &m, NULL, err, sizeof err) == 0, "%s", err);
        t5_model_free(&m);
        t5_config_from_variant("tiny-nl2-dm128", &cfg, err, sizeof err);   /* 6M params: 24 MB > disk */
        t5_model_build(&m, &cfg);
        fill_(&m, 4);
        HfSaveOpts repl = {.replace = 1};
        CHECK(hf_save_folder(dir, &m, &repl, err, sizeof err) == -1 && strstr(err, "No space left"));
        printf("  hf disk full: %s\n", err);
        CHECK(hf_load(dir, &l, err, sizeof err) == 0 && l.params[0] == 3.0f && l.cfg.vocab_size == 1024);
        t5_model_free(&l);
        t5_model_free(&m);
        char tmp[800];
        snprintf(tmp, sizeof tmp, "%s.tmp-%ld", dir, (long)getpid());
        CHECK(!exists_(tmp));
    }
}

static const char *full_dir_;
static void test_disk_full_(void) { test_disk_full(full_dir_); }

/* ---- MPI (2 ranks) ---- */

static void test_mpi_one_rank_fails(void) {
    char run[600], err[2048];
    snprintf(run, sizeof run, "%s/mpifail", root_);
    tt_init_(61, 0);
    CHECKF(save_(run, 1, 0, 1, err) == 0, "%s", err);
    CkptPiece pc[NT * 8];
    int n = my_pieces_(pc, 0, 1);
    if (rank_ == world_ - 1) pc[0].numel = (size_t)1 << 50;   /* the last rank passes a bad piece */
    CkptSaveArgs a = {.run_dir = run, .step = 2, .meta_json = rank_ == 0 ? META : NULL};
    int rc = ckpt_save(MPI_COMM_WORLD, &a, pc, n, err, sizeof err);
    char want[32];
    snprintf(want, sizeof want, "rank %d", world_ - 1);
    CHECKF(rc == -1 && strstr(err, want), "rank %d: rc %d '%s'", rank_, rc, err);
    CHECK(load_ok_(run, 1, err));
    CHECK_EQ_INT(count_tmp_(run), 0);
}

static void test_mpi_shard_faults(void) {
    char run[600];
    snprintf(run, sizeof run, "%s/mpifaults", root_);
    fault_setup_(run);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank_ == 0)
        for (int s = 0; s < world_; s++) shard_faults_(run, s);
    MPI_Barrier(MPI_COMM_WORLD);
}

/* ---- measurements ---- */

static void bench_(void) {
    size_t n = (size_t)60 << 20;   /* ~ t5-efficient-small: 60M fp32 parameters */
    float *p = xmalloc(n * 4), *v = xmalloc((n / 64) * 4);
    Rng r = rng_make(1, 1);
    for (size_t i = 0; i < n; i++) p[i] = (float)(0.05 * rng_next_normal(&r));
    for (size_t i = 0; i < n / 64; i++) v[i] = (float)(1e-4 * rng_next_double(&r) * rng_next_double(&r));
    CkptPiece pc[2] = {{"param/all", CKPT_F32, 1, {(int64_t)n, 0}, 0, n, p},
                       {"adafactor_r/all", CKPT_F32, 1, {(int64_t)(n / 64), 0}, 0, n / 64, v}};
    double raw = (double)(n + n / 64) * 4 / 1e6;
    char run[700], err[2048];
    float *back = xmalloc(n * 4);
    int levels[] = {1, 3, 5};
    for (int k = 0; k < 3; k++) {
        snprintf(run, sizeof run, "%s/bench%d", root_, levels[k]);
        CkptSaveArgs a = {.run_dir = run, .step = 1, .meta_json = "{}", .zstd_level = levels[k]};
        double t0 = now_seconds();
        if (ckpt_save(MPI_COMM_WORLD, &a, pc, 2, err, sizeof err) != 0) { printf("bench: %s\n", err); return; }
        double t1 = now_seconds();
        Ckpt *ck = ckpt_open(step_dir_(run, 1), err, sizeof err);
        uint64_t st, rw;
        ckpt_sizes(ck, &st, &rw);
        double t2 = now_seconds();
        ckpt_read(ck, "param/all", 0, n, back, err, sizeof err);
        ckpt_read(ck, "adafactor_r/all", 0, n / 64, back, err, sizeof err);
        double t3 = now_seconds();
        ckpt_close(ck);
        printf("zstd level %d: %.0f MB raw, ratio %.3f, save %.0f MB/s (%.2f s incl. fsync), load %.0f MB/s\n",
               levels[k], raw, (double)rw / (double)st, raw / (t1 - t0), t1 - t0, raw / (t3 - t2));
        fflush(stdout);
        char cmd[800];
        snprintf(cmd, sizeof cmd, "rm -rf %s", run);
        sys_(cmd);
    }
    snprintf(run, sizeof run, "%s/bencha", root_);
    CkptSaveArgs a = {.run_dir = run, .step = 1, .meta_json = "{}"};
    double t0 = now_seconds();
    CkptAsync *j = ckpt_save_begin(MPI_COMM_WORLD, &a, pc, 2, err, sizeof err);
    double t1 = now_seconds();
    ckpt_save_end(j, err, sizeof err);
    double t2 = now_seconds();
    printf("background save (default level %d): stall (host copy) %.3f s, whole save %.2f s\n",
           CKPT_DEFAULT_ZSTD_LEVEL, t1 - t0, t2 - t0);
    free(p); free(v); free(back);
}

/* `test_ckpt --write-model RUN VARIANT SPM STEP` (any number of ranks): a checkpoint of a freshly
 * initialised model (seed 3) with the meta contract of ckpt.h, the parameters split over the
 * ranks (tensor i to rank i % W, shared.weight cut between all ranks), a fake Adafactor statistic
 * and data cursor; rank 0 also writes the same weights as a Hugging Face folder RUN/ref for
 * comparison. For tests/e2e/ckpt_faults.sh. */
static int write_model_(const char *run, const char *variant, const char *spm, long step) {
    char err[2048];
    T5Config cfg;
    if (t5_config_from_variant(variant, &cfg, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); return 1; }
    T5Model m;
    t5_model_build(&m, &cfg);
    t5_model_init_weights(&m, 3);
    CkptPiece *pc = xcalloc((size_t)m.num_tensors * 2 + 4, sizeof *pc);
    char (*names)[128] = xcalloc((size_t)m.num_tensors + 1, sizeof *names);
    int n = 0;
    for (int i = 0; i < m.num_tensors; i++) {
        const T5Tensor *t = &m.tensors[i];
        snprintf(names[i], sizeof names[i], "param/%s", t->name);
        CkptPiece p = {names[i], CKPT_F32, t->ndim, {t->shape[0], t->ndim > 1 ? t->shape[1] : 0}, 0, t->numel,
                       m.params + t->offset};
        if (!strcmp(t->name, "shared.weight")) {
            size_t lo = t->numel * (size_t)rank_ / (size_t)world_, hi = t->numel * (size_t)(rank_ + 1) / (size_t)world_;
            p.elem_offset = lo;
            p.numel = hi - lo;
            p.data = m.params + t->offset + lo;
            pc[n++] = p;
        } else if (i % world_ == rank_) {
            pc[n++] = p;
        }
    }
    float *r = xcalloc((size_t)cfg.vocab_size, sizeof *r);
    for (int i = 0; i < cfg.vocab_size; i++) r[i] = 1e-3f * (float)(i % 13);
    const char *cur = "{\"streams\": [[0, 0, 0]]}";
    if (rank_ == 0) {
        pc[n++] = (CkptPiece){"adafactor_r/shared.weight", CKPT_F32, 1, {cfg.vocab_size, 0}, 0, (size_t)cfg.vocab_size, r};
        pc[n++] = (CkptPiece){"data_cursor", CKPT_U8, 1, {(int64_t)strlen(cur), 0}, 0, strlen(cur), cur};
    }
    char *cj = hf_config_to_json(&cfg);
    json_t *meta = json_pack("{s:s, s:I, s:I, s:o, s:{s:s, s:s, s:I}, s:{s:i, s:i, s:i}}", "variant", cfg.name,
                             "step", (json_int_t)step, "tokens", (json_int_t)step * 1000,
                             "config", json_loads(cj, 0, NULL), "options", "spm", spm, "data", "data/sample/c4-train.*",
                             "seed", (json_int_t)3, "layout", "dp", world_, "pp", 1, "tp", 1);
    char *mt = json_dumps(meta, JSON_COMPACT);
    json_decref(meta);
    free(cj);
    CkptSaveArgs a = {.run_dir = run, .step = step, .meta_json = rank_ == 0 ? mt : NULL};
    int rc = ckpt_save(MPI_COMM_WORLD, &a, pc, n, err, sizeof err);
    if (rc != 0) fprintf(stderr, "rank %d: %s\n", rank_, err);
    if (rc == 0 && rank_ == 0) {
        char ref[1024];
        snprintf(ref, sizeof ref, "%s/ref", run);
        HfSaveOpts o = {.replace = 1, .spm_path = spm};
        if (hf_save_folder(ref, &m, &o, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); rc = -1; }
    }
    free(mt);
    free(r);
    free(names);
    free(pc);
    t5_model_free(&m);
    return rc ? 1 : 0;
}

/* RUN for every rank: a test fails if it failed on any rank; rank 0 prints the line. */
#define MRUN(fn) do { test_failures_ = 0; fn(); int f_ = test_failures_, any_; \
    MPI_Allreduce(&f_, &any_, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD); \
    if (rank_ == 0) { printf("%s %s\n", any_ ? "FAIL" : "PASS", #fn); fflush(stdout); } \
    if (any_) test_total_failed_++; } while (0)

int main(int argc, char **argv) {
    int provided;
    LSAN_OFF();
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    LSAN_ON();
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
    if (provided < MPI_THREAD_MULTIPLE) { printf("FAIL mpi_thread_multiple (provided %d)\n", provided); MPI_Finalize(); return 1; }
    if (argc == 6 && strcmp(argv[1], "--write-model") == 0) {
        int rc = write_model_(argv[2], argv[3], argv[4], atol(argv[5]));
        MPI_Finalize();
        return rc;
    }
    const char *full = getenv("T5_CKPT_FULL_DIR");
    if (rank_ == 0) {
        /* tmpfs when there is one: these tests fsync hundreds of times (the real-disk path is
         * measured by --bench and exercised by tests/e2e/ckpt_faults.sh) */
        const char *base = full ? full : getenv("T5_CKPT_TEST_DIR") ? getenv("T5_CKPT_TEST_DIR")
                         : access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
        snprintf(root_, sizeof root_, "%s/t5ckpt.XXXXXX", base);
        if (!mkdtemp(root_)) { perror("mkdtemp"); MPI_Abort(MPI_COMM_WORLD, 1); }
    }
    MPI_Bcast(root_, sizeof root_, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
        bench_();
    } else if (full) {
        full_dir_ = full;
        MRUN(test_disk_full_);
    } else {
        MRUN(test_roundtrip_splits);
        MRUN(test_crash_points);
        MRUN(test_async_save);
        if (world_ == 1) {
            RUN(test_bad_piece_sets);
            RUN(test_shard_faults);
            RUN(test_manifest_faults);
            RUN(test_manifest_fuzz);
            RUN(test_foreign_manifest);
            RUN(test_retention);
            RUN(test_hf_atomic);
        } else {
            MRUN(test_mpi_one_rank_fails);
            MRUN(test_mpi_shard_faults);
        }
    }
    tt_free_();
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank_ == 0) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", root_);
        sys_(cmd);
    }
    int failed = test_total_failed_, any;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    LSAN_OFF();
    MPI_Finalize();
    LSAN_ON();
    return any ? 1 : 0;
}
