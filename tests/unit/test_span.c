/*
 * tests/unit/test_span.c: T5 span corruption (docs/t5-recipe.md section 4.2-4.8) and packing.
 *
 * Expected values come from the spec (worked example, helper table, float32 rounding cases
 * checked with numpy float32), from counting, or from independent reconstruction, never from
 * the code under test.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/util.h"
#include "../../data/span.h"
#include "../../data/synthetic.h"
#include "../../pretrain/t5_batch.h"
#include "test.h"

#define TOP 32099

static void test_worked_example(void) {
    /* n = 10: kept 2, noise 2, kept 3, noise 1, kept 1, noise 1 (spec 4.7) */
    int32_t t[10];
    for (int i = 0; i < 10; i++) t[i] = 100 + i + 1;        /* t1 .. t10 */
    const uint8_t mask[10] = { 0, 0, 1, 1, 0, 0, 0, 1, 0, 1 };
    int32_t in[11], tg[11];
    int ni, nt;
    CHECK(span_corrupt(t, 10, mask, TOP, in, &ni, tg, &nt) == 0);
    const int32_t want_in[] = { 101, 102, 32099, 105, 106, 107, 32098, 109, 32097, 1 };
    const int32_t want_tg[] = { 32099, 103, 104, 32098, 108, 32097, 110, 1 };
    CHECK_EQ_INT(ni, 10);
    CHECK_EQ_INT(nt, 8);
    for (int i = 0; i < 10 && i < ni; i++) CHECK_EQ_INT(in[i], want_in[i]);
    for (int i = 0; i < 8 && i < nt; i++) CHECK_EQ_INT(tg[i], want_tg[i]);
}

static void test_helper_table(void) {
    const int rows[4][3] = { { 512, 568, 114 }, { 256, 284, 58 }, { 128, 141, 29 },
                             { 1024, 1137, 229 } };
    for (int i = 0; i < 4; i++) {
        int tl = -1;
        int T = span_random_spans_helper(rows[i][0], &tl);
        CHECKF(T == rows[i][1] && tl == rows[i][2], "inputs %d: got T=%d targets=%d",
               rows[i][0], T, tl);
    }
    int ni, nt;
    span_corrupted_lengths(568, &ni, &nt);
    CHECK_EQ_INT(ni, 512);
    CHECK_EQ_INT(nt, 114);
}

static void test_float32_rounding(void) {
    /* numpy: float32(n) * float32(0.15) then round-half-even */
    CHECK_EQ_INT(span_num_noise(190), 29);   /* double arithmetic would give 28 */
    CHECK_EQ_INT(span_num_noise(350), 53);
    CHECK_EQ_INT(span_num_noise(670), 101);
    CHECK_EQ_INT(span_num_noise(10), 2);     /* 1.5 -> 2 */
    CHECK_EQ_INT(span_num_noise(30), 4);     /* 4.5 -> 4 */
    CHECK_EQ_INT(span_num_noise(70), 10);    /* 10.5 -> 10 */
    CHECK_EQ_INT(span_num_noise(110), 16);   /* 16.5 -> 16 */
    CHECK_EQ_INT(span_num_noise(568), 85);
    CHECK_EQ_INT(span_num_spans(85), 28);
    CHECK_EQ_INT(span_num_noise(1), 1);      /* n' = 2, clamp to >= 1 */
    CHECK_EQ_INT(span_num_noise(2), 1);
    CHECK_EQ_INT(span_num_spans(1), 1);      /* max(round(1/3), 1) */
    CHECK_EQ_INT(span_num_spans(4), 1);      /* 1.33 -> 1 */
    CHECK_EQ_INT(span_num_spans(5), 2);
}

/* Count noise tokens and noise runs of a mask. */
static void mask_counts(const uint8_t *m, int n, int *noise, int *runs) {
    *noise = 0; *runs = 0;
    for (int i = 0; i < n; i++) {
        *noise += m[i];
        if (m[i] && (i == 0 || !m[i - 1])) (*runs)++;
    }
}

