/*
 * tests/unit/test_dp.c: the data-parallel reducer, the process grid and the MPI checks.
 *
 * Run directly (tests/run.sh: plain, ASan, valgrind) it tests the pure planning functions
 * without initialising MPI: bucket boundaries, ZeRO-1 owners, the timeout setting.
 * Run under mpirun (tests/e2e/mpi_dp.sh, np 1, 2, 4) it ALSO runs the collective tests; then only
 * rank 0 prints PASS/FAIL and a test fails when it failed on any rank:
 *   grid layout and communicators; bucketed allreduce equal to a serial sum in a fixed order
 *   (exact on integer-valued data, within rounding on random data, bit-identical on repeat),
 *   with in-order, shuffled and no ready calls, with dp_progress and with the progress thread;
 *   gaps between tensors untouched; ZeRO-1 owners (every tensor owned once), reduce-to-owner +
 *   allgather equal to the allreduce; the sharded sum of squares equal to the unsharded one.
 * Fault modes (one per run, exit non-zero by design; mpi_dp.sh checks the messages and time):
 *   --kill-rank R   rank R raises SIGKILL in the middle of a bucketed reduction
 *   --absent-rank R rank R never posts its side; the others must time out (T5_MPI_TIMEOUT)
 */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "parallel/dp.h"
#include "parallel/grid.h"
#include "parallel/mpi_check.h"
#include "tests/unit/test.h"

/* ---- pure planning ---- */

static void test_buckets_hand_table(void) {
    /* sizes in floats; bucket 40 bytes = 10 floats. Reverse walk: 6 (6) +5 (11 >= 10) close;
     * 4 (4) +3 (7) +2 (9) +1 (10) close; 0 alone (last). */
    size_t sz[7] = {8, 1, 2, 3, 4, 5, 6};
    DpTensor t[7];
    size_t off = 0;
    for (int i = 0; i < 7; i++) { t[i].offset = off; t[i].numel = sz[i]; off += sz[i]; }
    DpBucket b[7];
    int of[7];
    int nb = dp_plan_buckets(t, 7, 40, b, of);
    CHECK_EQ_INT(nb, 3);
    CHECK_EQ_INT(b[0].first, 5); CHECK_EQ_INT(b[0].last, 6); CHECK_EQ_INT(b[0].numel, 11);
    CHECK_EQ_INT(b[1].first, 1); CHECK_EQ_INT(b[1].last, 4); CHECK_EQ_INT(b[1].numel, 10);
    CHECK_EQ_INT(b[2].first, 0); CHECK_EQ_INT(b[2].last, 0); CHECK_EQ_INT(b[2].numel, 8);
    int want_of[7] = {2, 1, 1, 1, 1, 0, 0};
    for (int i = 0; i < 7; i++) CHECK_EQ_INT(of[i], want_of[i]);
}

/* A T5-small-like table: shared (V x d) first, then per layer matrices and norms. */
static int small_table_(DpTensor *t, int cap) {
    int n = 0;
    size_t off = 0;
    const size_t d = 512, ff = 2048, V = 32128;
#define ADD_(nm) do { if (n < cap) { t[n].offset = off; t[n].numel = (nm); n++; } off += (nm); } while (0)
    ADD_(V * d);
    ADD_(32 * 8);
    for (int l = 0; l < 6; l++) { for (int k = 0; k < 4; k++) ADD_(d * d); ADD_(d); ADD_(d * ff); ADD_(ff * d); ADD_(d); }
    ADD_(d);
    ADD_(32 * 8);
    for (int l = 0; l < 6; l++) { for (int k = 0; k < 8; k++) ADD_(d * d); ADD_(d); ADD_(d); ADD_(d * ff); ADD_(ff * d); ADD_(d); }
    ADD_(d);
#undef ADD_
    return n;
}

