/*
 * tests/unit/test_tp.c: the tensor-parallel ops (parallel/tp.h) against the unsplit
 * single-process ops, forward and backward.
 *
 * An MPI program: run directly (tests/run.sh: plain, ASan, valgrind) it initialises MPI as a
 * singleton and tests tp = 1; under mpirun (tests/e2e/tp.sh: np 1, 2, 4) it tests every tp size
 * T in {1, 2, 4} that divides the world size (groups of T adjacent ranks), each on both
 * reduction paths (MPI_Allreduce and PBLAS psgemm). Every rank builds the same global tensors
 * from one seed, computes the unsplit reference itself, runs the split op on its shard and
 * compares its shard of the result; only rank 0 prints PASS/FAIL and a test fails when it failed
 * on any rank. Replicated outputs must also be bit-identical across the ranks of a group.
 *
 *   test_blas_single         exactly one OpenBLAS (OpenMP) mapped; ScaLAPACK's sgemm_ in it
 *   test_check_dims          divisibility of heads / d_ff / vocabulary named in the error
 *   test_planning            parameters per rank (T = 1 equals t5_config_num_params, ~1/T for
 *                            xl, xxl, an ff variant) and the communication-volume model
 *   test_linear_col_row      column-parallel then row-parallel Linear (beta 0 and 1), backward
 *   test_attention_heads     self-attention split by heads (fused qkv, relative bias, causal
 *                            and not), one reduction each way, bias-table gradient summed
 *   test_ffn_relu, test_ffn_gated   FFN split by d_ff (wi_0 / wi_1 split consistently)
 *   test_lm_head_xent        LM head split by vocabulary + vocabulary-parallel cross-entropy
 *                            with z-loss: loss sums, logZ, d logits, d hidden, d E
 *   test_embedding           vocabulary-parallel embedding, forward exact, backward
 *   test_cols_rows_layout    a column shard becomes the contiguous global row range and back
 *   test_adafactor_split     Adafactor on row / column shards (factored, unfactored, clipped)
 *                            equal to optim_step on the unsplit tensor over 3 steps
 *   test_model_v10, test_model_v11   the whole model built with t5_model_build_stage_tp (tied
 *                            ReLU and untied gated-GELU): initial values are the shards of the
 *                            unsplit model's, loss and every gradient shard match the unsplit
 *                            model over two accumulated micro-batches (with and without
 *                            recomputation), replicated gradients bit-identical over the group
 */
#include <mpi.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/blas_runtime.h"
#include "parallel/tp.h"
#include "pretrain/gemm.h"
#include "pretrain/optim.h"
#include "pretrain/t5_model.h"
#include "pretrain/t5_ops.h"
#include "tests/unit/test.h"

static int wrank_ = 0, wsize_ = 1;

#if defined(__SANITIZE_ADDRESS__)
/* Open MPI's singleton start-up allocates inside components built without frame pointers; with
 * the fast unwinder LeakSanitizer sees one-frame stacks it cannot match to tests/lsan.supp's
 * libmpi / libopen-pal entries. The slow unwinder gives full stacks, so those are suppressed
 * and a leak in the project's code is still reported. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "fast_unwind_on_malloc=0"; }
#endif

#define MPI_RUN(fn) do { test_failures_ = 0; test_skipped_ = 0; fn(); int f_ = test_failures_; \
    MPI_Allreduce(MPI_IN_PLACE, &f_, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD); \
    if (wrank_ == 0) { if (!f_ && test_skipped_) printf("SKIP %s: %s\n", #fn, test_skip_reason_); \
                       else printf("%s %s (np %d)\n", f_ ? "FAIL" : "PASS", #fn, wsize_); \
                       fflush(stdout); } \
    if (f_) test_total_failed_++; } while (0)

/* ---- helpers ---- */

static uint64_t rng_ = 1;
static void seed_(uint64_t s) { rng_ = s * 0x9E3779B97F4A7C15ull + 1; }
static float urand_(void) {   /* uniform in [-1, 1) */
    rng_ ^= rng_ << 13; rng_ ^= rng_ >> 7; rng_ ^= rng_ << 17;
    return (float)((double)(rng_ >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static float *randv_(size_t n, float scale) {
    float *x = malloc(n * sizeof(float) + 1);
    for (size_t i = 0; i < n; i++) x[i] = scale * urand_();
    return x;
}
static float *zeros_(size_t n) { return calloc(n + 1, sizeof(float)); }
static float *dup_(const float *x, size_t n) {
    float *y = malloc(n * sizeof(float) + 1);
    memcpy(y, x, n * sizeof(float));
    return y;
}

/* max |a - b| / max(max |b|, tiny): relative to the size of the reference */
static double relerr_(const float *a, const float *b, size_t n) {
    double mx = 1e-30, e = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= e)) e = d;   /* NaN propagates */
        if (fabs(b[i]) > mx) mx = fabs(b[i]);
    }
    return e / mx;
}
#define CHECK_CLOSE(a, b, n, tol, what) do { double e_ = relerr_((a), (b), (n)); \
    CHECKF(e_ <= (tol), "%s: rel err %.3g > %.3g (T %d, %s)", (what), e_, (double)(tol), T, \
           tp_reduce_name(red)); } while (0)

/* 1 if buf[n] is bit-identical on every rank of comm */
static int same_on_all_(MPI_Comm comm, const float *buf, size_t n) {
    float *r0 = dup_(buf, n);
    MPI_Bcast(r0, (int)n, MPI_FLOAT, 0, comm);
    int ok = memcmp(r0, buf, n * sizeof(float)) == 0, all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm);
    free(r0);
    return all;
}

