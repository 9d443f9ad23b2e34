/*
 * tests/unit/test_loader.c: deterministic streams, rank slicing, cursor resume, epochs, prefetch.
 *
 * Uses the sample corpus (data/sample, run from the repository root) and small generated .json
 * fixtures. Expected values come from independent computation (tokenizing the fixture documents
 * directly, rebuilding pieces from examples) or from comparing two configurations that must
 * agree (world sizes, prefetch on/off, resumed vs uninterrupted).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/util.h"
#include "../../data/loader.h"
#include "../../data/span.h"
#include "../../data/spm.h"
#include "../../pretrain/t5_batch.h"
#include "test.h"

#include <jansson.h>
#include <zlib.h>

#define SPM "data/sample/spiece.model"
#define SAMPLE "data/sample/c4-train.*.json.gz"

static char fixdir[256];
static char **fix_files;
static int n_fix;

/* Record of a batch: all seven arrays concatenated. */
static size_t batch_ints(const T5Batch *b) { return (size_t)b->B * (3 * (size_t)b->Le + 4 * (size_t)b->Ld); }

static void batch_record(const T5Batch *b, int32_t *dst) {
    size_t ne = (size_t)b->B * b->Le, nd = (size_t)b->B * b->Ld;
    memcpy(dst, b->enc_ids, ne * 4); dst += ne;
    memcpy(dst, b->enc_seg, ne * 4); dst += ne;
    memcpy(dst, b->enc_pos, ne * 4); dst += ne;
    memcpy(dst, b->dec_in_ids, nd * 4); dst += nd;
    memcpy(dst, b->labels, nd * 4); dst += nd;
    memcpy(dst, b->dec_seg, nd * 4); dst += nd;
    memcpy(dst, b->dec_pos, nd * 4);
}

static DataLoader *open_or_fail(char **files, int nf, int B, int K, int rank, int world, int Le,
                                int Ld, int prefetch, int epochs, uint64_t seed) {
    DataLoaderConfig c;
    data_loader_config_default(&c);
    c.files = (const char **)files; c.n_files = nf; c.spm_model = SPM; c.seed = seed;
    c.global_batch = B; c.n_streams = K; c.rank = rank; c.world = world;
    c.enc_len = Le; c.dec_len = Ld; c.prefetch = prefetch; c.max_epochs = epochs;
    char err[1024];
    DataLoader *dl = data_loader_open(&c, err, sizeof err);
    CHECKF(dl != NULL, "open: %s", err);
    return dl;
}

/* Run n batches of the GLOBAL batch by running `world` loaders and concatenating their rows
 * (row-major arrays, so concatenation per array). Returns a malloc'ed [n][7 arrays] record. */
static int32_t *run_world(char **files, int nf, int B, int K, int world, int Le, int Ld, int n,
                          int prefetch) {
    T5Batch g;
    t5_batch_alloc(&g, B, Le, Ld);
    size_t per = batch_ints(&g);
    int32_t *rec = xcalloc(per * (size_t)n, sizeof(int32_t));
    DataLoader **dl = xcalloc((size_t)world, sizeof *dl);
    for (int r = 0; r < world; r++) {
        dl[r] = open_or_fail(files, nf, B, K, r, world, Le, Ld, prefetch, 0, 77);
        if (!dl[r]) goto out;
    }
    for (int i = 0; i < n; i++) {
        for (int r = 0; r < world; r++) {
            T5Batch v = t5_batch_slice(&g, r * B / world, B / world);
            T5Batch own;
            t5_batch_alloc(&own, B / world, Le, Ld);
            int rc = data_loader_next(dl[r], &own, NULL);
            CHECKF(rc == 0, "rank %d batch %d: rc %d %s", r, i, rc, data_loader_error(dl[r]));
            size_t ne = (size_t)own.B * Le * 4, nd = (size_t)own.B * Ld * 4;
            memcpy(v.enc_ids, own.enc_ids, ne); memcpy(v.enc_seg, own.enc_seg, ne);
            memcpy(v.enc_pos, own.enc_pos, ne); memcpy(v.dec_in_ids, own.dec_in_ids, nd);
            memcpy(v.labels, own.labels, nd); memcpy(v.dec_seg, own.dec_seg, nd);
            memcpy(v.dec_pos, own.dec_pos, nd);
            t5_batch_free(&own);
        }
        batch_record(&g, rec + per * (size_t)i);
    }
out:
    for (int r = 0; r < world; r++) data_loader_close(dl[r]);
    free(dl);
    t5_batch_free(&g);
    return rec;
}

static void test_world_invariance(void) {
    char **files; int nf; char err[512];
    if (data_expand_globs(SAMPLE, &files, &nf, err, sizeof err) != 0) { CHECKF(0, "%s", err); return; }
    int n = test_quick() ? 2 : 3;
    /* B = 8, K = 8 over 4 files (streams share files); real lengths 512/128 */
    int32_t *w1 = run_world(files, nf, 8, 0, 1, 512, 128, n, 0);
    T5Batch t; t5_batch_alloc(&t, 8, 512, 128);
    size_t per = batch_ints(&t);
    for (int w = 2; w <= 4; w *= 2) {
        int32_t *ww = run_world(files, nf, 8, 0, w, 512, 128, n, 0);
        CHECKF(memcmp(w1, ww, per * n * 4) == 0, "world %d differs from world 1", w);
        free(ww);
    }
    /* the rows are distinct (streams differ) and full rows are 512 / 114 real tokens */
    int full = 0;
    for (int r = 0; r < 8; r++) {
        const int32_t *es = w1 + (size_t)r * 512, *seg_d = w1 + 3 * 8 * 512 + 2 * 8 * 128 + r * 128;
        int ne = 0, nd = 0;
        for (int i = 0; i < 512; i++) ne += es[i] != 0;
        for (int i = 0; i < 128; i++) nd += seg_d[i] != 0;
        full += ne == 512 && nd == 114;
        for (int q = 0; q < r; q++) CHECK(memcmp(w1 + (size_t)q * 512, es, 512 * 4) != 0);
    }
    CHECKF(full >= 6, "only %d of 8 rows hold a full 512/114 example", full);
    free(w1);
    t5_batch_free(&t);
    /* K = 2 < B = 8: streams own several rows, ranks discard the rows of others */
    t5_batch_alloc(&t, 8, 128, 32);
    per = batch_ints(&t);
    int32_t *a = run_world(files, nf, 8, 2, 1, 128, 32, n, 0);
    int32_t *b = run_world(files, nf, 8, 2, 4, 128, 32, n, 0);
    CHECKF(memcmp(a, b, per * n * 4) == 0, "K=2: world 4 differs from world 1");
    free(a); free(b);
    t5_batch_free(&t);
    data_free_files(files, nf);
}

