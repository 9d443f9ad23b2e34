/*
 * tests/unit/test_model_grad.c: gradients of every op and of a whole tiny T5, against finite
 * differences of a straightforward double-precision reference written here from docs/t5-recipe.md
 * section 2.4 (plain loops, weights looked up by their Hugging Face names).
 *
 * Why the reference is in double: central differences of an fp32 forward are limited by fp32
 * rounding (eps 6e-8 / step), which forces loose tolerances. With the reference in double and a
 * step h = 1e-6, the finite-difference error is ~h^2 |f'''| + 1e-16 |f| / h < 1e-9, so what we
 * measure is only the fp32 rounding of the optimized backward, ~1e-6 relative per op and a few
 * 1e-5 after a dozen layers. Tolerance: |g - g_fd| <= RTOL |g_fd| + ATOL * max|g_fd of that
 * tensor|, RTOL = 2e-4 and ATOL = 1e-4: the worst case measured on this test is ~2% of that
 * (printed as "info: worst ..."), so there is a 50x margin for other BLAS kernels and thread
 * counts, yet any real bug (a missing term, a wrong factor or index) is an O(1e-2..1) relative
 * error and fails (checked by mutating the backward: bias-gradient scale, z-loss factor, norm
 * gain gradient, ReLU mask, head-gradient input, one embedding scatter).
 * ReLU kinks: if a perturbation flips the sign of any ReLU pre-activation in the reference, that
 * element is skipped (counted; at most 5% may be skipped).
 */
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "pretrain/gemm.h"
#include "pretrain/optim.h"
#include "pretrain/t5_model.h"
#include "pretrain/t5_ops.h"
#include "tests/unit/test.h"

#define RTOL 2e-4
#define ATOL 1e-4
#define FD_H 1e-6

/* ---------------------------------------------------------------------------------------------
 * ReLU sign recorder: lets a finite difference detect that it crossed a kink. */

static int relu_mode_ = 0;   /* 0 off, 1 record, 2 compare */
static unsigned char *relu_signs_ = NULL;
static size_t relu_pos_ = 0, relu_cap_ = 0;
static int relu_flipped_ = 0;

static double ref_relu_(double x) {
    if (relu_mode_ == 1) {
        if (relu_pos_ == relu_cap_) {
            relu_cap_ = relu_cap_ ? 2 * relu_cap_ : 4096;
            relu_signs_ = realloc(relu_signs_, relu_cap_);
        }
        relu_signs_[relu_pos_++] = x > 0;
    } else if (relu_mode_ == 2) {
        if (relu_pos_ < relu_cap_ && relu_signs_[relu_pos_] != (x > 0)) relu_flipped_ = 1;
        relu_pos_++;
    }
    return x > 0 ? x : 0.0;
}

/* ---------------------------------------------------------------------------------------------
 * Double-precision reference ops (no tricks). */

static void ref_lin_(double *out, const double *in, const double *W, int N, int C, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = 0;
            for (int c = 0; c < C; c++) s += in[n * C + c] * W[o * C + c];
            out[n * OC + o] = s;
        }
}

static void ref_rms_(double *out, const double *in, const double *g, int N, int C, double eps) {
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += in[n * C + c] * in[n * C + c];
        double r = 1.0 / sqrt(ss / C + eps);
        for (int c = 0; c < C; c++) out[n * C + c] = g[c] * in[n * C + c] * r;
    }
}

static double gelu_(double x) {
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

/* x[N,d] += act(a . wi^T) . wo^T */
static void ref_ffn_(double *x, const double *a, const double *wi, const double *wo, int N, int d,
                     int f, int gated) {
    double *u = malloc(sizeof(double) * N * 2 * f), *h = malloc(sizeof(double) * N * f);
    ref_lin_(u, a, wi, N, d, gated ? 2 * f : f);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < f; c++)
            h[n * f + c] = gated ? gelu_(u[n * 2 * f + c]) * u[n * 2 * f + f + c]
                                 : ref_relu_(u[n * f + c]);
    double *y = malloc(sizeof(double) * N * d);
    ref_lin_(y, h, wo, N, f, d);
    for (int i = 0; i < N * d; i++) x[i] += y[i];
    free(u); free(h); free(y);
}

/* ctx[B,Lq,H*K] from q[B,Lq,H*K], k,v[B,Lk,H*K]; table [32,H] or NULL. Masked keys excluded;
 * a query with no visible key outputs zeros. */
static void ref_attn_(double *ctx, const double *q, const double *k, const double *v,
                      const double *table, int bidir, const int32_t *segq, const int32_t *segk,
                      int causal, int B, int Lq, int Lk, int H, int K) {
    int HK = H * K;
    double *s = malloc(sizeof(double) * Lk);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Lq; i++) {
                double mx = -INFINITY;
                for (int j = 0; j < Lk; j++) {
                    int vis = segq[b * Lq + i] == segk[b * Lk + j] && (!causal || j <= i);
                    if (!vis) { s[j] = -INFINITY; continue; }
                    double acc = 0;
                    for (int c = 0; c < K; c++)
                        acc += q[(b * Lq + i) * HK + h * K + c] * k[(b * Lk + j) * HK + h * K + c];
                    if (table) acc += table[t5_relative_bucket(j - i, bidir, 32, 128) * H + h];
                    s[j] = acc;
                    if (acc > mx) mx = acc;
                }
                double z = 0;
                for (int j = 0; j < Lk; j++) { s[j] = s[j] == -INFINITY ? 0 : exp(s[j] - mx); z += s[j]; }
                for (int c = 0; c < K; c++) {
                    double o = 0;
                    for (int j = 0; j < Lk; j++)
                        if (z > 0) o += s[j] / z * v[(b * Lk + j) * HK + h * K + c];
                    ctx[(b * Lq + i) * HK + h * K + c] = o;
                }
            }
    free(s);
}

