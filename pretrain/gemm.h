/*
 * pretrain/gemm.h: the one matrix-product interface of the model.
 *
 * Every matrix product of the model (Linear forward and both backward products, the LM head,
 * attention's Q K^T and P V and their backward) goes through t5_gemm / t5_gemm_w, a strided
 * row-major GEMM
 *
 *     C[M,N] = alpha * op(A)[M,K] . op(B)[K,N] + beta * C        op(X) = X or X^T
 *
 * with row strides lda, ldb, ldc (in elements, as cblas_sgemm RowMajor). A, B and C are fp32 in
 * memory whatever the precision; accumulation is always fp32.
 *
 * Backends and precisions (gemm_set_config, process-wide, before the products of a run):
 *   OPENBLAS fp32   cblas_sgemm; always available; the reference path.
 *   ONEDNN   fp32   dnnl matmul on the fp32 operands (a second fp32 implementation; the unit
 *                   tests compare it with OpenBLAS).
 *   ONEDNN   bf16   A and B rounded to bfloat16 (round to nearest even), products accumulated
 *                   in fp32 by oneDNN, C stays fp32. This is Mesh TensorFlow's
 *                   activation_dtype = bfloat16 applied to the inputs of matrix products only.
 *
 * How the bf16 path is fast (decisions, measured on this machine's oneDNN 2.6.3):
 *   - One primitive per (precision, transposes, M, N, K, strides, alpha, beta), created on first
 *     use and cached for the life of the process (oneDNN's runtime-dimension primitives fall back
 *     to a slow kernel in 2.6). Shapes of a run are few (a few dozen).
 *   - The primitive always sees DENSE bf16 operands in their stored orientation (the conversion
 *     copies strided views into dense buffers) and a dense fp32 output: oneDNN 2.6 picks its
 *     brgemm kernel only for dense operands and output ("gemm:jit" otherwise, 3x slower on the
 *     P V shape). A strided C (attention's head views) is computed into a dense per-thread
 *     buffer, then added into place.
 *   - beta != 0 with a dense C is a fused sum post-op (dW += ... without a separate add).
 *     alpha != 1 is folded into the bf16 rounding of A (bf16(alpha a) instead of alpha bf16(a):
 *     the same error bound, and no output-scale attribute, which slows the kernel).
 *   - Weights: t5_gemm_w says "B is a weight". Its bf16 copy is kept in a cache keyed by
 *     (pointer, stored shape, ldb) and converted at most once per weight generation; the trainer
 *     calls gemm_weights_updated() after every optimizer step (t5eval once after loading), which
 *     starts a new generation. The same stored copy serves the forward (B = W^T) and the
 *     input-gradient product (B = W). Safety net: each cache entry remembers 8 sampled fp32
 *     elements; if any of them changed while the generation did not, the process stops with a
 *     FATAL message (a missing gemm_weights_updated() call can never silently use stale weights).
 *   - Activations (t5_gemm, and A of t5_gemm_w) are converted on every call into per-thread
 *     buffers.
 *
 * Threads: t5_gemm may be called from inside `omp parallel` regions (attention calls one product
 * per (batch, head)); the product then runs single-threaded on the caller's thread. The
 * primitive and weight caches are guarded by one mutex (held during primitive creation and weight
 * conversion, not during execution); every thread has its own conversion buffers, output
 * buffer, oneDNN stream and scratchpad (primitives are created with a user scratchpad, so
 * concurrent executions never share oneDNN's global one). Threads are identified by
 * omp_get_thread_num() inside a parallel region and as 0 outside (at most 256 threads).
 * gemm_set_config, gemm_weights_updated and gemm_release must be called outside parallel regions.
 */
#ifndef T5_GEMM_H
#define T5_GEMM_H

#include <stddef.h>

typedef enum { GEMM_FP32 = 0, GEMM_BF16 = 1 } GemmPrecision;
typedef enum { GEMM_BACKEND_OPENBLAS = 0, GEMM_BACKEND_ONEDNN = 1 } GemmBackend;

typedef struct {
    GemmPrecision precision;
    GemmBackend backend;
} GemmConfig;

/* Select the backend and precision for every following product. 0, or -1 with a message in err
 * when the combination is not available on this machine (nothing changed). bf16 needs the oneDNN
 * backend and a CPU on which oneDNN runs bf16 (AVX512_BF16 or AMX; an older AVX-512 core is
 * accepted too, oneDNN then emulates bf16, correct but not faster: see gemm_default_precision).
 * Changing the config clears the weight cache. */
int gemm_set_config(const GemmConfig *cfg, char *err, size_t errlen);
void gemm_get_config(GemmConfig *cfg);