static void test_mask_counts_568(void) {
    int N = test_quick() ? 1000 : 10000, bad = 0;
    uint8_t m[568];
    int scratch[2 * 568 + 8];
    for (int s = 0; s < N; s++) {
        Rng r = rng_make(42, (uint64_t)s);
        span_noise_mask(568, &r, m, scratch);
        int noise, runs;
        mask_counts(m, 568, &noise, &runs);
        int krun = 0;
        for (int i = 0; i < 568; i++) if (!m[i] && (i == 0 || m[i - 1])) krun++;
        if (noise != 85 || runs != 28 || krun != 28 || m[0] != 0 || m[567] != 1) bad++;
    }
    CHECKF(bad == 0, "%d of %d masks have wrong counts or ends", bad, N);
    /* other lengths, incl. short tails: exact counts from the float32 formula */
    for (int n = 1; n <= 700; n++) {
        Rng r = rng_make(7, (uint64_t)n);
        uint8_t mm[700];
        span_noise_mask(n, &r, mm, NULL);
        int noise, runs;
        mask_counts(mm, n, &noise, &runs);
        if (n == 1) { CHECK(noise == 0 && mm[0] == 0); continue; }
        int want = (int)rintf((float)n * 0.15f);
        if (want < 1) want = 1;
        if (want > n - 1) want = n - 1;
        int wspans = (int)rintf((float)want / 3.0f);
        if (wspans < 1) wspans = 1;
        CHECKF(noise == want && runs == wspans && mm[0] == 0 && mm[n - 1] == 1,
               "n=%d noise %d (want %d) runs %d (want %d)", n, noise, want, runs, wspans);
    }
}

/* Uniformity. n = 34 is the smallest-ish length with two spans (5 noise tokens in 2 runs, 29 kept
 * in 2 runs): (5-1 choose 1) * (29-1 choose 1) = 4 * 28 = 112 equally likely layouts, identified
 * by (first noise run length, first kept run length). (n = 20 has a single layout: 3 noise, 1
 * span.) 200 expected draws per layout; chi-square with 111 degrees of freedom: P(X > 200) =
 * 4.7e-7 for a uniform generator (computed from the regularized incomplete gamma function), so
 * with the fixed seed the test is deterministic and a false failure would need that luck. */
static void test_mask_uniform(void) {
    enum { NL = 112, PER = 200 };
    long cnt[NL] = { 0 };
    int draws = NL * (test_quick() ? PER / 2 : PER);
    uint8_t m[34];
    for (int s = 0; s < draws; s++) {
        Rng r = rng_make(2024, (uint64_t)s);
        span_noise_mask(34, &r, m, NULL);
        int k1 = 0, n1 = 0, i = 0;
        while (i < 34 && !m[i]) { k1++; i++; }
        while (i < 34 && m[i]) { n1++; i++; }
        if (k1 < 1 || k1 > 28 || n1 < 1 || n1 > 4) { CHECKF(0, "layout k1=%d n1=%d", k1, n1); return; }
        cnt[(n1 - 1) * 28 + (k1 - 1)]++;
    }
    double e = (double)draws / NL, chi = 0;
    for (int i = 0; i < NL; i++) chi += (cnt[i] - e) * (cnt[i] - e) / e;
    CHECKF(chi < 200.0, "chi-square %.1f over 111 dof", chi);
}

static void test_select_chunk(void) {
    Rng r = rng_make(1, 2);
    long len;
    CHECK(span_select_chunk(65536, &r, &len) == 0 && len == 65536);
    CHECK(span_select_chunk(5, &r, &len) == 0 && len == 5);
    int seen[4] = { 0 };
    for (int i = 0; i < 400; i++) {
        long st = span_select_chunk(200000, &r, &len);
        CHECK(st % 65536 == 0 && st < 200000);
        CHECK(len == (st == 196608 ? 3392 : 65536));
        if (st % 65536 == 0 && st / 65536 < 4) seen[st / 65536]++;
    }
    for (int i = 0; i < 4; i++) CHECKF(seen[i] > 50, "window %d chosen %d/400 times", i, seen[i]);
}

