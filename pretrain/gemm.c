/* pretrain/gemm.c: see gemm.h. */
#include "gemm.h"

#include <cblas.h>

#include "../common/util.h"

static GemmConfig config_ = {GEMM_FP32, GEMM_BACKEND_OPENBLAS};

int gemm_set_config(const GemmConfig *cfg, char *err, size_t errlen) {
    if (cfg->backend != GEMM_BACKEND_OPENBLAS || cfg->precision != GEMM_FP32) {
        set_error(err, errlen, "only the OpenBLAS fp32 GEMM backend is built in");
        return -1;
    }
    config_ = *cfg;
    return 0;
}

void gemm_get_config(GemmConfig *cfg) { *cfg = config_; }

void t5_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