/* "fp32" / "bf16"; parse returns 0 or -1 for anything else. */
const char *gemm_precision_name(GemmPrecision p);
int gemm_parse_precision(const char *s, GemmPrecision *p);

/* The default policy: bf16 (oneDNN) when the CPU has AMX-BF16 or AVX512_BF16 and oneDNN's
 * effective ISA (ONEDNN_MAX_CPU_ISA may lower it) can use it; fp32 (OpenBLAS) otherwise. why gets
 * one sentence for the start-up log ("bf16: CPU has AVX512_BF16, oneDNN ISA avx512_core_bf16").
 * Fills cfg with the matching backend. Never fails. */
void gemm_default_config(GemmConfig *cfg, char *why, size_t whylen);

/* One line for the log: backend, precision, oneDNN version and effective ISA, and the kernel
 * oneDNN picked for a representative bf16/fp32 product (e.g. "brg:avx512_core_bf16"). Static
 * storage, refreshed on each call. */
const char *gemm_describe(void);

/* C = alpha * op(A) op(B) + beta * C; trans_a/trans_b: 0 = as stored, 1 = transposed.
 * A is [M,K] (trans_a = 0) or [K,M] (trans_a = 1) with row stride lda; likewise B. Both operands
 * are activations (converted on every call in bf16). beta = 0 never reads C (NaN there is fine).
 * M, N or K of 0 is allowed (K = 0: C = beta C). Fatal (with a hint) if oneDNN fails. */
void t5_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc);

/* The same product where B is a model weight (its contents change only between calls of
 * gemm_weights_updated()); in bf16 its converted copy is cached (see above). In fp32 exactly
 * t5_gemm. */
void t5_gemm_w(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* Start a new weight generation: every cached bf16 weight copy is reconverted on its next use.
 * Call after every optimizer step and after loading or changing weights in any other way. */
void gemm_weights_updated(void);

/* Free every cache and per-thread buffer (primitives, weight copies, scratch). The module stays
 * usable (caches refill on demand). Call at the end of programs and tests (valgrind). */
void gemm_release(void);

/* Memory the bf16 path needs beyond the fp32 model: bf16 copies of weight_params weight
 * elements (2 bytes each), the conversion buffers of the largest A operand (largest_a_floats;
 * for T5 the LM-head gradient [M, V]) and the largest activation B operand (largest_b_floats;
 * for T5 a weight-gradient input [N, max(d, d_ff)]), 2 bytes per element plus the 25% growth
 * slack of the buffers, and per thread at most 4 MiB of dense attention outputs and oneDNN
 * scratchpad. fp32: 0. For the memory estimate. */
size_t gemm_extra_bytes(GemmPrecision p, size_t weight_params, size_t largest_a_floats,
                        size_t largest_b_floats, int threads);

/* Bytes held now by the caches and buffers (for reports). */
size_t gemm_cache_bytes(void);

/* Counters since the last gemm_stats_reset(): products, FLOPs, weight conversions, and (only
 * when enabled: T5_PROFILE=1 or gemm_stats_enable(1)) wall seconds converting operands to bf16
 * and in the product kernels, for products called OUTSIDE parallel regions (the attention
 * products run inside one and are timed as part of attention by t5_ops). */
typedef struct {
    long calls, weight_conversions;
    double convert_s, kernel_s;
    double flops;
} GemmStats;
void gemm_stats_enable(int on);
void gemm_stats_get(GemmStats *s);
void gemm_stats_reset(void);

/* Matrix-product peak of one precision with the backend that precision uses by default
 * (fp32: OpenBLAS sgemm; bf16: oneDNN bf16 matmul on pre-converted operands), n^3 product,
 * `threads` threads (> 0 sets the OpenMP/OpenBLAS thread count first). Robust to a loaded
 * machine: one warm-up, then `reps` timed calls in rounds; the peak is the BEST call (noise only
 * ever slows a call down), the median is reported too. disturbed = 1 when the median is more
 * than 15% below the best, i.e. the machine was busy while measuring (an MFU computed against
 * this peak may then be too high or too low; callers flag it). */
typedef struct {
    double best_gflops, median_gflops, worst_gflops;
    double best_s;
    int reps, disturbed;
    char kernel[96];   /* "OpenBLAS sgemm" or "oneDNN " + implementation name */
} GemmPeak;
/* Returns 0, or -1 with a message in err when the precision cannot run here (bf16 without
 * AVX-512, e.g. under valgrind, which hides AVX-512). */
int gemm_measure_peak(GemmPrecision p, int n, int threads, int reps, GemmPeak *out, char *err,
                      size_t errlen);

/* Round to bfloat16 (nearest even; NaN stays NaN) and back: what the bf16 path does to every
 * input element. For tests and references. */
float gemm_round_bf16(float x);

#endif
