/*
 * pretrain/t5_ops.c: the T5 ops, each forward immediately followed by its backward.
 *
 * Read top to bottom: profiling, the relative position buckets, matmul, RMS norm, relative
 * position bias, attention, feed-forward, embedding, softmax cross-entropy with z-loss. Shapes
 * are in the comments; gradients carry a d prefix. The model (t5_model.c) strings these together.
 *
 * Conventions: row-major fp32. N = B*Le encoder tokens, M = B*Ld decoder tokens, d = d_model,
 * H = heads, K = d_kv, HK = H*K, f = d_ff, V = vocab. Linear weights use the HF layout [out, in],
 * so y[N,out] = x[N,in] . W^T. All matrix products go through t5_gemm (gemm.h); with OpenBLAS
 * (OpenMP build) its threads are this process's OpenMP threads, so our own loops use
 * `omp parallel for` and the products run single-threaded when called inside them.
 *
 * Semantics worth knowing: masked attention keys get probability exactly 0 (what MTF's -1e9 bias
 * gives for any row with a visible key); a query with no visible key (a decoder pad when the
 * encoder row has no padding) gets an all-zero row instead of MTF's uniform one; such rows only
 * feed pad positions, which carry no loss, so the loss and gradients are unaffected.
 * The inner attention width is called HK, not I, because <complex.h> defines I.
 *
 * Set T5_PROFILE=1 to print, after every model backward, the time spent per op class.
 */
#include "t5_ops.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"   /* FATAL, xmalloc*, now_seconds */
#include "gemm.h"

/* ---------------------------------------------------------------------------------------------
 * Profiling (optional): wall time per op class, accumulated over one forward+backward. */

enum { PROF_MATMUL, PROF_ATTN, PROF_NORM, PROF_FFNACT, PROF_XENT, PROF_EMBED, PROF_OTHER, PROF_N };
static const char *prof_names_[PROF_N] = {"matmul", "attention", "rmsnorm", "ffn_act", "xent",
                                           "embed", "other"};
static double prof_time_[PROF_N], prof_total_[PROF_N];
static int prof_on_ = -1, prof_print_ = 0;

static int prof_enabled_(void) {
    if (prof_on_ < 0) {
        const char *e = getenv("T5_PROFILE");
        prof_on_ = prof_print_ = (e && *e && *e != '0') ? 1 : 0;
    }
    return prof_on_;
}
void t5_profile_enable(int on) {
    prof_enabled_();
    prof_on_ = on ? 1 : prof_print_;
}
int t5_profile_totals(double *sec, const char **names) {
    for (int i = 0; i < PROF_N; i++) { sec[i] = prof_total_[i]; names[i] = prof_names_[i]; }
    return PROF_N;
}
void t5_profile_reset(void) {
    memset(prof_total_, 0, sizeof prof_total_);
    memset(prof_time_, 0, sizeof prof_time_);
}
#define PROF_BEGIN() double prof_t0_ = prof_enabled_() ? now_seconds() : 0.0
void t5_profile_report(void) {
    if (prof_on_ <= 0 || !prof_print_) return;
    double tot = 0.0;
    for (int i = 0; i < PROF_N; i++) tot += prof_time_[i];
    fprintf(stderr, "t5_profile fwd+bwd %.3f s:", tot);
    for (int i = 0; i < PROF_N; i++) {
        fprintf(stderr, " %s %.3f", prof_names_[i], prof_time_[i]);
        prof_time_[i] = 0.0;
    }
    fputc('\n', stderr);
}

#define PROF_END(cls) do { if (prof_on_ > 0) { double dt_ = now_seconds() - prof_t0_; \
    prof_time_[cls] += dt_; prof_total_[cls] += dt_; } } while (0)

/* ---------------------------------------------------------------------------------------------
 * Relative position buckets. */

int t5_relative_bucket(int rel, int bidirectional, int num_buckets, int max_distance) {
    int n = -rel, ret = 0, nb = num_buckets;
    if (bidirectional) {
        nb /= 2;
        if (n < 0) { ret = nb; n = -n; }   /* keys to the right of the query */
    } else if (n < 0) {
        n = 0;
    }
    int exact = nb / 2;
    if (n < exact) return ret + n;
    /* float32 math and truncation toward zero, as HF/MTF */
    float v = logf((float)n / (float)exact) / logf((float)max_distance / (float)exact) *
              (float)(nb - exact);
    int b = exact + (int)v;
    if (b > nb - 1) b = nb - 1;
    return ret + b;
}

/* ---------------------------------------------------------------------------------------------
 * matmul: out[N,OC] = alpha * inp[N,C] . W[OC,C]^T + beta * out */