static void test_prefetch_identical(void) {
    char **files; int nf; char err[512];
    if (data_expand_globs(SAMPLE, &files, &nf, err, sizeof err) != 0) { CHECKF(0, "%s", err); return; }
    int n = test_quick() ? 4 : 10;
    T5Batch t; t5_batch_alloc(&t, 4, 128, 32);
    size_t per = batch_ints(&t);
    int32_t *a = run_world(files, nf, 4, 0, 1, 128, 32, n, 0);
    int32_t *b = run_world(files, nf, 4, 0, 1, 128, 32, n, 3);
    CHECK(memcmp(a, b, per * n * 4) == 0);
    /* and the cursor after k batches is the same, whatever ran ahead */
    DataLoader *d0 = open_or_fail(files, nf, 4, 0, 0, 1, 128, 32, 0, 0, 77);
    DataLoader *d1 = open_or_fail(files, nf, 4, 0, 0, 1, 128, 32, 2, 0, 77);
    if (d0 && d1) {
        for (int i = 0; i < 3; i++) { data_loader_next(d0, &t, NULL); data_loader_next(d1, &t, NULL); }
        size_t l0, l1;
        char *c0 = data_loader_cursor_save(d0, &l0), *c1 = data_loader_cursor_save(d1, &l1);
        CHECK(l0 == l1 && memcmp(c0, c1, l0) == 0);
        free(c0); free(c1);
    }
    data_loader_close(d0); data_loader_close(d1);
    free(a); free(b);
    t5_batch_free(&t);
    data_free_files(files, nf);
}

/* Fixture: 3 small .json files of generated English-like documents, with one bad JSON line,
 * one empty text and one whitespace-only text in the second file. */
static const char *words_[] = { "the", "data", "model", "stream", "of", "and", "pretraining",
    "cluster", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "token", "span", "noise",
    "sentinel", "batch", "shard", "resume", "epoch", "cursor", "file", "reader", "value" };

static int make_fixtures(void) {
    snprintf(fixdir, sizeof fixdir, "/tmp/t5loader.XXXXXX");
    if (!mkdtemp(fixdir)) return -1;
    Rng r = rng_make(11, 11);
    for (int f = 0; f < 3; f++) {
        char path[512];
        snprintf(path, sizeof path, "%s/fix-%d.json", fixdir, f);
        FILE *fp = fopen(path, "w");
        if (!fp) return -1;
        int ndocs = 9 + 3 * f;
        for (int d = 0; d < ndocs; d++) {
            if (f == 1 && d == 2) fputs("{\"text\": broken\n", fp);
            if (f == 1 && d == 4) fputs("{\"text\": \"\", \"url\": \"u\"}\n", fp);
            if (f == 1 && d == 6) fputs("{\"text\": \"   \", \"url\": \"u\"}\n", fp);
            fputs("{\"text\": \"", fp);
            int nw = 5 + (int)rng_next_below(&r, d % 4 == 0 ? 400 : 60);
            for (int w = 0; w < nw; w++)
                fprintf(fp, "%s%s", w ? " " : "", words_[rng_next_below(&r, sizeof words_ / sizeof *words_)]);
            fprintf(fp, ".\", \"url\": \"https://x/%d/%d\", \"timestamp\": \"2019-04-25T12:57:54Z\"}\n", f, d);
        }
        fclose(fp);
    }
    char err[512], glob[300];
    snprintf(glob, sizeof glob, "%s/fix-*.json", fixdir);
    return data_expand_globs(glob, &fix_files, &n_fix, err, sizeof err);
}

static void remove_fixtures(void) {
    for (int i = 0; i < n_fix; i++) unlink(fix_files[i]);
    data_free_files(fix_files, n_fix);
    rmdir(fixdir);
}

/* Independent reference for K = 1: tokenize the good documents of the fixture files in order. */
static int32_t *reference_tokens(long *n_out, long *docs_out) {
    char err[512];
    SpmTokenizer *spm = spm_open(SPM, err, sizeof err);
    if (!spm) { CHECKF(0, "%s", err); return NULL; }
    int32_t *all = NULL, *ids = NULL;
    size_t cap = 0;
    long n = 0, docs = 0;
    for (int f = 0; f < n_fix; f++) {
        C4Reader *r = c4_reader_open(fix_files[f], NULL, err, sizeof err);
        if (!r) { CHECKF(0, "%s", err); continue; }
        C4Document d;
        while (c4_reader_next(r, &d) == 1) {
            long k = spm_encode(spm, d.text, d.text_len, &ids, &cap);
            if (k <= 0) continue;
            all = xrealloc(all, (size_t)(n + k) * sizeof(int32_t));
            memcpy(all + n, ids, (size_t)k * sizeof(int32_t));
            n += k;
            docs++;
        }
        c4_reader_close(r);
    }
    free(ids);
    spm_close(spm);
    *n_out = n;
    *docs_out = docs;
    return all;
}

/* Rebuild raw pieces from one packed row (inputs + targets interleave back) and append. */
static long unpack_row(const T5Batch *b, int row, int top, int32_t *out) {
    const int32_t *ei = b->enc_ids + (size_t)row * b->Le, *es = b->enc_seg + (size_t)row * b->Le;
    const int32_t *lb = b->labels + (size_t)row * b->Ld, *ds = b->dec_seg + (size_t)row * b->Ld;
    long m = 0;
    for (int seg = 1;; seg++) {
        int e0 = -1, e1 = 0, d0 = -1, d1 = 0;
        for (int t = 0; t < b->Le; t++) if (es[t] == seg) { if (e0 < 0) e0 = t; e1 = t + 1; }
        for (int t = 0; t < b->Ld; t++) if (ds[t] == seg) { if (d0 < 0) d0 = t; d1 = t + 1; }
        if (e0 < 0) break;
        for (int i = e0; i < e1 - 1; i++) {
            if (ei[i] > top - 100 && ei[i] <= top) {
                int j = d0;
                while (j < d1 && lb[j] != ei[i]) j++;
                for (j++; j < d1 - 1 && !(lb[j] > top - 100 && lb[j] <= top); j++) out[m++] = lb[j];
            } else {
                out[m++] = ei[i];
            }
        }
    }
    return m;
}

