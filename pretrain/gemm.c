/*
 * pretrain/gemm.c: see gemm.h for the contract and the design.
 *
 * Read top to bottom: configuration and policy, bf16 rounding, per-thread state, the primitive
 * cache, the weight cache, the oneDNN product, t5_gemm / t5_gemm_w, memory, peak measurement.
 */
#include "gemm.h"

#include <cblas.h>
#include <dnnl.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/blas_runtime.h"   /* blas_runtime_set_threads */
#include "../common/util.h"           /* FATAL, xmalloc*, now_seconds, set_error */

/* ---------------------------------------------------------------------------------------------
 * Configuration and the default policy */

static GemmConfig config_ = {GEMM_FP32, GEMM_BACKEND_OPENBLAS};
static pthread_mutex_t lock_ = PTHREAD_MUTEX_INITIALIZER;
static dnnl_engine_t engine_ = NULL;

const char *gemm_precision_name(GemmPrecision p) { return p == GEMM_BF16 ? "bf16" : "fp32"; }

int gemm_parse_precision(const char *s, GemmPrecision *p) {
    if (!s) return -1;
    if (!strcmp(s, "fp32")) { *p = GEMM_FP32; return 0; }
    if (!strcmp(s, "bf16")) { *p = GEMM_BF16; return 0; }
    return -1;
}

static const char *isa_name_(dnnl_cpu_isa_t isa) {
    switch (isa) {
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_sse41: return "sse41";
    default: return "other";
    }
}

/* ISA bit masks nest (avx512_core_bf16 = avx512_core_vnni | bf16 bit, ...). */
static int isa_has_(dnnl_cpu_isa_t isa, dnnl_cpu_isa_t want) {
    return ((unsigned)isa & (unsigned)want) == (unsigned)want;
}

void gemm_default_config(GemmConfig *cfg, char *why, size_t whylen) {
    __builtin_cpu_init();
    int amx = __builtin_cpu_supports("amx-bf16"), avx512bf16 = __builtin_cpu_supports("avx512bf16");
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    const char *cpu = amx ? "AMX-BF16" : avx512bf16 ? "AVX512_BF16" : NULL;
    int dnnl_bf16 = isa_has_(isa, dnnl_cpu_isa_avx512_core_bf16);
    if (cpu && dnnl_bf16) {
        cfg->precision = GEMM_BF16;
        cfg->backend = GEMM_BACKEND_ONEDNN;
        if (why) snprintf(why, whylen, "bf16: CPU has %s and oneDNN %d.%d ISA %s uses it", cpu,
                          (int)dnnl_version()->major, (int)dnnl_version()->minor, isa_name_(isa));
    } else {
        cfg->precision = GEMM_FP32;
        cfg->backend = GEMM_BACKEND_OPENBLAS;
        if (why) {
            if (!cpu)
                snprintf(why, whylen, "fp32: CPU has neither AMX-BF16 nor AVX512_BF16 (bf16 "
                         "products would be emulated, not faster)");
            else
                snprintf(why, whylen, "fp32: CPU has %s but oneDNN's effective ISA is %s "
                         "(ONEDNN_MAX_CPU_ISA?), bf16 products would be emulated", cpu,
                         isa_name_(isa));
        }
    }
}

static void engine_init_(void) {
    pthread_mutex_lock(&lock_);
    if (!engine_ && dnnl_engine_create(&engine_, dnnl_cpu, 0) != dnnl_success)
        FATAL("oneDNN (libdnnl) could not create a CPU engine; use --precision fp32",
              "dnnl_engine_create failed");
    pthread_mutex_unlock(&lock_);
}

void gemm_release(void);