/* sums over labels != 0 of ce and logZ^2 */
static void ref_xent_(double *ce, double *z, long *tok, const double *logits, const int32_t *labels,
                      int N, int V) {
    *ce = 0; *z = 0; *tok = 0;
    for (int n = 0; n < N; n++) {
        if (!labels[n]) continue;
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < V; j++) if (logits[n * V + j] > mx) mx = logits[n * V + j];
        for (int j = 0; j < V; j++) s += exp(logits[n * V + j] - mx);
        double lz = mx + log(s);
        *ce += lz - logits[n * V + labels[n]];
        *z += lz * lz;
        (*tok)++;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Finite differences: f(ctx, x) in double over a parameter vector x. */

typedef double (*LossFn)(void *ctx, const double *x);

/* Check analytic gradient ga[i] for i in idx[0..n) against central differences; label names the
 * tensor in messages. Returns the number of skipped (kink-crossing) elements. */
static double worst_ = 0.0;   /* largest |g - g_fd| / (RTOL |g_fd| + ATOL gmax) seen */

static int fd_check_(const char *label, LossFn f, void *ctx, double *x, const float *ga,
                     const size_t *idx, int n) {
    double *gn = malloc(sizeof(double) * n);
    int *skip = calloc(n, sizeof(int)), skipped = 0;
    double gmax = 0;
    relu_mode_ = 1; relu_pos_ = 0;
    f(ctx, x);
    relu_mode_ = 2;
    for (int t = 0; t < n; t++) {
        size_t i = idx[t];
        double x0 = x[i];
        relu_flipped_ = 0;
        x[i] = x0 + FD_H; relu_pos_ = 0; double lp = f(ctx, x);
        x[i] = x0 - FD_H; relu_pos_ = 0; double lm = f(ctx, x);
        x[i] = x0;
        gn[t] = (lp - lm) / (2 * FD_H);
        if (relu_flipped_) { skip[t] = 1; skipped++; continue; }
        if (fabs(gn[t]) > gmax) gmax = fabs(gn[t]);
    }
    relu_mode_ = 0;
    for (int t = 0; t < n; t++) {
        if (skip[t]) continue;
        double a = ga[idx[t]];
        double ratio = fabs(a - gn[t]) / (RTOL * fabs(gn[t]) + ATOL * gmax + 1e-12);
        if (ratio > worst_) worst_ = ratio;
        CHECKF(fabs(a - gn[t]) <= RTOL * fabs(gn[t]) + ATOL * gmax + 1e-12,
               "%s[%zu]: analytic %.9g vs finite difference %.9g (tensor max %.3g)", label, idx[t],
               a, gn[t], gmax);
    }
    free(gn); free(skip);
    return skipped;
}

static size_t *all_idx_(size_t n) {
    size_t *idx = malloc(sizeof(size_t) * n);
    for (size_t i = 0; i < n; i++) idx[i] = i;
    return idx;
}

static void fill_(float *x, size_t n, Rng *r, double scale) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * rng_next_normal(r));
}
static void to_double_(double *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = src[i];
}

/* ---------------------------------------------------------------------------------------------
 * Op tests. Each uses the loss L = sum(w * out) with random w, so dout = w. */

typedef struct { int N, C; const double *w; } RmsCtx;
static double rms_loss_(void *vc, const double *x) {   /* x = [inp N*C | g C] */
    RmsCtx *c = vc;
    double *out = malloc(sizeof(double) * c->N * c->C), L = 0;
    ref_rms_(out, x, x + c->N * c->C, c->N, c->C, 1e-6);
    for (int i = 0; i < c->N * c->C; i++) L += c->w[i] * out[i];
    free(out);
    return L;
}

static void test_rmsnorm(void) {
    int N = 6, C = 9, n = N * C + C;
    Rng r = rng_make(11, 0);
    float *x = malloc(sizeof(float) * n), *out = malloc(sizeof(float) * N * C), rstd[6];
    float *w = malloc(sizeof(float) * N * C), *g = calloc(n, sizeof(float));
    fill_(x, n, &r, 1.0);
    for (int c = 0; c < C; c++) x[N * C + c] += 1.0f;
    fill_(w, N * C, &r, 1.0);
    t5_rmsnorm_forward(out, rstd, x, x + N * C, N, C, 1e-6f);
    double *xd = malloc(sizeof(double) * n), *wd = malloc(sizeof(double) * N * C);
    double *ref = malloc(sizeof(double) * N * C);
    to_double_(xd, x, n); to_double_(wd, w, N * C);
    ref_rms_(ref, xd, xd + N * C, N, C, 1e-6);
    for (int i = 0; i < N * C; i++) CHECK_NEAR(out[i], ref[i], 1e-5 * (1 + fabs(ref[i])));
    for (int i = 0; i < N * C; i++) g[i] = 1.0f;   /* dinp accumulates: starts at 1 */
    t5_rmsnorm_backward(g, g + N * C, w, x, x + N * C, rstd, N, C);
    for (int i = 0; i < N * C; i++) g[i] -= 1.0f;
    RmsCtx ctx = {N, C, wd};
    size_t *idx = all_idx_(n);
    fd_check_("rmsnorm", rms_loss_, &ctx, xd, g, idx, n);
    free(idx); free(x); free(out); free(w); free(g); free(xd); free(wd); free(ref);
}

typedef struct {
    int B, Lq, Lk, H, K, causal, bidir, has_bias;
    const int32_t *segq, *segk;
    const double *w;
} AttnCtx;

/* x = [q B*Lq*HK | k B*Lk*HK | v B*Lk*HK | table 32*H] */
static double attn_loss_(void *vc, const double *x) {
    AttnCtx *c = vc;
    int HK = c->H * c->K;
    size_t nq = (size_t)c->B * c->Lq * HK, nk = (size_t)c->B * c->Lk * HK;
    double *ctx = malloc(sizeof(double) * nq), L = 0;
    ref_attn_(ctx, x, x + nq, x + nq + nk, c->has_bias ? x + nq + 2 * nk : NULL, c->bidir, c->segq,
              c->segk, c->causal, c->B, c->Lq, c->Lk, c->H, c->K);
    for (size_t i = 0; i < nq; i++) L += c->w[i] * ctx[i];
    free(ctx);
    return L;
}

/* One attention configuration. q, k, v live in strided buffers (row stride 3HK, offsets 0, HK,
 * 2HK in one "qkv" buffer for self-attention; separate buffers for cross) like the model's. */
