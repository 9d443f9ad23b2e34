/*
 * parallel/tp.h: tensor parallelism (Megatron-LM style) over the tp communicator of the grid.
 *
 * What is split (T = tp size, r = tp rank; every split is an equal contiguous block, so the
 * split dimension must be divisible by T; tp_check_dims says which one is not):
 *   column-parallel Linear  W [OC, C] split by OUTPUT rows: rank r holds rows [r OC/T, (r+1) OC/T)
 *                           (a contiguous range of the global tensor). Y_r = X W_r^T, no
 *                           communication forward; backward dX = sum_r dY_r W_r (ONE allreduce).
 *                           Used for q, k, v (by heads: rows h*d_kv..), wi / wi_0 / wi_1 (by
 *                           d_ff), and the LM head / embedding (by vocabulary).
 *   row-parallel Linear     W [OC, K] split by INPUT columns: rank r holds W[:, r K/T ..] as its
 *                           own dense [OC, K/T] array. Y = sum_r X_r W_r^T (ONE allreduce);
 *                           backward dX_r = dY W_r and dW_r += dY^T X_r, no communication.
 *                           Used for o (by heads) and wo (by d_ff).
 *   replicated              the residual stream, the norms, the relative-bias tables (their
 *                           gradients are summed over tp by the caller: tp_allreduce_sum).
 *
 * The reduction of a row-parallel forward (and of a column-parallel backward) runs on one of two
 * paths, chosen in tp_init:
 *   TP_REDUCE_MPI    local product (t5_gemm_w: OpenBLAS or oneDNN bf16, whatever gemm.h is set
 *                    to) + MPI_Allreduce (in place, fp32 sum).
 *   TP_REDUCE_PBLAS  one psgemm_ on a T x 1 BLACS grid made from the tp communicator
 *                    (Csys2blacs_handle + Cblacs_gridinit), with the contracted dimension
 *                    distributed in row blocks and the output descriptor marked replicated
 *                    (RSRC = -1): PBLAS computes the local product and does the reduction.
 *                    fp32 OpenBLAS only (PBLAS calls sgemm_ itself). Why T x 1 and not 1 x T:
 *                    our matrices are row-major, i.e. PBLAS sees their transposes; a split of a
 *                    row-major activation [N, K] by K is a split of the ROWS of the column-major
 *                    [K x N] that PBLAS sees, which only a grid with T process rows expresses.
 *                    The column-parallel backward needs W_r^T stored that way, so this path
 *                    transposes W_r into a scratch buffer on every call.
 * Both paths give results within fp32 rounding of the unsplit product; on every path all ranks
 * of the tp group end with bit-identical replicated outputs (tests check both).
 *
 * Vocabulary-parallel cross-entropy (tp_xent_forward/backward): logits split by vocabulary
 * columns [N, V/T]; three reductions of N values each (max, then sum of exp and target logit in
 * one call); the full logits are never gathered. Vocabulary-parallel embedding: rank r holds
 * rows [r V/T, (r+1) V/T) of E; forward = allreduce of the partial lookups, backward local.
 *
 * Adafactor over a split tensor (tp_adafactor_step): the same update as optim.c's Adafactor on
 * the unsplit tensor; the row / column means of G^2, mean(R), RMS(U) and RMS(W) are reduced
 * over tp. State layout per split (see tp_adafactor_state_floats): row split, factored:
 * R_local[rows/T] then C[cols] (C replicated); column split, factored: R[rows] (replicated)
 * then C_local[cols/T]; not factored: V_local[numel/T]. Which tensors are factored follows
 * the GLOBAL shape (min(rows, cols) >= min_dim_to_factor), as in the unsplit run.
 *
 * Counters (tp->stats): reductions, bytes reduced, seconds inside the reductions (MPI path: the
 * MPI_Allreduce; PBLAS path: the whole psgemm_).
 *
 * Errors: configuration problems return -1 with a message; MPI failures abort the job through
 * MPI_CHECK (mpi_check.h). Every function taking a TpCtx is collective over tp->comm (all ranks
 * call it with the same shapes), except the *_local helpers and tp_blas_check.
 */
#ifndef T5_PARALLEL_TP_H
#define T5_PARALLEL_TP_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "pretrain/optim.h"
#include "pretrain/t5_config.h"
#include "pretrain/t5_model.h"   /* T5LossStats */

typedef enum { TP_REDUCE_MPI = 0, TP_REDUCE_PBLAS = 1 } TpReduce;

typedef struct {
    long reductions;        /* collective reductions issued */
    double bytes;           /* payload bytes reduced (per rank, one direction) */
    double seconds;         /* wall time in the reductions */
} TpStats;

typedef struct TpCtx {
    MPI_Comm comm;          /* not owned (the grid's tp communicator) */
    int rank, size;
    TpReduce reduce;
    int blacs_handle;       /* Csys2blacs_handle(comm), -1 if no grid */
    int blacs_ctx;          /* T x 1 grid context, -1 if none */
    float *scratch;         /* grows on demand */
    size_t scratch_floats;
    TpStats stats;
} TpCtx;