int gemm_set_config(const GemmConfig *cfg, char *err, size_t errlen) {
    if (cfg->precision != GEMM_FP32 && cfg->precision != GEMM_BF16) {
        set_error(err, errlen, "unknown GEMM precision %d", (int)cfg->precision);
        return -1;
    }
    if (cfg->backend != GEMM_BACKEND_OPENBLAS && cfg->backend != GEMM_BACKEND_ONEDNN) {
        set_error(err, errlen, "unknown GEMM backend %d", (int)cfg->backend);
        return -1;
    }
    if (cfg->precision == GEMM_BF16 && cfg->backend != GEMM_BACKEND_ONEDNN) {
        set_error(err, errlen, "bf16 products need the oneDNN backend (OpenBLAS runs fp32 only)");
        return -1;
    }
    if (cfg->precision == GEMM_BF16 &&
        !isa_has_(dnnl_get_effective_cpu_isa(), dnnl_cpu_isa_avx512_core)) {
        set_error(err, errlen, "bf16 products need at least AVX-512 (oneDNN ISA here: %s); "
                  "use fp32", isa_name_(dnnl_get_effective_cpu_isa()));
        return -1;
    }
    if (cfg->backend == GEMM_BACKEND_ONEDNN) engine_init_();
    gemm_release();
    config_ = *cfg;
    return 0;
}

void gemm_get_config(GemmConfig *cfg) { *cfg = config_; }

/* ---------------------------------------------------------------------------------------------
 * bf16 rounding: the top 16 bits of the fp32 pattern after round-to-nearest-even; NaN is kept
 * a (quiet) NaN. Written as integer arithmetic so the conversion loops vectorise. */

static inline uint16_t to_bf16_(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : r);
}

float gemm_round_bf16(float x) {
    uint32_t u = (uint32_t)to_bf16_(x) << 16;
    float y;
    memcpy(&y, &u, sizeof y);
    return y;
}

/* One row: d[n] = bf16(scale * s[n]). Three versions with the same rounding (nearest even):
 * AVX512_BF16's vcvtneps2bf16 (16 per instruction; it treats denormal inputs as zero, harmless
 * for training values), the integer formula compiled for AVX-512, and the portable one. */
#define ROW_BODY_                                                                      \
    if (scale == 1.0f) {                                                               \
        _Pragma("omp simd") for (int c = 0; c < n; c++) d[c] = to_bf16_(s[c]);         \
    } else {                                                                           \
        _Pragma("omp simd") for (int c = 0; c < n; c++) d[c] = to_bf16_(scale * s[c]); \
    }
static void row_plain_(uint16_t *d, const float *s, int n, float scale) { ROW_BODY_ }
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void row_avx512_(uint16_t *d, const float *s, int n, float scale) { ROW_BODY_ }
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void row_avx512bf16_(uint16_t *d, const float *s, int n, float scale) {
    __m512 sc = _mm512_set1_ps(scale);
    int c = 0;
    for (; c + 16 <= n; c += 16) {
        __m256bh y = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(s + c), sc));
        _mm256_storeu_si256((__m256i *)(d + c), (__m256i)y);
    }
    if (c < n) {
        __mmask16 m = (__mmask16)((1u << (n - c)) - 1u);
        __m256bh y = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + c), sc));
        _mm256_mask_storeu_epi16(d + c, m, (__m256i)y);
    }
}

typedef void (*RowFn)(uint16_t *, const float *, int, float);
static RowFn row_fn_(void) {
    static RowFn fn = NULL;
    if (!fn) {
        __builtin_cpu_init();
        RowFn f = row_plain_;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl"))
            f = __builtin_cpu_supports("avx512bf16") ? row_avx512bf16_ : row_avx512_;
        fn = f;   /* racing threads store the same value */
    }
    return fn;
}

/* dst[rows, cols] (dense) = bf16(scale * src[rows, cols] at row stride ld). Parallel over rows
 * when called outside a parallel region and the matrix is large. */
static void convert_(uint16_t *dst, const float *src, int rows, int cols, int ld, float scale) {
    size_t n = (size_t)rows * cols;
    int par = !omp_in_parallel() && n >= ((size_t)1 << 16);
    RowFn fn = row_fn_();
#pragma omp parallel for schedule(static) if (par)
    for (int r = 0; r < rows; r++)
        fn(dst + (size_t)r * cols, src + (size_t)r * ld, cols, scale);
}

/* ---------------------------------------------------------------------------------------------
 * Statistics */

static int stats_on_ = -1;
static GemmStats stats_;   /* updated under lock_ (calls) or by thread 0 only (times) */