static void attn_case_(const char *label, int B, int Lq, int Lk, int causal, int bidir,
                       int has_bias, const int32_t *segq, const int32_t *segk) {
    int H = 2, K = 4, HK = H * K, ld = 3 * HK, R = Lq + Lk - 1;
    Rng r = rng_make(12, (uint64_t)Lq * 100 + causal);
    size_t nq = (size_t)B * Lq * HK, nk = (size_t)B * Lk * HK, ntab = 32 * (size_t)H;
    size_t n = nq + 2 * nk + ntab;
    float *x = malloc(sizeof(float) * n);
    fill_(x, n, &r, 0.7);
    /* strided copies */
    float *qb = calloc((size_t)B * Lq * ld, sizeof(float)), *kvb = calloc((size_t)B * Lk * ld, sizeof(float));
    for (int t = 0; t < B * Lq; t++) memcpy(qb + (size_t)t * ld, x + (size_t)t * HK, HK * sizeof(float));
    for (int t = 0; t < B * Lk; t++) {
        memcpy(kvb + (size_t)t * ld + HK, x + nq + (size_t)t * HK, HK * sizeof(float));
        memcpy(kvb + (size_t)t * ld + 2 * HK, x + nq + nk + (size_t)t * HK, HK * sizeof(float));
    }
    float *bias = malloc(sizeof(float) * H * R);
    t5_relbias_forward(bias, x + nq + 2 * nk, Lq, Lk, H, bidir, 32, 128);
    float *ctx = malloc(sizeof(float) * nq), *att = malloc(sizeof(float) * B * H * Lq * Lk);
    t5_attention_forward(ctx, HK, att, qb, ld, kvb + HK, ld, kvb + 2 * HK, ld,
                         has_bias ? bias : NULL, segq, segk, causal, B, Lq, Lk, H, K);
    /* forward against the reference, and no NaN even for fully masked rows */
    double *xd = malloc(sizeof(double) * n), *ref = malloc(sizeof(double) * nq);
    to_double_(xd, x, n);
    ref_attn_(ref, xd, xd + nq, xd + nq + nk, has_bias ? xd + nq + 2 * nk : NULL, bidir, segq, segk,
              causal, B, Lq, Lk, H, K);
    for (size_t i = 0; i < nq; i++) {
        CHECK(isfinite(ctx[i]));
        CHECKF(fabs(ctx[i] - ref[i]) <= 1e-5 * (1 + fabs(ref[i])), "%s ctx[%zu] %g vs %g", label,
               i, ctx[i], ref[i]);
    }
    /* backward */
    float *w = malloc(sizeof(float) * nq);
    fill_(w, nq, &r, 1.0);
    float *dqb = calloc((size_t)B * Lq * ld, sizeof(float)), *dkvb = calloc((size_t)B * Lk * ld, sizeof(float));
    float *dbias = calloc((size_t)B * H * R, sizeof(float)), *g = calloc(n, sizeof(float));
    float *scratch = malloc(sizeof(float) * t5_attention_scratch_floats(Lq, Lk));
    t5_attention_backward(dqb, ld, dkvb + HK, ld, dkvb + 2 * HK, ld, has_bias ? dbias : NULL, w,
                          HK, att, qb, ld, kvb + HK, ld, kvb + 2 * HK, ld, B, Lq, Lk, H, K, scratch,
                          omp_get_max_threads());
    for (int t = 0; t < B * Lq; t++) memcpy(g + (size_t)t * HK, dqb + (size_t)t * ld, HK * sizeof(float));
    for (int t = 0; t < B * Lk; t++) {
        memcpy(g + nq + (size_t)t * HK, dkvb + (size_t)t * ld + HK, HK * sizeof(float));
        memcpy(g + nq + nk + (size_t)t * HK, dkvb + (size_t)t * ld + 2 * HK, HK * sizeof(float));
    }
    if (has_bias) t5_relbias_backward(g + nq + 2 * nk, dbias, B, Lq, Lk, H, bidir, 32, 128);
    double *wd = malloc(sizeof(double) * nq);
    to_double_(wd, w, nq);
    AttnCtx c = {B, Lq, Lk, H, K, causal, bidir, has_bias, segq, segk, wd};
    size_t *idx = all_idx_(n);
    fd_check_(label, attn_loss_, &c, xd, g, idx, has_bias ? (int)n : (int)(nq + 2 * nk));
    free(idx); free(x); free(qb); free(kvb); free(bias); free(ctx); free(att); free(xd); free(ref);
    free(w); free(dqb); free(dkvb); free(dbias); free(g); free(scratch); free(wd);
}

static void test_attention(void) {
    /* encoder-like: 2 rows, packed segments and padding, bidirectional bias */
    int32_t seg_e[2 * 9] = {1, 1, 1, 2, 2, 2, 2, 0, 0,  1, 1, 1, 1, 1, 1, 1, 1, 1};
    attn_case_("attn_self_bidir", 2, 9, 9, 0, 1, 1, seg_e, seg_e);
    /* decoder-like: causal, unidirectional bias */
    int32_t seg_d[2 * 7] = {1, 1, 1, 2, 2, 0, 0,  1, 1, 1, 1, 1, 1, 1};
    attn_case_("attn_self_causal", 2, 7, 7, 1, 0, 1, seg_d, seg_d);
    /* cross: decoder queries on encoder keys, no bias; row 1's pads (segment 0) see no key */
    int32_t seg_q[2 * 5] = {1, 1, 2, 2, 0,  1, 1, 1, 0, 0};
    attn_case_("attn_cross", 2, 5, 9, 0, 0, 0, seg_q, seg_e);
    /* a longer causal case so that distant buckets appear */
    int L = test_quick() ? 40 : 140;
    int32_t *seg_l = malloc(sizeof(int32_t) * L);
    for (int i = 0; i < L; i++) seg_l[i] = i < L - 3 ? 1 : 0;
    attn_case_("attn_long_causal", 1, L, L, 1, 0, 1, seg_l, seg_l);
    free(seg_l);
}

typedef struct { int N, d, f, gated; const double *w; } FfnCtx;
static double ffn_loss_(void *vc, const double *x) {   /* x = [inp N*d | wi | wo] */
    FfnCtx *c = vc;
    int fi = c->gated ? 2 * c->f : c->f;
    double *out = calloc((size_t)c->N * c->d, sizeof(double)), L = 0;
    ref_ffn_(out, x, x + c->N * c->d, x + c->N * c->d + fi * c->d, c->N, c->d, c->f, c->gated);
    for (int i = 0; i < c->N * c->d; i++) L += c->w[i] * out[i];
    free(out);
    return L;
}