void t5_matmul_forward(float *out, const float *inp, const float *W, int N, int C, int OC,
                       float alpha, float beta) {
    PROF_BEGIN();
    t5_gemm_w(0, 1, N, OC, C, alpha, inp, C, W, C, beta, out, OC);   /* W is a weight */
    PROF_END(PROF_MATMUL);
}

/* dinp[N,C] = alpha * dout[N,OC] . W[OC,C] + dinp_beta * dinp;  dW[OC,C] += alpha * dout^T . inp */
void t5_matmul_backward(float *dinp, float dinp_beta, float *dW, const float *dout,
                        const float *inp, const float *W, int N, int C, int OC, float alpha) {
    PROF_BEGIN();
    if (dinp)
        t5_gemm_w(0, 0, N, C, OC, alpha, dout, OC, W, C, dinp_beta, dinp, C);
    if (dW)
        t5_gemm(1, 0, OC, C, N, alpha, dout, OC, inp, C,
                    1.0f, dW, C);
    PROF_END(PROF_MATMUL);
}

/* ---------------------------------------------------------------------------------------------
 * RMSNorm: inp[N,C], g[C] -> out[N,C] = g * inp * rstd, rstd[N] = (mean_c inp^2 + eps)^-1/2 */

void t5_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *g, int N, int C,
                        float eps) {
    PROF_BEGIN();
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        float ss = 0.0f;
#pragma omp simd reduction(+:ss)
        for (int c = 0; c < C; c++) ss += x[c] * x[c];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
        rstd[n] = r;
#pragma omp simd
        for (int c = 0; c < C; c++) y[c] = g[c] * x[c] * r;
    }
    PROF_END(PROF_NORM);
}

/* dinp[N,C] += r*g*dout - inp * r^3/C * sum_c(g*dout*inp);  dg[C] += sum_n dout*inp*r */
void t5_rmsnorm_backward(float *dinp, float *dg, const float *dout, const float *inp,
                         const float *g, const float *rstd, int N, int C) {
    PROF_BEGIN();
    int nt = omp_get_max_threads();
    float *part = xcalloc((size_t)nt * C, sizeof(float));   /* per-thread dg partial sums */
#pragma omp parallel
    {
        float *acc = part + (size_t)omp_get_thread_num() * C;
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            float r = rstd[n], dot = 0.0f;
#pragma omp simd reduction(+:dot)
            for (int c = 0; c < C; c++) dot += g[c] * dy[c] * x[c];
            float coef = dot * r * r * r / (float)C;
#pragma omp simd
            for (int c = 0; c < C; c++) {
                dx[c] += r * g[c] * dy[c] - coef * x[c];
                acc[c] += dy[c] * x[c] * r;
            }
        }
    }
    for (int t = 0; t < nt; t++)
        for (int c = 0; c < C; c++) dg[c] += part[(size_t)t * C + c];
    free(part);
    PROF_END(PROF_NORM);
}

/* ---------------------------------------------------------------------------------------------
 * Relative position bias: table[nb, H] -> bias_rel[H, Lq+Lk-1], indexed by j - i + Lq - 1.
 * P[h,i,j] depends only on j - i, so one row per head serves every (b, layer) of a stack. */

void t5_relbias_forward(float *bias_rel, const float *table, int Lq, int Lk, int H,
                        int bidirectional, int num_buckets, int max_distance) {
    int R = Lq + Lk - 1;
    for (int r = 0; r < R; r++) {
        int bucket = t5_relative_bucket(r - (Lq - 1), bidirectional, num_buckets, max_distance);
        for (int h = 0; h < H; h++) bias_rel[(size_t)h * R + r] = table[(size_t)bucket * H + h];
    }
}

/* dtable[nb, H] += sum_b dbias_rel[b, h, r] for every r whose bucket it is (double sums). */
void t5_relbias_backward(float *dtable, const float *dbias_rel, int B, int Lq, int Lk, int H,
                         int bidirectional, int num_buckets, int max_distance) {
    int R = Lq + Lk - 1;
    double *acc = xcalloc((size_t)num_buckets * H, sizeof(double));
    for (int r = 0; r < R; r++) {
        int bucket = t5_relative_bucket(r - (Lq - 1), bidirectional, num_buckets, max_distance);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                acc[(size_t)bucket * H + h] += dbias_rel[((size_t)b * H + h) * R + r];
    }
    for (int i = 0; i < num_buckets * H; i++) dtable[i] += (float)acc[i];
    free(acc);
}