static int stats_timed_(void) {
    if (stats_on_ < 0) {
        const char *e = getenv("T5_PROFILE");
        stats_on_ = (e && *e && *e != '0') ? 1 : 0;
    }
    return stats_on_;
}
void gemm_stats_enable(int on) { stats_on_ = on ? 1 : 0; }
void gemm_stats_get(GemmStats *s) {
    pthread_mutex_lock(&lock_);
    *s = stats_;
    pthread_mutex_unlock(&lock_);
}
void gemm_stats_reset(void) {
    pthread_mutex_lock(&lock_);
    memset(&stats_, 0, sizeof stats_);
    pthread_mutex_unlock(&lock_);
}
static void stats_add_(double flops, double conv_s, double kern_s) {
    pthread_mutex_lock(&lock_);
    stats_.calls++;
    stats_.flops += flops;
    stats_.convert_s += conv_s;
    stats_.kernel_s += kern_s;
    pthread_mutex_unlock(&lock_);
}

/* ---------------------------------------------------------------------------------------------
 * Per-thread state: conversion buffers for A and B, a dense output buffer, the scratchpad and a
 * stream. Slot = omp_get_thread_num() inside a parallel region, 0 outside (the two never run at
 * the same time: thread 0 of a region is the thread that was outside). */

#define MAX_SLOTS 256

typedef struct {
    void *buf[4];          /* 0: A bf16, 1: B bf16, 2: dense C, 3: scratchpad */
    size_t cap[4];         /* bytes */
    dnnl_stream_t stream;
} Slot;

static Slot *slots_[MAX_SLOTS];

static Slot *slot_(void) {
    int t = omp_in_parallel() ? omp_get_thread_num() : 0;
    if (t < 0 || t >= MAX_SLOTS)
        FATAL("run with at most 256 OpenMP threads", "t5_gemm called from thread %d", t);
    if (!slots_[t]) {
        Slot *s = xcalloc(1, sizeof *s);
        pthread_mutex_lock(&lock_);
        if (dnnl_stream_create(&s->stream, engine_, dnnl_stream_default_flags) != dnnl_success)
            FATAL("oneDNN could not create a stream; use --precision fp32",
                  "dnnl_stream_create failed");
        pthread_mutex_unlock(&lock_);
        slots_[t] = s;   /* only thread t ever touches slots_[t] until gemm_release */
    }
    return slots_[t];
}

static void *slot_buf_(Slot *s, int i, size_t bytes) {
    if (s->cap[i] < bytes) {
        free(s->buf[i]);
        size_t cap = bytes + bytes / 4 + 4096;
        s->buf[i] = xmalloc_aligned(cap);
        s->cap[i] = cap;
    }
    return s->buf[i];
}

/* ---------------------------------------------------------------------------------------------
 * Primitive cache. Entries never move (array of pointers), so a pointer stays valid after the
 * lock is released. */

typedef struct {
    int prec, ta, tb, M, N, K, lda, ldb, ldc;
    uint32_t alpha_bits, beta_bits;
} PrimKey;

typedef struct {
    PrimKey key;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t a_md, b_md, c_md, s_md;
    size_t scratch_bytes;
    char impl[64];
} Prim;

static Prim **prims_ = NULL;
static int nprims_ = 0, capprims_ = 0;