typedef struct { MPI_Comm comm; TpCtx tp; int ok; } Group;

/* groups of T adjacent world ranks; 0 if T does not divide the world */
static int group_open_(Group *g, int T, TpReduce red) {
    memset(g, 0, sizeof *g);
    if (wsize_ % T) return 0;
    MPI_Comm_split(MPI_COMM_WORLD, wrank_ / T, wrank_, &g->comm);
    char err[256];
    int rc = tp_init(&g->tp, g->comm, red, err, sizeof err);
    CHECKF(rc == 0, "tp_init T %d %s: %s", T, tp_reduce_name(red), err);
    g->ok = rc == 0;
    return 1;
}
static void group_close_(Group *g) {
    if (g->ok) tp_free(&g->tp);
    MPI_Comm_free(&g->comm);
}

#define FOR_GROUPS(...) do { static const int Ts_[3] = {1, 2, 4}; \
    for (int ti_ = 0; ti_ < 3; ti_++) for (int ri_ = 0; ri_ < 2; ri_++) { \
        int T = Ts_[ti_]; TpReduce red = ri_ ? TP_REDUCE_PBLAS : TP_REDUCE_MPI; Group G; \
        if (!group_open_(&G, T, red)) continue; \
        if (G.ok) { TpCtx *tp = &G.tp; int r = tp->rank; (void)r; __VA_ARGS__ } \
        group_close_(&G); } } while (0)

/* ---- tests ---- */

