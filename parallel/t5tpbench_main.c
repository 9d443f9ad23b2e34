/*
 * parallel/t5tpbench_main.c: bin/t5tpbench, speed of the tensor-parallel building blocks
 * (parallel/tp.h) on the shapes of a wide variant.
 *
 *   mpirun -np 2 -x OMP_NUM_THREADS=1 bin/t5tpbench --variant xl      tp 2 x 1 thread
 *   OMP_NUM_THREADS=2 bin/t5tpbench --variant xl                     1 x 2 threads
 *   bin/t5tpbench --blas-check                                       one BLAS mapped? (exit 0/1)
 *
 * Options: --variant NAME (default xl), --tokens N (default 256; attention runs N/128 sequences
 * of 128), --reps R (default 5), --precision fp32|bf16 (the local products; PBLAS is always
 * fp32), --batch B --inputs-length Li --targets-length Lo (the communication plan, default
 * 128 x 512 / 114), --quick (tiny shapes, 2 reps: for the tests).
 * The tp group is MPI_COMM_WORLD (T = the number of ranks).
 *
 * Output, rank 0, one line per measurement ("t5tpbench: SECTION key=value ..."):
 *   reduce    the two reductions of a split FFN, each on both paths: the row-parallel forward
 *             (Y = sum_r h_r wo_r^T) and the column-parallel input gradient (dX = sum_r du_r
 *             wi_r); median ms over reps (max over ranks per rep), aggregate GFLOP/s, the ms
 *             inside the reduction (MPI path: the MPI_Allreduce; PBLAS: the whole psgemm), and
 *             the largest difference between the two paths' results
 *   sublayer  an FFN and a self-attention sub-layer, forward + backward, on the default (MPI)
 *             path: median ms, GFLOP/s, reduction ms and MB per call
 *   plan      parameters per rank and the reduction payload per micro-batch and per step
 */
#include <mpi.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/blas_runtime.h"
#include "common/util.h"
#include "parallel/mpi_check.h"
#include "parallel/tp.h"
#include "pretrain/gemm.h"
#include "pretrain/t5_config.h"
#include "pretrain/t5_ops.h"

static int rank_ = 0, size_ = 1;