static uint32_t fbits_(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static void dnnl_check_(dnnl_status_t st, const char *what, const PrimKey *k) {
    if (st == dnnl_success) return;
    FATAL("oneDNN rejected this product; rerun with --precision fp32 and report the shape",
          "%s failed (status %d) for %s product ta=%d tb=%d M=%d N=%d K=%d lda=%d ldb=%d ldc=%d",
          what, (int)st, k->prec == GEMM_BF16 ? "bf16" : "fp32", k->ta, k->tb, k->M, k->N, k->K,
          k->lda, k->ldb, k->ldc);
}

/* Create the primitive for k (lock held). bf16: dense operands in stored orientation, dense
 * output, alpha folded into A (not in the key: it is 1), beta as a sum post-op. fp32: the
 * caller's strides, alpha as output scale, beta as sum post-op. */
static Prim *prim_create_(const PrimKey *k) {
    Prim *p = xcalloc(1, sizeof *p);
    p->key = *k;
    dnnl_data_type_t dt = k->prec == GEMM_BF16 ? dnnl_bf16 : dnnl_f32;
    dnnl_dims_t ad = {k->M, k->K}, bd = {k->K, k->N}, cd = {k->M, k->N};
    dnnl_dims_t as = {k->ta ? 1 : k->lda, k->ta ? k->lda : 1};
    dnnl_dims_t bs = {k->tb ? 1 : k->ldb, k->tb ? k->ldb : 1};
    dnnl_dims_t cs = {k->ldc, 1};
    dnnl_check_(dnnl_memory_desc_init_by_strides(&p->a_md, 2, ad, dt, as), "A descriptor", k);
    dnnl_check_(dnnl_memory_desc_init_by_strides(&p->b_md, 2, bd, dt, bs), "B descriptor", k);
    dnnl_check_(dnnl_memory_desc_init_by_strides(&p->c_md, 2, cd, dnnl_f32, cs), "C descriptor",
                k);
    dnnl_matmul_desc_t md;
    dnnl_check_(dnnl_matmul_desc_init(&md, &p->a_md, &p->b_md, NULL, &p->c_md), "matmul desc", k);
    dnnl_primitive_attr_t attr;
    dnnl_check_(dnnl_primitive_attr_create(&attr), "attr", k);
    dnnl_check_(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user),
                "user scratchpad", k);
    float alpha, beta;
    memcpy(&alpha, &k->alpha_bits, sizeof alpha);
    memcpy(&beta, &k->beta_bits, sizeof beta);
    if (alpha != 1.0f)
        dnnl_check_(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha), "alpha", k);
    if (beta != 0.0f) {
        dnnl_post_ops_t po;
        dnnl_check_(dnnl_post_ops_create(&po), "post-ops", k);
        dnnl_check_(dnnl_post_ops_append_sum(po, beta), "sum post-op", k);
        dnnl_check_(dnnl_primitive_attr_set_post_ops(attr, po), "post-ops", k);
        dnnl_post_ops_destroy(po);
    }
    dnnl_primitive_desc_t pd;
    dnnl_check_(dnnl_primitive_desc_create(&pd, &md, attr, engine_, NULL), "primitive desc", k);
    dnnl_primitive_attr_destroy(attr);
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl)
        snprintf(p->impl, sizeof p->impl, "%s", impl);
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (smd) {
        p->s_md = *smd;
        p->scratch_bytes = dnnl_memory_desc_get_size(smd);
    }
    dnnl_check_(dnnl_primitive_create(&p->prim, pd), "primitive", k);
    dnnl_primitive_desc_destroy(pd);
    return p;
}

static Prim *prim_get_(const PrimKey *k) {
    pthread_mutex_lock(&lock_);
    for (int i = 0; i < nprims_; i++)
        if (!memcmp(&prims_[i]->key, k, sizeof *k)) {
            Prim *p = prims_[i];
            pthread_mutex_unlock(&lock_);
            return p;
        }
    if (nprims_ == capprims_) {
        capprims_ = capprims_ ? 2 * capprims_ : 64;
        prims_ = xrealloc(prims_, (size_t)capprims_ * sizeof *prims_);
    }
    Prim *p = prim_create_(k);
    prims_[nprims_++] = p;
    pthread_mutex_unlock(&lock_);
    return p;
}

/* ---------------------------------------------------------------------------------------------
 * Weight cache: bf16 copy of a weight as stored ([rows, cols] dense), valid for one generation.
 * 8 sampled fp32 elements detect a weight that changed without gemm_weights_updated(). */

#define NSAMPLE 8

typedef struct {
    const float *ptr;
    int rows, cols, ld;
    unsigned long gen;
    uint16_t *bf;
    float sample[NSAMPLE];
} WeightEntry;

static WeightEntry **weights_ = NULL;
static int nweights_ = 0, capweights_ = 0;
static unsigned long gen_ = 1;

void gemm_weights_updated(void) {
    pthread_mutex_lock(&lock_);
    gen_++;
    pthread_mutex_unlock(&lock_);
}

static size_t sample_index_(const WeightEntry *w, int i) {
    size_t n = (size_t)w->rows * w->cols;
    size_t e = (size_t)(((unsigned long long)n * (unsigned)(2 * i + 1)) / (2 * NSAMPLE));
    return (e / (size_t)w->cols) * (size_t)w->ld + e % (size_t)w->cols;
}

