/*
 * tests/unit/test_blas_runtime.c: OpenBLAS runtime setup: the GEMM error measure catches wrong
 * products, the self-check passes on this machine, the core-type decision table, the describe
 * line, thread setting and the speed probe.
 *
 * main() calls blas_runtime_setup first, exactly as the programs do (it may re-exec this test).
 */
#include <cblas.h>
#include <omp.h>
#include <strings.h>

#include "common/blas_runtime.h"
#include "common/util.h"
#include "tests/unit/test.h"

static void fill_(float *x, size_t n, uint64_t stream) {
    Rng r = rng_make(42, stream);
    for (size_t i = 0; i < n; i++) x[i] = (float)(2.0 * rng_next_double(&r) - 1.0);
}

/* The error measure: a correct sgemm is within tolerance; one wrong element (small or large),
 * a NaN, a transposed result, or an untouched output are all caught. */
static void test_gemm_error_detects_wrong_products(void) {
    const int M = test_quick() ? 19 : 67, N = test_quick() ? 23 : 45, K = test_quick() ? 31 : 53;
    float *A = xmalloc(sizeof(float) * M * K), *B = xmalloc(sizeof(float) * K * N);
    float *C = xmalloc(sizeof(float) * M * N), *W = xmalloc(sizeof(float) * M * N);
    fill_(A, (size_t)M * K, 1);
    fill_(B, (size_t)K * N, 2);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    double tol = blas_gemm_tolerance(K);
    double e = blas_gemm_error(M, N, K, A, B, C);
    CHECKF(e <= tol, "correct sgemm: err %g > tol %g", e, tol);

    /* Independent reference: the product summed in long double and rounded once to float is
     * within half an ulp per element, far below tol. */
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            long double s = 0;
            for (int k = 0; k < K; k++) s += (long double)A[i * K + k] * B[k * N + j];
            W[i * N + j] = (float)s;
        }
    CHECK(blas_gemm_error(M, N, K, A, B, W) <= 1e-6);

    /* one element off by 1e-3 relative to its magnitude scale */
    memcpy(W, C, sizeof(float) * M * N);
    W[(M / 2) * N + N / 2] += 1e-3f;
    CHECKF(blas_gemm_error(M, N, K, A, B, W) > tol, "small corruption not caught");
    memcpy(W, C, sizeof(float) * M * N);
    W[M * N - 1] = -W[M * N - 1] + 0.25f;   /* last element: an edge tile */
    CHECK(blas_gemm_error(M, N, K, A, B, W) > tol);
    memcpy(W, C, sizeof(float) * M * N);
    W[0] = NAN;
    CHECK(isinf(blas_gemm_error(M, N, K, A, B, W)));
    /* wrong layout: A^T-ish result (swap two rows) */
    memcpy(W, C, sizeof(float) * M * N);
    memcpy(W, C + N, sizeof(float) * N);
    CHECK(blas_gemm_error(M, N, K, A, B, W) > tol);
    /* output never written */
    memset(W, 0, sizeof(float) * M * N);
    CHECK(blas_gemm_error(M, N, K, A, B, W) > tol);
    free(A); free(B); free(C); free(W);
}

static void test_tolerance_formula(void) {
    /* 2 K u with u = 2^-24 */
    CHECK_NEAR(blas_gemm_tolerance(1), 2.0 / 16777216.0, 1e-20);
    CHECK_NEAR(blas_gemm_tolerance(311), 622.0 / 16777216.0, 1e-18);
}

static void test_selfcheck_passes(void) {
    double err = -1;
    CHECK_EQ_INT(blas_gemm_selfcheck(&err), 0);
    CHECKF(err >= 0 && err <= blas_gemm_tolerance(311), "err %g", err);
}

static BlasCpuFeatures feat_(int level) {
    BlasCpuFeatures f = {0, 0, 0, 0, 0, 0, 0};
    if (level >= 1) f.avx = 1;
    if (level >= 2) f.avx2 = f.fma = 1;
    if (level >= 3) f.avx512f = f.avx512bw = f.avx512dq = f.avx512vl = 1;
    return f;
}