static void test_blas_single(void) {
    char err[2048];
    int rc = tp_blas_check(err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (rc == 0 && wrank_ == 0) fprintf(stderr, "  %s\n", err);
}

static void test_check_dims(void) {
    T5Config c;
    memset(&c, 0, sizeof c);
    c.n_heads = 32; c.d_ff = 16384; c.vocab_size = 32128;
    char err[256];
    CHECK_EQ_INT(tp_check_dims(&c, 128, err, sizeof err), -1);   /* heads 32 */
    CHECK(strstr(err, "num_heads 32") != NULL);
    c.n_heads = 128;
    CHECK_EQ_INT(tp_check_dims(&c, 128, err, sizeof err), 0);
    CHECK_EQ_INT(tp_check_dims(&c, 256, err, sizeof err), -1);
    c.n_heads = 12; c.d_ff = 3072;
    CHECK_EQ_INT(tp_check_dims(&c, 8, err, sizeof err), -1);     /* 12 heads */
    c.n_heads = 16; c.d_ff = 3000;
    CHECK_EQ_INT(tp_check_dims(&c, 16, err, sizeof err), -1);
    CHECK(strstr(err, "d_ff 3000") != NULL);
    c.d_ff = 4096; c.vocab_size = 32100;
    CHECK_EQ_INT(tp_check_dims(&c, 8, err, sizeof err), -1);
    CHECK(strstr(err, "vocab_size 32100") != NULL);
}

static void test_planning(void) {
    const char *names[3] = {"xl", "xxl", "large-ff12000"};
    for (int i = 0; i < 3; i++) {
        T5Config c;
        char err[256];
        CHECKF(t5_config_from_variant(names[i], &c, err, sizeof err) == 0, "%s", err);
        size_t p1 = tp_params_per_rank(&c, 1), p2 = tp_params_per_rank(&c, 2);
        size_t p4 = tp_params_per_rank(&c, 4);
        CHECK_EQ_INT(p1, t5_config_num_params(&c));
        CHECK(p2 < p1 && p4 < p2);
        /* replicated = norms + bias tables: tiny, so p_T is within 0.1% of p_1 / T */
        CHECKF(fabs((double)p2 - (double)p1 / 2) < 1e-3 * (double)p1, "%s: %zu vs %zu", names[i],
               p2, p1);
        CHECKF(fabs((double)p4 - (double)p1 / 4) < 1e-3 * (double)p1, "%s: %zu vs %zu", names[i],
               p4, p1);
        CHECK(tp_comm_bytes_per_microbatch(&c, 8, 512, 114, 1) == 0.0);
        double b2 = tp_comm_bytes_per_microbatch(&c, 8, 512, 114, 2);
        /* lower bound: the 4 reductions per encoder layer alone */
        CHECK(b2 >= 4.0 * c.n_enc_layers * 8 * 512 * c.d_model * 4.0);
        CHECK(b2 == tp_comm_bytes_per_microbatch(&c, 8, 512, 114, 4));   /* payload, not ring */
    }
}

/* X[N,C] -> Y = X W1^T [N,OC] (column-parallel) -> Z = beta R + Y W2^T [N,D] (row-parallel) */
static void test_linear_col_row(void) {
    const int N = test_quick() ? 24 : 96, C = 64, OC = 128, D = 48;
    FOR_GROUPS({
        for (int bi = 0; bi < 2; bi++) {
            float beta = (float)bi;
            seed_(11 + bi);
            float *X = randv_((size_t)N * C, 1.0f), *W1 = randv_((size_t)OC * C, 0.2f);
            float *W2 = randv_((size_t)D * OC, 0.2f), *R = randv_((size_t)N * D, 1.0f);
            float *dZ = randv_((size_t)N * D, 1.0f);
            /* reference */
            float *Y = zeros_((size_t)N * OC), *Z = dup_(R, (size_t)N * D);
            t5_matmul_forward(Y, X, W1, N, C, OC, 1.0f, 0.0f);
            t5_matmul_forward(Z, Y, W2, N, OC, D, 1.0f, beta);
            float *dY = zeros_((size_t)N * OC), *dX = zeros_((size_t)N * C);
            float *dW1 = zeros_((size_t)OC * C), *dW2 = zeros_((size_t)D * OC);
            t5_matmul_backward(dY, 0.0f, dW2, dZ, Y, W2, N, OC, D, 1.0f);
            t5_matmul_backward(dX, 0.0f, dW1, dY, X, W1, N, C, OC, 1.0f);
            /* split */
            int OCl = OC / T;
            float *W1l = zeros_((size_t)OCl * C), *W2l = zeros_((size_t)D * OCl);
            tp_shard_rows_local(W1l, W1, OC, C, T, r);
            tp_shard_cols_local(W2l, W2, D, OC, T, r);
            float *Yl = zeros_((size_t)N * OCl), *Zs = dup_(R, (size_t)N * D);
            tp_colpar_forward(tp, Yl, X, W1l, N, C, OCl);
            tp_rowpar_forward(tp, Zs, Yl, W2l, N, OCl, D, beta);
            float *Ylref = zeros_((size_t)N * OCl);
            tp_shard_cols_local(Ylref, Y, N, OC, T, r);
            CHECK_CLOSE(Yl, Ylref, (size_t)N * OCl, 1e-6, "column-parallel forward");
            CHECK_CLOSE(Zs, Z, (size_t)N * D, 1e-5, "row-parallel forward");
            CHECKF(same_on_all_(tp->comm, Zs, (size_t)N * D), "row-parallel output differs "
                   "between ranks (T %d, %s)", T, tp_reduce_name(red));
            float *dYl = zeros_((size_t)N * OCl), *dXs = randv_((size_t)N * C, 9.0f);
            float *dW1l = zeros_((size_t)OCl * C), *dW2l = zeros_((size_t)D * OCl);
            tp_rowpar_backward(tp, dYl, dW2l, dZ, Yl, W2l, N, OCl, D);
            float *dW1p[1] = {dW1l};
            const float *dYp[1] = {dYl}, *W1p[1] = {W1l};
            int ocl[1] = {OCl};
            tp_colpar_backward(tp, dXs, dW1p, dYp, X, W1p, ocl, 1, N, C);
            float *ref = zeros_((size_t)N * OC + (size_t)OC * C);
            tp_shard_cols_local(ref, dY, N, OC, T, r);
            CHECK_CLOSE(dYl, ref, (size_t)N * OCl, 1e-5, "row-parallel dinp");
            tp_shard_cols_local(ref, dW2, D, OC, T, r);
            CHECK_CLOSE(dW2l, ref, (size_t)D * OCl, 1e-5, "row-parallel dW");
            tp_shard_rows_local(ref, dW1, OC, C, T, r);
            CHECK_CLOSE(dW1l, ref, (size_t)OCl * C, 1e-5, "column-parallel dW");
            CHECK_CLOSE(dXs, dX, (size_t)N * C, 1e-5, "column-parallel dinp");
            CHECKF(same_on_all_(tp->comm, dXs, (size_t)N * C), "column-parallel dinp differs "
                   "between ranks (T %d, %s)", T, tp_reduce_name(red));
            free(X); free(W1); free(W2); free(R); free(dZ); free(Y); free(Z); free(dY);
            free(dX); free(dW1); free(dW2); free(W1l); free(W2l); free(Yl); free(Zs);
            free(Ylref); free(dYl); free(dXs); free(dW1l); free(dW2l); free(ref);
        }
    });
}

/* Self-attention as the model runs it: qkv = x Wqkv^T (Wqkv [3I, d]), attention over H heads
 * with the relative bias, y = x + ctx o^T. Split: heads [r H/T, ..). */
static void attention_case_(TpCtx *tp, int T, TpReduce red, int causal) {
    const int r = tp->rank;
    const int B = 2, L = test_quick() ? 8 : 16, d = 32, H = 8, K = 8, I = H * K, N = B * L;
    const int nb = 32, md = 128, LB = 2 * L - 1;
    seed_(21 + causal);
    float *x = randv_((size_t)N * d, 1.0f), *Wqkv = randv_((size_t)3 * I * d, 0.3f);
    float *Wo = randv_((size_t)d * I, 0.3f), *table = randv_((size_t)nb * H, 0.5f);
    float *dy = randv_((size_t)N * d, 1.0f);
    int32_t seg[2 * 16];
    for (int i = 0; i < N; i++) seg[i] = 1 + (i % L >= L - 3);   /* two segments per row */
    float *bias = zeros_((size_t)H * LB);
    t5_relbias_forward(bias, table, L, L, H, !causal, nb, md);
    /* reference */
    float *qkv = zeros_((size_t)N * 3 * I), *att = zeros_((size_t)B * H * L * L);
    float *ctx = zeros_((size_t)N * I), *y = dup_(x, (size_t)N * d);
    t5_matmul_forward(qkv, x, Wqkv, N, d, 3 * I, 1.0f, 0.0f);
    t5_attention_forward(ctx, I, att, qkv, 3 * I, qkv + I, 3 * I, qkv + 2 * I, 3 * I, bias, seg,
                         seg, causal, B, L, L, H, K);
    t5_matmul_forward(y, ctx, Wo, N, I, d, 1.0f, 1.0f);
    float *dctx = zeros_((size_t)N * I), *dqkv = zeros_((size_t)N * 3 * I);
    float *dx = zeros_((size_t)N * d), *dWqkv = zeros_((size_t)3 * I * d);
    float *dWo = zeros_((size_t)d * I), *dbias = zeros_((size_t)B * H * LB);
    float *dtable = zeros_((size_t)nb * H);
    float *scr = zeros_(t5_attention_scratch_floats(L, L));
    t5_matmul_backward(dctx, 0.0f, dWo, dy, ctx, Wo, N, I, d, 1.0f);
    t5_attention_backward(dqkv, 3 * I, dqkv + I, 3 * I, dqkv + 2 * I, 3 * I, dbias, dctx, I, att,
                          qkv, 3 * I, qkv + I, 3 * I, qkv + 2 * I, 3 * I, B, L, L, H, K, scr, omp_get_max_threads());
    t5_matmul_backward(dx, 0.0f, dWqkv, dqkv, x, Wqkv, N, d, 3 * I, 1.0f);
    t5_relbias_backward(dtable, dbias, B, L, L, H, !causal, nb, md);
    /* split: Hl heads, Il = I/T */
    const int Hl = H / T, Il = Hl * K;
    float *Wqkvl = zeros_((size_t)3 * Il * d), *Wol = zeros_((size_t)d * Il);
    tp_shard_stacked_local(Wqkvl, Wqkv, 3, I, d, T, r);
    tp_shard_cols_local(Wol, Wo, d, I, T, r);
    float *qkvl = zeros_((size_t)N * 3 * Il), *attl = zeros_((size_t)B * Hl * L * L);
    float *ctxl = zeros_((size_t)N * Il), *ys = dup_(x, (size_t)N * d);
    tp_colpar_forward(tp, qkvl, x, Wqkvl, N, d, 3 * Il);
    t5_attention_forward(ctxl, Il, attl, qkvl, 3 * Il, qkvl + Il, 3 * Il, qkvl + 2 * Il, 3 * Il,
                         bias + (size_t)r * Hl * LB, seg, seg, causal, B, L, L, Hl, K);
    tp_rowpar_forward(tp, ys, ctxl, Wol, N, Il, d, 1.0f);
    CHECK_CLOSE(ys, y, (size_t)N * d, 1e-5, causal ? "causal attention y" : "attention y");
    CHECKF(same_on_all_(tp->comm, ys, (size_t)N * d), "attention output differs between ranks");
    float *dctxl = zeros_((size_t)N * Il), *dqkvl = zeros_((size_t)N * 3 * Il);
    float *dxs = zeros_((size_t)N * d), *dWqkvl = zeros_((size_t)3 * Il * d);
    float *dWol = zeros_((size_t)d * Il), *dbiasl = zeros_((size_t)B * Hl * LB);
    float *dtl = zeros_((size_t)nb * Hl), *dts = zeros_((size_t)nb * H);
    tp_rowpar_backward(tp, dctxl, dWol, dy, ctxl, Wol, N, Il, d);
    t5_attention_backward(dqkvl, 3 * Il, dqkvl + Il, 3 * Il, dqkvl + 2 * Il, 3 * Il, dbiasl,
                          dctxl, Il, attl, qkvl, 3 * Il, qkvl + Il, 3 * Il, qkvl + 2 * Il,
                          3 * Il, B, L, L, Hl, K, scr, omp_get_max_threads());
    float *dWp[1] = {dWqkvl};
    const float *dqp[1] = {dqkvl}, *Wp[1] = {Wqkvl};
    int ocl[1] = {3 * Il};
    tp_colpar_backward(tp, dxs, dWp, dqp, x, Wp, ocl, 1, N, d);
    /* the bias table is replicated: each rank's heads' columns, then summed over tp */
    t5_relbias_backward(dtl, dbiasl, B, L, L, Hl, !causal, nb, md);
    tp_unshard_cols_local(dts, dtl, nb, H, T, r);
    tp_allreduce_sum(tp, dts, (size_t)nb * H);
    float *ref = zeros_((size_t)3 * I * d);
    CHECK_CLOSE(dxs, dx, (size_t)N * d, 1e-5, "attention dx");
    CHECKF(same_on_all_(tp->comm, dxs, (size_t)N * d), "attention dx differs between ranks");
    tp_shard_stacked_local(ref, dWqkv, 3, I, d, T, r);
    CHECK_CLOSE(dWqkvl, ref, (size_t)3 * Il * d, 1e-5, "attention dWqkv");
    tp_shard_cols_local(ref, dWo, d, I, T, r);
    CHECK_CLOSE(dWol, ref, (size_t)d * Il, 1e-5, "attention dWo");
    CHECK_CLOSE(dts, dtable, (size_t)nb * H, 1e-5, "relative-bias table gradient");
    free(x); free(Wqkv); free(Wo); free(table); free(dy); free(bias); free(qkv); free(att);
    free(ctx); free(y); free(dctx); free(dqkv); free(dx); free(dWqkv); free(dWo); free(dbias);
    free(dtable); free(scr); free(Wqkvl); free(Wol); free(qkvl); free(attl); free(ctxl);
    free(ys); free(dctxl); free(dqkvl); free(dxs); free(dWqkvl); free(dWol); free(dbiasl);
    free(dtl); free(dts); free(ref);
}

static void test_attention_heads(void) {
    FOR_GROUPS({ attention_case_(tp, T, red, 0); attention_case_(tp, T, red, 1); });
}

static void ffn_case_(T5FfnKind kind) {
    const int N = test_quick() ? 16 : 64, d = 48, f = 128, P = kind == T5_FFN_GATED_GELU ? 2 : 1;
    FOR_GROUPS({
        seed_(31 + kind);
        float *x = randv_((size_t)N * d, 1.0f), *wi = randv_((size_t)P * f * d, 0.3f);
        float *wo = randv_((size_t)d * f, 0.3f), *dy = randv_((size_t)N * d, 1.0f);
        float *y = randv_((size_t)N * d, 1.0f), *ys = dup_(y, (size_t)N * d);
        float *u = zeros_((size_t)N * 2 * f), *h = zeros_((size_t)N * f);
        float *dx = zeros_((size_t)N * d), *dwi = zeros_((size_t)P * f * d);
        float *dwo = zeros_((size_t)d * f), *dh = zeros_((size_t)N * f);
        float *du = zeros_((size_t)N * 2 * f);
        t5_ffn_forward(y, u, h, x, wi, wo, N, d, f, kind);
        t5_ffn_backward(dx, dwi, dwo, dh, du, dy, u, h, x, wi, wo, N, d, f, kind);
        int fl = f / T;
        float *wil = zeros_((size_t)P * fl * d), *wol = zeros_((size_t)d * fl);
        tp_shard_stacked_local(wil, wi, P, f, d, T, r);
        tp_shard_cols_local(wol, wo, d, f, T, r);
        float *ul = zeros_((size_t)N * 2 * fl), *hl = zeros_((size_t)N * fl);
        float *dxs = zeros_((size_t)N * d), *dwil = zeros_((size_t)P * fl * d);
        float *dwol = zeros_((size_t)d * fl), *dhl = zeros_((size_t)N * fl);
        float *dul = zeros_((size_t)N * 2 * fl), *ref = zeros_((size_t)N * f + (size_t)P * f * d);
        tp_ffn_forward(tp, ys, ul, hl, x, wil, wol, N, d, fl, kind);
        CHECK_CLOSE(ys, y, (size_t)N * d, 1e-5, "ffn forward");
        CHECKF(same_on_all_(tp->comm, ys, (size_t)N * d), "ffn output differs between ranks");
        tp_shard_cols_local(ref, h, N, f, T, r);
        CHECK_CLOSE(hl, ref, (size_t)N * fl, 1e-6, "ffn hidden");
        tp_ffn_backward(tp, dxs, dwil, dwol, dhl, dul, dy, ul, hl, x, wil, wol, N, d, fl, kind);
        CHECK_CLOSE(dxs, dx, (size_t)N * d, 1e-5, "ffn dx");
        CHECKF(same_on_all_(tp->comm, dxs, (size_t)N * d), "ffn dx differs between ranks");
        tp_shard_stacked_local(ref, dwi, P, f, d, T, r);
        CHECK_CLOSE(dwil, ref, (size_t)P * fl * d, 1e-5, "ffn dwi");
        tp_shard_cols_local(ref, dwo, d, f, T, r);
        CHECK_CLOSE(dwol, ref, (size_t)d * fl, 1e-5, "ffn dwo");
        free(x); free(wi); free(wo); free(dy); free(y); free(ys); free(u); free(h); free(dx);
        free(dwi); free(dwo); free(dh); free(du); free(wil); free(wol); free(ul); free(hl);
        free(dxs); free(dwil); free(dwol); free(dhl); free(dul); free(ref);
    });
}
static void test_ffn_relu(void) { ffn_case_(T5_FFN_RELU); }
static void test_ffn_gated(void) { ffn_case_(T5_FFN_GATED_GELU); }

/* logits = h E^T [N, V] (E [V, d]), xent with z-loss; split by vocabulary */
static void test_lm_head_xent(void) {
    const int N = test_quick() ? 16 : 48, d = 32, V = 1024;
    const float zc = 1e-4f, scale = 1.0f / 37.0f;
    FOR_GROUPS({
        seed_(41);
        float *hid = randv_((size_t)N * d, 1.0f), *E = randv_((size_t)V * d, 1.0f);
        int32_t labels[64];
        for (int n = 0; n < N; n++) labels[n] = (n % 7 == 3) ? 0 : (int32_t)((n * 131 + 5) % V);
        labels[1] = V - 1;                                   /* last shard's last column */
        labels[2] = 1;
        float *logits = zeros_((size_t)N * V), *logZ = zeros_(N);
        t5_matmul_forward(logits, hid, E, N, d, V, 1.0f, 0.0f);
        for (int j = 0; j < V; j++) logits[(size_t)5 * V + j] += 30.0f;   /* a large-logit row */
        T5LossStats st = {0, 0, 0};
        t5_xent_forward(&st, logZ, logits, labels, N, V);
        int Vl = V / T;
        float *El = zeros_((size_t)Vl * d), *ll = zeros_((size_t)N * Vl), *lZs = zeros_(N);
        tp_shard_rows_local(El, E, V, d, T, r);
        tp_colpar_forward(tp, ll, hid, El, N, d, Vl);
        for (int j = 0; j < Vl; j++) ll[(size_t)5 * Vl + j] += 30.0f;
        T5LossStats ss = {0, 0, 0};
        tp_xent_forward(tp, &ss, lZs, ll, labels, N, Vl);
        CHECK_EQ_INT(ss.tokens, st.tokens);
        CHECK_NEAR(ss.ce_sum, st.ce_sum, 1e-6 * fabs(st.ce_sum));
        CHECK_NEAR(ss.z_sum, st.z_sum, 1e-6 * fabs(st.z_sum));
        CHECK_CLOSE(lZs, logZ, (size_t)N, 1e-6, "logZ");
        CHECKF(same_on_all_(tp->comm, lZs, (size_t)N), "logZ differs between ranks");
        /* backward: d logits, then d hidden (reduced) and d E (local rows) */
        float *dl = dup_(logits, (size_t)N * V), *dh = zeros_((size_t)N * d);
        float *dE = zeros_((size_t)V * d);
        t5_xent_backward(dl, logZ, labels, N, V, zc, scale);
        for (int j = 0; j < V; j++) logits[(size_t)5 * V + j] -= 30.0f;
        t5_matmul_backward(dh, 0.0f, dE, dl, hid, E, N, d, V, 1.0f);
        tp_xent_backward(tp, ll, lZs, labels, N, Vl, zc, scale);
        float *ref = zeros_((size_t)N * V + (size_t)V * d);
        tp_shard_cols_local(ref, dl, N, V, T, r);
        CHECK_CLOSE(ll, ref, (size_t)N * Vl, 1e-6, "d logits");
        float *dhs = zeros_((size_t)N * d), *dEl = zeros_((size_t)Vl * d);
        float *dEp[1] = {dEl};
        const float *dlp[1] = {ll}, *Ep[1] = {El};
        int vl[1] = {Vl};
        tp_colpar_backward(tp, dhs, dEp, dlp, hid, Ep, vl, 1, N, d);
        CHECK_CLOSE(dhs, dh, (size_t)N * d, 1e-5, "d hidden");
        tp_shard_rows_local(ref, dE, V, d, T, r);
        CHECK_CLOSE(dEl, ref, (size_t)Vl * d, 1e-5, "d E (LM head)");
        free(hid); free(E); free(logits); free(logZ); free(El); free(ll); free(lZs); free(dl);
        free(dh); free(dE); free(ref); free(dhs); free(dEl);
    });
}

/* column shard <-> contiguous row block (checkpoint pieces of o / wo) */
static void test_cols_rows_layout(void) {
    const int rows = 48, cols = 40;
    FOR_GROUPS({
        seed_(71);
        float *G = randv_((size_t)rows * cols, 1.0f);
        int rl = rows / T, cl = cols / T;
        float *cs = zeros_((size_t)rows * cl), *rb = zeros_((size_t)rl * cols);
        float *back = zeros_((size_t)rows * cl);
        tp_shard_cols_local(cs, G, rows, cols, T, r);
        tp_cols_to_rows(tp, rb, cs, rows, cols);
        CHECKF(memcmp(rb, G + (size_t)r * rl * cols, (size_t)rl * cols * sizeof(float)) == 0,
               "row block is not the global range (T %d, %s)", T, tp_reduce_name(red));
        tp_rows_to_cols(tp, back, rb, rows, cols);
        CHECKF(memcmp(back, cs, (size_t)rows * cl * sizeof(float)) == 0, "rows_to_cols does not "
               "invert cols_to_rows (T %d, %s)", T, tp_reduce_name(red));
        free(G); free(cs); free(rb); free(back);
    });
}

static void test_embedding(void) {
    const int N = 40, C = 24, V = 256;
    FOR_GROUPS({
        seed_(51);
        float *E = randv_((size_t)V * C, 1.0f), *dout = randv_((size_t)N * C, 1.0f);
        int32_t ids[40];
        for (int n = 0; n < N; n++) ids[n] = (int32_t)((n * 37 + 3) % V);
        ids[7] = ids[3]; ids[8] = V - 1; ids[9] = 0;   /* a repeated id, both ends */
        float *out = zeros_((size_t)N * C), *dE = zeros_((size_t)V * C);
        t5_embedding_forward(out, ids, E, N, C);
        t5_embedding_backward(dE, ids, dout, N, C);
        int Vl = V / T;
        float *El = zeros_((size_t)Vl * C), *outs = randv_((size_t)N * C, 5.0f);
        float *dEl = zeros_((size_t)Vl * C), *ref = zeros_((size_t)Vl * C);
        tp_shard_rows_local(El, E, V, C, T, r);
        tp_embedding_forward(tp, outs, ids, El, N, C, Vl);
        CHECKF(memcmp(outs, out, (size_t)N * C * sizeof(float)) == 0, "embedding forward not "
               "exact (T %d, %s)", T, tp_reduce_name(red));
        tp_embedding_backward(tp, dEl, ids, dout, N, C, Vl);
        tp_shard_rows_local(ref, dE, V, C, T, r);
        CHECK_CLOSE(dEl, ref, (size_t)Vl * C, 1e-7, "embedding backward");
        free(E); free(dout); free(out); free(dE); free(El); free(outs); free(dEl); free(ref);
    });
}

/* Adafactor: the shard of the unsplit update over 3 steps */
static void adafactor_case_(TpCtx *tp, int T, TpReduce red, TpSplit split, int rows, int cols,
                            double clip) {
    const int r = tp->rank;
    OptimConfig cfg;
    optim_config_default(&cfg, OPTIM_ADAFACTOR);
    cfg.clip_threshold = clip;
    OptimTensor t = {0, (size_t)rows * cols, rows, cols};
    Optim opt;
    char err[256];
    CHECK_EQ_INT(optim_init(&opt, &cfg, &t, 1, t.numel, err, sizeof err), 0);
    seed_(61 + rows + cols);
    float *W = randv_(t.numel, 0.05f), *G = zeros_(t.numel);
    int rl = split == TP_SPLIT_ROWS ? rows / T : rows, cl = split == TP_SPLIT_COLS ? cols / T : cols;
    size_t nl = (size_t)rl * cl;
    float *Wl = zeros_(nl), *Gl = zeros_(nl), *ref = zeros_(nl);
    size_t sn = tp_adafactor_state_floats(&cfg, split, rows, cols, T);
    CHECK_EQ_INT(sn, split == TP_SPLIT_NONE ? opt.state_numel
                 : tp_adafactor_is_factored(&cfg, rows, cols)
                 ? (size_t)rl + (size_t)cl + (split == TP_SPLIT_ROWS ? (size_t)cols - cl
                                                                      : (size_t)rows - rl)
                 : nl);
    float *state = zeros_(sn);
#define SHARD_(dst, src) (split == TP_SPLIT_ROWS ? tp_shard_rows_local(dst, src, rows, cols, T, r) \
    : split == TP_SPLIT_COLS ? tp_shard_cols_local(dst, src, rows, cols, T, r) \
    : (void)memcpy(dst, src, t.numel * sizeof(float)))
    SHARD_(Wl, W);
    for (long g = 0; g < 3; g++) {
        for (size_t i = 0; i < t.numel; i++) G[i] = 0.01f * urand_() * (1.0f + (float)(i % 5));
        SHARD_(Gl, G);
        double lr1 = optim_step(&opt, W, G, g + 9990);
        double lr2 = tp_adafactor_step(tp, &cfg, split, rows, cols, Wl, Gl, state, g + 9990);
        CHECK_NEAR(lr1, lr2, 0.0);
        SHARD_(ref, W);
        double e = relerr_(Wl, ref, nl);
        size_t same = 0;
        for (size_t i = 0; i < nl; i++) same += Wl[i] == ref[i];
        CHECKF(e <= 1e-7, "adafactor [%d, %d] split %d clip %g step %ld: rel err %.3g (%zu of %zu "
               "bit-equal; T %d, %s)", rows, cols, (int)split, clip, g, e, same, nl, T,
               tp_reduce_name(red));
        if (g == 2 && r == 0 && wrank_ == 0 && T == wsize_ && red == TP_REDUCE_MPI)
            fprintf(stderr, "  adafactor [%d, %d] split %s clip %g, T %d, after 3 steps: rel err "
                    "%.2g, %zu of %zu elements bit-equal\n", rows, cols, split == TP_SPLIT_ROWS ?
                    "rows" : split == TP_SPLIT_COLS ? "cols" : "none", clip, T, e, same, nl);
    }
#undef SHARD_
    optim_free(&opt);
    free(W); free(G); free(Wl); free(Gl); free(ref); free(state);
}