static void ffn_case_(const char *label, T5FfnKind kind) {
    int N = 6, d = 5, f = 7, gated = kind == T5_FFN_GATED_GELU, fi = gated ? 2 * f : f;
    size_t n = (size_t)N * d + (size_t)fi * d + (size_t)d * f;
    Rng r = rng_make(13, (uint64_t)kind);
    float *x = malloc(sizeof(float) * n), *w = malloc(sizeof(float) * N * d);
    fill_(x, n, &r, 0.8);
    fill_(w, N * d, &r, 1.0);
    float *out = calloc((size_t)N * d, sizeof(float)), *u = malloc(sizeof(float) * N * 2 * f);
    float *h = malloc(sizeof(float) * N * f), *dh = malloc(sizeof(float) * N * f);
    float *du = malloc(sizeof(float) * N * 2 * f), *g = calloc(n, sizeof(float));
    float *inp = x, *wi = x + N * d, *wo = wi + fi * d;
    t5_ffn_forward(out, u, h, inp, wi, wo, N, d, f, kind);
    double *xd = malloc(sizeof(double) * n), *ref = calloc((size_t)N * d, sizeof(double));
    to_double_(xd, x, n);
    ref_ffn_(ref, xd, xd + N * d, xd + N * d + fi * d, N, d, f, gated);
    for (int i = 0; i < N * d; i++) CHECK_NEAR(out[i], ref[i], 1e-5 * (1 + fabs(ref[i])));
    t5_ffn_backward(g, g + N * d, g + N * d + fi * d, dh, du, w, u, h, inp, wi, wo, N, d, f, kind);
    double *wd = malloc(sizeof(double) * N * d);
    to_double_(wd, w, N * d);
    FfnCtx c = {N, d, f, gated, wd};
    size_t *idx = all_idx_(n);
    int skipped = fd_check_(label, ffn_loss_, &c, xd, g, idx, (int)n);
    CHECK(skipped <= (int)n / 20);
    free(idx); free(x); free(w); free(out); free(u); free(h); free(dh); free(du); free(g);
    free(xd); free(ref); free(wd);
}

static void test_ffn_relu(void) { ffn_case_("ffn_relu", T5_FFN_RELU); }
static void test_ffn_gated_gelu(void) { ffn_case_("ffn_gated_gelu", T5_FFN_GATED_GELU); }

typedef struct { int N, V; const int32_t *labels; double zc, scale; } XentCtx;
static double xent_loss_(void *vc, const double *x) {
    XentCtx *c = vc;
    double ce, z;
    long tok;
    ref_xent_(&ce, &z, &tok, x, c->labels, c->N, c->V);
    return c->scale * (ce + c->zc * z);
}

static void test_xent_zloss(void) {
    int N = 6, V = 11;
    int32_t labels[6] = {3, 0, 10, 1, 0, 7};
    Rng r = rng_make(14, 0);
    float *x = malloc(sizeof(float) * N * V), logZ[6];
    fill_(x, (size_t)N * V, &r, 3.0);   /* logZ of a few units, so the z-loss term matters */
    double *xd = malloc(sizeof(double) * N * V);
    to_double_(xd, x, (size_t)N * V);
    T5LossStats st = {0, 0, 0};
    t5_xent_forward(&st, logZ, x, labels, N, V);
    double ce, z;
    long tok;
    ref_xent_(&ce, &z, &tok, xd, labels, N, V);
    CHECK_EQ_INT(st.tokens, 4);
    CHECK_EQ_INT(tok, 4);
    CHECK_NEAR(st.ce_sum, ce, 1e-5 * (1 + fabs(ce)));
    CHECK_NEAR(st.z_sum, z, 1e-5 * (1 + fabs(z)));
    double zc = 0.05, scale = 0.37;   /* large zc so the z-loss gradient is well measured */
    t5_xent_backward(x, logZ, labels, N, V, (float)zc, (float)scale);
    for (int j = 0; j < V; j++) CHECK(x[1 * V + j] == 0.0f && x[4 * V + j] == 0.0f);
    XentCtx c = {N, V, labels, zc, scale};
    size_t *idx = all_idx_((size_t)N * V);
    fd_check_("xent", xent_loss_, &c, xd, x, idx, N * V);
    free(idx); free(x); free(xd);
}

/* Embedding lookup followed by the tied head: logits = d^-0.5 E[ids] E^T; L = sum(w * logits).
 * Both uses of E must reach dE. */
typedef struct { int N, V, C; const int32_t *ids; const double *w; } EmbCtx;
static double emb_loss_(void *vc, const double *E) {
    EmbCtx *c = vc;
    double L = 0, s = 1.0 / sqrt((double)c->C);
    for (int n = 0; n < c->N; n++)
        for (int v = 0; v < c->V; v++) {
            double acc = 0;
            for (int k = 0; k < c->C; k++) acc += E[c->ids[n] * c->C + k] * E[v * c->C + k];
            L += c->w[n * c->V + v] * s * acc;
        }
    return L;
}

static void test_embedding_tied_head(void) {
    int N = 7, V = 10, C = 6;
    int32_t ids[7] = {3, 3, 0, 9, 5, 1, 3};
    Rng r = rng_make(15, 0);
    float *E = malloc(sizeof(float) * V * C), *x = malloc(sizeof(float) * N * C);
    float *w = malloc(sizeof(float) * N * V), *logits = malloc(sizeof(float) * N * V);
    float *dx = malloc(sizeof(float) * N * C), *dE = calloc((size_t)V * C, sizeof(float));
    fill_(E, (size_t)V * C, &r, 1.0);
    fill_(w, (size_t)N * V, &r, 1.0);
    float s = 1.0f / sqrtf((float)C);
    t5_embedding_forward(x, ids, E, N, C);
    for (int n = 0; n < N; n++)
        for (int k = 0; k < C; k++) CHECK(x[n * C + k] == E[ids[n] * C + k]);
    t5_matmul_forward(logits, x, E, N, C, V, s, 0.0f);
    t5_matmul_backward(dx, 0.0f, dE, w, x, E, N, C, V, s);
    t5_embedding_backward(dE, ids, dx, N, C);
    double *Ed = malloc(sizeof(double) * V * C), *wd = malloc(sizeof(double) * N * V);
    to_double_(Ed, E, (size_t)V * C);
    to_double_(wd, w, (size_t)N * V);
    EmbCtx c = {N, V, C, ids, wd};
    size_t *idx = all_idx_((size_t)V * C);
    fd_check_("embedding_tied_head", emb_loss_, &c, Ed, dE, idx, V * C);
    free(idx); free(E); free(x); free(w); free(logits); free(dx); free(dE); free(Ed); free(wd);
}