static void test_buckets_properties(void) {
    DpTensor t[256];
    int n = small_table_(t, 256);
    size_t bbs[3] = {0, (size_t)1 << 20, 4096};
    for (int q = 0; q < 3; q++) {
        size_t bb = bbs[q] ? bbs[q] : DP_DEFAULT_BUCKET_BYTES;
        DpBucket b[256];
        int of[256];
        int nb = dp_plan_buckets(t, n, bbs[q], b, of);
        CHECK(nb >= 1 && nb <= n);
        int expect_last = n - 1;
        for (int k = 0; k < nb; k++) {
            CHECK_EQ_INT(b[k].last, expect_last);          /* consecutive, reverse order */
            CHECK(b[k].first <= b[k].last);
            size_t s = 0;
            for (int i = b[k].first; i <= b[k].last; i++) { s += t[i].numel; CHECK_EQ_INT(of[i], k); }
            CHECK_EQ_INT(s, b[k].numel);
            if (k < nb - 1) {
                CHECK(s * 4 >= bb);                           /* closed only when full */
                CHECK((s - t[b[k].first].numel) * 4 < bb);    /* and not one tensor later */
            }
            expect_last = b[k].first - 1;
        }
        CHECK_EQ_INT(expect_last, -1);                        /* every tensor in one bucket */
        /* pure: the same plan twice */
        DpBucket b2[256];
        CHECK_EQ_INT(dp_plan_buckets(t, n, bbs[q], b2, NULL), nb);
        CHECK(memcmp(b, b2, (size_t)nb * sizeof *b) == 0);
    }
}

static void test_owners_hand_table(void) {
    /* sizes 5,3,3,2,2,1 on 2 ranks: 5->0, 3->1, 3->1 (3<5), 2->0 (5<6), 2->1 (6<7), 1->0 (7<8). */
    size_t sz[6] = {5, 3, 3, 2, 2, 1};
    DpTensor t[6];
    for (int i = 0; i < 6; i++) { t[i].offset = 0; t[i].numel = sz[i]; }
    int own[6];
    dp_plan_owners(t, 6, 2, own);
    int want[6] = {0, 1, 1, 0, 1, 0};
    for (int i = 0; i < 6; i++) CHECK_EQ_INT(own[i], want[i]);
    /* listed in another order: ties go to the lower index, then the lowest rank */
    size_t sz2[4] = {1, 4, 4, 4};
    for (int i = 0; i < 4; i++) t[i].numel = sz2[i];
    dp_plan_owners(t, 4, 3, own);
    CHECK_EQ_INT(own[1], 0); CHECK_EQ_INT(own[2], 1); CHECK_EQ_INT(own[3], 2); CHECK_EQ_INT(own[0], 0);
    dp_plan_owners(t, 4, 1, own);
    for (int i = 0; i < 4; i++) CHECK_EQ_INT(own[i], 0);
}

static void test_owners_balanced(void) {
    DpTensor t[256];
    int n = small_table_(t, 256);
    size_t biggest = 0, total = 0;
    for (int i = 0; i < n; i++) { if (t[i].numel > biggest) biggest = t[i].numel; total += t[i].numel; }
    for (int dp = 1; dp <= 8; dp *= 2) {
        int own[256];
        dp_plan_owners(t, n, dp, own);
        size_t load[8] = {0};
        for (int i = 0; i < n; i++) { CHECK(own[i] >= 0 && own[i] < dp); if (own[i] >= 0 && own[i] < dp) load[own[i]] += t[i].numel; }
        size_t mx = 0, mn = SIZE_MAX, s = 0;
        for (int r = 0; r < dp; r++) { if (load[r] > mx) mx = load[r]; if (load[r] < mn) mn = load[r]; s += load[r]; }
        CHECK_EQ_INT(s, total);
        /* greedy largest-first: the spread is at most one tensor; the max at most
         * max(biggest, total/dp + biggest) */
        CHECKF(mx - mn <= biggest, "dp %d spread %zu > biggest %zu", dp, mx - mn, biggest);
        CHECK(mx <= total / (size_t)dp + biggest);
    }
}

static void test_timeout_setting(void) {
    unsetenv("T5_MPI_TIMEOUT");
    CHECK_NEAR(mpi_timeout_seconds(), 600.0, 0);
    setenv("T5_MPI_TIMEOUT", "2.5", 1);
    CHECK_NEAR(mpi_timeout_seconds(), 2.5, 0);
    unsetenv("T5_MPI_TIMEOUT");
}

/* ---- collective tests (under mpirun) ---- */

static int wrank_ = 0, wsize_ = 1;