static void test_adafactor_split(void) {
    FOR_GROUPS({
        adafactor_case_(tp, T, red, TP_SPLIT_ROWS, 256, 192, 1.0);    /* factored */
        adafactor_case_(tp, T, red, TP_SPLIT_COLS, 192, 256, 1.0);
        adafactor_case_(tp, T, red, TP_SPLIT_ROWS, 256, 192, 1e-3);   /* update clipped */
        adafactor_case_(tp, T, red, TP_SPLIT_COLS, 128, 64, 1.0);     /* unfactored (64 < 128) */
        adafactor_case_(tp, T, red, TP_SPLIT_ROWS, 64, 100, 1e-3);
        adafactor_case_(tp, T, red, TP_SPLIT_NONE, 32, 8, 1.0);       /* replicated */
    });
}

/* ---- the whole model split ---- */

static T5Config model_cfg_(int v11) {
    T5Config c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "test-tp-model");
    c.n_enc_layers = 2; c.n_dec_layers = 2; c.d_model = 16; c.d_ff = 24; c.n_heads = 4;
    c.d_kv = 8; c.vocab_size = 80; c.num_buckets = 32; c.max_distance = 128;
    c.ffn = v11 ? T5_FFN_GATED_GELU : T5_FFN_RELU;
    c.tied_embedding = !v11;
    c.layer_norm_eps = 1e-6f;
    return c;
}