static void test_epochs_and_content(void) {
    long nref, docs;
    int32_t *ref = reference_tokens(&nref, &docs);
    if (!ref) return;
    for (int epochs = 1; epochs <= 2; epochs++) {
        DataLoader *dl = open_or_fail(fix_files, n_fix, 1, 1, 0, 1, 128, 32, 0, epochs, 5);
        if (!dl) break;
        T5Batch b;
        t5_batch_alloc(&b, 1, 128, 32);
        int32_t *got = xmalloc((size_t)(nref * epochs + 1000) * sizeof(int32_t));
        long m = 0;
        int rc, batches = 0;
        while ((rc = data_loader_next(dl, &b, NULL)) == 0 && m < nref * epochs) {
            m += unpack_row(&b, 0, data_loader_sentinel_top(dl), got + m);
            batches++;
        }
        CHECKF(rc == 1, "epochs=%d: rc %d after %d batches (%s)", epochs, rc, batches,
               data_loader_error(dl));
        CHECK(data_loader_next(dl, &b, NULL) == 1);     /* exhaustion is sticky */
        /* fewer than 128 documents: one group per epoch, so the pieces rebuild the concatenation
         * of all documents, in file order in epoch 0 */
        CHECK_EQ_INT(m, nref * epochs);
        if (m >= nref) CHECK(memcmp(got, ref, (size_t)nref * 4) == 0);
        DataLoaderStats st;
        data_loader_get_stats(dl, &st);
        CHECK_EQ_INT(st.docs_used, docs * epochs);
        CHECK_EQ_INT(st.tokens, nref * epochs);
        CHECK_EQ_INT(st.pieces, epochs * ((nref + 140) / 141));   /* helper(128) = 141 */
        CHECKF(st.bad[C4_BAD_JSON] == epochs && st.bad[C4_EMPTY_TEXT] == epochs,
               "bad json %ld empty %ld", st.bad[C4_BAD_JSON], st.bad[C4_EMPTY_TEXT]);
        free(got);
        t5_batch_free(&b);
        data_loader_close(dl);
    }
    free(ref);
}

/* select_random_chunk inside the loader (docs/t5-recipe.md section 4.2): a document longer than 65536 tokens
 * contributes exactly one aligned 65536-token window (chosen by the seed), its neighbours
 * whole; reference tokens come from spm_encode on the same texts. */
static void test_long_document_chunk(void) {
    char dir[] = "/tmp/t5loader_long.XXXXXX";
    if (!mkdtemp(dir)) { CHECKF(0, "mkdtemp"); return; }
    char path[300];
    snprintf(path, sizeof path, "%s/long.json", dir);
    /* three documents: short, ~100k tokens, short */
    size_t cap = (size_t)1 << 21, len = 0;
    char *txt[3];
    Rng r = rng_make(3, 3);
    for (int d = 0; d < 3; d++) {
        int nw = d == 1 ? 60000 : 30;
        txt[d] = xmalloc(cap);
        size_t n = 0;
        for (int w = 0; w < nw; w++)
            n += (size_t)sprintf(txt[d] + n, "%s%s", w ? " " : "",
                                 words_[rng_next_below(&r, sizeof words_ / sizeof *words_)]);
        sprintf(txt[d] + n, ".");
    }
    char *file = xmalloc(3 * cap + 100);
    for (int d = 0; d < 3; d++) len += (size_t)sprintf(file + len, "{\"text\":\"%s\"}\n", txt[d]);
    CHECK(write_file_atomic(path, file, len) == 0);
    free(file);
    char err[512];
    SpmTokenizer *spm = spm_open(SPM, err, sizeof err);
    if (!spm) { CHECKF(0, "%s", err); return; }
    int32_t *ref[3] = { NULL, NULL, NULL };
    size_t rcap[3] = { 0, 0, 0 };
    long nref[3];
    for (int d = 0; d < 3; d++)
        nref[d] = spm_encode(spm, txt[d], strlen(txt[d]), &ref[d], &rcap[d]);
    spm_close(spm);
    CHECKF(nref[1] > 65536 && nref[1] < 2 * 65536, "long document has %ld tokens", nref[1]);
    const long L = 65536, windows = (nref[1] + L - 1) / L;
    int seen[3] = { 0, 0, 0 };
    char *files[] = { path };
    int32_t *got = xmalloc((size_t)(nref[0] + L + nref[2] + 1000) * sizeof(int32_t));
    for (uint64_t seed = 0; seed < (test_quick() ? 4u : 8u); seed++) {
        DataLoader *dl = open_or_fail(files, 1, 1, 1, 0, 1, 128, 32, 0, 1, seed);
        if (!dl) break;
        T5Batch b;
        t5_batch_alloc(&b, 1, 128, 32);
        long m = 0;
        int rc;
        while ((rc = data_loader_next(dl, &b, NULL)) == 0 && m < nref[0] + L + nref[2])
            m += unpack_row(&b, 0, data_loader_sentinel_top(dl), got + m);
        CHECKF(rc == 1, "seed %d: status %d: %s", (int)seed, rc, data_loader_error(dl));
        long mid = m - nref[0] - nref[2];
        int w = -1;
        for (long k = 0; k < windows; k++) {
            long wl = (k + 1) * L <= nref[1] ? L : nref[1] - k * L;
            if (mid == wl && memcmp(got + nref[0], ref[1] + k * L, (size_t)wl * 4) == 0) w = (int)k;
        }
        CHECKF(w >= 0, "seed %d: the middle %ld tokens are not an aligned window", (int)seed, mid);
        if (w >= 0 && w < 3) seen[w]++;
        CHECK(m >= nref[0] + nref[2] && memcmp(got, ref[0], (size_t)nref[0] * 4) == 0 &&
              memcmp(got + m - nref[2], ref[2], (size_t)nref[2] * 4) == 0);
        DataLoaderStats st;
        data_loader_get_stats(dl, &st);
        CHECK_EQ_INT(st.tokens_total, nref[0] + nref[1] + nref[2]);
        CHECK_EQ_INT(st.tokens, m);
        t5_batch_free(&b);
        data_loader_close(dl);
    }
    CHECKF(seen[0] > 0 && seen[1] > 0, "windows chosen %d / %d times", seen[0], seen[1]);
    free(got);
    for (int d = 0; d < 3; d++) { free(ref[d]); free(txt[d]); }
    unlink(path);
    rmdir(dir);
}

/* data_loader_cursor_save_previous: after every batch it is, byte for byte, the cursor saved
 * just before that data_loader_next (synchronous and prefetched), NULL before the first batch
 * and after a restore; restoring it gives the last delivered batch again, then the same run. */