/* Collective over comm. reduce = TP_REDUCE_PBLAS makes the BLACS grid. 0, or -1 with a message
 * (bad arguments, BLACS grid not what was asked). */
int tp_init(TpCtx *tp, MPI_Comm comm, TpReduce reduce, char *err, size_t errlen);
void tp_free(TpCtx *tp);
/* Once at program end, after the last tp_free, when any TpCtx used PBLAS: frees BLACS' global
 * state (MPI stays initialised). No-op otherwise. */
void tp_blacs_finalize(void);
const char *tp_reduce_name(TpReduce r);        /* "mpi" / "pblas" */
int tp_parse_reduce(const char *s, TpReduce *r);

/* 0 if every tensor-parallel split of cfg divides by T (heads, d_ff, vocabulary), else -1 with
 * the dimension named. */
int tp_check_dims(const T5Config *cfg, int T, char *err, size_t errlen);

/* Sum buf[n] over the tp group in place (counted in stats). For the replicated tensors'
 * gradients (relative-bias tables) and for callers composing their own sub-layers. */
void tp_allreduce_sum(TpCtx *tp, float *buf, size_t n);

/* ---- shards of global tensors (local, no communication) ----
 * Row shard of G [rows, cols]: rows [r rows/T, ..), a contiguous range starting at element
 * r (rows/T) cols. Column shard: L [rows, cols/T] = G[:, r cols/T ..]. */
void tp_shard_rows_local(float *local, const float *global, int rows, int cols, int T, int r);
void tp_shard_cols_local(float *local, const float *global, int rows, int cols, int T, int r);
void tp_unshard_cols_local(float *global, const float *local, int rows, int cols, int T, int r);
/* Stacked matrices split consistently: global [parts * rows, cols] = [P_0; P_1; ..] (the
 * model's fused qkv [3I, d], cross-attention kv [2I, d], gated wi [2f, d] = [wi_0; wi_1]); the
 * local shard is [parts * rows/T, cols] = [P_0 rows of r; P_1 rows of r; ..], which is what the
 * unsplit op expects with rows/T (t5_ffn_forward with f/T; attention with H/T heads).
 * unshard writes this rank's rows back into the global matrix. */
void tp_shard_stacked_local(float *local, const float *global, int parts, int rows, int cols,
                            int T, int r);
void tp_unshard_stacked_local(float *global, const float *local, int parts, int rows, int cols,
                              int T, int r);

/* Checkpoint layout helpers for column-split tensors (o, wo): collective, one MPI_Alltoall.
 * cols_to_rows: every rank's column shard [rows, cols/T] -> this rank's ROW block
 * [rows/T, cols] = global rows [r rows/T, (r+1) rows/T), a contiguous range of the global tensor
 * (elem_offset r (rows/T) cols) that ckpt pieces can hold; rows_to_cols is the inverse (after
 * ckpt_read of that range). rows and cols must both be divisible by T. */
void tp_cols_to_rows(TpCtx *tp, float *rowblk, const float *colshard, int rows, int cols);
void tp_rows_to_cols(TpCtx *tp, float *colshard, const float *rowblk, int rows, int cols);

/* ---- column-parallel Linear: W_r [OCl, C], OCl = OC/T ---- */
/* out[N, OCl] = inp[N, C] . W_r^T (no communication). */
void tp_colpar_forward(TpCtx *tp, float *out, const float *inp, const float *W, int N, int C,
                       int OCl);
/* ng products sharing one input (q, k, v; or one): dW[g] [OCl[g], C] += dout[g]^T inp;
 * dinp[N, C] = sum over ranks and g of dout[g] [N, OCl[g]] . W[g]  (written; replicated).
 * MPI path: one allreduce for all ng; PBLAS path: one psgemm per g. */
void tp_colpar_backward(TpCtx *tp, float *dinp, float *const *dW, const float *const *dout,
                        const float *inp, const float *const *W, const int *OCl, int ng,
                        int N, int C);

/* ---- row-parallel Linear: W_r [OC, Kl], Kl = K/T ---- */
/* out[N, OC] = beta * out + sum over ranks of inp_r[N, Kl] . W_r^T  (out replicated; beta 0
 * or 1, e.g. 1 to add into the residual stream). One reduction. */
void tp_rowpar_forward(TpCtx *tp, float *out, const float *inp, const float *W, int N, int Kl,
                       int OC, float beta);
/* dinp_r[N, Kl] = dout . W_r (written; may be NULL); dW_r += dout^T inp_r. No communication. */
void tp_rowpar_backward(TpCtx *tp, float *dinp, float *dW, const float *dout, const float *inp,
                        const float *W, int N, int Kl, int OC);

/* ---- feed-forward by d_ff (ReLU or gated GELU), one reduction each way ----
 * wi_r [fl, d] (ReLU) or [2 fl, d] (gated, tp_shard_stacked_local with 2 parts), wo_r [d, fl], fl = f/T.
 * out[N, d] += FFN(inp) (replicated). u [N, 2 fl] (gated; may be NULL for ReLU), h [N, fl]:
 * kept for backward. */