/* Two rows with packed segments and padding; ids drawn over the whole vocabulary. */
static void model_batch_(T5Batch *b, int V) {
    int B = 2, Le = 10, Ld = 6;
    t5_batch_alloc(b, B, Le, Ld);
    static const int32_t es[2][10] = {{1, 1, 1, 1, 2, 2, 2, 0, 0, 0}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1}};
    static const int32_t ds[2][6] = {{1, 1, 2, 2, 2, 0}, {1, 1, 1, 1, 0, 0}};
    seed_(5);
    for (int i = 0; i < B; i++) {
        for (int t = 0; t < Le; t++) {
            b->enc_seg[i * Le + t] = es[i][t];
            b->enc_ids[i * Le + t] = es[i][t] ? 1 + (int)((urand_() + 1.0f) * 0.5f * (V - 2)) : 0;
        }
        for (int t = 0; t < Ld; t++) {
            b->dec_seg[i * Ld + t] = ds[i][t];
            b->labels[i * Ld + t] = ds[i][t] ? 1 + (int)((urand_() + 1.0f) * 0.5f * (V - 2)) : 0;
            int start = t == 0 || ds[i][t - 1] != ds[i][t];
            b->dec_in_ids[i * Ld + t] = (ds[i][t] && !start) ? b->labels[i * Ld + t - 1] : 0;
        }
    }
}

