/*
 * pretrain/t5_ops.h: the individual T5 ops (forward + backward), used by the model and by
 * callers that run parts of it (pipeline stages), and tested one by one against double-precision
 * references. Row-major fp32; shapes in brackets. Backward functions ACCUMULATE (+=) into
 * parameter gradients; see t5_ops.c for each contract.
 */
#ifndef T5_OPS_H
#define T5_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "t5_config.h"
#include "t5_model.h"   /* T5LossStats */

/* Per-op-class wall times. T5_PROFILE=1: t5_profile_report (the model calls it after every
 * backward) prints the times since the last report to stderr. t5_profile_enable(1) turns timing
 * on without printing (t5bench). t5_profile_totals copies the cumulative seconds per class since
 * the last t5_profile_reset (never reset by the report) into sec[] and the class names into
 * names[] (both of at least T5_PROFILE_CLASSES entries) and returns the number of classes.
 * Products are in "matmul" (Linear layers and the LM head) or inside "attention" (Q K^T, P V). */
#define T5_PROFILE_CLASSES 8
void t5_profile_report(void);
void t5_profile_enable(int on);
int t5_profile_totals(double *sec, const char **names);
void t5_profile_reset(void);

/* ---- Relative position buckets (t5-spec.md section 2.4) ----
 * Bucket of a key at offset rel = j - i from its query. bidirectional=1 for the encoder (keys to
 * the right use the upper half of the buckets), 0 for the decoder (keys to the right map to 0).
 * Pure function; never fails. */
int t5_relative_bucket(int rel, int bidirectional, int num_buckets, int max_distance);

/* ---- Individual ops (forward + backward), exposed for the gradient tests and for callers that
 * run parts of the model (pipeline stages). Row-major fp32; shapes in brackets. Backward
 * functions ACCUMULATE (+=) into parameter gradients; see t5_model.c for each contract. ---- */

/* out[N,OC] = alpha * inp[N,C] . W[OC,C]^T + beta * out  (HF Linear layout, no bias). W must be
 * a model weight (constant between gemm_weights_updated() calls): in bf16 its copy is cached. */
void t5_matmul_forward(float *out, const float *inp, const float *W, int N, int C, int OC,
                       float alpha, float beta);
/* dinp[N,C] = alpha * dout . W + dinp_beta * dinp (skipped if dinp is NULL);
 * dW[OC,C] += alpha * dout^T . inp. */
void t5_matmul_backward(float *dinp, float dinp_beta, float *dW, const float *dout,
                        const float *inp, const float *W, int N, int C, int OC, float alpha);

/* out[N,C] = g * inp * rstd, rstd[N] = (mean(inp^2) + eps)^-1/2. */
void t5_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *g, int N, int C,
                        float eps);
/* dinp += d/dinp, dg += d/dg. */
void t5_rmsnorm_backward(float *dinp, float *dg, const float *dout, const float *inp,
                         const float *g, const float *rstd, int N, int C);

/* bias_rel[H, Lq+Lk-1]: bias_rel[h][j - i + Lq - 1] = table[bucket(j - i), h], table [nb, H]. */
void t5_relbias_forward(float *bias_rel, const float *table, int Lq, int Lk, int H,
                        int bidirectional, int num_buckets, int max_distance);
/* dtable[nb, H] += sum over b of dbias_rel[B, H, Lq+Lk-1] gathered by bucket. */
void t5_relbias_backward(float *dtable, const float *dbias_rel, int B, int Lq, int Lk, int H,
                         int bidirectional, int num_buckets, int max_distance);

/* Multi-head attention without 1/sqrt(K) scaling. q/k/v are strided views: head h of row i of
 * batch b is q + (b*Lq + i)*ldq + h*K (same for k, v with Lk rows). Key j is visible to query i
 * iff segk[b,j] == segq[b,i] (and j <= i if causal); invisible keys get probability exactly 0;
 * a row with no visible key gets all-zero probabilities and a zero output.
 * bias_rel (may be NULL) as produced by t5_relbias_forward.
 * Outputs: att[B,H,Lq,Lk] probabilities, ctx rows at stride ldc (head h at column h*K). */
void t5_attention_forward(float *ctx, int ldc, float *att, const float *q, int ldq,
                          const float *k, int ldk, const float *v, int ldv,
                          const float *bias_rel, const int32_t *segq, const int32_t *segk,
                          int causal, int B, int Lq, int Lk, int H, int K);
/* Writes (not accumulates) dq, dk, dv (same strided layouts); dbias_rel[B,H,Lq+Lk-1] += (if not
 * NULL). scratch: t5_attention_scratch_floats(Lq, Lk) floats, one Lq*Lk slice per thread;
 * nthreads bounds the threads used to the slices the scratch holds. */
size_t t5_attention_scratch_floats(int Lq, int Lk);
void t5_attention_backward(float *dq, int lddq, float *dk, int lddk, float *dv, int lddv,
                           float *dbias_rel, const float *dctx, int lddc, const float *att,
                           const float *q, int ldq, const float *k, int ldk, const float *v,
                           int ldv, int B, int Lq, int Lk, int H, int K, float *scratch,
                           int nthreads);

/* Feed-forward: out[N,d] += act(inp . wi^T) . wo^T. ReLU: wi [f,d], u unused (may be NULL),
 * h[N,f] = relu. Gated GELU: wi [2f,d] (wi_0 rows then wi_1 rows), u[N,2f] pre-activations,
 * h = gelu_tanh(u0) * u1. wo [d,f]. */
void t5_ffn_forward(float *out, float *u, float *h, const float *inp, const float *wi,
                    const float *wo, int N, int d, int f, T5FfnKind kind);
/* dinp[N,d] = (written), dwi, dwo +=. dh[N,f] and du[N,2f] (gated only) are scratch. */
void t5_ffn_backward(float *dinp, float *dwi, float *dwo, float *dh, float *du,
                     const float *dout, const float *u, const float *h, const float *inp,
                     const float *wi, const float *wo, int N, int d, int f, T5FfnKind kind);

/* out[N,C] = E[ids[n]]; dE[ids[n]] += dout[n]. */
void t5_embedding_forward(float *out, const int32_t *ids, const float *E, int N, int C);
void t5_embedding_backward(float *dE, const int32_t *ids, const float *dout, int N, int C);

/* Softmax cross-entropy with z-loss over logits[N,V]; labels 0 are ignored. Stores logZ[N].
 * Adds the sums over labels != 0 to *stats (ce_sum, z_sum, tokens). */
void t5_xent_forward(T5LossStats *stats, float *logZ, const float *logits,
                     const int32_t *labels, int N, int V);
/* In place: logits become d(scale * sum_t (ce_t + zc * logZ_t^2)) / d logits. */
void t5_xent_backward(float *logits, const float *logZ, const int32_t *labels, int N, int V,
                      float zc, float scale);

#endif