/* The bf16 copy of weight B (stored [rows, cols] at row stride ld), converted if stale. */
static const uint16_t *weight_get_(const float *B, int rows, int cols, int ld, double *conv_s) {
    pthread_mutex_lock(&lock_);
    WeightEntry *w = NULL;
    for (int i = 0; i < nweights_; i++) {
        WeightEntry *e = weights_[i];
        if (e->ptr == B && e->rows == rows && e->cols == cols && e->ld == ld) { w = e; break; }
    }
    if (!w) {
        if (nweights_ == capweights_) {
            capweights_ = capweights_ ? 2 * capweights_ : 128;
            weights_ = xrealloc(weights_, (size_t)capweights_ * sizeof *weights_);
        }
        w = xcalloc(1, sizeof *w);
        w->ptr = B; w->rows = rows; w->cols = cols; w->ld = ld;
        w->bf = xmalloc_aligned((size_t)rows * cols * sizeof(uint16_t) + 64);
        weights_[nweights_++] = w;
    } else if (w->gen == gen_) {
        for (int i = 0; i < NSAMPLE; i++)
            if (fbits_(B[sample_index_(w, i)]) != fbits_(w->sample[i]))
                FATAL("call gemm_weights_updated() after every change of the weights (optimizer "
                      "step, loading a checkpoint)",
                      "bf16 weight cache: the weight at %p ([%d, %d]) changed without "
                      "gemm_weights_updated(); its bf16 copy is stale", (const void *)B, rows,
                      cols);
        pthread_mutex_unlock(&lock_);
        return w->bf;
    }
    double t0 = stats_timed_() ? now_seconds() : 0.0;
    convert_(w->bf, B, rows, cols, ld, 1.0f);
    for (int i = 0; i < NSAMPLE; i++) w->sample[i] = B[sample_index_(w, i)];
    w->gen = gen_;
    stats_.weight_conversions++;
    if (stats_timed_()) *conv_s += now_seconds() - t0;
    pthread_mutex_unlock(&lock_);
    return w->bf;
}

/* ---------------------------------------------------------------------------------------------
 * The oneDNN product */

static void execute_(Prim *p, Slot *s, const void *a, const void *b, float *c) {
    dnnl_memory_t ma, mb, mc, ms = NULL;
    const PrimKey *k = &p->key;
    dnnl_check_(dnnl_memory_create(&ma, &p->a_md, engine_, (void *)a), "A memory", k);
    dnnl_check_(dnnl_memory_create(&mb, &p->b_md, engine_, (void *)b), "B memory", k);
    dnnl_check_(dnnl_memory_create(&mc, &p->c_md, engine_, c), "C memory", k);
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc},
                               {DNNL_ARG_SCRATCHPAD, NULL}};
    int nargs = 3;
    if (p->scratch_bytes > 0) {
        void *sp = slot_buf_(s, 3, p->scratch_bytes);
        dnnl_check_(dnnl_memory_create(&ms, &p->s_md, engine_, sp), "scratchpad memory", k);
        args[3].memory = ms;
        nargs = 4;
    }
    dnnl_check_(dnnl_primitive_execute(p->prim, s->stream, nargs, args), "execute", k);
    dnnl_check_(dnnl_stream_wait(s->stream), "stream wait", k);
    dnnl_memory_destroy(ma);
    dnnl_memory_destroy(mb);
    dnnl_memory_destroy(mc);
    if (ms) dnnl_memory_destroy(ms);
}