/* This rank's piece of the whole model's tensor j (as the split model lays it out). */
static float *piece_of_(const T5Model *whole, const float *base, const T5Tensor *t, int T, int r) {
    const T5Tensor *w = &whole->tensors[t5_model_find_tensor(whole, t->name)];
    float *p = malloc(t->numel * sizeof(float) + 1);
    if (t->split == T5_SPLIT_ROWS) tp_shard_rows_local(p, base + w->offset, w->shape[0], w->shape[1], T, r);
    else if (t->split == T5_SPLIT_COLS) tp_shard_cols_local(p, base + w->offset, w->shape[0], w->shape[1], T, r);
    else memcpy(p, base + w->offset, t->numel * sizeof(float));
    return p;
}

static void model_case_(TpCtx *tp, int T, TpReduce red, int v11, int recompute) {
    T5Config c = model_cfg_(v11);
    T5Model whole, split;
    t5_model_build(&whole, &c);
    t5_model_init_weights(&whole, 11);
    t5_model_build_stage_tp(&split, &c, &whole.range, tp);
    split.recompute = recompute;
    t5_model_init_weights(&split, 11);
    CHECKF(split.num_tensors == whole.num_tensors, "tensor count %d vs %d", split.num_tensors, whole.num_tensors);
    size_t expect_local = 0;
    for (int i = 0; i < split.num_tensors; i++) {
        const T5Tensor *t = &split.tensors[i];
        expect_local += t->numel;
        float *want = piece_of_(&whole, whole.params, t, T, tp->rank);
        CHECKF(memcmp(want, split.params + t->offset, t->numel * sizeof(float)) == 0,
               "initial values of %s (T %d) are not the shard of the whole model's", t->name, T);
        free(want);
    }
    CHECK_EQ_INT(split.num_params, expect_local);
    CHECK_EQ_INT(t5_stage_num_params_tp(&c, &whole.range, T), split.num_params);
    T5Batch b;
    model_batch_(&b, c.vocab_size);
    T5LossStats ref[2], got[2];
    t5_model_zero_grad(&whole);
    t5_model_zero_grad(&split);
    for (int k = 0; k < 2; k++) {   /* two micro-batches accumulate */
        t5_model_forward(&whole, &b, 1e-4f, &ref[k]);
        t5_model_backward(&whole, 0.05f);
        t5_model_forward(&split, &b, 1e-4f, &got[k]);
        t5_model_backward(&split, 0.05f);
        CHECKF(fabs(got[k].ce_sum - ref[k].ce_sum) <= 1e-5 * fabs(ref[k].ce_sum),
               "ce_sum %.9g vs %.9g (T %d %s v11 %d)", got[k].ce_sum, ref[k].ce_sum, T, tp_reduce_name(red), v11);
        CHECKF(fabs(got[k].z_sum - ref[k].z_sum) <= 1e-5 * fabs(ref[k].z_sum), "z_sum %.9g vs %.9g", got[k].z_sum,
               ref[k].z_sum);
        CHECK_EQ_INT(got[k].tokens, ref[k].tokens);
        double l[2] = {got[k].ce_sum, got[k].z_sum}, l0[2] = {l[0], l[1]};
        MPI_Bcast(l0, 2, MPI_DOUBLE, 0, tp->comm);
        int same = l0[0] == l[0] && l0[1] == l[1], all = 0;
        MPI_Allreduce(&same, &all, 1, MPI_INT, MPI_MIN, tp->comm);
        CHECKF(all, "the loss differs between the ranks of the group (T %d)", T);
    }
    for (int i = 0; i < split.num_tensors; i++) {
        const T5Tensor *t = &split.tensors[i];
        float *want = piece_of_(&whole, whole.grads, t, T, tp->rank);
        char what[160];
        snprintf(what, sizeof what, "gradient of %s (v11 %d, recompute %d)", t->name, v11, recompute);
        CHECK_CLOSE(split.grads + t->offset, want, t->numel, 2e-5, what);
        if (t->split == T5_SPLIT_NONE)
            CHECKF(same_on_all_(tp->comm, split.grads + t->offset, t->numel),
                   "replicated gradient of %s differs between ranks (T %d)", t->name, T);
        free(want);
    }
    t5_batch_free(&b);
    t5_model_free(&split);
    t5_model_free(&whole);
}

