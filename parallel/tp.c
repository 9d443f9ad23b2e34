/*
 * parallel/tp.c: tensor-parallel ops (contracts in tp.h). Forward next to backward; row-major
 * fp32; shapes in brackets; T = tp size, r = tp rank.
 */
#include "parallel/tp.h"

#include <dlfcn.h>
#include <limits.h>
#include <link.h>      /* dl_iterate_phdr */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "parallel/mpi_check.h"
#include "parallel/scalapack.h"
#include "pretrain/gemm.h"
#include "pretrain/t5_ops.h"

static int blacs_used_ = 0;   /* some TpCtx made a BLACS grid: tp_blacs_finalize frees BLACS */

/* ------------------------------------------------------------------------------------------ */
/* Context. */

int tp_init(TpCtx *tp, MPI_Comm comm, TpReduce reduce, char *err, size_t errlen) {
    memset(tp, 0, sizeof(*tp));
    tp->blacs_handle = -1;
    tp->blacs_ctx = -1;
    if (reduce != TP_REDUCE_MPI && reduce != TP_REDUCE_PBLAS) {
        set_error(err, errlen, "tp: unknown reduction path %d (0 = mpi, 1 = pblas)", (int)reduce);
        return -1;
    }
    tp->comm = comm;
    tp->reduce = reduce;
    MPI_CHECK(MPI_Comm_rank(comm, &tp->rank));
    MPI_CHECK(MPI_Comm_size(comm, &tp->size));
    if (reduce == TP_REDUCE_PBLAS) {
        /* T x 1 grid in column-major order: process row = rank in comm */
        tp->blacs_handle = Csys2blacs_handle(comm);
        int ctx = tp->blacs_handle;
        Cblacs_gridinit(&ctx, "C", tp->size, 1);
        int nprow = 0, npcol = 0, myrow = -1, mycol = -1;
        Cblacs_gridinfo(ctx, &nprow, &npcol, &myrow, &mycol);
        blacs_used_ = 1;
        if (nprow != tp->size || npcol != 1 || myrow != tp->rank || mycol != 0) {
            set_error(err, errlen, "tp: BLACS grid is %d x %d with this rank at (%d, %d), wanted "
                      "%d x 1 at (%d, 0) (HINT: ScaLAPACK built for another MPI?)", nprow, npcol,
                      myrow, mycol, tp->size, tp->rank);
            if (nprow > 0) Cblacs_gridexit(ctx);
            Cfree_blacs_system_handle(tp->blacs_handle);
            tp->blacs_handle = -1;
            return -1;
        }
        tp->blacs_ctx = ctx;
    }
    return 0;
}

void tp_free(TpCtx *tp) {
    if (!tp) return;
    if (tp->blacs_ctx >= 0) Cblacs_gridexit(tp->blacs_ctx);
    if (tp->blacs_handle >= 0) Cfree_blacs_system_handle(tp->blacs_handle);
    free(tp->scratch);
    memset(tp, 0, sizeof(*tp));
    tp->blacs_ctx = tp->blacs_handle = -1;
}

void tp_blacs_finalize(void) {
    if (blacs_used_) Cblacs_exit(1);
    blacs_used_ = 0;
}

const char *tp_reduce_name(TpReduce r) { return r == TP_REDUCE_PBLAS ? "pblas" : "mpi"; }

int tp_parse_reduce(const char *s, TpReduce *r) {
    if (s && !strcmp(s, "mpi")) { *r = TP_REDUCE_MPI; return 0; }
    if (s && !strcmp(s, "pblas")) { *r = TP_REDUCE_PBLAS; return 0; }
    return -1;
}