/* Rebuild the raw piece from inputs and targets: each sentinel in the inputs stands for the
 * tokens after the same sentinel in the targets. */
static int interleave(const int32_t *in, int ni, const int32_t *tg, int nt, int32_t *out) {
    int m = 0;
    for (int i = 0; i < ni - 1; i++) {
        if (in[i] > TOP - 100 && in[i] <= TOP) {
            int j = 0;
            while (j < nt && tg[j] != in[i]) j++;
            if (j == nt) return -1;
            for (j++; j < nt - 1 && !(tg[j] > TOP - 100 && tg[j] <= TOP); j++) out[m++] = tg[j];
        } else {
            out[m++] = in[i];
        }
    }
    return m;
}

static void test_interleave_roundtrip(void) {
    int N = test_quick() ? 300 : 3000, bad = 0;
    int32_t tok[568], in[569], tg[569], back[1200];
    uint8_t m[568];
    for (int s = 0; s < N; s++) {
        Rng r = rng_make(99, (uint64_t)s);
        int n = s % 3 ? 568 : 1 + (int)rng_next_below(&r, 568);
        for (int i = 0; i < n; i++) tok[i] = 3 + (int32_t)rng_next_below(&r, 31997);
        span_noise_mask(n, &r, m, NULL);
        int ni, nt, wi, wt;
        CHECK(span_corrupt(tok, n, m, TOP, in, &ni, tg, &nt) == 0);
        span_corrupted_lengths(n, &wi, &wt);
        if (ni != wi || nt != wt || in[ni - 1] != 1 || tg[nt - 1] != 1) { bad++; continue; }
        if (n >= 2 && tg[0] != TOP) { bad++; continue; }
        int k = interleave(in, ni, tg, nt, back);
        if (k != n || memcmp(back, tok, (size_t)n * sizeof(int32_t)) != 0) bad++;
    }
    CHECKF(bad == 0, "%d of %d examples do not interleave back", bad, N);
}

/* Pack random examples like the loader does; check every invariant of every row. */
static void test_packing(void) {
    const int B = 200, Le = 64, Ld = 16;
    T5Batch b;
    t5_batch_alloc(&b, B, Le, Ld);
    Rng r = rng_make(5, 5);
    int32_t ex_in[200][70], ex_tg[200][20];
    int ni[200], nt[200], nex = 200;
    for (int e = 0; e < nex; e++) {
        ni[e] = 2 + (int)rng_next_below(&r, e % 5 == 0 ? 63 : 20);
        nt[e] = 2 + (int)rng_next_below(&r, e % 7 == 0 ? 15 : 6);
        for (int i = 0; i < ni[e]; i++) ex_in[e][i] = 1000 * (e + 1) + i;
        for (int i = 0; i < nt[e]; i++) ex_tg[e][i] = 1000 * (e + 1) + 500 + i;
    }
    int e = 0, row = 0;
    while (e < nex && row < B) {
        SpanRow R;
        span_row_begin(&R, &b, row);
        while (e < nex && span_row_fits(&R, ni[e], nt[e])) {
            span_row_add(&R, ex_in[e], ni[e], ex_tg[e], nt[e]);
            e++;
            if (span_row_full(&R)) break;
        }
        /* greedy: the row was closed only because the next example does not fit */
        if (e < nex) CHECK(R.used_e + ni[e] > Le || R.used_d + nt[e] > Ld);
        row++;
    }
    CHECK(e == nex);
    /* read the rows back */
    int want = 0;
    for (int rr = 0; rr < row; rr++) {
        const int32_t *ids = b.enc_ids + rr * Le, *es = b.enc_seg + rr * Le, *ep = b.enc_pos + rr * Le;
        const int32_t *lab = b.labels + rr * Ld, *di = b.dec_in_ids + rr * Ld;
        const int32_t *ds = b.dec_seg + rr * Ld, *dp = b.dec_pos + rr * Ld;
        int t = 0, u = 0;
        for (int seg = 1; t < Le && es[t] != 0; seg++) {
            CHECK(es[t] == seg);
            for (int i = 0; i < ni[want]; i++, t++) {
                CHECK(t < Le && es[t] == seg && ep[t] == i && ids[t] == ex_in[want][i]);
            }
            for (int i = 0; i < nt[want]; i++, u++) {
                CHECK(u < Ld && ds[u] == seg && dp[u] == i && lab[u] == ex_tg[want][i]);
                CHECK(di[u] == (i == 0 ? 0 : ex_tg[want][i - 1]));
            }
            want++;
        }
        for (; t < Le; t++) CHECK(ids[t] == 0 && es[t] == 0);
        for (; u < Ld; u++) CHECK(lab[u] == 0 && ds[u] == 0 && di[u] == 0);
    }
    CHECK_EQ_INT(want, nex);
    /* a full 512/114 example fills a 512/128 row alone */
    T5Batch f;
    t5_batch_alloc(&f, 1, 512, 128);
    SpanRow R;
    span_row_begin(&R, &f, 0);
    static int32_t fin[512], ftg[114];
    for (int i = 0; i < 512; i++) fin[i] = 7;
    for (int i = 0; i < 114; i++) ftg[i] = 8;
    CHECK(span_row_fits(&R, 512, 114));
    span_row_add(&R, fin, 512, ftg, 114);
    CHECK(span_row_full(&R));
    CHECK(!span_row_fits(&R, 2, 2));
    CHECK(f.labels[113] == 8 && f.labels[114] == 0 && f.dec_seg[114] == 0 && f.enc_seg[511] == 1);
    t5_batch_free(&f);
    t5_batch_free(&b);
}