static void test_model_v10(void) {
    FOR_GROUPS({ model_case_(tp, T, red, 0, 0); model_case_(tp, T, red, 0, 1); });
}
static void test_model_v11(void) {
    FOR_GROUPS({ model_case_(tp, T, red, 1, 0); model_case_(tp, T, red, 1, 1); });
}

int main(int argc, char **argv) {
    blas_runtime_setup(argc, argv, 0, 0);
    int level;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &level);
    MPI_Comm_rank(MPI_COMM_WORLD, &wrank_);
    MPI_Comm_size(MPI_COMM_WORLD, &wsize_);
    MPI_RUN(test_blas_single);
    MPI_RUN(test_check_dims);
    MPI_RUN(test_planning);
    MPI_RUN(test_linear_col_row);
    MPI_RUN(test_attention_heads);
    MPI_RUN(test_ffn_relu);
    MPI_RUN(test_ffn_gated);
    MPI_RUN(test_lm_head_xent);
    MPI_RUN(test_embedding);
    MPI_RUN(test_cols_rows_layout);
    MPI_RUN(test_adafactor_split);
    MPI_RUN(test_model_v10);
    MPI_RUN(test_model_v11);
    MPI_Allreduce(MPI_IN_PLACE, &test_total_failed_, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    tp_blacs_finalize();
    gemm_release();
    MPI_Finalize();
    return TEST_EXIT();
}