int tp_check_dims(const T5Config *c, int T, char *err, size_t errlen) {
    if (T < 1) { set_error(err, errlen, "tp size %d must be >= 1", T); return -1; }
    if (c->n_heads % T) {
        set_error(err, errlen, "tp %d does not divide num_heads %d (attention is split by heads; "
                  "HINT: a power of two that divides the head count)", T, c->n_heads);
        return -1;
    }
    if (c->d_ff % T) {
        set_error(err, errlen, "tp %d does not divide d_ff %d (the FFN is split by d_ff)", T,
                  c->d_ff);
        return -1;
    }
    if (c->vocab_size % T) {
        set_error(err, errlen, "tp %d does not divide vocab_size %d (the embedding and LM head "
                  "are split by vocabulary; 32128 = 2^7 x 251: T a power of two <= 128)", T,
                  c->vocab_size);
        return -1;
    }
    return 0;
}

static float *scratch_(TpCtx *tp, size_t n) {
    if (n > tp->scratch_floats) {
        free(tp->scratch);
        tp->scratch = xmalloc(n * sizeof(float));
        tp->scratch_floats = n;
    }
    return tp->scratch;
}

/* In-place fp32 sum over the group, counted. */
static void allreduce_(TpCtx *tp, float *buf, size_t n) {
    if (tp->size == 1 || n == 0) return;
    double t0 = MPI_Wtime();
    size_t done = 0;
    while (done < n) {   /* counts are int */
        size_t c = n - done > (size_t)INT_MAX ? (size_t)INT_MAX : n - done;
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf + done, (int)c, MPI_FLOAT, MPI_SUM, tp->comm));
        done += c;
    }
    tp->stats.seconds += MPI_Wtime() - t0;
    tp->stats.reductions++;
    tp->stats.bytes += (double)n * sizeof(float);
}

void tp_allreduce_sum(TpCtx *tp, float *buf, size_t n) { allreduce_(tp, buf, n); }

/* ------------------------------------------------------------------------------------------ */
/* Shards. */

void tp_shard_rows_local(float *local, const float *global, int rows, int cols, int T, int r) {
    size_t rl = (size_t)(rows / T);
    memcpy(local, global + (size_t)r * rl * cols, rl * (size_t)cols * sizeof(float));
}

void tp_shard_cols_local(float *local, const float *global, int rows, int cols, int T, int r) {
    int cl = cols / T;
    for (int i = 0; i < rows; i++)
        memcpy(local + (size_t)i * cl, global + (size_t)i * cols + (size_t)r * cl,
               (size_t)cl * sizeof(float));
}

void tp_unshard_cols_local(float *global, const float *local, int rows, int cols, int T, int r) {
    int cl = cols / T;
    for (int i = 0; i < rows; i++)
        memcpy(global + (size_t)i * cols + (size_t)r * cl, local + (size_t)i * cl,
               (size_t)cl * sizeof(float));
}

void tp_shard_stacked_local(float *local, const float *global, int parts, int rows, int cols,
                            int T, int r) {
    size_t rl = (size_t)(rows / T), blk = rl * (size_t)cols;
    for (int p = 0; p < parts; p++)
        memcpy(local + p * blk, global + ((size_t)p * rows + (size_t)r * rl) * cols,
               blk * sizeof(float));
}

void tp_unshard_stacked_local(float *global, const float *local, int parts, int rows, int cols,
                              int T, int r) {
    size_t rl = (size_t)(rows / T), blk = rl * (size_t)cols;
    for (int p = 0; p < parts; p++)
        memcpy(global + ((size_t)p * rows + (size_t)r * rl) * cols, local + p * blk,
               blk * sizeof(float));
}

/* Column shard [rows, cl] of rank q, rows [p rl, (p+1) rl) = block (q -> p); rank p's row block
 * [rl, cols] is the blocks (q -> p) of every q side by side. The column shard's block for p is
 * contiguous, so the send side needs no packing. */