#define MPI_RUN(fn) do { test_failures_ = 0; fn(); int f_ = test_failures_; \
    MPI_Allreduce(MPI_IN_PLACE, &f_, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD); \
    if (wrank_ == 0) { printf("%s %s (np %d)\n", f_ ? "FAIL" : "PASS", #fn, wsize_); fflush(stdout); } \
    if (f_) test_total_failed_++; } while (0)

static void test_grid_layout(void) {
    int combos[3][2] = {{1, 1}, {2, 1}, {1, 2}};
    for (int c = 0; c < 3; c++) {
        int pp = combos[c][0], tp = combos[c][1];
        if (wsize_ % (pp * tp) != 0) continue;
        Grid g;
        char err[256];
        CHECK_EQ_INT(grid_init(&g, MPI_COMM_WORLD, pp, tp, err, sizeof err), 0);
        CHECK_EQ_INT(g.dp_size, wsize_ / (pp * tp));
        CHECK_EQ_INT(g.rank, wrank_);
        CHECK_EQ_INT((g.pp_rank * g.dp_size + g.dp_rank) * g.tp_size + g.tp_rank, wrank_);
        int r, s;
        MPI_Comm_rank(g.dp, &r); MPI_Comm_size(g.dp, &s);
        CHECK_EQ_INT(r, g.dp_rank); CHECK_EQ_INT(s, g.dp_size);
        MPI_Comm_rank(g.pp, &r); MPI_Comm_size(g.pp, &s);
        CHECK_EQ_INT(r, g.pp_rank); CHECK_EQ_INT(s, g.pp_size);
        MPI_Comm_rank(g.tp, &r); MPI_Comm_size(g.tp, &s);
        CHECK_EQ_INT(r, g.tp_rank); CHECK_EQ_INT(s, g.tp_size);
        CHECK_EQ_INT(g.node_size, wsize_);   /* one machine */
        /* dp peers share pp and tp coordinates */
        int mine[2] = {g.pp_rank, g.tp_rank}, *all = calloc((size_t)g.dp_size * 2, sizeof(int));
        MPI_Allgather(mine, 2, MPI_INT, all, 2, MPI_INT, g.dp);
        for (int k = 0; k < g.dp_size; k++) { CHECK_EQ_INT(all[2 * k], g.pp_rank); CHECK_EQ_INT(all[2 * k + 1], g.tp_rank); }
        free(all);
        int eh_ok = 0;
        MPI_Errhandler eh;
        MPI_Comm_get_errhandler(g.dp, &eh);
        eh_ok = eh == MPI_ERRORS_RETURN;
        MPI_Errhandler_free(&eh);
        CHECK(eh_ok);
        grid_free(&g);
    }
    Grid g;
    char err[256] = "";
    CHECK_EQ_INT(grid_init(&g, MPI_COMM_WORLD, wsize_ + 1, 1, err, sizeof err), -1);
    CHECK(strstr(err, "multiple of") != NULL);
    CHECK(g.dp == MPI_COMM_NULL && g.world == MPI_COMM_NULL);
    grid_free(&g);
}

/* A table with gaps between some tensors (sentinels there must survive). */
typedef struct { DpTensor t[64]; int n; size_t total; } Table_;

static void make_table_(Table_ *tb) {
    static const size_t sz[] = {5000, 7, 1, 3000, 12000, 64, 64, 2500, 9, 40000, 1, 300, 17000, 8};
    int n = (int)(sizeof sz / sizeof sz[0]);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        if (i % 4 == 3) off += 5;   /* a gap */
        tb->t[i].offset = off;
        tb->t[i].numel = sz[i];
        off += sz[i];
    }
    tb->n = n;
    tb->total = off + 3;
}