/* ---------------------------------------------------------------------------------------------
 * Whole-model reference: the forward of docs/t5-recipe.md section 2.4 in double, reading each weight by its
 * Hugging Face name from a double copy of the parameter buffer. */

typedef struct {
    const T5Model *m;
    const T5Batch *b;
    double zc, scale;
    double ce, z;   /* outputs of the last call */
    long tokens;
} ModelCtx;

static const double *W_(const T5Model *m, const double *p, const char *fmt, ...) {
    char nm[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(nm, sizeof nm, fmt, ap);
    va_end(ap);
    int i = t5_model_find_tensor(m, nm);
    if (i < 0) { fprintf(stderr, "reference: tensor %s missing\n", nm); exit(1); }
    return p + m->tensors[i].offset;
}

/* x[Nq,d] += Attn(a) with queries from a[Nq,d] and keys/values from kv_in[Nk,d] */
static void ref_attn_block_(const T5Model *m, const double *p, double *x, const double *a,
                            const double *kv_in, const char *pre, const double *table, int bidir,
                            const int32_t *segq, const int32_t *segk, int causal, int B, int Lq,
                            int Lk) {
    int d = m->cfg.d_model, H = m->cfg.n_heads, K = m->cfg.d_kv, HK = H * K;
    int Nq = B * Lq, Nk = B * Lk;
    double *q = malloc(sizeof(double) * Nq * HK), *k = malloc(sizeof(double) * Nk * HK);
    double *v = malloc(sizeof(double) * Nk * HK), *ctx = malloc(sizeof(double) * Nq * HK);
    double *y = malloc(sizeof(double) * Nq * d);
    ref_lin_(q, a, W_(m, p, "%s.q.weight", pre), Nq, d, HK);
    ref_lin_(k, kv_in, W_(m, p, "%s.k.weight", pre), Nk, d, HK);
    ref_lin_(v, kv_in, W_(m, p, "%s.v.weight", pre), Nk, d, HK);
    ref_attn_(ctx, q, k, v, table, bidir, segq, segk, causal, B, Lq, Lk, H, K);
    ref_lin_(y, ctx, W_(m, p, "%s.o.weight", pre), Nq, HK, d);
    for (int i = 0; i < Nq * d; i++) x[i] += y[i];
    free(q); free(k); free(v); free(ctx); free(y);
}

static double model_loss_(void *vc, const double *p) {
    ModelCtx *c = vc;
    const T5Model *m = c->m;
    const T5Batch *b = c->b;
    const T5Config *cf = &m->cfg;
    int B = b->B, Le = b->Le, Ld = b->Ld, d = cf->d_model, f = cf->d_ff, V = cf->vocab_size;
    int N = B * Le, M = B * Ld, gated = cf->ffn == T5_FFN_GATED_GELU;
    double eps = cf->layer_norm_eps;
    const double *E = W_(m, p, "shared.weight");
    double *x = malloc(sizeof(double) * N * d), *a = malloc(sizeof(double) * N * d);
    double *eo = malloc(sizeof(double) * N * d);
    char pre[128];
    /* encoder */
    for (int n = 0; n < N; n++) memcpy(x + n * d, E + b->enc_ids[n] * d, sizeof(double) * d);
    const double *tab_e = W_(m, p, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
    for (int l = 0; l < cf->n_enc_layers; l++) {
        ref_rms_(a, x, W_(m, p, "encoder.block.%d.layer.0.layer_norm.weight", l), N, d, eps);
        snprintf(pre, sizeof pre, "encoder.block.%d.layer.0.SelfAttention", l);
        ref_attn_block_(m, p, x, a, a, pre, tab_e, 1, b->enc_seg, b->enc_seg, 0, B, Le, Le);
        ref_rms_(a, x, W_(m, p, "encoder.block.%d.layer.1.layer_norm.weight", l), N, d, eps);
        const double *wi = gated ? W_(m, p, "encoder.block.%d.layer.1.DenseReluDense.wi_0.weight", l)
                                 : W_(m, p, "encoder.block.%d.layer.1.DenseReluDense.wi.weight", l);
        double *wcat = malloc(sizeof(double) * 2 * f * d);
        memcpy(wcat, wi, sizeof(double) * f * d);
        if (gated)
            memcpy(wcat + f * d, W_(m, p, "encoder.block.%d.layer.1.DenseReluDense.wi_1.weight", l),
                   sizeof(double) * f * d);
        ref_ffn_(x, a, wcat, W_(m, p, "encoder.block.%d.layer.1.DenseReluDense.wo.weight", l), N, d,
                 f, gated);
        free(wcat);
    }
    ref_rms_(eo, x, W_(m, p, "encoder.final_layer_norm.weight"), N, d, eps);
    /* decoder */
    double *y = malloc(sizeof(double) * M * d), *ad = malloc(sizeof(double) * M * d);
    for (int n = 0; n < M; n++) memcpy(y + n * d, E + b->dec_in_ids[n] * d, sizeof(double) * d);
    const double *tab_d = W_(m, p, "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
    for (int l = 0; l < cf->n_dec_layers; l++) {
        ref_rms_(ad, y, W_(m, p, "decoder.block.%d.layer.0.layer_norm.weight", l), M, d, eps);
        snprintf(pre, sizeof pre, "decoder.block.%d.layer.0.SelfAttention", l);
        ref_attn_block_(m, p, y, ad, ad, pre, tab_d, 0, b->dec_seg, b->dec_seg, 1, B, Ld, Ld);
        ref_rms_(ad, y, W_(m, p, "decoder.block.%d.layer.1.layer_norm.weight", l), M, d, eps);
        snprintf(pre, sizeof pre, "decoder.block.%d.layer.1.EncDecAttention", l);
        ref_attn_block_(m, p, y, ad, eo, pre, NULL, 0, b->dec_seg, b->enc_seg, 0, B, Ld, Le);
        ref_rms_(ad, y, W_(m, p, "decoder.block.%d.layer.2.layer_norm.weight", l), M, d, eps);
        double *wcat = malloc(sizeof(double) * 2 * f * d);
        memcpy(wcat, gated ? W_(m, p, "decoder.block.%d.layer.2.DenseReluDense.wi_0.weight", l)
                           : W_(m, p, "decoder.block.%d.layer.2.DenseReluDense.wi.weight", l),
               sizeof(double) * f * d);
        if (gated)
            memcpy(wcat + f * d, W_(m, p, "decoder.block.%d.layer.2.DenseReluDense.wi_1.weight", l),
                   sizeof(double) * f * d);
        ref_ffn_(y, ad, wcat, W_(m, p, "decoder.block.%d.layer.2.DenseReluDense.wo.weight", l), M, d,
                 f, gated);
        free(wcat);
    }
    ref_rms_(ad, y, W_(m, p, "decoder.final_layer_norm.weight"), M, d, eps);
    /* head: tied (d^-0.5 rescale, E) or untied (lm_head, no rescale) */
    double *logits = malloc(sizeof(double) * M * V);
    ref_lin_(logits, ad, W_(m, p, "lm_head.weight"), M, d, V);
    if (cf->tied_embedding)
        for (int i = 0; i < M * V; i++) logits[i] /= sqrt((double)d);
    ref_xent_(&c->ce, &c->z, &c->tokens, logits, b->labels, M, V);
    free(x); free(a); free(eo); free(y); free(ad); free(logits);
    return c->scale * (c->ce + c->zc * c->z);
}

/* A tiny config and a batch with packed segments, padding and a fully padded decoder tail. */
static T5Config tiny_cfg_(int gated) {
    T5Config c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "test-tiny");
    c.n_enc_layers = 2; c.n_dec_layers = 2; c.d_model = 16; c.d_ff = 32; c.n_heads = 2;
    c.d_kv = 8; c.vocab_size = 96; c.num_buckets = 32; c.max_distance = 128;
    c.ffn = gated ? T5_FFN_GATED_GELU : T5_FFN_RELU;
    c.tied_embedding = gated ? 0 : 1;
    c.layer_norm_eps = 1e-6f;
    return c;
}

static void tiny_batch_(T5Batch *b, int V, uint64_t seed) {
    int B = 2, Le = 12, Ld = 7;
    t5_batch_alloc(b, B, Le, Ld);
    int32_t es[2][12] = {{1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}};
    int32_t ds[2][7] = {{1, 1, 1, 2, 2, 2, 0}, {1, 1, 1, 1, 1, 0, 0}};
    Rng r = rng_make(seed, 0);
    for (int i = 0; i < B; i++) {
        for (int t = 0; t < Le; t++) {
            b->enc_seg[i * Le + t] = es[i][t];
            b->enc_ids[i * Le + t] = es[i][t] ? 1 + (int)rng_next_below(&r, V - 1) : 0;
        }
        for (int t = 0; t < Ld; t++) {
            b->dec_seg[i * Ld + t] = ds[i][t];
            b->labels[i * Ld + t] = ds[i][t] ? 1 + (int)rng_next_below(&r, V - 1) : 0;
            int start = t == 0 || ds[i][t - 1] != ds[i][t];
            b->dec_in_ids[i * Ld + t] = (ds[i][t] && !start) ? b->labels[i * Ld + t - 1] : 0;
        }
    }
}

/* Whole model: forward vs the double reference, then every parameter tensor's gradient. */
static void model_case_(int gated) {
    T5Config cfg = tiny_cfg_(gated);
    T5Model m;
    t5_model_build(&m, &cfg);
    t5_model_init_weights(&m, 77 + gated);
    Rng r = rng_make(16, (uint64_t)gated);
    /* non-trivial norm gains, so their gradients are tested away from g = 1 */
    for (int t = 0; t < m.num_tensors; t++)
        if (strstr(m.tensors[t].name, "layer_norm"))
            for (size_t i = 0; i < m.tensors[t].numel; i++)
                m.params[m.tensors[t].offset + i] = (float)(1.0 + 0.3 * rng_next_normal(&r));
    T5Batch b;
    tiny_batch_(&b, cfg.vocab_size, 17 + gated);
    double zc = 0.01, scale = 1.0 / (b.B * b.Ld);
    T5LossStats st;
    t5_model_zero_grad(&m);
    t5_model_forward(&m, &b, (float)zc, &st);
    t5_model_backward(&m, (float)scale);

    double *pd = malloc(sizeof(double) * m.num_params);
    to_double_(pd, m.params, m.num_params);
    ModelCtx c = {&m, &b, zc, scale, 0, 0, 0};
    model_loss_(&c, pd);
    CHECK_EQ_INT(st.tokens, c.tokens);
    CHECK_EQ_INT(st.tokens, t5_batch_count_targets(&b));
    CHECKF(fabs(st.ce_sum - c.ce) <= 1e-5 * fabs(c.ce), "ce %.9g vs reference %.9g", st.ce_sum, c.ce);
    CHECKF(fabs(st.z_sum - c.z) <= 1e-5 * fabs(c.z), "z %.9g vs reference %.9g", st.z_sum, c.z);
    for (size_t i = 0; i < m.num_params; i++)
        if (!isfinite(m.grads[i])) { CHECKF(0, "non-finite gradient at %zu", i); break; }

    /* every tensor: all elements if small, else a random sample */
    int per_tensor = test_quick() ? 6 : 24, skipped = 0, checked = 0;
    for (int t = 0; t < m.num_tensors; t++) {
        const T5Tensor *T = &m.tensors[t];
        int n = T->numel <= (size_t)(test_quick() ? 16 : 64) ? (int)T->numel : per_tensor;
        size_t *idx = malloc(sizeof(size_t) * n);
        for (int i = 0; i < n; i++)
            idx[i] = T->offset + (n == (int)T->numel ? (size_t)i : rng_next_below(&r, T->numel));
        if (!strcmp(T->name, "shared.weight"))   /* make sure rows used as inputs are sampled */
            for (int i = 0; i < n; i += 3) {
                int row = i % 2 ? b.enc_ids[rng_next_below(&r, (uint64_t)b.B * b.Le)]
                                : b.dec_in_ids[rng_next_below(&r, (uint64_t)b.B * b.Ld)];
                idx[i] = T->offset + (size_t)row * cfg.d_model + rng_next_below(&r, cfg.d_model);
            }
        skipped += fd_check_(T->name, model_loss_, &c, pd, m.grads, idx, n);
        checked += n;
        free(idx);
    }
    CHECKF(skipped <= checked / 20, "%d of %d finite differences crossed a ReLU kink", skipped,
           checked);
    free(pd);
    t5_batch_free(&b);
    t5_model_free(&m);
}

static void test_model_relu_tied(void) { model_case_(0); }
static void test_model_gated_untied(void) { model_case_(1); }

/* The forward is independent of the batch row it sits in and of the micro-batch size, and the
 * activation buffers can grow and shrink between calls. */
static void test_model_batch_consistency(void) {
    T5Config cfg = tiny_cfg_(0);
    T5Model m;
    t5_model_build(&m, &cfg);
    t5_model_init_weights(&m, 5);
    T5Batch b;
    tiny_batch_(&b, cfg.vocab_size, 3);
    T5LossStats all, r0, r1;
    T5Batch s0 = t5_batch_slice(&b, 0, 1), s1 = t5_batch_slice(&b, 1, 1);
    t5_model_forward(&m, &s0, 1e-4f, &r0);
    t5_model_forward(&m, &b, 1e-4f, &all);
    t5_model_forward(&m, &s1, 1e-4f, &r1);
    CHECK_EQ_INT(all.tokens, r0.tokens + r1.tokens);
    CHECK_NEAR(all.ce_sum, r0.ce_sum + r1.ce_sum, 1e-5 * all.ce_sum);
    CHECK_NEAR(all.z_sum, r0.z_sum + r1.z_sum, 1e-5 * all.z_sum);
    t5_batch_free(&b);
    t5_model_free(&m);
}

/* Whole model in bf16 against fp32, same weights and batch: the loss within 1e-3 relative (the
 * issue's bound) and every parameter tensor's gradient within a relative L2 error bound. Why these
 * bounds: one bf16 product has relative L2 error ~2.25e-3 (tests/unit/test_gemm.c); a gradient
 * tensor is the end of a chain of products (LM head, then per layer attention and FFN, forward
 * and backward) whose independent errors add in quadrature: sqrt(20) x 2.25e-3 = 1e-2 for the
 * deepest tensors of this 2+2-layer model; measured: gated-GELU worst 1.3e-2, median ~1e-2 ->
 * bound 3e-2. ReLU adds discrete errors: where bf16 moves a pre-activation across 0 the unit's
 * mask flips and its whole gradient row changes by O(1); with 14 decoder tokens that dominates
 * the FFN input weights and norm gains right after a ReLU (measured worst 5.5e-2, median 2e-2)
 * -> bound 1e-1 per tensor and 3e-2 on the median tensor for both kinds. A real bug on the bf16
 * path (wrong transpose, stale weight copy, dropped beta) gives O(1) errors everywhere.
 * The oneDNN plumbing itself (strides, transposes, post-op sums, dense-output copies) is checked
 * exactly by a third pass, oneDNN fp32 against OpenBLAS fp32: within 1e-4 (summation order
 * only). */
#define BF16_GRAD_RTOL_GATED 3e-2
#define BF16_GRAD_RTOL_RELU 1e-1
#define BF16_GRAD_RTOL_MEDIAN 3e-2
#define ONEDNN_FP32_RTOL 1e-4

static int cmp_dbl_(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void bf16_case_(int gated) {
    GemmConfig cfgs[3] = {{GEMM_FP32, GEMM_BACKEND_OPENBLAS}, {GEMM_BF16, GEMM_BACKEND_ONEDNN},
                          {GEMM_FP32, GEMM_BACKEND_ONEDNN}};
    T5Config cfg = tiny_cfg_(gated);
    cfg.d_model = 64; cfg.d_ff = 128; cfg.n_heads = 4; cfg.d_kv = 16; cfg.vocab_size = 256;
    T5Model m;
    t5_model_build(&m, &cfg);
    t5_model_init_weights(&m, 91 + gated);
    T5Batch b;
    tiny_batch_(&b, cfg.vocab_size, 23 + gated);
    float *g32 = malloc(sizeof(float) * m.num_params);
    T5LossStats st[3];
    double scale = 1.0 / (b.B * b.Ld), *rel = malloc(sizeof(double) * m.num_tensors);
    for (int pass = 0; pass < 3; pass++) {
        char err[256];
        if (gemm_set_config(&cfgs[pass], err, sizeof err) != 0) {
            CHECKF(0, "gemm_set_config: %s", err);
            break;
        }
        gemm_weights_updated();
        t5_model_zero_grad(&m);
        t5_model_forward(&m, &b, 1e-4f, &st[pass]);
        t5_model_backward(&m, (float)scale);
        if (pass == 0) { memcpy(g32, m.grads, sizeof(float) * m.num_params); continue; }
        double l32 = st[0].ce_sum / st[0].tokens, l = st[pass].ce_sum / st[pass].tokens;
        double tol = pass == 1 ? (gated ? BF16_GRAD_RTOL_GATED : BF16_GRAD_RTOL_RELU)
                               : ONEDNN_FP32_RTOL;
        const char *lab = pass == 1 ? "bf16" : "oneDNN fp32";
        CHECKF(fabs(l - l32) <= (pass == 1 ? 1e-3 : 1e-6) * fabs(l32), "loss %s %.7g vs fp32 "
               "%.7g", lab, l, l32);
        double worst = 0;
        const char *worst_name = "";
        int nrel = 0;
        for (int t = 0; t < m.num_tensors; t++) {
            const T5Tensor *T = &m.tensors[t];
            double num = 0, den = 0;
            for (size_t i = 0; i < T->numel; i++) {
                double a = g32[T->offset + i], d = m.grads[T->offset + i] - a;
                num += d * d;
                den += a * a;
            }
            if (den == 0) { CHECKF(num == 0, "%s: fp32 gradient 0, %s not", T->name, lab); continue; }
            double r = sqrt(num / den);
            rel[nrel++] = r;
            if (r > worst) { worst = r; worst_name = T->name; }
            CHECKF(r <= tol, "%s: %s gradient relative L2 error %.3g > %.3g", T->name, lab, r, tol);
            if (getenv("T5_TEST_VERBOSE")) printf("  %s %s %.3g\n", lab, T->name, r);
        }
        qsort(rel, (size_t)nrel, sizeof(double), cmp_dbl_);
        double med = nrel ? rel[nrel / 2] : 0;
        if (pass == 1) {
            CHECKF(med <= BF16_GRAD_RTOL_MEDIAN, "median tensor bf16 error %.3g", med);
            /* the bf16 path really ran: rounding leaves a visible difference */
            CHECKF(worst >= 1e-4, "bf16 gradients equal fp32 ones (worst %.3g)", worst);
        }
        printf("info: %s %s: loss %.7f vs fp32 %.7f (rel %.2g); gradient rel L2 error worst "
               "%.3g (%s), median %.3g\n", lab, gated ? "gated" : "relu", l, l32,
               fabs(l - l32) / l32, worst, worst_name, med);
    }
    gemm_set_config(&cfgs[0], NULL, 0);
    free(g32); free(rel);
    t5_batch_free(&b);
    t5_model_free(&m);
}

/* Training: 60 Adafactor steps (the T5 recipe's defaults, rsqrt schedule) of the same tiny model
 * from the same weights on 4 fixed batches, in fp32 and in bf16 (gemm_weights_updated after
 * every step, as the trainer does): the mean loss of the last 20 steps agrees within 1%, and the
 * bf16 run trained (its loss fell). A bf16 path that kept stale weight copies, or any bias in
 * the products, drifts away over the steps; unbiased rounding noise averages out. */
static double train_run_(GemmPrecision prec, double *first) {
    GemmConfig c = {prec, prec == GEMM_BF16 ? GEMM_BACKEND_ONEDNN : GEMM_BACKEND_OPENBLAS};
    gemm_set_config(&c, NULL, 0);
    T5Config cfg = tiny_cfg_(0);
    cfg.d_model = 64; cfg.d_ff = 128; cfg.n_heads = 4; cfg.d_kv = 16; cfg.vocab_size = 256;
    T5Model m;
    t5_model_build(&m, &cfg);
    t5_model_init_weights(&m, 5);
    OptimConfig oc;
    optim_config_default(&oc, OPTIM_ADAFACTOR);
    OptimTensor *tt = calloc((size_t)m.num_tensors, sizeof(OptimTensor));
    for (int i = 0; i < m.num_tensors; i++) {
        tt[i].offset = m.tensors[i].offset;
        tt[i].numel = m.tensors[i].numel;
        tt[i].rows = m.tensors[i].shape[0];
        tt[i].cols = m.tensors[i].ndim == 2 ? m.tensors[i].shape[1] : 0;
    }
    Optim opt;
    memset(&opt, 0, sizeof opt);
    char err[256];
    if (optim_init(&opt, &oc, tt, m.num_tensors, m.num_params, err, sizeof err) != 0) {
        CHECKF(0, "optim_init: %s", err);
        free(tt);
        t5_model_free(&m);
        return NAN;
    }
    T5Batch b[4];
    for (int i = 0; i < 4; i++) tiny_batch_(&b[i], cfg.vocab_size, 100 + (uint64_t)i);
    double tail = 0;
    const int steps = 60, last = 20;
    gemm_weights_updated();
    for (int s = 0; s < steps; s++) {
        T5LossStats st;
        t5_model_zero_grad(&m);
        t5_model_forward(&m, &b[s % 4], 1e-4f, &st);
        t5_model_backward(&m, 1.0f / (float)(b[s % 4].B * b[s % 4].Ld));
        optim_step(&opt, m.params, m.grads, s);
        gemm_weights_updated();
        double loss = st.ce_sum / st.tokens;
        if (s == 0) *first = loss;
        if (s >= steps - last) tail += loss / last;
    }
    for (int i = 0; i < 4; i++) t5_batch_free(&b[i]);
    optim_free(&opt);
    free(tt);
    t5_model_free(&m);
    GemmConfig fp = {GEMM_FP32, GEMM_BACKEND_OPENBLAS};
    gemm_set_config(&fp, NULL, 0);
    return tail;
}

static void test_model_bf16_training(void) {
    double f32, f16;
    double a = train_run_(GEMM_FP32, &f32), b = train_run_(GEMM_BF16, &f16);
    printf("info: 60 Adafactor steps: mean loss of the last 20: fp32 %.5f, bf16 %.5f (rel %.2g); "
           "first %.5f / %.5f\n", a, b, fabs(a - b) / a, f32, f16);
    CHECKF(fabs(a - b) <= 0.01 * a, "bf16 training loss %.5f vs fp32 %.5f", b, a);
    CHECKF(b < f16 - 0.5 && a < f32 - 0.5, "the runs did not train (first %.4f / %.4f)", f32, f16);
}

static int bf16_available_(char *why, size_t n) {
    GemmConfig bf = {GEMM_BF16, GEMM_BACKEND_ONEDNN}, fp = {GEMM_FP32, GEMM_BACKEND_OPENBLAS};
    int ok = gemm_set_config(&bf, why, n) == 0;
    gemm_set_config(&fp, NULL, 0);
    return ok;
}
static void test_model_bf16_relu_tied(void) { bf16_case_(0); }
static void test_model_bf16_gated_untied(void) { bf16_case_(1); }

int main(void) {
    RUN(test_rmsnorm);
    RUN(test_attention);
    RUN(test_ffn_relu);
    RUN(test_ffn_gated_gelu);
    RUN(test_xent_zloss);
    RUN(test_embedding_tied_head);
    RUN(test_model_relu_tied);
    RUN(test_model_gated_untied);
    RUN(test_model_batch_consistency);
    char why[256];
    if (bf16_available_(why, sizeof why)) {
        RUN(test_model_bf16_relu_tied);
        RUN(test_model_bf16_gated_untied);
        RUN(test_model_bf16_training);
    } else {   /* e.g. under valgrind, which hides AVX-512: reported, not counted as passed */
        printf("SKIP test_model_bf16_relu_tied: not applicable on this host: %s\n"
               "SKIP test_model_bf16_gated_untied: not applicable on this host: %s\n"
               "SKIP test_model_bf16_training: not applicable on this host: %s\n", why, why, why);
    }
    gemm_release();
    printf("info: worst finite-difference error = %.3f of the tolerance\n", worst_);
    free(relu_signs_);
    return TEST_EXIT();
}