/* ---------------------------------------------------------------------------------------------
 * Attention. Per (b, h): S = Q K^T + P (no 1/sqrt(K)), masked softmax over keys, O = A V.
 * One OpenMP task per (b, h), each calling single-threaded sgemm on strided head views.
 * Masked keys are excluded exactly (probability 0), which equals adding -1e9 for any row with
 * at least one visible key and cannot produce NaN for a row with none (it becomes all zeros). */

/* The softmax and cross-entropy loops compare floats; GCC only if-converts (and so vectorises)
 * them when float compares are declared non-trapping. We never rely on FP exceptions. */
#define VEC_KERNEL __attribute__((optimize("no-trapping-math")))

/* Fast exp for the softmax: exp(x) for -87 <= x <= 0.3 via 2^n * p(r), rel err < 3e-7 (callers
 * pass x - max <= 0); x < -87 -> 0.
 * Written as plain arithmetic so `omp simd` loops vectorise it. */
static inline VEC_KERNEL float exp_neg_(float x) {
    float xc = x < -87.0f ? -87.0f : x;
    float t = xc * 1.44269504088896341f;            /* x / ln 2 */
    int n = (int)(t - 0.5f);                          /* round (t <= 0.5): truncation */
    float fn = (float)n;
    float r = xc - fn * 0.693145751953125f;          /* Cody-Waite: ln2 = hi + lo */
    r = r - fn * 1.428606765330187045e-06f;
    /* exp(r) on |r| <= ln2/2, degree-6 minimax-ish Taylor */
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.1666666667f + r * (0.04166666667f +
              r * (0.008333333333f + r * 0.001388888889f)))));
    union { float f; int32_t i; } s;
    s.i = (n + 127) << 23;
    float y = p * s.f;
    return x < -87.0f ? 0.0f : y;
}

/* Softmax of one row in place: row[Lk] scores; visible keys j < jend with segk[j] == sq. */
static VEC_KERNEL void softmax_row_(float *row, const float *brow, const int32_t *segk, int32_t sq,
                         int jend, int Lk) {
    if (brow) {
#pragma omp simd
        for (int j = 0; j < jend; j++) row[j] += brow[j];
    }
    float mx = -INFINITY;
#pragma omp simd reduction(max:mx)
    for (int j = 0; j < jend; j++) {
        float s = segk[j] == sq ? row[j] : -INFINITY;
        row[j] = s;
        mx = s > mx ? s : mx;
    }
    if (mx == -INFINITY) {   /* no visible key */
        memset(row, 0, (size_t)Lk * sizeof(float));
        return;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+:sum)
    for (int j = 0; j < jend; j++) {
        float e = exp_neg_(row[j] - mx);   /* -inf - mx -> 0 */
        row[j] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j < jend; j++) row[j] *= inv;
    for (int j = jend; j < Lk; j++) row[j] = 0.0f;
}

void t5_attention_forward(float *ctx, int ldc, float *att, const float *q, int ldq,
                          const float *k, int ldk, const float *v, int ldv,
                          const float *bias_rel, const int32_t *segq, const int32_t *segk,
                          int causal, int B, int Lq, int Lk, int H, int K) {
    PROF_BEGIN();
    int R = Lq + Lk - 1;
#pragma omp parallel for schedule(dynamic, 1)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        const float *qb = q + (size_t)b * Lq * ldq + (size_t)h * K;
        const float *kb = k + (size_t)b * Lk * ldk + (size_t)h * K;
        const float *vb = v + (size_t)b * Lk * ldv + (size_t)h * K;
        float *A = att + (size_t)bh * Lq * Lk;
        /* S[Lq,Lk] = Q[Lq,K] . K[Lk,K]^T */
        t5_gemm(0, 1, Lq, Lk, K, 1.0f, qb, ldq, kb, ldk,
                    0.0f, A, Lk);
        for (int i = 0; i < Lq; i++) {
            const float *brow = bias_rel ? bias_rel + (size_t)h * R + (Lq - 1 - i) : NULL;
            int jend = causal ? (i + 1 < Lk ? i + 1 : Lk) : Lk;
            softmax_row_(A + (size_t)i * Lk, brow, segk + (size_t)b * Lk,
                         segq[(size_t)b * Lq + i], jend, Lk);
        }
        /* O[Lq,K] = A[Lq,Lk] . V[Lk,K] */
        t5_gemm(0, 0, Lq, K, Lk, 1.0f, A, Lk, vb, ldv,
                    0.0f, ctx + (size_t)b * Lq * ldc + (size_t)h * K, ldc);
    }
    PROF_END(PROF_ATTN);
}

size_t t5_attention_scratch_floats(int Lq, int Lk) {
    return (size_t)omp_get_max_threads() * Lq * Lk;
}