static uint64_t mix_(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}
/* Value of element j on rank r: integer-valued (exact sums) or random in [-1, 1). */
static float val_(int r, size_t j, int integer, int salt) {
    uint64_t h = mix_(((uint64_t)r << 40) ^ ((uint64_t)salt << 56) ^ j);
    if (integer) return (float)((int)(h % 2001) - 1000);
    return (float)((double)(h >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static int in_tensor_(const Table_ *tb, size_t j) {
    for (int i = 0; i < tb->n; i++) if (j >= tb->t[i].offset && j < tb->t[i].offset + tb->t[i].numel) return 1;
    return 0;
}
#define SENTINEL_ 12345.0f

static void fill_(const Table_ *tb, float *g, int r, int integer, int salt) {
    for (size_t j = 0; j < tb->total; j++) g[j] = in_tensor_(tb, j) ? val_(r, j, integer, salt) : SENTINEL_;
}

/* ready: 0 none, 1 backward order with dp_progress between, 2 shuffled (same on all ranks). */
static void reduce_(DpReducer *r, const Table_ *tb, float *g, int ready) {
    dp_begin(r, g);
    if (ready == 1) {
        for (int i = tb->n - 1; i >= 0; i--) { dp_tensor_ready(r, i); dp_progress(r); usleep(200); dp_progress(r); }
    } else if (ready == 2) {
        int perm[64];
        for (int i = 0; i < tb->n; i++) perm[i] = i;
        for (int i = tb->n - 1; i > 0; i--) { int k = (int)(mix_((uint64_t)i * 77) % (uint64_t)(i + 1)); int tmp = perm[i]; perm[i] = perm[k]; perm[k] = tmp; }
        for (int i = 0; i < tb->n; i++) { dp_tensor_ready(r, perm[i]); dp_progress(r); }
    }
    dp_finish(r);
}

static void check_against_serial_(const Table_ *tb, const float *g, int integer, int salt, int only_owner_of,
                                  const DpReducer *r) {
    int bad = 0;
    for (int i = 0; i < tb->n; i++) {
        if (only_owner_of && dp_owner(r, i) != wrank_) continue;
        for (size_t j = tb->t[i].offset; j < tb->t[i].offset + tb->t[i].numel; j++) {
            float s = 0;   /* serial reference: ranks 0, 1, ... in order, fp32 */
            for (int q = 0; q < wsize_; q++) s += val_(q, j, integer, salt);
            int ok = integer || wsize_ <= 2 ? g[j] == s : fabsf(g[j] - s) <= 1e-6f * (float)wsize_;
            if (!ok && bad++ < 3) fprintf(stderr, "  rank %d tensor %d elem %zu: %.9g vs serial %.9g\n", wrank_, i, j, g[j], s);
        }
    }
    CHECKF(bad == 0, "%d elements differ from the serial sum", bad);
    for (size_t j = 0; j < tb->total; j++) if (!in_tensor_(tb, j)) CHECK(g[j] == SENTINEL_);
}

static void test_allreduce_equals_serial(void) {
    Table_ tb;
    make_table_(&tb);
    float *g = malloc(tb.total * sizeof *g), *g2 = malloc(tb.total * sizeof *g);
    size_t bbs[3] = {4096, 65536, 0};
    for (int q = 0; q < 3; q++) {
        DpReducer *r = dp_reducer_create(MPI_COMM_WORLD, tb.t, tb.n, 0, bbs[q]);
        for (int integer = 1; integer >= 0; integer--) {
            for (int ready = 0; ready < 3; ready++) {
                fill_(&tb, g, wrank_, integer, q);
                reduce_(r, &tb, g, ready);
                check_against_serial_(&tb, g, integer, q, 0, r);
                DpStats st;
                dp_last_stats(r, &st);
                if (wsize_ > 1) {
                    CHECK_EQ_INT(st.buckets, dp_n_buckets(r));
                    if (ready == 1) CHECK_EQ_INT(st.started_early, dp_n_buckets(r));
                    if (ready == 0) CHECK_EQ_INT(st.started_early, 0);
                    size_t total = 0;
                    for (int i = 0; i < tb.n; i++) total += tb.t[i].numel;
                    CHECK_NEAR(st.bytes, 4.0 * (double)total, 0);
                }
                /* bit-identical on repeat, whatever the ready order */
                fill_(&tb, g2, wrank_, integer, q);
                reduce_(r, &tb, g2, (ready + 1) % 3);
                CHECK(memcmp(g, g2, tb.total * sizeof *g) == 0);
            }
        }
        dp_reducer_free(r);
    }
    free(g);
    free(g2);
}

static void test_progress_thread(void) {
    int level;
    MPI_Query_thread(&level);
    CHECK_EQ_INT(level, MPI_THREAD_MULTIPLE);
    Table_ tb;
    make_table_(&tb);
    float *g = malloc(tb.total * sizeof *g), *g2 = malloc(tb.total * sizeof *g);
    DpReducer *r = dp_reducer_create(MPI_COMM_WORLD, tb.t, tb.n, 0, 8192);
    DpReducer *r2 = dp_reducer_create(MPI_COMM_WORLD, tb.t, tb.n, 0, 8192);
    CHECK_EQ_INT(dp_reducer_progress_thread(r, 0.5), 0);
    for (int rep = 0; rep < 3; rep++) {
        fill_(&tb, g, wrank_, 0, 7 + rep);
        reduce_(r, &tb, g, 1);
        check_against_serial_(&tb, g, 0, 7 + rep, 0, r);
        fill_(&tb, g2, wrank_, 0, 7 + rep);
        reduce_(r2, &tb, g2, 1);   /* without the thread: the same bits */
        CHECK(memcmp(g, g2, tb.total * sizeof *g) == 0);
    }
    dp_reducer_free(r);
    dp_reducer_free(r2);
    free(g);
    free(g2);
}

static void test_zero1_owners_and_update(void) {
    Table_ tb;
    make_table_(&tb);
    float *g = malloc(tb.total * sizeof *g), *ga = malloc(tb.total * sizeof *g), *p = malloc(tb.total * sizeof *g);
    DpReducer *z = dp_reducer_create(MPI_COMM_WORLD, tb.t, tb.n, 1, 8192);
    DpReducer *a = dp_reducer_create(MPI_COMM_WORLD, tb.t, tb.n, 0, 8192);
    /* every tensor owned exactly once, by the rank dp_plan_owners names */
    int own[64], idx[64];
    dp_plan_owners(tb.t, tb.n, wsize_, own);
    int cnt[64] = {0};
    int m = dp_owned_tensors(z, idx);
    for (int k = 0; k < m; k++) { cnt[idx[k]]++; CHECK_EQ_INT(own[idx[k]], wrank_); if (k) CHECK(idx[k] > idx[k - 1]); }
    MPI_Allreduce(MPI_IN_PLACE, cnt, tb.n, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    for (int i = 0; i < tb.n; i++) { CHECK_EQ_INT(cnt[i], 1); CHECK_EQ_INT(dp_owner(z, i), own[i]); CHECK_EQ_INT(dp_owner(a, i), -1); }
    CHECK_EQ_INT(dp_owned_tensors(a, NULL), tb.n);
    for (int integer = 1; integer >= 0; integer--) {
        for (int ready = 0; ready < 3; ready++) {
            fill_(&tb, g, wrank_, integer, 3);
            reduce_(z, &tb, g, ready);
            check_against_serial_(&tb, g, integer, 3, 1, z);
            fill_(&tb, ga, wrank_, integer, 3);
            reduce_(a, &tb, ga, ready);
            /* owner's tensors equal the allreduce (bitwise for dp <= 2 or exact data) */
            for (int i = 0; i < tb.n; i++) {
                if (dp_owner(z, i) != wrank_) continue;
                for (size_t j = tb.t[i].offset; j < tb.t[i].offset + tb.t[i].numel; j++) {
                    if (integer || wsize_ <= 2) CHECK(g[j] == ga[j]);
                    else CHECK(fabsf(g[j] - ga[j]) <= 1e-6f * (float)wsize_);
                }
            }
            /* a stand-in update on owned tensors, then the allgather gives every rank all of it */
            for (size_t j = 0; j < tb.total; j++) p[j] = in_tensor_(&tb, j) ? -7.0f : SENTINEL_;
            for (int k = 0; k < m; k++)
                for (size_t j = tb.t[idx[k]].offset; j < tb.t[idx[k]].offset + tb.t[idx[k]].numel; j++) p[j] = 0.5f * g[j];
            dp_allgather_params(z, p);
            int bad = 0;
            for (int i = 0; i < tb.n; i++)
                for (size_t j = tb.t[i].offset; j < tb.t[i].offset + tb.t[i].numel; j++) {
                    float want = 0.5f * ga[j];
                    if (!(integer || wsize_ <= 2)) { if (fabsf(p[j] - want) > 1e-6f * (float)wsize_) bad++; }
                    else if (p[j] != want) bad++;
                }
            CHECKF(bad == 0, "%d parameters differ after the allgather", bad);
            for (size_t j = 0; j < tb.total; j++) if (!in_tensor_(&tb, j)) CHECK(p[j] == SENTINEL_);
        }
    }
    dp_reducer_free(z);
    dp_reducer_free(a);
    free(g); free(ga); free(p);
}

static void test_sum_squares_sharded(void) {
    Table_ tb;
    make_table_(&tb);
    float *g = malloc(tb.total * sizeof *g);
    DpReducer *z = dp_reducer_create(MPI_COMM_WORLD, tb.t, tb.n, 1, 8192);
    DpReducer *a = dp_reducer_create(MPI_COMM_WORLD, tb.t, tb.n, 0, 8192);
    /* the same (already reduced) gradients on every rank */
    fill_(&tb, g, 0, 0, 11);
    int fz = -1, fa = -1;
    double sz = dp_sum_squares_owned(z, g, &fz), sa = dp_sum_squares_owned(a, g, &fa);
    CHECK(sz == sa);            /* bit-identical, sharded or not */
    CHECK_EQ_INT(fz, 1); CHECK_EQ_INT(fa, 1);
    double ref = 0;
    for (int i = 0; i < tb.n; i++) for (size_t j = tb.t[i].offset; j < tb.t[i].offset + tb.t[i].numel; j++) ref += (double)g[j] * g[j];
    CHECK_NEAR(sz, ref, 1e-9 * ref);
    /* a NaN in the last tensor (owned by some rank): every rank sees "not finite" */
    g[tb.t[tb.n - 1].offset + 3] = NAN;
    dp_sum_squares_owned(z, g, &fz);
    dp_sum_squares_owned(a, g, &fa);
    CHECK_EQ_INT(fz, 0); CHECK_EQ_INT(fa, 0);
    g[tb.t[tb.n - 1].offset + 3] = INFINITY;
    dp_sum_squares_owned(z, g, &fz);
    CHECK_EQ_INT(fz, 0);
    dp_reducer_free(z);
    dp_reducer_free(a);
    free(g);
}

/* ---- fault modes ---- */

static void on_term_(int sig) {
    mpi_check_signal_note(sig);
    signal(sig, SIG_DFL);
    raise(sig);
}

static int fault_mode_(int kill_rank, int absent_rank) {
    const int n = 8;
    DpTensor t[8];
    for (int i = 0; i < n; i++) { t[i].offset = (size_t)i * (1u << 20); t[i].numel = 1u << 20; }
    float *g = calloc((size_t)n << 20, sizeof *g);
    signal(SIGTERM, on_term_);
    DpReducer *r = dp_reducer_create(MPI_COMM_WORLD, t, n, 0, (size_t)4 << 20);
    mpi_check_set_step(7);
    if (wrank_ == absent_rank) {
        fprintf(stderr, "rank %d: not posting its side of the reduction\n", wrank_);
        sleep(120);   /* ended by the others' MPI_Abort */
    }
    dp_begin(r, g);
    for (int i = n - 1; i >= 0; i--) {
        dp_tensor_ready(r, i);
        dp_progress(r);
        if (wrank_ == kill_rank && i == n / 2) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            fprintf(stderr, "rank %d: raising SIGKILL mid-reduction at epoch %.3f\n", wrank_,
                    (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec);
            raise(SIGKILL);
        }
    }
    dp_finish(r);
    fprintf(stderr, "rank %d: the reduction finished (unexpected)\n", wrank_);
    dp_reducer_free(r);
    free(g);
    return 0;
}

int main(int argc, char **argv) {
    int kill_rank = -1, absent_rank = -1;
    for (int i = 1; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "--kill-rank")) kill_rank = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--absent-rank")) absent_rank = atoi(argv[i + 1]);
    }
    int under_mpirun = getenv("OMPI_COMM_WORLD_SIZE") != NULL;
    if (under_mpirun) {
        int level;
        MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &level);
        MPI_Comm_rank(MPI_COMM_WORLD, &wrank_);
        MPI_Comm_size(MPI_COMM_WORLD, &wsize_);
        if (kill_rank >= 0 || absent_rank >= 0) {
            fault_mode_(kill_rank, absent_rank);
            MPI_Finalize();
            return 3;   /* the fault did not end the job: a failure */
        }
    }
    if (wrank_ == 0) {
        RUN(test_buckets_hand_table);
        RUN(test_buckets_properties);
        RUN(test_owners_hand_table);
        RUN(test_owners_balanced);
        RUN(test_timeout_setting);
    }
    if (under_mpirun) {
        MPI_RUN(test_grid_layout);
        MPI_RUN(test_allreduce_equals_serial);
        MPI_RUN(test_progress_thread);
        MPI_RUN(test_zero1_owners_and_update);
        MPI_RUN(test_sum_squares_sharded);
        MPI_Allreduce(MPI_IN_PLACE, &test_total_failed_, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        MPI_Finalize();
    }
    return TEST_EXIT();
}