static void test_cursor_previous(void) {
    const int B = 4, K = 2, Le = 128, Ld = 32, N = test_quick() ? 12 : 30;
    for (int pf = 0; pf <= 2; pf += 2) {
        DataLoader *dl = open_or_fail(fix_files, n_fix, B, K, 0, 1, Le, Ld, pf, 0, 9);
        if (!dl) return;
        T5Batch b, c;
        t5_batch_alloc(&b, B, Le, Ld);
        t5_batch_alloc(&c, B, Le, Ld);
        size_t per = batch_ints(&b), len = 0;
        int32_t *got = xcalloc(per, sizeof(int32_t)), *want = xcalloc(per, sizeof(int32_t));
        CHECK(data_loader_cursor_save_previous(dl, &len) == NULL);
        CHECK(len == (size_t)-1);
        int differ = 0, resumed_bad = 0, checked = 0;
        for (int i = 0; i < N; i++) {
            size_t lb = 0, lp = 0;
            char *before = data_loader_cursor_save(dl, &lb);
            CHECK(data_loader_next(dl, &b, NULL) == 0);
            batch_record(&b, want);
            char *prev = data_loader_cursor_save_previous(dl, &lp);
            if (!prev || lp != lb || strcmp(prev, before) != 0) {
                if (!differ) printf("  step %d, prefetch %d: previous %.200s\n  saved before %.200s\n",
                                    i, pf, prev ? prev : "(null)", before);
                differ++;
            }
            /* a second call gives the same text */
            char *again = data_loader_cursor_save_previous(dl, NULL);
            if (!again || !prev || strcmp(again, prev) != 0) differ++;
            free(again);
            if (prev && (i % 3 == 1 || i == N - 1)) {      /* resume from it: the same batch, then
                                                               the same next one */
                checked++;
                DataLoader *d2 = open_or_fail(fix_files, n_fix, B, K, 0, 1, Le, Ld, 2 - pf, 0, 9);
                char err[512];
                if (!d2 || data_loader_cursor_restore(d2, prev, lp, err, sizeof err) != 0) {
                    resumed_bad++;
                } else {
                    CHECK(data_loader_cursor_save_previous(d2, NULL) == NULL);
                    CHECK_EQ_INT(data_loader_batches(d2), i);
                    if (data_loader_next(d2, &c, NULL) != 0) resumed_bad++;
                    else {
                        batch_record(&c, got);
                        if (memcmp(got, want, per * 4) != 0) resumed_bad++;
                    }
                }
                data_loader_close(d2);
            }
            free(before);
            free(prev);
        }
        CHECKF(differ == 0, "prefetch %d: %d of %d previous cursors differ from the saved ones",
               pf, differ, N);
        CHECKF(resumed_bad == 0 && checked > 0, "prefetch %d: %d of %d resumes from the previous "
               "cursor differ", pf, resumed_bad, checked);
        /* after a restore: NULL until the next batch, then the restored cursor itself */
        char *here = data_loader_cursor_save(dl, &len), err[512];
        CHECK(data_loader_cursor_restore(dl, here, len, err, sizeof err) == 0);
        CHECK(data_loader_cursor_save_previous(dl, NULL) == NULL);
        CHECK(data_loader_next(dl, &b, NULL) == 0);
        char *prev = data_loader_cursor_save_previous(dl, NULL);
        CHECK(prev && strcmp(prev, here) == 0);
        free(prev); free(here); free(got); free(want);
        t5_batch_free(&b);
        t5_batch_free(&c);
        data_loader_close(dl);
    }
}

/* Save after every batch i, restore into a fresh loader and compare the following batches with
 * the uninterrupted run; the run crosses several epoch boundaries. */
static void test_cursor_resume(void) {
    const int B = 4, K = 2, Le = 128, Ld = 32, N = test_quick() ? 16 : 40, AHEAD = 3;
    DataLoader *dl = open_or_fail(fix_files, n_fix, B, K, 0, 1, Le, Ld, 2, 0, 9);
    if (!dl) return;
    T5Batch b;
    t5_batch_alloc(&b, B, Le, Ld);
    size_t per = batch_ints(&b);
    int32_t *rec = xcalloc(per * (N + AHEAD), sizeof(int32_t));
    char **cur = xcalloc(N + AHEAD, sizeof(char *));
    size_t *len = xcalloc(N + AHEAD, sizeof(size_t));
    long *used = xcalloc(N + AHEAD, sizeof(long));
    DataLoaderStats st;
    for (int i = 0; i < N + AHEAD; i++) {
        cur[i] = data_loader_cursor_save(dl, &len[i]);
        data_loader_get_stats(dl, &st);
        used[i] = st.docs_used;
        CHECK(data_loader_next(dl, &b, NULL) == 0);
        batch_record(&b, rec + per * i);
    }
    int reached = 0;      /* the restore points must span several epoch boundaries */
    for (int i = 0; i < N; i++) reached |= strstr(cur[i], "\"epoch\":2") != NULL;
    CHECKF(reached, "the run should reach epoch 2: %.300s", cur[N - 1]);
    data_loader_get_stats(dl, &st);
    long used_total = st.docs_used;
    data_loader_close(dl);
    int bad = 0, retok = 0;
    int32_t *tmp = xcalloc(per, sizeof(int32_t));
    for (int i = 0; i < N; i++) {
        DataLoader *d2 = open_or_fail(fix_files, n_fix, B, K, 0, 1, Le, Ld, i % 2, 0, 9);
        if (!d2) break;
        char err[512];
        if (data_loader_cursor_restore(d2, cur[i], len[i], err, sizeof err) != 0) {
            CHECKF(0, "restore %d: %s", i, err);
            data_loader_close(d2);
            break;
        }
        CHECK_EQ_INT(data_loader_batches(d2), i);
        for (int j = i; j < N + AHEAD; j++) {
            if (data_loader_next(d2, &b, NULL) != 0) { bad++; break; }
            batch_record(&b, tmp);
            if (memcmp(tmp, rec + per * j, per * 4) != 0) { bad++; break; }
        }
        data_loader_get_stats(d2, &st);
        if (st.docs_used != used_total - used[i]) retok++;   /* tokenized only what was new */
        data_loader_close(d2);
    }
    CHECKF(bad == 0, "%d resumed runs differ from the uninterrupted one", bad);
    CHECKF(retok == 0, "%d resumed runs re-tokenized consumed documents", retok);
    /* a cursor of another run is refused */
    DataLoader *d3 = open_or_fail(fix_files, n_fix, B, K, 0, 1, Le, Ld, 0, 0, 10);
    char err[512] = "";
    if (d3) {
        CHECK(data_loader_cursor_restore(d3, cur[3], len[3], err, sizeof err) == -1);
        CHECK(strstr(err, "seed") != NULL);
        CHECK(data_loader_cursor_restore(d3, "{not json", 9, err, sizeof err) == -1);
    }
    data_loader_close(d3);
    for (int i = 0; i < N + AHEAD; i++) free(cur[i]);
    free(cur); free(len); free(used); free(rec); free(tmp);
    t5_batch_free(&b);
}

