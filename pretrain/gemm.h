/*
 * pretrain/gemm.h: the one matrix-product interface of the model.
 *
 * Every matrix product of the model (Linear forward and both backward products, the LM head,
 * attention's Q K^T and P V and their backward) goes through t5_gemm, a strided row-major GEMM
 *
 *     C[M,N] = alpha * op(A)[M,K] . op(B)[K,N] + beta * C        op(X) = X or X^T
 *
 * with row strides lda, ldb, ldc (in elements, as cblas_sgemm RowMajor). Backends:
 *   GEMM_BACKEND_OPENBLAS   fp32 cblas_sgemm (always available; the reference path)
 * The precision policy (fp32 / bf16 inputs with fp32 accumulation) and further backends are
 * selected process-wide with gemm_set_config before any product runs; t5_gemm is then safe to
 * call from inside OpenMP parallel regions (the backend runs single-threaded there).
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
 * when the combination is not available on this machine (nothing changed). */
int gemm_set_config(const GemmConfig *cfg, char *err, size_t errlen);
void gemm_get_config(GemmConfig *cfg);

/* C = alpha * op(A) op(B) + beta * C; trans_a/trans_b: 0 = as stored, 1 = transposed.
 * A is [M,K] (trans_a = 0) or [K,M] (trans_a = 1) with row stride lda; likewise B. */
void t5_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc);

#endif