void tp_cols_to_rows(TpCtx *tp, float *rowblk, const float *colshard, int rows, int cols) {
    const int T = tp->size, rl = rows / T, cl = cols / T;
    if (rows % T || cols % T)
        mpi_fatal("split dimensions must divide by tp", "tp: [%d, %d] not divisible by %d", rows,
                  cols, T);
    if (T == 1) { memcpy(rowblk, colshard, (size_t)rows * cols * sizeof(float)); return; }
    size_t blk = (size_t)rl * cl;
    if (blk > (size_t)INT_MAX) mpi_fatal("internal limit", "tp: block of %zu floats", blk);
    float *recv = xmalloc(blk * (size_t)T * sizeof(float));
    MPI_CHECK(MPI_Alltoall(colshard, (int)blk, MPI_FLOAT, recv, (int)blk, MPI_FLOAT, tp->comm));
    for (int q = 0; q < T; q++)
        for (int i = 0; i < rl; i++)
            memcpy(rowblk + (size_t)i * cols + (size_t)q * cl, recv + q * blk + (size_t)i * cl,
                   (size_t)cl * sizeof(float));
    free(recv);
}

void tp_rows_to_cols(TpCtx *tp, float *colshard, const float *rowblk, int rows, int cols) {
    const int T = tp->size, rl = rows / T, cl = cols / T;
    if (rows % T || cols % T)
        mpi_fatal("split dimensions must divide by tp", "tp: [%d, %d] not divisible by %d", rows,
                  cols, T);
    if (T == 1) { memcpy(colshard, rowblk, (size_t)rows * cols * sizeof(float)); return; }
    size_t blk = (size_t)rl * cl;
    if (blk > (size_t)INT_MAX) mpi_fatal("internal limit", "tp: block of %zu floats", blk);
    float *send = xmalloc(blk * (size_t)T * sizeof(float));
    for (int q = 0; q < T; q++)
        for (int i = 0; i < rl; i++)
            memcpy(send + q * blk + (size_t)i * cl, rowblk + (size_t)i * cols + (size_t)q * cl,
                   (size_t)cl * sizeof(float));
    MPI_CHECK(MPI_Alltoall(send, (int)blk, MPI_FLOAT, colshard, (int)blk, MPI_FLOAT, tp->comm));
    free(send);
}

/* ------------------------------------------------------------------------------------------ */
/* PBLAS: the K-split product with a replicated output, on the T x 1 grid.
 *
 *   Cst[M x Nn] = beta Cst + A^T B,   A = [Kg x M], B = [Kg x Nn], Kg = Kl T, column-major;
 *   rank r holds rows [r Kl, (r+1) Kl) of A and B (local [Kl x M], [Kl x Nn], ld Kl), and the
 *   whole C (ld M, replicated: RSRC = -1).
 * In row-major terms: C_rm[Nn, M] = beta C_rm + sum_r B_r,rm[Nn, Kl] . A_r,rm[M, Kl]^T. */
static void pblas_ksplit_(TpCtx *tp, int M, int Nn, int Kl, const float *A, const float *B,
                          float beta, float *C) {
    int ctx = tp->blacs_ctx, zero = 0, one = 1, info = 0;
    int Kg = Kl * tp->size;
    int lldk = Kl > 1 ? Kl : 1, lldm = M > 1 ? M : 1;
    int da[SL_DLEN], db[SL_DLEN], dc[SL_DLEN];
    descinit_(da, &Kg, &M, &Kl, &M, &zero, &zero, &ctx, &lldk, &info);
    if (info) mpi_fatal("internal error", "tp: descinit_ A failed, info %d", info);
    descinit_(db, &Kg, &Nn, &Kl, &Nn, &zero, &zero, &ctx, &lldk, &info);
    if (info) mpi_fatal("internal error", "tp: descinit_ B failed, info %d", info);
    descinit_(dc, &M, &Nn, &M, &Nn, &zero, &zero, &ctx, &lldm, &info);
    if (info) mpi_fatal("internal error", "tp: descinit_ C failed, info %d", info);
    dc[SL_RSRC] = -1;   /* replicated over the process rows */
    float alpha = 1.0f;
    double t0 = MPI_Wtime();
    psgemm_("T", "N", &M, &Nn, &Kg, &alpha, A, &one, &one, da, B, &one, &one, db, &beta, C,
            &one, &one, dc);
    tp->stats.seconds += MPI_Wtime() - t0;
    tp->stats.reductions++;
    tp->stats.bytes += (double)M * Nn * sizeof(float);
}