/* dV = A^T dO;  dA = dO V^T;  dS = A * (dA - rowsum(A * dA));  dQ = dS K;  dK = dS^T Q;
 * dbias_rel[b,h, j-i+Lq-1] += dS[i,j]. */
void t5_attention_backward(float *dq, int lddq, float *dk, int lddk, float *dv, int lddv,
                           float *dbias_rel, const float *dctx, int lddc, const float *att,
                           const float *q, int ldq, const float *k, int ldk, const float *v,
                           int ldv, int B, int Lq, int Lk, int H, int K, float *scratch,
                           int nthreads) {
    PROF_BEGIN();
    int R = Lq + Lk - 1;
    /* at most as many threads as scratch slices, whatever the OpenMP setting is now */
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        float *dS = scratch + (size_t)omp_get_thread_num() * Lq * Lk;
        size_t qo = (size_t)b * Lq, ko = (size_t)b * Lk, ho = (size_t)h * K;
        const float *A = att + (size_t)bh * Lq * Lk;
        const float *dO = dctx + qo * lddc + ho;
        /* dV[Lk,K] = A^T[Lk,Lq] . dO[Lq,K] */
        t5_gemm(1, 0, Lk, K, Lq, 1.0f, A, Lk, dO, lddc,
                    0.0f, dv + ko * lddv + ho, lddv);
        /* dA[Lq,Lk] = dO[Lq,K] . V[Lk,K]^T */
        t5_gemm(0, 1, Lq, Lk, K, 1.0f, dO, lddc,
                    v + ko * ldv + ho, ldv, 0.0f, dS, Lk);
        float *db = dbias_rel ? dbias_rel + (size_t)bh * R : NULL;
        for (int i = 0; i < Lq; i++) {
            const float *a = A + (size_t)i * Lk;
            float *ds = dS + (size_t)i * Lk;
            float dot = 0.0f;
#pragma omp simd reduction(+:dot)
            for (int j = 0; j < Lk; j++) dot += a[j] * ds[j];
#pragma omp simd
            for (int j = 0; j < Lk; j++) ds[j] = a[j] * (ds[j] - dot);
            if (db) {
                float *dbr = db + (Lq - 1 - i);
#pragma omp simd
                for (int j = 0; j < Lk; j++) dbr[j] += ds[j];
            }
        }
        /* dQ[Lq,K] = dS[Lq,Lk] . K[Lk,K];  dK[Lk,K] = dS^T[Lk,Lq] . Q[Lq,K] */
        t5_gemm(0, 0, Lq, K, Lk, 1.0f, dS, Lk,
                    k + ko * ldk + ho, ldk, 0.0f, dq + qo * lddq + ho, lddq);
        t5_gemm(1, 0, Lk, K, Lq, 1.0f, dS, Lk,
                    q + qo * ldq + ho, ldq, 0.0f, dk + ko * lddk + ho, lddk);
    }
    PROF_END(PROF_ATTN);
}


/* ---------------------------------------------------------------------------------------------
 * Feed-forward. ReLU (v1.0): h = relu(x wi^T), out += h wo^T.
 * Gated GELU (v1.1): u = x [wi_0; wi_1]^T = [u0 | u1], h = gelu_tanh(u0) * u1, out += h wo^T. */

#define GELU_C 0.7978845608028654f   /* sqrt(2/pi) */

static inline float gelu_tanh_(float x) {
    return 0.5f * x * (1.0f + tanhf(GELU_C * (x + 0.044715f * x * x * x)));
}
static inline float gelu_tanh_grad_(float x) {
    float t = tanhf(GELU_C * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * 0.044715f * x * x);
}

void t5_ffn_forward(float *out, float *u, float *h, const float *inp, const float *wi,
                    const float *wo, int N, int d, int f, T5FfnKind kind) {
    if (kind == T5_FFN_RELU) {
        t5_matmul_forward(h, inp, wi, N, d, f, 1.0f, 0.0f);      /* h[N,f] = inp[N,d] wi[f,d]^T */
        PROF_BEGIN();
        size_t nf = (size_t)N * f;
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < nf; i++) h[i] = h[i] > 0.0f ? h[i] : 0.0f;
        PROF_END(PROF_FFNACT);
    } else {
        t5_matmul_forward(u, inp, wi, N, d, 2 * f, 1.0f, 0.0f);  /* u[N,2f] */
        PROF_BEGIN();
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *u0 = u + (size_t)n * 2 * f, *u1 = u0 + f;
            float *hn = h + (size_t)n * f;
            for (int c = 0; c < f; c++) hn[c] = gelu_tanh_(u0[c]) * u1[c];
        }
        PROF_END(PROF_FFNACT);
    }
    t5_matmul_forward(out, h, wo, N, f, d, 1.0f, 1.0f);          /* out[N,d] += h[N,f] wo[d,f]^T */
}

