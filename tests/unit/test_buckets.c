/*
 * tests/unit/test_buckets.c: the relative position buckets against the boundary tables of
 * docs/t5-recipe.md section 2.4 (written out here by hand), in both directions, for distances up to
 * 2000, and the per-head bias rows built from them.
 */
#include <stdint.h>
#include <stdlib.h>

#include "pretrain/t5_model.h"
#include "pretrain/t5_ops.h"
#include "tests/unit/test.h"

/* Expected bucket of a key at distance dist >= 0 from its query, from a table of the first
 * distance of every bucket (lower[k] = smallest distance in bucket k). */
static int from_table_(const int *lower, int nbuckets, int dist) {
    int k = 0;
    while (k + 1 < nbuckets && dist >= lower[k + 1]) k++;
    return k;
}

/* Bidirectional half-table (spec: 0-7 exact, 8: 8-11, 9: 12-15, 10: 16-22, 11: 23-31,
 * 12: 32-45, 13: 46-63, 14: 64-90, 15: >= 91). */
static const int bi_lower_[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 23, 32, 46, 64, 91};
/* Unidirectional (0-15 exact, 16: 16-18, 17: 19-20, ..., 31: >= 113). */
static const int uni_lower_[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                                   16, 19, 21, 24, 27, 31, 35, 40, 46, 52, 59, 67, 77, 87, 99, 113};

static void test_bidirectional(void) {
    for (int dist = 0; dist <= 2000; dist++) {
        int want_left = from_table_(bi_lower_, 16, dist);
        /* key at or left of the query: rel = j - i = -dist */
        int got = t5_relative_bucket(-dist, 1, 32, 128);
        CHECKF(got == want_left, "bidirectional rel=%d: got %d want %d", -dist, got, want_left);
        if (dist > 0) {   /* key to the right: 16 + the same mapping */
            got = t5_relative_bucket(dist, 1, 32, 128);
            CHECKF(got == 16 + want_left, "bidirectional rel=+%d: got %d want %d", dist, got,
                   16 + want_left);
        }
    }
    /* spot values quoted in the spec */
    CHECK_EQ_INT(t5_relative_bucket(1, 1, 32, 128), 17);
    CHECK_EQ_INT(t5_relative_bucket(-90, 1, 32, 128), 14);
    CHECK_EQ_INT(t5_relative_bucket(-91, 1, 32, 128), 15);
    CHECK_EQ_INT(t5_relative_bucket(91, 1, 32, 128), 31);
    CHECK_EQ_INT(t5_relative_bucket(0, 1, 32, 128), 0);
}

static void test_unidirectional(void) {
    for (int dist = 0; dist <= 2000; dist++) {
        int want = from_table_(uni_lower_, 32, dist);
        int got = t5_relative_bucket(-dist, 0, 32, 128);
        CHECKF(got == want, "unidirectional rel=%d: got %d want %d", -dist, got, want);
        if (dist > 0) {   /* future keys all map to bucket 0 (and are masked anyway) */
            got = t5_relative_bucket(dist, 0, 32, 128);
            CHECKF(got == 0, "unidirectional rel=+%d: got %d want 0", dist, got);
        }
    }
    CHECK_EQ_INT(t5_relative_bucket(-112, 0, 32, 128), 30);
    CHECK_EQ_INT(t5_relative_bucket(-113, 0, 32, 128), 31);
    CHECK_EQ_INT(t5_relative_bucket(-18, 0, 32, 128), 16);
    CHECK_EQ_INT(t5_relative_bucket(-19, 0, 32, 128), 17);
}

/* Every bucket is reached (except bidirectional bucket 16: distance 0 is bucket 0, so the
 * right half starts at 17), and buckets never decrease with distance. */
static void test_monotone_and_complete(void) {
    for (int bidir = 0; bidir <= 1; bidir++) {
        int seen[32] = {0}, prev = -1;
        for (int dist = 0; dist <= 1000; dist++) {
            int bk = t5_relative_bucket(-dist, bidir, 32, 128);
            CHECK(bk >= prev);
            prev = bk;
            seen[bk] = 1;
            if (bidir) seen[t5_relative_bucket(dist, 1, 32, 128)] = 1;
        }
        int n = 0;
        for (int k = 0; k < 32; k++) n += seen[k];
        CHECK_EQ_INT(n, bidir ? 31 : 32);
        if (bidir) CHECK(!seen[16]);
    }
}

/* The per-head bias rows: bias_rel[h][j - i + Lq - 1] == table[bucket(j - i)][h], and the
 * backward gathers exactly the entries of each bucket. */
static void test_bias_rows(void) {
    int H = 3, L = test_quick() ? 150 : 300, R = 2 * L - 1;
    float table[32 * 3];
    for (int i = 0; i < 32 * H; i++) table[i] = (float)(i * 7 % 23) - 11.0f;
    float *bias = malloc(sizeof(float) * (size_t)H * R);
    for (int bidir = 0; bidir <= 1; bidir++) {
        t5_relbias_forward(bias, table, L, L, H, bidir, 32, 128);
        for (int i = 0; i < L; i += 7)
            for (int j = 0; j < L; j += 5)
                for (int h = 0; h < H; h++) {
                    int bk = t5_relative_bucket(j - i, bidir, 32, 128);
                    CHECK(bias[h * R + (j - i + L - 1)] == table[bk * H + h]);
                }
        /* backward: ones for batch 2 -> count of offsets per bucket, times 2 */
        float *dbias = malloc(sizeof(float) * 2 * (size_t)H * R);
        for (int i = 0; i < 2 * H * R; i++) dbias[i] = 1.0f;
        float dtable[32 * 3] = {0};
        t5_relbias_backward(dtable, dbias, 2, L, L, H, bidir, 32, 128);
        int count[32] = {0};
        for (int r = -(L - 1); r <= L - 1; r++) count[t5_relative_bucket(r, bidir, 32, 128)]++;
        for (int k = 0; k < 32; k++)
            for (int h = 0; h < H; h++) CHECK(dtable[k * H + h] == 2.0f * count[k]);
        free(dbias);
    }
    free(bias);
}

int main(void) {
    RUN(test_bidirectional);
    RUN(test_unidirectional);
    RUN(test_monotone_and_complete);
    RUN(test_bias_rows);
    return TEST_EXIT();
}