/* ------------------------------------------------------------------------------------------ */
/* Column-parallel Linear: W_r [OCl, C]. */

void tp_colpar_forward(TpCtx *tp, float *out, const float *inp, const float *W, int N, int C,
                       int OCl) {
    (void)tp;
    t5_matmul_forward(out, inp, W, N, C, OCl, 1.0f, 0.0f);   /* out[N,OCl] = inp W_r^T */
}

void tp_colpar_backward(TpCtx *tp, float *dinp, float *const *dW, const float *const *dout,
                        const float *inp, const float *const *W, const int *OCl, int ng,
                        int N, int C) {
    for (int g = 0; g < ng; g++)   /* dW_r[OCl,C] += dout_r^T inp: local */
        t5_matmul_backward(NULL, 0.0f, dW[g], dout[g], inp, W[g], N, C, OCl[g], 1.0f);
    if (tp->reduce == TP_REDUCE_PBLAS && tp->size > 1) {
        /* dinp_rm[N, C] (+)= sum_r dout_r[N, OCl] . (W_r^T)_rm[C, OCl]^T: A_r = W_r^T stored
         * as [C, OCl] row-major = column-major [OCl x C] */
        for (int g = 0; g < ng; g++) {
            int ol = OCl[g];
            float *wt = scratch_(tp, (size_t)ol * C);
            for (int i = 0; i < ol; i++)
                for (int j = 0; j < C; j++) wt[(size_t)j * ol + i] = W[g][(size_t)i * C + j];
            pblas_ksplit_(tp, C, N, ol, wt, dout[g], g == 0 ? 0.0f : 1.0f, dinp);
        }
        return;
    }
    /* dinp[N,C] = sum_g dout_g W_g (this rank's partial), then one allreduce */
    for (int g = 0; g < ng; g++)
        t5_matmul_backward(dinp, g == 0 ? 0.0f : 1.0f, NULL, dout[g], inp, W[g], N, C, OCl[g],
                           1.0f);
    if (ng == 0) memset(dinp, 0, (size_t)N * C * sizeof(float));
    allreduce_(tp, dinp, (size_t)N * C);
}

/* ------------------------------------------------------------------------------------------ */
/* Row-parallel Linear: W_r [OC, Kl]. */

void tp_rowpar_forward(TpCtx *tp, float *out, const float *inp, const float *W, int N, int Kl,
                       int OC, float beta) {
    if (tp->size == 1) { t5_matmul_forward(out, inp, W, N, Kl, OC, 1.0f, beta); return; }
    if (tp->reduce == TP_REDUCE_PBLAS) {
        /* out_rm[N, OC] = beta out + sum_r inp_r[N, Kl] . W_r[OC, Kl]^T: A = W_r as column-major
         * [Kl x OC], B = inp_r as column-major [Kl x N] */
        pblas_ksplit_(tp, OC, N, Kl, W, inp, beta, out);
        return;
    }
    /* beta = 1: rank 0 adds its partial to the replicated out, the others start from zero, so
     * the sum is out + sum_r partial_r on every rank with no scratch buffer */
    float b = tp->rank == 0 ? beta : 0.0f;
    t5_matmul_forward(out, inp, W, N, Kl, OC, 1.0f, b);
    allreduce_(tp, out, (size_t)N * OC);
}

void tp_rowpar_backward(TpCtx *tp, float *dinp, float *dW, const float *dout, const float *inp,
                        const float *W, int N, int Kl, int OC) {
    (void)tp;   /* dinp_r[N,Kl] = dout W_r; dW_r[OC,Kl] += dout^T inp_r */
    t5_matmul_backward(dinp, 0.0f, dW, dout, inp, W, N, Kl, OC, 1.0f);
}

/* ------------------------------------------------------------------------------------------ */
/* Feed-forward split by d_ff: out += sum_r act(inp wi_r^T) wo_r^T. */