/* Synthetic batches: real shapes, a pure function of (seed, step, global row). */
static void test_synthetic(void) {
    T5Batch all, half;
    t5_batch_alloc(&all, 4, 512, 128);
    t5_batch_alloc(&half, 2, 512, 128);
    synthetic_batch(&all, 32000, 32099, 7, 3, 0);
    synthetic_batch(&half, 32000, 32099, 7, 3, 2);       /* rows 2..3 of the same batch */
    CHECK(memcmp(all.enc_ids + 2 * 512, half.enc_ids, 2 * 512 * 4) == 0);
    CHECK(memcmp(all.labels + 2 * 128, half.labels, 2 * 128 * 4) == 0);
    CHECK(memcmp(all.enc_ids, all.enc_ids + 512, 512 * 4) != 0);      /* rows differ */
    int32_t back[600];
    for (int r = 0; r < 4; r++) {
        int ne = 0, nd = 0;
        for (int t = 0; t < 512; t++) ne += all.enc_seg[r * 512 + t] == 1;
        for (int t = 0; t < 128; t++) nd += all.dec_seg[r * 128 + t] == 1;
        CHECK(ne == 512 && nd == 114 && all.labels[r * 128 + 114] == 0);
        CHECK(all.labels[r * 128] == 32099 && all.dec_in_ids[r * 128] == 0);
        CHECK(all.dec_in_ids[r * 128 + 5] == all.labels[r * 128 + 4]);
        int k = interleave(all.enc_ids + r * 512, 512, all.labels + r * 128, 114, back);
        CHECK_EQ_INT(k, 568);
        for (int i = 0; i < k && i < 568; i++) CHECK(back[i] >= 3 && back[i] < 32000);
    }
    T5Batch other;
    t5_batch_alloc(&other, 4, 512, 128);
    synthetic_batch(&other, 32000, 32099, 7, 4, 0);       /* next step differs */
    CHECK(memcmp(all.enc_ids, other.enc_ids, 4 * 512 * 4) != 0);
    t5_batch_free(&all); t5_batch_free(&half); t5_batch_free(&other);
}

int main(void) {
    RUN(test_worked_example);
    RUN(test_helper_table);
    RUN(test_float32_rounding);
    RUN(test_mask_counts_568);
    RUN(test_mask_uniform);
    RUN(test_select_chunk);
    RUN(test_interleave_roundtrip);
    RUN(test_packing);
    RUN(test_synthetic);
    return TEST_EXIT();
}