/* Cursors of 2 ranks merged resume a 1-rank run identically. */
static void test_cursor_merge_reshard(void) {
    const int B = 4, Le = 128, Ld = 32;
    T5Batch g, h;
    t5_batch_alloc(&g, B, Le, Ld);
    t5_batch_alloc(&h, B / 2, Le, Ld);
    DataLoader *r0 = open_or_fail(fix_files, n_fix, B, 0, 0, 2, Le, Ld, 0, 0, 3);
    DataLoader *r1 = open_or_fail(fix_files, n_fix, B, 0, 1, 2, Le, Ld, 0, 0, 3);
    DataLoader *one = open_or_fail(fix_files, n_fix, B, 0, 0, 1, Le, Ld, 0, 0, 3);
    if (!r0 || !r1 || !one) goto out;
    for (int i = 0; i < 5; i++) { data_loader_next(r0, &h, NULL); data_loader_next(r1, &h, NULL); }
    size_t l[2];
    char *c[2] = { data_loader_cursor_save(r0, &l[0]), data_loader_cursor_save(r1, &l[1]) };
    char err[512];
    size_t ml;
    char *m = data_cursor_merge((const char *const *)c, l, 2, &ml, err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    CHECK(data_loader_cursor_restore(one, c[0], l[0], err, sizeof err) == -1);  /* missing streams */
    if (m) CHECKF(data_loader_cursor_restore(one, m, ml, err, sizeof err) == 0, "%s", err);
    DataLoader *ref = open_or_fail(fix_files, n_fix, B, 0, 0, 1, Le, Ld, 0, 0, 3);
    if (ref) {
        CHECK(data_loader_skip(ref, 5) == 0);
        for (int i = 0; i < 3; i++) {
            CHECK(data_loader_next(ref, &g, NULL) == 0);
            T5Batch x;
            t5_batch_alloc(&x, B, Le, Ld);
            CHECK(data_loader_next(one, &x, NULL) == 0);
            CHECK(memcmp(g.enc_ids, x.enc_ids, (size_t)B * Le * 4) == 0);
            CHECK(memcmp(g.labels, x.labels, (size_t)B * Ld * 4) == 0);
            CHECK(memcmp(g.dec_seg, x.dec_seg, (size_t)B * Ld * 4) == 0);
            t5_batch_free(&x);
        }
    }
    data_loader_close(ref);
    free(c[0]); free(c[1]); free(m);
out:
    data_loader_close(r0); data_loader_close(r1); data_loader_close(one);
    t5_batch_free(&g); t5_batch_free(&h);
}

/* Copy the fixture files into a fresh directory (for tests that delete or replace files);
 * returns the sorted list there. */
static int copy_fixtures(char *dir, size_t dirlen, char ***files, int *nf) {
    snprintf(dir, dirlen, "/tmp/t5loader_copy.XXXXXX");
    if (!mkdtemp(dir)) return -1;
    for (int i = 0; i < n_fix; i++) {
        size_t len;
        char *buf = read_file_all(fix_files[i], &len);
        const char *base = strrchr(fix_files[i], '/') + 1;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, base);
        if (!buf || write_file_atomic(path, buf, len) != 0) { free(buf); return -1; }
        free(buf);
    }
    char glob[300], err[512];
    snprintf(glob, sizeof glob, "%s/fix-*.json", dir);
    return data_expand_globs(glob, files, nf, err, sizeof err);
}

static void remove_copy(const char *dir, char **files, int nf) {
    for (int i = 0; i < nf; i++) { unlink(files[i]); rmdir(files[i]); }
    data_free_files(files, nf);
    rmdir(dir);
}

/* Next batches until one is not 0 (at most `limit`); returns that status, or 0 at the limit. */
static int run_until_status(DataLoader *dl, T5Batch *b, int limit, int *batches) {
    for (*batches = 0; *batches < limit; (*batches)++) {
        int rc = data_loader_next(dl, b, NULL);
        if (rc != 0) return rc;
    }
    return 0;
}

/* A data file that disappears (or turns into a directory) after the loader opened: a clear error
 * naming the file when a stream needs it again, sticky, no crash and no hang; with and without
 * the prefetch thread. */
static void test_file_vanishes(void) {
    for (int prefetch = 0; prefetch <= 2; prefetch += 2) {
        char dir[256], **files;
        int nf;
        if (copy_fixtures(dir, sizeof dir, &files, &nf) != 0 || nf != 3) {
            CHECKF(0, "cannot copy the fixtures");
            return;
        }
        DataLoader *dl = open_or_fail(files, nf, 1, 1, 0, 1, 128, 32, prefetch, 0, 4);
        if (!dl) { remove_copy(dir, files, nf); return; }
        T5Batch b;
        t5_batch_alloc(&b, 1, 128, 32);
        CHECK(data_loader_next(dl, &b, NULL) == 0);
        unlink(files[2]);
        if (prefetch) CHECK(mkdir(files[2], 0755) == 0);      /* unreadable as a C4 file */
        int n, rc = run_until_status(dl, &b, 5000, &n);
        CHECKF(rc == -1, "prefetch %d: status %d after %d more batches", prefetch, rc, n);
        const char *e = data_loader_error(dl);
        CHECKF(strstr(e, files[2]) && strstr(e, "stream 0"), "error '%s'", e);
        CHECK(data_loader_next(dl, &b, NULL) == -1);           /* sticky */
        t5_batch_free(&b);
        data_loader_close(dl);
        remove_copy(dir, files, nf);
    }
}

/* Inputs that could make a loader spin forever: a stream whose files hold no usable document
 * (empty or whitespace-only texts, bad records), or streams sharing a file with fewer documents
 * than streams. Both end in an error naming the stream. */