void tp_ffn_forward(TpCtx *tp, float *out, float *u, float *h, const float *inp,
                    const float *wi, const float *wo, int N, int d, int fl, T5FfnKind kind) {
    if (tp->size > 1 && tp->rank != 0) memset(out, 0, (size_t)N * d * sizeof(float));
    t5_ffn_forward(out, u, h, inp, wi, wo, N, d, fl, kind);   /* out (+)= this rank's part */
    allreduce_(tp, out, (size_t)N * d);
}

void tp_ffn_backward(TpCtx *tp, float *dinp, float *dwi, float *dwo, float *dh, float *du,
                     const float *dout, const float *u, const float *h, const float *inp,
                     const float *wi, const float *wo, int N, int d, int fl, T5FfnKind kind) {
    t5_ffn_backward(dinp, dwi, dwo, dh, du, dout, u, h, inp, wi, wo, N, d, fl, kind);
    allreduce_(tp, dinp, (size_t)N * d);   /* dinp = sum_r dinp_r */
}

/* ------------------------------------------------------------------------------------------ */
/* Vocabulary-parallel embedding: E_r [Vl, C] = rows [v0, v0 + Vl). */

void tp_embedding_forward(TpCtx *tp, float *out, const int32_t *ids, const float *E, int N,
                          int C, int Vl) {
    long v0 = (long)tp->rank * Vl;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        long v = (long)ids[n] - v0;
        float *o = out + (size_t)n * C;
        if (v >= 0 && v < Vl) memcpy(o, E + (size_t)v * C, (size_t)C * sizeof(float));
        else memset(o, 0, (size_t)C * sizeof(float));
    }
    allreduce_(tp, out, (size_t)N * C);   /* exactly one rank contributes each row: exact */
}

void tp_embedding_backward(TpCtx *tp, float *dE, const int32_t *ids, const float *dout, int N,
                           int C, int Vl) {
    long v0 = (long)tp->rank * Vl;
    for (int n = 0; n < N; n++) {   /* serial: rows repeat */
        long v = (long)ids[n] - v0;
        if (v < 0 || v >= Vl) continue;
        float *de = dE + (size_t)v * C;
        const float *d = dout + (size_t)n * C;
        for (int c = 0; c < C; c++) de[c] += d[c];
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Vocabulary-parallel cross-entropy. logZ_n = m_n + log sum_v exp(l_nv - m_n), m_n the global
 * row max; ce_n = logZ_n - l_n,label. */

void tp_xent_forward(TpCtx *tp, T5LossStats *stats, float *logZ, const float *logits,
                     const int32_t *labels, int N, int Vl) {
    long v0 = (long)tp->rank * Vl;
    float *mx = xmalloc(sizeof(float) * (size_t)(N > 0 ? N : 1));
    float *st = xmalloc(sizeof(float) * 2 * (size_t)(N > 0 ? N : 1));   /* [N] sum exp, [N] target */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {   /* local max */
        const float *row = logits + (size_t)n * Vl;
        float m = -INFINITY;
        for (int j = 0; j < Vl; j++) m = row[j] > m ? row[j] : m;
        mx[n] = m;
    }
    if (tp->size > 1) {
        double t0 = MPI_Wtime();
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, mx, N, MPI_FLOAT, MPI_MAX, tp->comm));
        tp->stats.seconds += MPI_Wtime() - t0;
        tp->stats.reductions++;
        tp->stats.bytes += (double)N * sizeof(float);
    }
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {   /* local sum of exp against the global max; owned target */
        const float *row = logits + (size_t)n * Vl;
        double s = 0.0;
        for (int j = 0; j < Vl; j++) s += exp((double)row[j] - (double)mx[n]);
        st[n] = (float)s;
        long v = (long)labels[n] - v0;
        st[N + n] = (labels[n] != 0 && v >= 0 && v < Vl) ? row[v] : 0.0f;
    }
    allreduce_(tp, st, 2 * (size_t)N);
    for (int n = 0; n < N; n++) {   /* serial sums, as t5_xent_forward */
        float lz = mx[n] + logf(st[n]);
        logZ[n] = lz;
        if (labels[n] == 0) continue;
        stats->ce_sum += (double)lz - (double)st[N + n];
        stats->z_sum += (double)lz * (double)lz;
        stats->tokens++;
    }
    free(mx);
    free(st);
}