static void onednn_gemm_(int is_weight, int ta, int tb, int M, int N, int K, float alpha,
                         const float *A, int lda, const float *B, int ldb, float beta, float *C,
                         int ldc) {
    Slot *s = slot_();
    int timed = stats_timed_() && !omp_in_parallel();   /* wall time outside parallel regions */
    double t0 = timed ? now_seconds() : 0.0, conv = 0.0;
    PrimKey k;
    memset(&k, 0, sizeof k);
    k.prec = config_.precision; k.ta = ta; k.tb = tb; k.M = M; k.N = N; k.K = K;
    if (config_.precision == GEMM_FP32) {
        k.lda = lda; k.ldb = ldb; k.ldc = ldc;
        k.alpha_bits = fbits_(alpha); k.beta_bits = fbits_(beta);
        Prim *p = prim_get_(&k);
        execute_(p, s, A, B, C);
        stats_add_(2.0 * M * N * K, 0.0, timed ? now_seconds() - t0 : 0.0);
        return;
    }
    /* bf16: dense operands as stored; alpha folded into A */
    int arows = ta ? K : M, acols = ta ? M : K, brows = tb ? N : K, bcols = tb ? K : N;
    uint16_t *a16 = slot_buf_(s, 0, (size_t)arows * acols * sizeof(uint16_t));
    convert_(a16, A, arows, acols, lda, alpha);
    const uint16_t *b16;
    if (is_weight) {
        b16 = weight_get_(B, brows, bcols, ldb, &conv);
    } else {
        uint16_t *bb = slot_buf_(s, 1, (size_t)brows * bcols * sizeof(uint16_t));
        convert_(bb, B, brows, bcols, ldb, 1.0f);
        b16 = bb;
    }
    double t1 = timed ? now_seconds() : 0.0;
    int dense_c = ldc == N;
    k.lda = acols; k.ldb = bcols; k.ldc = N;
    k.alpha_bits = fbits_(1.0f);
    k.beta_bits = fbits_(dense_c ? beta : 0.0f);
    Prim *p = prim_get_(&k);
    if (dense_c) {
        execute_(p, s, a16, b16, C);
    } else {
        float *tmp = slot_buf_(s, 2, (size_t)M * N * sizeof(float));
        execute_(p, s, a16, b16, tmp);
        for (int i = 0; i < M; i++) {
            float *c = C + (size_t)i * ldc;
            const float *t = tmp + (size_t)i * N;
            if (beta == 0.0f) {
                memcpy(c, t, (size_t)N * sizeof(float));
            } else {
#pragma omp simd
                for (int j = 0; j < N; j++) c[j] = t[j] + beta * c[j];
            }
        }
    }
    if (timed) stats_add_(2.0 * M * N * K, (t1 - t0) + conv, now_seconds() - t1);
    else stats_add_(2.0 * M * N * K, 0.0, 0.0);
}

/* ---------------------------------------------------------------------------------------------
 * The interface */

/* C = beta C for an empty inner dimension (or the trivial cases oneDNN would reject). */
static void scale_c_(int M, int N, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float *c = C + (size_t)i * ldc + j;
            *c = beta == 0.0f ? 0.0f : beta * *c;
        }
}