static void test_no_usable_documents(void) {
    char dir[] = "/tmp/t5loader_empty.XXXXXX";
    if (!mkdtemp(dir)) { CHECKF(0, "mkdtemp"); return; }
    char p0[300], p1[300];
    snprintf(p0, sizeof p0, "%s/empty.json", dir);
    snprintf(p1, sizeof p1, "%s/two.json", dir);
    const char *bad = "{\"text\":\"\"}\n{\"text\":\"   \\n \"}\nnot json\n"
                      "{\"text\":\"a\\u0000\"}\n\n";
    const char *two = "{\"text\":\"First document here.\"}\n{\"text\":\"And a second one.\"}\n";
    CHECK(write_file_atomic(p0, bad, strlen(bad)) == 0);
    CHECK(write_file_atomic(p1, two, strlen(two)) == 0);
    char *f0[] = { p0 }, *f1[] = { p1 };
    for (int prefetch = 0; prefetch <= 2; prefetch += 2) {
        DataLoader *dl = open_or_fail(f0, 1, 2, 0, 0, 1, 128, 32, prefetch, 0, 1);
        if (dl) {
            T5Batch b;
            t5_batch_alloc(&b, 2, 128, 32);
            int n, rc = run_until_status(dl, &b, 10, &n);
            CHECKF(rc == -1 && n == 0, "status %d after %d batches", rc, n);
            const char *e = data_loader_error(dl);
            CHECKF(strstr(e, "no non-empty documents") && strstr(e, "stream 0"), "'%s'", e);
            t5_batch_free(&b);
            data_loader_close(dl);
        }
        /* 4 streams share the 2 documents: streams 2 and 3 get none */
        dl = open_or_fail(f1, 1, 4, 0, 0, 1, 128, 32, prefetch, 0, 1);
        if (dl) {
            T5Batch b;
            t5_batch_alloc(&b, 4, 128, 32);
            int n, rc = run_until_status(dl, &b, 10, &n);
            CHECKF(rc == -1 && n == 0, "status %d after %d batches", rc, n);
            CHECKF(strstr(data_loader_error(dl), "stream 2"), "'%s'", data_loader_error(dl));
            /* the summary agrees with the error: it counts the documents read so far */
            char *txt = NULL;
            size_t tl = 0;
            FILE *f = open_memstream(&txt, &tl);
            data_loader_print_stats(dl, f);
            fclose(f);
            DataLoaderStats st;
            data_loader_get_stats(dl, &st);
            CHECKF(strncmp(txt, "(the loader stopped with an error after 0 batches", 49) == 0,
                   "'%s'", txt);
            CHECKF(st.docs_read >= 2 && strstr(txt, "documents=0 ") == NULL, "'%s'", txt);
            free(txt);
            t5_batch_free(&b);
            data_loader_close(dl);
        }
    }
    /* data_files_check: every file without a valid record is named, with its reason */
    char p2[300], p3[300], p4[300], err[4096];
    snprintf(p2, sizeof p2, "%s/zero.json", dir);
    snprintf(p3, sizeof p3, "%s/missing.json", dir);
    snprintf(p4, sizeof p4, "%s/notc4.json", dir);
    CHECK(write_file_atomic(p2, "", 0) == 0);
    const char *notc4 = "not json\n{\"text\":\"\"}\n\n{\"x\":1}\n";
    CHECK(write_file_atomic(p4, notc4, strlen(notc4)) == 0);
    const char *all[] = { p4, p1, p2, p3, p0 };   /* p0: whitespace text is a valid record */
    CHECK_EQ_INT(data_files_check(all + 1, 1, 0, err, sizeof err), 0);
    CHECK_STR(err, "");
    CHECK_EQ_INT(data_files_check(all, 5, 0, err, sizeof err), 3);
    char want[400];
    snprintf(want, sizeof want, "\n  %s: not C4 JSON Lines: 3 lines, 3 bad records", p4);
    CHECKF(strstr(err, want) != NULL, "'%s'", err);
    snprintf(want, sizeof want, "\n  %s: empty", p2);
    CHECKF(strstr(err, want) != NULL, "'%s'", err);
    snprintf(want, sizeof want, "\n  %s: c4: cannot open", p3);
    CHECKF(strstr(err, want) != NULL, "'%s'", err);
    CHECKF(strstr(err, p1) == NULL && strstr(err, p0) == NULL &&
           strstr(err, "(3 of 5 files) HINT: "), "'%s'", err);
    CHECK_EQ_INT(data_files_check(all, 5, 0, NULL, 0), 3);     /* err may be NULL */
    /* data_files_overlap: by identity, not by spelling */
    char p1b[400];
    snprintf(p1b, sizeof p1b, "%s/./two.json", dir);
    const char *val[] = { p2, p1b };
    CHECK_EQ_INT(data_files_overlap(all, 2, val, 2, err, sizeof err), 1);
    CHECK_STR(err, p1);
    CHECK_EQ_INT(data_files_overlap(all, 1, val, 1, err, sizeof err), 0);
    CHECK_STR(err, "");
    CHECK_EQ_INT(data_files_overlap(all, 3, val, 2, NULL, 0), 2);
    unlink(p0); unlink(p1); unlink(p2); unlink(p4); rmdir(dir);
}

/* A rank opens only the files of its own streams: the other files are deleted right after the
 * loader opened, and the rank still runs two whole epochs. F >= K (stream k reads files
 * i % K == k) and F < K (stream k reads file k % F). */
static void test_rank_reads_own_files(void) {
    struct { int B, K, rank, world; } cases[2] = {
        { 3, 3, 1, 3 },             /* rank 1: stream 1 -> fix-1 */
        { 6, 6, 1, 3 },             /* rank 1: rows 2, 3 -> streams 2, 3 -> fix-2, fix-0 */
    };
    for (int c = 0; c < 2; c++) {
        char dir[256], **files;
        int nf;
        if (copy_fixtures(dir, sizeof dir, &files, &nf) != 0 || nf != 3) {
            CHECKF(0, "cannot copy the fixtures");
            return;
        }
        DataLoader *dl = open_or_fail(files, nf, cases[c].B, cases[c].K, cases[c].rank,
                                      cases[c].world, 128, 32, 0, 2, 6);
        if (!dl) { remove_copy(dir, files, nf); return; }
        for (int i = 0; i < nf; i++) {
            if (c == 0 ? i != 1 : i == 1) unlink(files[i]);
        }
        T5Batch b;
        t5_batch_alloc(&b, cases[c].B / cases[c].world, 128, 32);
        int n, rc = run_until_status(dl, &b, 100000, &n);
        CHECKF(rc == 1 && n > 2, "case %d: status %d after %d batches: %s", c, rc, n,
               data_loader_error(dl));
        t5_batch_free(&b);
        data_loader_close(dl);
        remove_copy(dir, files, nf);
    }
}

static void test_config_errors(void) {
    DataLoaderConfig c;
    data_loader_config_default(&c);
    char err[512] = "";
    c.files = (const char **)fix_files; c.n_files = n_fix; c.spm_model = SPM;
    c.global_batch = 6; c.n_streams = 4;
    CHECK(data_loader_open(&c, err, sizeof err) == NULL && strstr(err, "divide"));
    c.n_streams = 0; c.world = 4;
    CHECK(data_loader_open(&c, err, sizeof err) == NULL && strstr(err, "world"));
    c.world = 1; c.enc_len = 512; c.dec_len = 64;
    CHECK(data_loader_open(&c, err, sizeof err) == NULL && strstr(err, "114"));
    c.enc_len = 1810; c.dec_len = 512;            /* 101 noise spans > 100 sentinels */
    CHECK(data_loader_open(&c, err, sizeof err) == NULL && strstr(err, "sentinels"));
    c.enc_len = 1809;                                 /* 100 spans: the longest that works */
    DataLoader *ok = data_loader_open(&c, err, sizeof err);
    CHECKF(ok != NULL, "%s", err);
    data_loader_close(ok);
    c.enc_len = 512; c.dec_len = 128;
    const char *missing[] = { "/nonexistent/c4-x.json.gz" };
    c.files = missing; c.n_files = 1;
    CHECK(data_loader_open(&c, err, sizeof err) == NULL && strstr(err, "/nonexistent/c4-x.json.gz"));
    char **f; int n;
    CHECK(data_expand_globs("/nonexistent/*.json.gz", &f, &n, err, sizeof err) == -1);
    CHECK(strstr(err, "/nonexistent/*.json.gz") != NULL);
    char g[900];
    snprintf(g, sizeof g, "%s/fix-1.json,%s/fix-*.json,%s/fix-0.json", fixdir, fixdir, fixdir);
    CHECK(data_expand_globs(g, &f, &n, err, sizeof err) == 0);
    if (n == 3) {
        CHECK(strcmp(f[0], fix_files[0]) == 0 && strstr(f[0], "fix-0") && strstr(f[2], "fix-2"));
    } else {
        CHECK_EQ_INT(n, 3);
    }
    data_free_files(f, n);
}


/* ---- seek points in cursors ------------------------------------------------------------- */

/* Copy the sample train shards into a new directory (same basenames). mode 0: as they are;
 * 1: bytes 100..199 of each file zeroed (damaged at the start: only a restart at a seek point
 * can resume them); 2: the same text recompressed with gzip level 1 (other compressed bytes). */