void tp_xent_backward(TpCtx *tp, float *logits, const float *logZ, const int32_t *labels, int N,
                      int Vl, float zc, float scale) {
    long v0 = (long)tp->rank * Vl;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        /* d/dl_v [ce + zc logZ^2] = softmax_v (1 + 2 zc logZ) - [v == label] */
        float *row = logits + (size_t)n * Vl;
        if (labels[n] == 0) { memset(row, 0, (size_t)Vl * sizeof(float)); continue; }
        float lz = logZ[n], a = scale * (1.0f + 2.0f * zc * lz);
        for (int j = 0; j < Vl; j++) row[j] = a * expf(row[j] - lz);
        long v = (long)labels[n] - v0;
        if (v >= 0 && v < Vl) row[v] -= scale;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Adafactor over a split tensor: optim.c's update (docs/t5-recipe.md section 5.2) with every mean / RMS over
 * the whole tensor. Per-element expressions in double, sums in double, as optim.c. */

int tp_adafactor_is_factored(const OptimConfig *c, int rows, int cols) {
    int mn = cols > 0 ? (rows < cols ? rows : cols) : 0;
    return c->factored && cols > 0 && mn >= c->min_dim_to_factor;
}

size_t tp_adafactor_state_floats(const OptimConfig *c, TpSplit split, int rows, int cols, int T) {
    size_t numel = cols > 0 ? (size_t)rows * cols : (size_t)rows;
    if (!tp_adafactor_is_factored(c, rows, cols)) return split == TP_SPLIT_NONE ? numel : numel / T;
    if (split == TP_SPLIT_ROWS) return (size_t)(rows / T) + (size_t)cols;
    if (split == TP_SPLIT_COLS) return (size_t)rows + (size_t)(cols / T);
    return (size_t)rows + (size_t)cols;
}


static void dsum_(TpCtx *tp, double *x, int n, int split) {
    if (!split || tp->size == 1 || n == 0) return;
    double t0 = MPI_Wtime();
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, tp->comm));
    tp->stats.seconds += MPI_Wtime() - t0;
    tp->stats.reductions++;
    tp->stats.bytes += (double)n * sizeof(double);
}

static double step_factor_(const OptimConfig *c, double lr, double su, double sw, double N) {
    double rms_u = sqrt(su / N), rms_w = sqrt(sw / N);
    double clip = rms_u / c->clip_threshold > 1.0 ? rms_u / c->clip_threshold : 1.0;
    double scale = c->param_scale ? lr * (rms_w > c->eps2 ? rms_w : c->eps2) : lr;
    return scale / clip;
}