static void test_decide_table(void) {
    static const struct { int cpu; const char *lib; const char *want; } T[] = {
        {3, "Prescott", "SkylakeX"}, {3, "Core2", "SkylakeX"}, {3, "Nehalem", "SkylakeX"},
        {3, "Sandybridge", "SkylakeX"}, {3, "Haswell", "SkylakeX"}, {3, "Zen", "SkylakeX"},
        {3, "Unknown", "SkylakeX"}, {3, "prescott", "SkylakeX"},
        {3, "SkylakeX", NULL}, {3, "Cooperlake", NULL}, {3, "SapphireRapids", NULL},
        {3, "FutureLake", NULL}, {3, "", NULL}, {3, NULL, NULL},
        {2, "Prescott", "Haswell"}, {2, "Sandybridge", "Haswell"}, {2, "Haswell", NULL},
        {2, "Zen", NULL}, {2, "SkylakeX", NULL},
        {1, "Prescott", NULL}, {1, "Sandybridge", NULL}, {0, "Prescott", NULL}, {0, "Core2", NULL},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        BlasCpuFeatures f = feat_(T[i].cpu);
        const char *why = NULL;
        const char *got = blas_coretype_decide(&f, T[i].lib, &why);
        CHECKF((got == NULL) == (T[i].want == NULL) && (!got || strcmp(got, T[i].want) == 0),
               "cpu level %d lib %s: got %s want %s", T[i].cpu, T[i].lib ? T[i].lib : "(null)",
               got ? got : "keep", T[i].want ? T[i].want : "keep");
        CHECK(why != NULL && why[0] != '\0');
    }
    /* AVX-512F alone (no BW/DQ/VL, e.g. Knights Landing) is not SkylakeX-capable: Haswell. */
    BlasCpuFeatures knl = feat_(2);
    knl.avx512f = 1;
    const char *got = blas_coretype_decide(&knl, "Prescott", NULL);
    CHECK(got && strcmp(got, "Haswell") == 0);
    /* AVX2 without FMA: leave alone */
    BlasCpuFeatures nofma = feat_(2);
    nofma.fma = 0;
    CHECK(blas_coretype_decide(&nofma, "Prescott", NULL) == NULL);
}

static void test_core_level(void) {
    CHECK_EQ_INT(blas_core_level("SkylakeX"), 3);
    CHECK_EQ_INT(blas_core_level("skylakex"), 3);
    CHECK_EQ_INT(blas_core_level("Haswell"), 2);
    CHECK_EQ_INT(blas_core_level("Sandybridge"), 1);
    CHECK_EQ_INT(blas_core_level("Prescott"), 0);
    CHECK_EQ_INT(blas_core_level("Nope"), -1);
    CHECK_EQ_INT(blas_core_level(NULL), -1);
}

/* After setup (done in main) the describe line names the running core, says the check passed,
 * and in auto mode without a user override the running core can no longer be improved. */
static void test_describe_after_setup(void) {
    const char *d = blas_runtime_describe();
    const char *core = openblas_get_corename();
    printf("  describe: %s\n", d);
    CHECK(strncmp(d, "OpenBLAS ", 9) == 0);
    CHECK(strstr(d, "OpenMP") != NULL);
    char want[96];
    snprintf(want, sizeof want, "core %s (", core);
    CHECKF(strstr(d, want) != NULL, "'%s' lacks '%s'", d, want);
    CHECK(strstr(d, "GEMM check ok (max rel err ") != NULL);
    CHECK(strstr(d, " threads, ") != NULL);
    const char *mode = getenv("T5_BLAS_CORETYPE"), *ob = getenv("OPENBLAS_CORETYPE");
    int auto_mode = !mode || !*mode || strcasecmp(mode, "auto") == 0;
    int selected = strstr(d, "(selected: ") != NULL;
    /* markers are gone after setup, so children start clean */
    CHECK(getenv("T5_BLAS_REEXEC") == NULL);
    CHECK(getenv("T5_BLAS_LIBCORE") == NULL);
    if (selected) {
        CHECK(ob != NULL);
        if (ob && blas_core_level(ob) >= 0) CHECKF(strcasecmp(ob, core) == 0, "asked %s got %s", ob, core);
    }
    /* auto mode where we chose, or where nobody set a core type: nothing left to improve */
    if (auto_mode && (selected || strstr(d, "(library choice: "))) {
        BlasCpuFeatures f;
        blas_cpu_detect(&f);
        CHECKF(blas_coretype_decide(&f, core, NULL) == NULL, "core %s still improvable", core);
    }
}

static void test_threads(void) {
    blas_runtime_set_threads(1);
    CHECK_EQ_INT(openblas_get_num_threads(), 1);
    CHECK_EQ_INT(omp_get_max_threads(), 1);
    CHECK(strstr(blas_runtime_describe(), ", 1 threads,") != NULL);
    blas_runtime_set_threads(2);
    CHECK_EQ_INT(openblas_get_num_threads(), 2);
    CHECK_EQ_INT(omp_get_max_threads(), 2);
    blas_runtime_set_threads(0);   /* no-op */
    CHECK_EQ_INT(openblas_get_num_threads(), 2);
}

static void test_measure_gflops(void) {
    int n = test_quick() ? 64 : 256;
    double sec = -1;
    double g = blas_measure_sgemm_gflops(n, 2, 3, &sec);
    CHECK(sec > 0);
    CHECK(g > 0);
    CHECK_NEAR(g * sec, 2.0 * n * n * n / 1e9, 1e-9 * n * n * n);
}

int main(int argc, char **argv) {
    blas_runtime_setup(argc, argv, 2, 1);
    RUN(test_gemm_error_detects_wrong_products);
    RUN(test_tolerance_formula);
    RUN(test_selfcheck_passes);
    RUN(test_decide_table);
    RUN(test_core_level);
    RUN(test_describe_after_setup);
    RUN(test_threads);
    RUN(test_measure_gflops);
    return TEST_EXIT();
}