void tp_ffn_forward(TpCtx *tp, float *out, float *u, float *h, const float *inp,
                    const float *wi, const float *wo, int N, int d, int fl, T5FfnKind kind);
/* dinp[N, d] written (replicated, reduced); dwi_r, dwo_r +=; dh [N, fl], du [N, 2 fl] scratch. */
void tp_ffn_backward(TpCtx *tp, float *dinp, float *dwi, float *dwo, float *dh, float *du,
                     const float *dout, const float *u, const float *h, const float *inp,
                     const float *wi, const float *wo, int N, int d, int fl, T5FfnKind kind);

/* ---- vocabulary-parallel embedding: E_r [Vl, C] = rows [r Vl, (r+1) Vl) ---- */
/* out[N, C] = E[ids[n]] (replicated; one allreduce). */
void tp_embedding_forward(TpCtx *tp, float *out, const int32_t *ids, const float *E, int N,
                          int C, int Vl);
/* dE_r[ids[n] - r Vl] += dout[n] for the ids this rank owns. No communication. */
void tp_embedding_backward(TpCtx *tp, float *dE, const int32_t *ids, const float *dout, int N,
                           int C, int Vl);

/* ---- vocabulary-parallel softmax cross-entropy with z-loss ----
 * logits_r [N, Vl] = columns [r Vl, (r+1) Vl) of the full logits; labels global ids (0 =
 * ignored). Same contract as t5_xent_forward: logZ[N] (replicated) stored, the sums over
 * labels != 0 added to *stats on every rank. Two reductions (max; then sum of exp + target). */
void tp_xent_forward(TpCtx *tp, T5LossStats *stats, float *logZ, const float *logits,
                     const int32_t *labels, int N, int Vl);
/* In place, local: logits_r become the gradient of scale * sum_t (ce_t + zc logZ_t^2) with
 * respect to this rank's columns (as t5_xent_backward). No communication. */
void tp_xent_backward(TpCtx *tp, float *logits, const float *logZ, const int32_t *labels, int N,
                      int Vl, float zc, float scale);

/* ---- Adafactor over one split tensor ---- */
/* the same values as T5Split (t5_model.h) */
typedef enum { TP_SPLIT_NONE = T5_SPLIT_NONE, TP_SPLIT_ROWS = T5_SPLIT_ROWS, TP_SPLIT_COLS = T5_SPLIT_COLS } TpSplit;
/* Factored or not: decided by the global shape exactly as optim_init does. */
int tp_adafactor_is_factored(const OptimConfig *cfg, int rows, int cols);
/* Floats of state this rank holds for a tensor of global shape [rows, cols] (cols = 0: 1-D of
 * `rows` elements, only TP_SPLIT_NONE) split as given (layout in the header comment). */
size_t tp_adafactor_state_floats(const OptimConfig *cfg, TpSplit split, int rows, int cols,
                                 int T);
/* One Adafactor update at global step g of this rank's shard W (G its gradient, state as
 * above, zero before the first step), equal to optim_step on the unsplit tensor. Collective
 * over tp (TP_SPLIT_NONE: local). cfg->kind must be OPTIM_ADAFACTOR. Returns the learning
 * rate used. */
double tp_adafactor_step(TpCtx *tp, const OptimConfig *cfg, TpSplit split, int rows, int cols,
                         float *W, const float *G, float *state, long g);

/* ---- planning (for the memory plan and --dry-run) ----
 * Parameters one rank holds at tp = T: every matrix of attention (q, k, v, o by heads), of the
 * FFN (wi / wi_0 / wi_1, wo by d_ff) and the embedding / LM head (by vocabulary) divided by T;
 * norms and relative-bias tables whole. T = 1 gives t5_config_num_params. The gradient and
 * Adafactor's unfactored state scale the same way; factored state keeps the unsplit side. */
size_t tp_params_per_rank(const T5Config *cfg, int T);
/* Payload bytes one rank reduces over tp per micro-batch of B sequences (encoder length Lin,
 * decoder length Lout), forward + backward, with the reductions placed as in this module:
 * per encoder layer 2 forward + 2 backward [N, d] (N = B Lin); per decoder layer 3 + 3 [M, d]
 * (M = B Lout) plus [N, d] for the cross-attention k, v input gradient (the sum over decoder
 * layers can be reduced once: counted once); embeddings [N, d] + [M, d] forward; the LM head
 * [M, d] backward and the cross-entropy 3 M floats. 0 at T = 1. A ring allreduce moves
 * 2 (T-1)/T of the payload in and out of each rank. */
double tp_comm_bytes_per_microbatch(const T5Config *cfg, int B, int Lin, int Lout, int T);

/* ---- one BLAS per process ----
 * 0 if exactly one OpenBLAS core library is mapped, it is the OpenMP build, every mapped
 * libblas.so.3 / liblapack.so.3 comes from the same directory, and the sgemm_ that ScaLAPACK
 * calls resolves into that directory; else -1 with every mapped BLAS-like object named in err.
 * Local, cheap (dl_iterate_phdr); callers run it once at start-up. */
int tp_blas_check(char *err, size_t errlen);

#endif