double tp_adafactor_step(TpCtx *tp, const OptimConfig *c, TpSplit split, int rows, int cols,
                         float *W, const float *G, float *state, long g) {
    double lr = lr_schedule_at(&c->lr, g);
    if (g < 0) g = 0;
    const double beta2 = 1.0 - pow((double)g + 1.0, -c->decay_exponent);
    const double eps1 = c->eps1, b2 = beta2, a2 = 1.0 - beta2;
    const int T = tp->size, sp = split != TP_SPLIT_NONE;
    if (c->kind != OPTIM_ADAFACTOR)
        mpi_fatal("tp_adafactor_step is Adafactor only", "tp: optimizer kind %d", (int)c->kind);
    if (sp && (cols <= 0 || (split == TP_SPLIT_ROWS ? rows % T : cols % T)))
        mpi_fatal("split tensors are 2-D and divisible by tp", "tp: cannot split [%d, %d] %s by "
                  "%d", rows, cols, split == TP_SPLIT_ROWS ? "rows" : "cols", T);
    const double Ng = cols > 0 ? (double)rows * cols : (double)rows;

    if (!tp_adafactor_is_factored(c, rows, cols)) {
        size_t n = (size_t)(Ng / (sp ? T : 1));
        double s[2] = {0.0, 0.0};   /* sum U^2, sum W_old^2 */
        for (size_t k = 0; k < n; k++) {
            double gk = G[k];
            state[k] = (float)(b2 * state[k] + a2 * (gk * gk + eps1));
            double u = gk / sqrt((double)state[k]);
            s[0] += u * u;
            s[1] += (double)W[k] * W[k];
        }
        dsum_(tp, s, 2, sp);
        double k = step_factor_(c, lr, s[0], s[1], Ng);
        for (size_t q = 0; q < n; q++)
            W[q] = (float)((double)W[q] - k * (double)G[q] / sqrt((double)state[q]));
        return lr;
    }

    /* factored: local block [n, m] of the global [rows, cols] */
    const int n = split == TP_SPLIT_ROWS ? rows / T : rows;
    const int m = split == TP_SPLIT_COLS ? cols / T : cols;
    float *R = state, *C = state + n;                       /* R [n] local rows, C [m] local cols */
    double *buf = xcalloc((size_t)rows + (size_t)cols + 4, sizeof(double));
    double *cf = buf;                                       /* [m] column sums, then 1/sqrt(C) */
    double *rs = buf + cols;                                /* [n] row sums */

    /* R_i = b2 R_i + (1-b2) (mean_j G_ij^2 + eps1), mean over all cols (reduced for COLS) */
    for (int i = 0; i < n; i++) rs[i] = optim_sum_squares(G + (size_t)i * m, m);
    dsum_(tp, rs, n, split == TP_SPLIT_COLS);
    for (int i = 0; i < n; i++) R[i] = (float)(b2 * R[i] + a2 * (rs[i] / cols + eps1));
    /* C_j likewise over all rows (reduced for ROWS) */
    for (int j = 0; j < m; j++) cf[j] = 0.0;
    for (int i = 0; i < n; i++) {
        const float *gr = G + (size_t)i * m;
        for (int j = 0; j < m; j++) cf[j] += (double)gr[j] * gr[j];
    }
    dsum_(tp, cf, m, split == TP_SPLIT_ROWS);
    for (int j = 0; j < m; j++) {
        C[j] = (float)(b2 * C[j] + a2 * (cf[j] / rows + eps1));
        cf[j] = 1.0 / sqrt((double)C[j]);
    }
    /* mean(R) over all rows (reduced for ROWS), then sum U^2 and sum W_old^2 (reduced) */
    double s[3] = {0.0, 0.0, 0.0};
    for (int i = 0; i < n; i++) s[0] += R[i];
    dsum_(tp, s, 1, split == TP_SPLIT_ROWS);
    double rmean = s[0] / rows;
    double su = 0.0, sw = 0.0;
    for (int i = 0; i < n; i++) {
        su += (rmean / (double)R[i]) * optim_sum_squares_scaled(G + (size_t)i * m, cf, m);
        sw += optim_sum_squares(W + (size_t)i * m, m);
    }
    s[1] = su;
    s[2] = sw;
    dsum_(tp, s + 1, 2, sp);
    double k = step_factor_(c, lr, s[1], s[2], Ng);
    for (int i = 0; i < n; i++) {   /* W -= k U */
        const float *gr = G + (size_t)i * m;
        float *w = W + (size_t)i * m;
        double rk = k / sqrt((double)R[i] / rmean);
        for (int j = 0; j < m; j++) w[j] = (float)((double)w[j] - rk * (double)gr[j] * cf[j]);
    }
    free(buf);
    return lr;
}

/* ------------------------------------------------------------------------------------------ */
/* Planning. */