static int sample_copy(int mode, char *dir, size_t dirlen, char ***files, int *nf) {
    char **src; int ns; char err[512];
    if (data_expand_globs("data/sample/c4-train.*.json.gz", &src, &ns, err, sizeof err) != 0) return -1;
    snprintf(dir, dirlen, "/tmp/t5loader_seek.XXXXXX");
    if (!mkdtemp(dir)) { data_free_files(src, ns); return -1; }
    *files = xcalloc((size_t)ns, sizeof(char *));
    *nf = ns;
    for (int i = 0; i < ns; i++) {
        const char *b = strrchr(src[i], '/') + 1;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, b);
        (*files)[i] = xstrdup(path);
        if (mode == 2) {
            gzFile in = gzopen(src[i], "rb"), out = gzopen(path, "wb1");
            char buf[65536];
            int n;
            while (in && out && (n = gzread(in, buf, sizeof buf)) > 0) gzwrite(out, buf, (unsigned)n);
            if (in) gzclose(in);
            if (out) gzclose(out);
            continue;
        }
        FILE *f = fopen(src[i], "rb");
        size_t cap = 1 << 21, n = 0;
        char *buf = xmalloc(cap);
        if (f) { n = fread(buf, 1, cap, f); fclose(f); }
        if (mode == 1) memset(buf + 100, 0, 100);
        f = fopen(path, "wb");
        if (f) { fwrite(buf, 1, n, f); fclose(f); }
        free(buf);
    }
    data_free_files(src, ns);
    return 0;
}

static void sample_copy_remove(const char *dir, char **files, int nf) {
    for (int i = 0; i < nf; i++) unlink(files[i]);
    data_free_files(files, nf);
    rmdir(dir);
}

/* The cursor as version 1 wrote it: no "seek" entries, "version":1. */
static char *cursor_v1(const char *cur) {
    json_error_t je;
    json_t *root = json_loads(cur, 0, &je);
    if (!root) return NULL;
    json_object_set_new(root, "version", json_integer(1));
    size_t i; json_t *o;
    json_array_foreach(json_object_get(root, "streams"), i, o) json_object_del(o, "seek");
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}

static int stats_same(const DataLoaderStats *a, const DataLoaderStats *b) {
    int same = a->docs_read == b->docs_read && a->docs_used == b->docs_used &&
               a->docs_empty == b->docs_empty && a->docs_skipped == b->docs_skipped &&
               a->tokens == b->tokens && a->tokens_total == b->tokens_total &&
               a->text_bytes == b->text_bytes && a->input_bytes == b->input_bytes &&
               a->pieces == b->pieces && a->pieces_full == b->pieces_full &&
               a->examples == b->examples && a->rows == b->rows &&
               a->files_damaged == b->files_damaged;
    for (int k = 0; k < C4_NUM_BAD_KINDS; k++) same &= a->bad[k] == b->bad[k];
    return same;
}

/* Restore cursor `cur` on files and compare the next `ahead` batches with rec; stats to *st.
 * Returns 0 if equal, 1 if they differ, 2 if the restore or a batch failed. */
static int resume_compare(char **files, int nf, const char *cur, const int32_t *rec, int ahead,
                          int prefetch, DataLoaderStats *st) {
    const int B = 4, Le = 512, Ld = 128;
    DataLoader *d = open_or_fail(files, nf, B, B, 0, 1, Le, Ld, prefetch, 0, 5);
    if (!d) return 2;
    char err[512];
    int rc = 0;
    if (data_loader_cursor_restore(d, cur, strlen(cur), err, sizeof err) != 0) {
        fprintf(stderr, "  restore: %s\n", err);
        rc = 2;
    }
    T5Batch b;
    t5_batch_alloc(&b, B, Le, Ld);
    size_t per = batch_ints(&b);
    int32_t *tmp = xcalloc(per, sizeof(int32_t));
    for (int j = 0; rc == 0 && j < ahead; j++) {
        if (data_loader_next(d, &b, NULL) != 0) { rc = 2; break; }
        batch_record(&b, tmp);
        if (memcmp(tmp, rec + per * (size_t)j, per * 4) != 0) rc = 1;
    }
    data_loader_get_stats(d, st);
    free(tmp);
    t5_batch_free(&b);
    data_loader_close(d);
    return rc;
}

/* Cursors with seek points (every 48 KiB here, so the 1.2 MB sample shards hold many): resuming
 * from them gives the batches and statistics of the uninterrupted run and of a version-1 cursor
 * (read from the file start); they resume files damaged before the point (so the point was
 * used), and a point that does not fit the file (recompressed) falls back to reading from the
 * start with the same batches. */