void t5_ffn_backward(float *dinp, float *dwi, float *dwo, float *dh, float *du,
                     const float *dout, const float *u, const float *h, const float *inp,
                     const float *wi, const float *wo, int N, int d, int f, T5FfnKind kind) {
    t5_matmul_backward(dh, 0.0f, dwo, dout, h, wo, N, f, d, 1.0f);   /* dh[N,f], dwo[d,f] */
    if (kind == T5_FFN_RELU) {
        PROF_BEGIN();
        size_t nf = (size_t)N * f;
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < nf; i++) dh[i] = h[i] > 0.0f ? dh[i] : 0.0f;
        PROF_END(PROF_FFNACT);
        t5_matmul_backward(dinp, 0.0f, dwi, dh, inp, wi, N, d, f, 1.0f);
    } else {
        PROF_BEGIN();
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *u0 = u + (size_t)n * 2 * f, *u1 = u0 + f;
            const float *dhn = dh + (size_t)n * f;
            float *du0 = du + (size_t)n * 2 * f, *du1 = du0 + f;
            for (int c = 0; c < f; c++) {
                du0[c] = dhn[c] * u1[c] * gelu_tanh_grad_(u0[c]);
                du1[c] = dhn[c] * gelu_tanh_(u0[c]);
            }
        }
        PROF_END(PROF_FFNACT);
        t5_matmul_backward(dinp, 0.0f, dwi, du, inp, wi, N, d, 2 * f, 1.0f);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Embedding: out[N,C] = E[ids[n], :]; backward scatters rows into dE. The backward splits the
 * C columns among threads, so no two threads touch the same element (deterministic). */

void t5_embedding_forward(float *out, const int32_t *ids, const float *E, int N, int C) {
    PROF_BEGIN();
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, E + (size_t)ids[n] * C, (size_t)C * sizeof(float));
    PROF_END(PROF_EMBED);
}

void t5_embedding_backward(float *dE, const int32_t *ids, const float *dout, int N, int C) {
    PROF_BEGIN();
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int c0 = (int)((long)C * t / nt), c1 = (int)((long)C * (t + 1) / nt);
        for (int n = 0; n < N; n++) {
            float *dst = dE + (size_t)ids[n] * C;
            const float *src = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
    PROF_END(PROF_EMBED);
}

/* ---------------------------------------------------------------------------------------------
 * Softmax cross-entropy + z-loss. logits[N,V], labels[N] (0 = ignored).
 * ce_n = logZ_n - logits[n, y_n], z_n = logZ_n^2. Gradient of ce + zc*z w.r.t. the logits:
 * (1 + 2 zc logZ) softmax - onehot(y). */

VEC_KERNEL void t5_xent_forward(T5LossStats *stats, float *logZ, const float *logits,
                     const int32_t *labels, int N, int V) {
    PROF_BEGIN();
    double *ce = xmalloc((size_t)N * sizeof(double));
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *row = logits + (size_t)n * V;
        float mx = -INFINITY;
#pragma omp simd reduction(max:mx)
        for (int j = 0; j < V; j++) mx = row[j] > mx ? row[j] : mx;
        float sum = 0.0f;
#pragma omp simd reduction(+:sum)
        for (int j = 0; j < V; j++) sum += exp_neg_(row[j] - mx);
        float lz = mx + logf(sum);
        logZ[n] = lz;
        ce[n] = labels[n] != 0 ? (double)lz - (double)row[labels[n]] : 0.0;
    }
    for (int n = 0; n < N; n++) {   /* serial sums: the result does not depend on thread count */
        if (labels[n] == 0) continue;
        stats->ce_sum += ce[n];
        stats->z_sum += (double)logZ[n] * (double)logZ[n];
        stats->tokens++;
    }
    free(ce);
    PROF_END(PROF_XENT);
}

VEC_KERNEL void t5_xent_backward(float *logits, const float *logZ, const int32_t *labels, int N, int V,
                      float zc, float scale) {
    PROF_BEGIN();
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *row = logits + (size_t)n * V;
        if (labels[n] == 0) { memset(row, 0, (size_t)V * sizeof(float)); continue; }
        float lz = logZ[n], a = scale * (1.0f + 2.0f * zc * lz);
#pragma omp simd
        for (int j = 0; j < V; j++) row[j] = a * exp_neg_(row[j] - lz);
        row[labels[n]] -= scale;
    }
    PROF_END(PROF_XENT);
}