size_t tp_params_per_rank(const T5Config *c, int T) {
    size_t d = (size_t)c->d_model, f = (size_t)c->d_ff, h = (size_t)c->n_heads;
    size_t I = h * (size_t)c->d_kv, V = (size_t)c->vocab_size, nb = (size_t)c->num_buckets;
    size_t F = c->ffn == T5_FFN_GATED_GELU ? 3 : 2, t = (size_t)(T > 0 ? T : 1);
    size_t enc_split = 4 * d * I + F * d * f, dec_split = 8 * d * I + F * d * f;
    size_t split = (size_t)c->n_enc_layers * enc_split + (size_t)c->n_dec_layers * dec_split +
                   V * d * (c->tied_embedding ? 1 : 2);
    size_t repl = (size_t)c->n_enc_layers * 2 * d + nb * h + d +
                  (size_t)c->n_dec_layers * 3 * d + nb * h + d;
    return split / t + repl;
}

double tp_comm_bytes_per_microbatch(const T5Config *c, int B, int Lin, int Lout, int T) {
    if (T <= 1) return 0.0;
    double d = c->d_model, N = (double)B * Lin, M = (double)B * Lout;
    double floats = c->n_enc_layers * 4.0 * N * d        /* attention + FFN, fwd + bwd */
                  + c->n_dec_layers * 6.0 * M * d        /* self, cross, FFN, fwd + bwd */
                  + N * d                                /* cross k, v input gradient */
                  + N * d + M * d                        /* embedding lookups */
                  + M * d + 3.0 * M;                     /* LM head backward, cross-entropy */
    return floats * sizeof(float);
}

/* ------------------------------------------------------------------------------------------ */
/* One BLAS per process. */

typedef struct {
    int openblas_cores;          /* mapped libopenblas*.so* (the real core libraries) */
    int wrappers;                /* mapped libblas.so.3 / liblapack.so.3 */
    int foreign;                 /* a wrapper or core outside the OpenMP directory */
    char list[1024];
} BlasScan_;

static int blas_scan_cb_(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    BlasScan_ *s = data;
    const char *path = info->dlpi_name;
    if (!path || !*path) return 0;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    int core = !strncmp(base, "libopenblas", 11);
    int wrap = !strncmp(base, "libblas.so", 10) || !strncmp(base, "liblapack.so", 12) ||
               !strncmp(base, "libcblas.so", 11);
    if (!core && !wrap) return 0;
    char real[PATH_MAX];
    if (!realpath(path, real)) snprintf(real, sizeof real, "%s", path);
    if (core) s->openblas_cores++;
    if (wrap) s->wrappers++;
    if (!strstr(real, "/openblas-openmp/")) s->foreign++;
    size_t L = strlen(s->list);
    snprintf(s->list + L, sizeof s->list - L, "%s%s", L ? ", " : "", real);
    return 0;
}

int tp_blas_check(char *err, size_t errlen) {
    BlasScan_ s;
    memset(&s, 0, sizeof s);
    dl_iterate_phdr(blas_scan_cb_, &s);
    void *sym = dlsym(RTLD_DEFAULT, "sgemm_");
    Dl_info di;
    char real[PATH_MAX] = "(unresolved)";
    if (sym && dladdr(sym, &di) && di.dli_fname && !realpath(di.dli_fname, real))
        snprintf(real, sizeof real, "%s", di.dli_fname);
    if (s.openblas_cores != 1 || s.foreign || !sym || !strstr(real, "/openblas-openmp/")) {
        set_error(err, errlen, "%d OpenBLAS core libraries mapped (want 1, the OpenMP build), "
                  "%d BLAS/LAPACK object(s) outside openblas-openmp; sgemm_ resolves to %s; "
                  "mapped: %s (HINT: link with -Wl,--disable-new-dtags -Wl,-rpath,<openblas-"
                  "openmp dir> so ScaLAPACK's libblas.so.3 comes from there, and do not "
                  "LD_PRELOAD another BLAS)", s.openblas_cores, s.foreign, real,
                  s.list[0] ? s.list : "(none)");
        return -1;
    }
    if (err && errlen) snprintf(err, errlen, "one BLAS: %s", s.list);
    return 0;
}