static void gemm_(int is_weight, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { scale_c_(M, N, beta, C, ldc); return; }
    if (config_.backend == GEMM_BACKEND_ONEDNN) {
        onednn_gemm_(is_weight, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int timed = stats_timed_() && !omp_in_parallel();
    double t0 = timed ? now_seconds() : 0.0;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M,
                N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    stats_add_(2.0 * M * N * K, 0.0, timed ? now_seconds() - t0 : 0.0);
}

void t5_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc) {
    gemm_(0, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void t5_gemm_w(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    gemm_(1, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_release(void) {
    pthread_mutex_lock(&lock_);
    for (int i = 0; i < nprims_; i++) {
        dnnl_primitive_destroy(prims_[i]->prim);
        free(prims_[i]);
    }
    free(prims_);
    prims_ = NULL; nprims_ = capprims_ = 0;
    for (int i = 0; i < nweights_; i++) {
        free(weights_[i]->bf);
        free(weights_[i]);
    }
    free(weights_);
    weights_ = NULL; nweights_ = capweights_ = 0;
    for (int t = 0; t < MAX_SLOTS; t++) {
        Slot *s = slots_[t];
        if (!s) continue;
        for (int i = 0; i < 4; i++) free(s->buf[i]);
        if (s->stream) dnnl_stream_destroy(s->stream);
        free(s);
        slots_[t] = NULL;
    }
    pthread_mutex_unlock(&lock_);
}

/* ---------------------------------------------------------------------------------------------
 * Memory */

size_t gemm_extra_bytes(GemmPrecision p, size_t weight_params, size_t largest_a_floats,
                        size_t largest_b_floats, int threads) {
    if (p != GEMM_BF16) return 0;
    if (threads < 1) threads = 1;
    return 2 * weight_params + (size_t)(1.25 * 2.0 * (double)(largest_a_floats + largest_b_floats)) +
           (size_t)threads * ((size_t)4 << 20);
}

size_t gemm_cache_bytes(void) {
    size_t b = 0;
    pthread_mutex_lock(&lock_);
    for (int i = 0; i < nweights_; i++)
        b += (size_t)weights_[i]->rows * weights_[i]->cols * sizeof(uint16_t);
    for (int t = 0; t < MAX_SLOTS; t++)
        if (slots_[t])
            for (int i = 0; i < 4; i++) b += slots_[t]->cap[i];
    pthread_mutex_unlock(&lock_);
    return b;
}

/* ---------------------------------------------------------------------------------------------
 * One line for the log */

const char *gemm_describe(void) {
    static char line[384];
    const dnnl_version_t *v = dnnl_version();
    char impl[64] = "";
    pthread_mutex_lock(&lock_);
    for (int i = 0; i < nprims_; i++)
        if (prims_[i]->key.prec == (int)config_.precision) {
            snprintf(impl, sizeof impl, "%s", prims_[i]->impl);
            break;
        }
    pthread_mutex_unlock(&lock_);
    if (config_.backend == GEMM_BACKEND_OPENBLAS)
        snprintf(line, sizeof line, "GEMM fp32 OpenBLAS sgemm");
    else
        snprintf(line, sizeof line, "GEMM %s oneDNN %d.%d.%d, ISA %s, kernel %s",
                 gemm_precision_name(config_.precision), (int)v->major, (int)v->minor,
                 (int)v->patch, isa_name_(dnnl_get_effective_cpu_isa()),
                 impl[0] ? impl : "(none created yet)");
    return line;
}

/* ---------------------------------------------------------------------------------------------
 * Peak measurement */

static int cmp_double_(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int gemm_measure_peak(GemmPrecision prec, int n, int threads, int reps, GemmPeak *out, char *err,
                      size_t errlen) {
    memset(out, 0, sizeof *out);
    if (prec == GEMM_BF16 && !isa_has_(dnnl_get_effective_cpu_isa(), dnnl_cpu_isa_avx512_core)) {
        set_error(err, errlen, "bf16 products need at least AVX-512 (oneDNN ISA here: %s)",
                  isa_name_(dnnl_get_effective_cpu_isa()));
        return -1;
    }
    if (n < 16) n = 16;
    if (reps < 3) reps = 3;
    if (threads > 0) blas_runtime_set_threads(threads);
    size_t nn = (size_t)n * n;
    float *A = xmalloc_aligned(nn * sizeof(float)), *B = xmalloc_aligned(nn * sizeof(float));
    float *C = xmalloc_aligned(nn * sizeof(float));
    Rng r = rng_make(12345, 3);
    for (size_t i = 0; i < nn; i++) A[i] = (float)(2.0 * rng_next_double(&r) - 1.0);
    for (size_t i = 0; i < nn; i++) B[i] = (float)(2.0 * rng_next_double(&r) - 1.0);
    double *t = xmalloc((size_t)reps * sizeof(double));
    Prim *p = NULL;
    Slot *s = NULL;
    uint16_t *a16 = NULL, *b16 = NULL;
    if (prec == GEMM_BF16) {
        engine_init_();
        s = slot_();
        PrimKey k = {GEMM_BF16, 0, 0, n, n, n, n, n, n, fbits_(1.0f), fbits_(0.0f)};
        p = prim_get_(&k);
        a16 = xmalloc_aligned(nn * sizeof(uint16_t));
        b16 = xmalloc_aligned(nn * sizeof(uint16_t));
        convert_(a16, A, n, n, n, 1.0f);
        convert_(b16, B, n, n, n, 1.0f);
        snprintf(out->kernel, sizeof out->kernel, "oneDNN %s", p->impl);
    } else {
        snprintf(out->kernel, sizeof out->kernel, "OpenBLAS sgemm");
    }
    for (int rep = -1; rep < reps; rep++) {   /* rep -1: warm-up */
        double t0 = now_seconds();
        if (prec == GEMM_BF16)
            execute_(p, s, a16, b16, C);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, A, n, B, n,
                        0.0f, C, n);
        if (rep >= 0) t[rep] = now_seconds() - t0;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double_);
    double flops = 2.0 * (double)n * n * n;
    double med = (reps % 2) ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
    out->reps = reps;
    out->best_s = t[0];
    out->best_gflops = flops / t[0] / 1e9;
    out->median_gflops = flops / med / 1e9;
    out->worst_gflops = flops / t[reps - 1] / 1e9;
    out->disturbed = out->median_gflops < 0.85 * out->best_gflops;
    free(t); free(A); free(B); free(C); free(a16); free(b16);
    return 0;
}