static void test_cursor_seek_points(void) {
    long long old = c4_seek_interval_set(48 << 10);
    char dir[256];
    char **files; int nf;
    if (sample_copy(0, dir, sizeof dir, &files, &nf) != 0) { CHECKF(0, "sample copy"); return; }
    const int B = 4, Le = 512, Ld = 128, N = test_quick() ? 150 : 330, EVERY = test_quick() ? 50 : 30;
    const int AHEAD = 2;
    DataLoader *dl = open_or_fail(files, nf, B, B, 0, 1, Le, Ld, 2, 0, 5);
    if (!dl) { sample_copy_remove(dir, files, nf); return; }
    T5Batch b;
    t5_batch_alloc(&b, B, Le, Ld);
    size_t per = batch_ints(&b);
    int32_t *rec = xcalloc(per * (size_t)(N + AHEAD), sizeof(int32_t));
    char **cur = xcalloc((size_t)N, sizeof(char *));
    for (int i = 0; i < N + AHEAD; i++) {
        if (i < N && i % EVERY == EVERY - 1) cur[i] = data_loader_cursor_save(dl, NULL);
        CHECK(data_loader_next(dl, &b, NULL) == 0);
        batch_record(&b, rec + per * (size_t)i);
    }
    data_loader_close(dl);
    int restores = 0, with_seek = 0, bad = 0;
    size_t seek_bytes = 0, seek_n = 0;
    const char *last = NULL;
    int last_i = 0;
    for (int i = 0; i < N; i++) {
        if (!cur[i]) continue;
        /* the size of the "seek" entries */
        json_t *root = json_loads(cur[i], 0, NULL);
        size_t k; json_t *o;
        int has = 0;
        json_array_foreach(json_object_get(root, "streams"), k, o) {
            json_t *sk = json_object_get(o, "seek");
            if (!sk) continue;
            has = 1;
            char *t = json_dumps(sk, JSON_COMPACT);
            seek_bytes += strlen(t);
            seek_n++;
            free(t);
        }
        json_decref(root);
        with_seek += has;
        if (has) { last = cur[i]; last_i = i; }
        char *v1 = cursor_v1(cur[i]);
        DataLoaderStats s2, s1;
        int r2 = resume_compare(files, nf, cur[i], rec + per * (size_t)i, AHEAD, i % 2, &s2);
        int r1 = resume_compare(files, nf, v1, rec + per * (size_t)i, AHEAD, 0, &s1);
        CHECKF(r2 == 0 && r1 == 0, "cursor at batch %d: with seek points %d, version 1 %d", i,
               r2, r1);
        CHECKF(stats_same(&s1, &s2), "cursor at batch %d: statistics differ (input_bytes %lld "
               "vs %lld, skipped %ld vs %ld)", i, s2.input_bytes, s1.input_bytes, s2.docs_skipped,
               s1.docs_skipped);
        bad += r1 != 0 || r2 != 0;
        restores++;
        free(v1);
    }
    CHECKF(with_seek >= restores - 1 && restores >= 3, "%d of %d cursors have seek points",
           with_seek, restores);
    if (seek_n)
        printf("  %d restores; a stream's seek point is %zu bytes of cursor JSON on average\n",
               restores, seek_bytes / seek_n);
    if (last) {
        char dir2[256];
        char **f2; int n2;
        DataLoaderStats st;
        /* damaged before the points: resumes only through them */
        if (sample_copy(1, dir2, sizeof dir2, &f2, &n2) == 0) {
            CHECK_EQ_INT(resume_compare(f2, n2, last, rec + per * (size_t)last_i, AHEAD, 0, &st), 0);
            char *v1 = cursor_v1(last);
            CHECKF(resume_compare(f2, n2, v1, rec + per * (size_t)last_i, AHEAD, 0, &st) != 0,
                   "a version-1 cursor resumed the damaged files: the check above proves nothing");
            free(v1);
            sample_copy_remove(dir2, f2, n2);
        }
        /* recompressed: the points do not fit; same batches from the file start */
        if (sample_copy(2, dir2, sizeof dir2, &f2, &n2) == 0) {
            fprintf(stderr, "  (4 warnings expected: the points do not fit recompressed files)\n");
            CHECK_EQ_INT(resume_compare(f2, n2, last, rec + per * (size_t)last_i, AHEAD, 0, &st), 0);
            sample_copy_remove(dir2, f2, n2);
        }
    }
    /* 128 streams (32 per file): every stream has a point; size and cost of a save (the
     * trainer saves one every step) */
    DataLoader *big = open_or_fail(files, nf, 128, 128, 0, 1, Le, Ld, 0, 0, 5);
    if (big) {
        T5Batch bb;
        t5_batch_alloc(&bb, 128, Le, Ld);
        for (int i = 0; i < 3; i++) CHECK(data_loader_next(big, &bb, NULL) == 0);
        size_t len = 0;
        free(data_loader_cursor_save(big, &len));            /* the first save encodes windows */
        double t0 = now_seconds();
        char *c = NULL;
        for (int i = 0; i < 5; i++) { free(c); c = data_loader_cursor_save(big, &len); }
        double per_save = (now_seconds() - t0) / 5;
        int n_seek = 0;
        for (const char *p = c; (p = strstr(p, "\"seek\":")); p++) n_seek++;
        CHECKF(n_seek >= 100, "%d of 128 streams have a seek point", n_seek);
        char *v1 = cursor_v1(c);
        printf("  128 streams, %d with a seek point: cursor %zu bytes (%zu as version 1), save "
               "%.1f ms\n", n_seek, len, v1 ? strlen(v1) : 0, per_save * 1e3);
        /* and it restores to the same next batch as a version-1 cursor */
        DataLoaderStats s1, s2;
        int32_t *r1 = NULL, *r2 = NULL;
        for (int v = 0; v < 2; v++) {
            DataLoader *d = open_or_fail(files, nf, 128, 128, 0, 1, Le, Ld, 0, 0, 5);
            if (!d) break;
            char err[512];
            const char *cc = v ? v1 : c;
            CHECK(cc && data_loader_cursor_restore(d, cc, strlen(cc), err, sizeof err) == 0);
            CHECK(data_loader_next(d, &bb, NULL) == 0);
            int32_t *r = xcalloc(batch_ints(&bb), sizeof(int32_t));
            batch_record(&bb, r);
            data_loader_get_stats(d, v ? &s1 : &s2);
            if (v) r1 = r; else r2 = r;
            data_loader_close(d);
        }
        CHECK(r1 && r2 && memcmp(r1, r2, batch_ints(&bb) * 4) == 0);
        CHECK(r1 && r2 && stats_same(&s1, &s2));
        /* the trainer's failed-step position: kept per step as a swap of struct copies, and
         * serialised only on demand; byte-identical to the save before the batch */
        double tn = now_seconds();
        for (int i = 0; i < 3; i++) CHECK(data_loader_next(big, &bb, NULL) == 0);
        double per_next = (now_seconds() - tn) / 3;
        char *before = data_loader_cursor_save(big, NULL);
        CHECK(data_loader_next(big, &bb, NULL) == 0);
        double tp = now_seconds();
        char *prev = data_loader_cursor_save_previous(big, NULL);
        double prev_s = now_seconds() - tp;
        CHECK(prev && strcmp(prev, before) == 0);
        /* the trainer's per-step bookkeeping now: the batch count (the swap is inside next) */
        volatile long sink = 0;
        double tb = now_seconds();
        for (int i = 0; i < 1000; i++) sink += data_loader_batches(big);
        double per_count = (now_seconds() - tb) / 1000;
        (void)sink;
        printf("  128 streams, per step: data_loader_next %.1f ms; trainer bookkeeping before "
               "(a cursor save) %.1f ms, after (a batch count) %.6f ms; save_previous, on a "
               "failed step only, %.1f ms\n", per_next * 1e3, per_save * 1e3, per_count * 1e3,
               prev_s * 1e3);
        free(prev); free(before);
        free(r1); free(r2); free(v1); free(c);
        t5_batch_free(&bb);
        data_loader_close(big);
    }
    for (int i = 0; i < N; i++) free(cur[i]);
    free(cur);
    free(rec);
    t5_batch_free(&b);
    sample_copy_remove(dir, files, nf);
    c4_seek_interval_set(old);
}

int main(void) {
    if (access(SPM, R_OK) != 0) {
        printf("FAIL setup: %s not found (run from the repository root)\n", SPM);
        return 1;
    }
    if (make_fixtures() != 0) { printf("FAIL setup: cannot write fixtures in /tmp\n"); return 1; }
    RUN(test_config_errors);
    RUN(test_epochs_and_content);
    RUN(test_long_document_chunk);
    RUN(test_cursor_resume);
    RUN(test_cursor_previous);
    RUN(test_cursor_merge_reshard);
    RUN(test_cursor_seek_points);
    RUN(test_file_vanishes);
    RUN(test_no_usable_documents);
    RUN(test_rank_reads_own_files);
    RUN(test_prefetch_identical);
    RUN(test_world_invariance);
    remove_fixtures();
    return TEST_EXIT();
}