static float *randv_(size_t n, float scale, uint64_t seed) {
    float *x = xmalloc(n * sizeof(float) + 4);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        x[i] = scale * (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    return x;
}

static int cmp_d_(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median_(double *v, int n) {
    qsort(v, (size_t)n, sizeof(double), cmp_d_);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* wall time of one call, the max over ranks */
static double tick_(void) { MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); return MPI_Wtime(); }
static double tock_(double t0) {
    double t = MPI_Wtime() - t0, mx = 0.0;
    MPI_CHECK(MPI_Allreduce(&t, &mx, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    return mx;
}

static double maxrel_(const float *a, const float *b, size_t n) {
    double e = 0.0, m = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= e)) e = d;
        if (fabs(b[i]) > m) m = fabs(b[i]);
    }
    return e / m;
}

#define OUT_(...) do { if (rank_ == 0) { printf("t5tpbench: " __VA_ARGS__); fflush(stdout); } } while (0)

/* The two reductions of a split FFN, on both paths. */
static void bench_reduce_(TpCtx *tpm, TpCtx *tpp, int N, int d, int f, int reps) {
    const int T = size_, fl = f / T;
    float *h = randv_((size_t)N * fl, 1.0f, 1 + rank_), *wo = randv_((size_t)d * fl, 0.02f, 7 + rank_);
    float *wi = randv_((size_t)fl * d, 0.02f, 13 + rank_), *du = randv_((size_t)N * fl, 1.0f, 19 + rank_);
    float *y[2], *dx[2], *dwi = xcalloc((size_t)fl * d, sizeof(float));
    double flops = 2.0 * N * (double)f * d;   /* whole product, summed over ranks */
    for (int p = 0; p < 2; p++) {
        TpCtx *tp = p ? tpp : tpm;
        y[p] = xcalloc((size_t)N * d, sizeof(float));
        dx[p] = xcalloc((size_t)N * d, sizeof(float));
        double *tf = xmalloc(sizeof(double) * (size_t)reps), *tb = xmalloc(sizeof(double) * (size_t)reps);
        double cf = 0.0, cb = 0.0;
        for (int it = -1; it < reps; it++) {   /* it = -1: warm-up */
            TpStats s0 = tp->stats;
            double t0 = tick_();
            tp_rowpar_forward(tp, y[p], h, wo, N, fl, d, 0.0f);
            double t = tock_(t0);
            TpStats s1 = tp->stats;
            float *dwp[1] = {dwi};
            const float *dup[1] = {du}, *wip[1] = {wi};
            int ocl[1] = {fl};
            t0 = tick_();
            tp_colpar_backward(tp, dx[p], dwp, dup, h, wip, ocl, 1, N, d);
            double tbw = tock_(t0);
            if (it < 0) continue;
            tf[it] = t;
            tb[it] = tbw;
            cf += s1.seconds - s0.seconds;
            cb += tp->stats.seconds - s1.seconds;
        }
        double mf = median_(tf, reps), mb = median_(tb, reps);
        /* the backward also computes dW (local, same on both paths): its flops are counted */
        OUT_("reduce op=rowpar_forward path=%s T=%d threads=%d N=%d K=%d OC=%d median_ms=%.3f "
             "gflops=%.1f reduce_ms=%.3f\n", tp_reduce_name(tp->reduce), T, omp_get_max_threads(),
             N, f, d, 1e3 * mf, flops / mf * 1e-9, 1e3 * cf / reps);
        OUT_("reduce op=colpar_backward path=%s T=%d threads=%d N=%d K=%d OC=%d median_ms=%.3f "
             "gflops=%.1f reduce_ms=%.3f (includes the local dW product)\n",
             tp_reduce_name(tp->reduce), T, omp_get_max_threads(), N, f, d, 1e3 * mb,
             2.0 * flops / mb * 1e-9, 1e3 * cb / reps);
        free(tf);
        free(tb);
    }
    double e1 = maxrel_(y[1], y[0], (size_t)N * d), e2 = maxrel_(dx[1], dx[0], (size_t)N * d);
    OUT_("reduce agreement pblas_vs_mpi rowpar_forward=%.2e colpar_backward=%.2e\n", e1, e2);
    free(h); free(wo); free(wi); free(du); free(dwi);
    for (int p = 0; p < 2; p++) { free(y[p]); free(dx[p]); }
}

/* FFN and self-attention sub-layers, forward + backward, MPI path. */
static void bench_sublayers_(TpCtx *tp, const T5Config *c, int N, int reps) {
    const int T = size_, d = c->d_model, f = c->d_ff, fl = f / T, P = c->ffn == T5_FFN_GATED_GELU ? 2 : 1;
    double *tt = xmalloc(sizeof(double) * (size_t)reps);
    {   /* FFN */
        float *x = randv_((size_t)N * d, 1.0f, 3), *dy = randv_((size_t)N * d, 1.0f, 5);
        float *wi = randv_((size_t)P * fl * d, 0.02f, 11 + rank_), *wo = randv_((size_t)d * fl, 0.02f, 17 + rank_);
        float *y = xcalloc((size_t)N * d, sizeof(float)), *dx = xcalloc((size_t)N * d, sizeof(float));
        float *u = xcalloc((size_t)N * 2 * fl + 1, sizeof(float)), *hh = xcalloc((size_t)N * fl, sizeof(float));
        float *dh = xcalloc((size_t)N * fl, sizeof(float)), *du = xcalloc((size_t)N * 2 * fl + 1, sizeof(float));
        float *dwi = xcalloc((size_t)P * fl * d, sizeof(float)), *dwo = xcalloc((size_t)d * fl, sizeof(float));
        double cs = 0.0, cb = 0.0;
        for (int it = -1; it < reps; it++) {
            TpStats s0 = tp->stats;
            memcpy(y, x, (size_t)N * d * sizeof(float));
            double t0 = tick_();
            tp_ffn_forward(tp, y, u, hh, x, wi, wo, N, d, fl, c->ffn);
            tp_ffn_backward(tp, dx, dwi, dwo, dh, du, dy, u, hh, x, wi, wo, N, d, fl, c->ffn);
            double t = tock_(t0);
            if (it < 0) continue;
            tt[it] = t;
            cs += tp->stats.seconds - s0.seconds;
            cb += tp->stats.bytes - s0.bytes;
        }
        double m = median_(tt, reps), fl_tot = 6.0 * N * (double)d * f * (P + 1);
        OUT_("sublayer ffn kind=%s T=%d threads=%d N=%d d=%d d_ff=%d median_ms=%.3f gflops=%.1f "
             "reduce_ms=%.3f reduce_MB=%.2f\n", P == 2 ? "gated-gelu" : "relu", T,
             omp_get_max_threads(), N, d, f, 1e3 * m, fl_tot / m * 1e-9, 1e3 * cs / reps,
             cb / reps / 1e6);
        free(x); free(dy); free(wi); free(wo); free(y); free(dx); free(u); free(hh); free(dh);
        free(du); free(dwi); free(dwo);
    }
    {   /* self-attention (encoder: bidirectional), sequences of L = min(N, 128) */
        const int L = N < 128 ? N : 128, B = N / L, H = c->n_heads, K = c->d_kv, Hl = H / T;
        const int Il = Hl * K, Nt = B * L, LB = 2 * L - 1;
        float *x = randv_((size_t)Nt * d, 1.0f, 23), *dy = randv_((size_t)Nt * d, 1.0f, 29);
        float *wqkv = randv_((size_t)3 * Il * d, 0.02f, 31 + rank_), *wo = randv_((size_t)d * Il, 0.02f, 37 + rank_);
        float *table = randv_((size_t)c->num_buckets * H, 0.1f, 41);
        float *bias = xcalloc((size_t)H * LB, sizeof(float));
        t5_relbias_forward(bias, table, L, L, H, 1, c->num_buckets, c->max_distance);
        int32_t *seg = xmalloc(sizeof(int32_t) * (size_t)Nt);
        for (int i = 0; i < Nt; i++) seg[i] = 1;
        float *qkv = xcalloc((size_t)Nt * 3 * Il, sizeof(float)), *att = xcalloc((size_t)B * Hl * L * L, sizeof(float));
        float *ctx = xcalloc((size_t)Nt * Il, sizeof(float)), *y = xcalloc((size_t)Nt * d, sizeof(float));
        float *dctx = xcalloc((size_t)Nt * Il, sizeof(float)), *dqkv = xcalloc((size_t)Nt * 3 * Il, sizeof(float));
        float *dx = xcalloc((size_t)Nt * d, sizeof(float)), *dwqkv = xcalloc((size_t)3 * Il * d, sizeof(float));
        float *dwo = xcalloc((size_t)d * Il, sizeof(float)), *dbias = xcalloc((size_t)B * Hl * LB, sizeof(float));
        float *scr = xcalloc(t5_attention_scratch_floats(L, L), sizeof(float));
        double cs = 0.0, cb = 0.0;
        for (int it = -1; it < reps; it++) {
            TpStats s0 = tp->stats;
            memcpy(y, x, (size_t)Nt * d * sizeof(float));
            double t0 = tick_();
            tp_colpar_forward(tp, qkv, x, wqkv, Nt, d, 3 * Il);
            t5_attention_forward(ctx, Il, att, qkv, 3 * Il, qkv + Il, 3 * Il, qkv + 2 * Il, 3 * Il,
                                 bias + (size_t)rank_ * Hl * LB, seg, seg, 0, B, L, L, Hl, K);
            tp_rowpar_forward(tp, y, ctx, wo, Nt, Il, d, 1.0f);
            tp_rowpar_backward(tp, dctx, dwo, dy, ctx, wo, Nt, Il, d);
            t5_attention_backward(dqkv, 3 * Il, dqkv + Il, 3 * Il, dqkv + 2 * Il, 3 * Il, dbias,
                                  dctx, Il, att, qkv, 3 * Il, qkv + Il, 3 * Il, qkv + 2 * Il,
                                  3 * Il, B, L, L, Hl, K, scr, omp_get_max_threads());
            float *dwp[1] = {dwqkv};
            const float *dqp[1] = {dqkv}, *wp[1] = {wqkv};
            int ocl[1] = {3 * Il};
            tp_colpar_backward(tp, dx, dwp, dqp, x, wp, ocl, 1, Nt, d);
            double t = tock_(t0);
            if (it < 0) continue;
            tt[it] = t;
            cs += tp->stats.seconds - s0.seconds;
            cb += tp->stats.bytes - s0.bytes;
        }
        double m = median_(tt, reps);
        double fl_tot = 3.0 * (2.0 * Nt * d * 4.0 * H * K + 4.0 * B * H * (double)L * L * K);
        OUT_("sublayer attention T=%d threads=%d N=%d d=%d heads=%d d_kv=%d L=%d median_ms=%.3f "
             "gflops=%.1f reduce_ms=%.3f reduce_MB=%.2f\n", T, omp_get_max_threads(), Nt, d, H, K,
             L, 1e3 * m, fl_tot / m * 1e-9, 1e3 * cs / reps, cb / reps / 1e6);
        free(x); free(dy); free(wqkv); free(wo); free(table); free(bias); free(seg); free(qkv);
        free(att); free(ctx); free(y); free(dctx); free(dqkv); free(dx); free(dwqkv); free(dwo);
        free(dbias); free(scr);
    }
    free(tt);
}

static void usage_(void) {
    fprintf(stderr, "usage: t5tpbench [--variant NAME] [--tokens N] [--reps R] [--precision fp32|bf16]\n"
            "                 [--batch B] [--inputs-length Li] [--targets-length Lo] [--quick]\n"
            "       t5tpbench --blas-check\n");
}

int main(int argc, char **argv) {
    blas_runtime_setup(argc, argv, 0, 0);
    const char *variant = "xl", *prec = "fp32";
    int tokens = 256, reps = 5, quick = 0, blas_only = 0, batch = 128, li = 512, lo = 114;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--blas-check")) blas_only = 1;
        else if (!strcmp(a, "--quick")) quick = 1;
        else if (v && !strcmp(a, "--variant")) { variant = v; i++; }
        else if (v && !strcmp(a, "--tokens")) { tokens = atoi(v); i++; }
        else if (v && !strcmp(a, "--reps")) { reps = atoi(v); i++; }
        else if (v && !strcmp(a, "--precision")) { prec = v; i++; }
        else if (v && !strcmp(a, "--batch")) { batch = atoi(v); i++; }
        else if (v && !strcmp(a, "--inputs-length")) { li = atoi(v); i++; }
        else if (v && !strcmp(a, "--targets-length")) { lo = atoi(v); i++; }
        else { fprintf(stderr, "t5tpbench: unknown or incomplete option '%s'\n", a); usage_(); return 2; }
    }
    char err[2048];
    if (blas_only) {
        int rc = tp_blas_check(err, sizeof err);
        printf("t5tpbench: blas %s: %s\n", rc ? "FAIL" : "ok", err);
        return rc ? 1 : 0;
    }
    int level;
    MPI_CHECK(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &level));
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
    mpi_check_comm(MPI_COMM_WORLD);
    if (tp_blas_check(err, sizeof err) != 0) mpi_fatal("see the message", "%s", err);
    T5Config c;
    if (t5_config_from_variant(variant, &c, err, sizeof err) != 0)
        mpi_fatal("pass a variant name, e.g. --variant xl", "t5tpbench: %s", err);
    if (quick) {   /* the variant's structure at a tiny size */
        c.d_model = 64; c.d_ff = 256; c.n_heads = 4; c.d_kv = 16;
        tokens = 64; reps = 2;
    }
    if (tp_check_dims(&c, size_, err, sizeof err) != 0) mpi_fatal("choose another -np", "%s", err);
    if (reps < 1 || tokens < 1 || (tokens > 128 && tokens % 128))
        mpi_fatal("--reps >= 1; --tokens <= 128 or a multiple of 128", "t5tpbench: bad --reps %d "
                  "or --tokens %d", reps, tokens);
    GemmConfig gc = {GEMM_FP32, GEMM_BACKEND_OPENBLAS};
    if (gemm_parse_precision(prec, &gc.precision) != 0)
        mpi_fatal("--precision fp32 or bf16", "t5tpbench: unknown precision '%s'", prec);
    if (gc.precision == GEMM_BF16) gc.backend = GEMM_BACKEND_ONEDNN;
    if (gemm_set_config(&gc, err, sizeof err) != 0) mpi_fatal("use --precision fp32", "%s", err);
    TpCtx tpm, tpp;
    if (tp_init(&tpm, MPI_COMM_WORLD, TP_REDUCE_MPI, err, sizeof err) != 0 ||
        tp_init(&tpp, MPI_COMM_WORLD, TP_REDUCE_PBLAS, err, sizeof err) != 0)
        mpi_fatal("see the message", "%s", err);
    OUT_("config variant=%s T=%d threads=%d tokens=%d reps=%d precision=%s d=%d d_ff=%d heads=%d "
         "d_kv=%d ffn=%s; %s\n", c.name, size_, omp_get_max_threads(), tokens, reps, prec,
         c.d_model, c.d_ff, c.n_heads, c.d_kv, c.ffn == T5_FFN_GATED_GELU ? "gated-gelu" : "relu",
         blas_runtime_describe());
    bench_reduce_(&tpm, &tpp, tokens, c.d_model, c.d_ff, reps);
    bench_sublayers_(&tpm, &c, tokens, reps);
    double mb = tp_comm_bytes_per_microbatch(&c, batch, li, lo, size_);
    OUT_("plan variant=%s T=%d params_per_rank=%zu (of %zu) reduce_payload_MB_per_step=%.1f "
         "(batch %d x %d/%d) ring_traffic_MB_per_rank=%.1f\n", c.name, size_,
         tp_params_per_rank(&c, size_), t5_config_num_params(&c), mb / 1e6, batch, li, lo,
         mb * 2.0 * (size_ - 1) / size_ / 1e6);
    tp_free(&tpm);
    tp_free(&tpp);
    tp_blacs_finalize();
    gemm_release();
    MPI_CHECK(MPI_Finalize());
    return 0;
}
