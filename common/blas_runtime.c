/*
 * common/blas_runtime.c: OpenBLAS kernel selection (re-exec with OPENBLAS_CORETYPE), a GEMM
 * self-check against a double-precision reference, thread setup, and an sgemm speed probe.
 *
 * Flow of blas_runtime_setup (stage = value of the marker T5_BLAS_REEXEC, 0 if unset):
 *   stage 0: decide (auto / off / forced / user's OPENBLAS_CORETYPE). If a different core type is
 *            wanted: set OPENBLAS_CORETYPE, T5_BLAS_REEXEC=1 and re-exec /proc/self/exe.
 *   stage 1: (we set the core type) GEMM check; on failure warn loudly, unset OPENBLAS_CORETYPE,
 *            set T5_BLAS_REEXEC=2 and re-exec so the library chooses its own kernel again.
 *   stage 2: GEMM check; on failure FATAL.
 * The marker makes every path exec at most twice, so there is no loop.
 */
#include "common/blas_runtime.h"

#include <cblas.h>     /* cblas_sgemm, openblas_get_corename/config/parallel, set_num_threads */
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>   /* strcasecmp */
#include <unistd.h>    /* execv, readlink */

#include "common/util.h"

#define ENV_MODE    "T5_BLAS_CORETYPE"
#define ENV_STAGE   "T5_BLAS_REEXEC"
#define ENV_LIBCORE "T5_BLAS_LIBCORE"
#define ENV_WHY     "T5_BLAS_WHY"
#define ENV_OB      "OPENBLAS_CORETYPE"
#define SELFCHECK_K 311

/* ---------------------------------------------------------------------------------------------
 * CPU features and the core-type decision (pure) */

void blas_cpu_detect(BlasCpuFeatures *f) {
    __builtin_cpu_init();
    /* libgcc's feature bits already include the OS check (XGETBV: the OS saves the YMM/ZMM
     * state), so a feature reported here is usable, not just present in cpuid. */
    f->avx = __builtin_cpu_supports("avx") != 0;
    f->avx2 = __builtin_cpu_supports("avx2") != 0;
    f->fma = __builtin_cpu_supports("fma") != 0;
    f->avx512f = __builtin_cpu_supports("avx512f") != 0;
    f->avx512bw = __builtin_cpu_supports("avx512bw") != 0;
    f->avx512dq = __builtin_cpu_supports("avx512dq") != 0;
    f->avx512vl = __builtin_cpu_supports("avx512vl") != 0;
}

/* OpenBLAS x86-64 core names (driver/others/dynamic.c) by the widest vector ISA of their
 * kernels. Only cores listed here are ever replaced. */
static const struct { const char *name; int level; } core_levels_[] = {
    {"SapphireRapids", 3}, {"Cooperlake", 3}, {"SkylakeX", 3},
    {"Haswell", 2}, {"Zen", 2}, {"Excavator", 2},
    {"Sandybridge", 1}, {"Bulldozer", 1}, {"Piledriver", 1}, {"Steamroller", 1},
    {"Unknown", 0}, {"Katmai", 0}, {"Coppermine", 0}, {"Northwood", 0}, {"Prescott", 0},
    {"Banias", 0}, {"Atom", 0}, {"Core2", 0}, {"Penryn", 0}, {"Dunnington", 0}, {"Nehalem", 0},
    {"Athlon", 0}, {"Opteron", 0}, {"Opteron_SSE3", 0}, {"Barcelona", 0}, {"Nano", 0},
};

int blas_core_level(const char *core) {
    if (!core) return -1;
    for (size_t i = 0; i < sizeof core_levels_ / sizeof core_levels_[0]; i++)
        if (strcasecmp(core, core_levels_[i].name) == 0) return core_levels_[i].level;
    return -1;
}

static int cpu_level_(const BlasCpuFeatures *f) {
    if (f->avx512f && f->avx512bw && f->avx512dq && f->avx512vl) return 3;
    if (f->avx2 && f->fma) return 2;
    if (f->avx) return 1;
    return 0;
}

const char *blas_coretype_decide(const BlasCpuFeatures *f, const char *lib_core, const char **why) {
    const char *dummy;
    if (!why) why = &dummy;
    int cpu = cpu_level_(f), lib = blas_core_level(lib_core);
    if (lib < 0) { *why = "library core not in our table (newer OpenBLAS?), left alone"; return NULL; }
    if (cpu < 2) { *why = "CPU has no AVX2+FMA, library choice kept"; return NULL; }
    if (lib >= cpu) { *why = "library core already matches the CPU"; return NULL; }
    if (cpu == 3) { *why = "CPU has AVX-512"; return "SkylakeX"; }
    *why = "CPU has AVX2+FMA";
    return "Haswell";
}

/* ---------------------------------------------------------------------------------------------
 * GEMM check */

/* Tolerance. Every input is an fp32 number and the reference sums the exact products in double
 * (each product of two fp32 values is exact in double; the double summation error is ~K*2^-53,
 * negligible). For ANY order of fp32 multiply-adds (blocked, FMA, split over threads), the
 * standard dot-product bound (Higham, Accuracy and Stability, eq. 3.5) gives
 *   |C_ij - ref_ij| <= gamma_K * sum_k |A_ik B_kj|,  gamma_K = K u / (1 - K u),  u = 2^-24.
 * So the normalised error below is at most ~K u for a correct sgemm; we allow 2 K u for slack
 * (the (1 - K u) denominator, conversions). A wrong kernel (bad edge handling, wrong panel,
 * garbage, ignored beta = 0 on a NaN-filled output) produces errors of order 1 or NaN. */
double blas_gemm_tolerance(int K) {
    return 2.0 * (double)K * ldexp(1.0, -24);
}

double blas_gemm_error(int M, int N, int K, const float *A, const float *B, const float *C) {
    double *ref = xcalloc((size_t)N, sizeof(double));
    double *mag = xcalloc((size_t)N, sizeof(double));
    double worst = 0.0;
    for (int i = 0; i < M; i++) {
        memset(ref, 0, (size_t)N * sizeof(double));
        memset(mag, 0, (size_t)N * sizeof(double));
        for (int k = 0; k < K; k++) {
            double a = A[(size_t)i * K + k];
            const float *brow = B + (size_t)k * N;
            for (int j = 0; j < N; j++) {
                double p = a * (double)brow[j];
                ref[j] += p;
                mag[j] += fabs(p);
            }
        }
        for (int j = 0; j < N; j++) {
            double c = C[(size_t)i * N + j];
            if (!isfinite(c)) { worst = INFINITY; continue; }
            double d = fabs(c - ref[j]);
            double e = mag[j] > 0.0 ? d / mag[j] : (d > 0.0 ? INFINITY : 0.0);
            if (e > worst) worst = e;
        }
    }
    free(ref);
    free(mag);
    return worst;
}

static void fill_uniform_(float *x, size_t n, uint64_t stream) {
    Rng r = rng_make(0x5EED0B1A5ULL, stream);
    for (size_t i = 0; i < n; i++) x[i] = (float)(2.0 * rng_next_double(&r) - 1.0);
}

/* 1 if core is one of the comma-separated names in list (case-insensitive). */
static int core_in_list_(const char *core, const char *list) {
    size_t n = strlen(core);
    while (list && *list) {
        const char *end = strchr(list, ',');
        size_t len = end ? (size_t)(end - list) : strlen(list);
        if (len == n && strncasecmp(list, core, n) == 0) return 1;
        list = end ? end + 1 : NULL;
    }
    return 0;
}

int blas_gemm_selfcheck(double *max_err) {
    /* Odd, non-square sizes so that every kernel edge case (partial register tiles in M, N and
     * K) is exercised; ~23 M multiply-adds, a few tens of milliseconds with the reference. */
    const int M = 283, N = 257, K = SELFCHECK_K;
    float *A = xmalloc((size_t)M * K * sizeof(float));
    float *B = xmalloc((size_t)K * N * sizeof(float));
    float *At = xmalloc((size_t)K * M * sizeof(float));
    float *Bt = xmalloc((size_t)N * K * sizeof(float));
    float *C = xmalloc((size_t)M * N * sizeof(float));
    fill_uniform_(A, (size_t)M * K, 1);
    fill_uniform_(B, (size_t)K * N, 2);
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) At[(size_t)k * M + i] = A[(size_t)i * K + k];
    for (int k = 0; k < K; k++)
        for (int j = 0; j < N; j++) Bt[(size_t)j * K + k] = B[(size_t)k * N + j];

    /* C = A B (NN); C is NaN-filled and beta = 0, so C must not be read. */
    for (size_t i = 0; i < (size_t)M * N; i++) C[i] = NAN;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    double e1 = blas_gemm_error(M, N, K, A, B, C);
    /* C = (At)^T (Bt)^T (TT): the transposed packing routines. */
    for (size_t i = 0; i < (size_t)M * N; i++) C[i] = NAN;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, M, N, K, 1.0f, At, M, Bt, K, 0.0f, C, N);
    /* Test hook (tests/e2e/blas_coretype.sh): pretend the kernel named by T5_BLAS_SELFTEST_FAIL
     * is broken by corrupting one output element, so the real detector and fallback run. */
    if (core_in_list_(openblas_get_corename(), getenv("T5_BLAS_SELFTEST_FAIL")))
        C[(size_t)(M / 2) * N + N / 3] += 0.5f;
    double e2 = blas_gemm_error(M, N, K, A, B, C);

    double e = e1 > e2 ? e1 : e2;
    if (isnan(e)) e = INFINITY;
    if (max_err) *max_err = e;
    free(A); free(B); free(At); free(Bt); free(C);
    return e <= blas_gemm_tolerance(K) ? 0 : -1;
}

/* ---------------------------------------------------------------------------------------------
 * Speed probe */

static int cmp_double_(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double blas_measure_sgemm_gflops(int n, int threads, int reps, double *median_seconds) {
    if (n < 1) n = 1;
    if (reps < 1) reps = 1;
    blas_runtime_set_threads(threads);
    size_t nn = (size_t)n * n;
    float *A = xmalloc_aligned(nn * sizeof(float));
    float *B = xmalloc_aligned(nn * sizeof(float));
    float *C = xmalloc_aligned(nn * sizeof(float));
    fill_uniform_(A, nn, 11);
    fill_uniform_(B, nn, 12);
    memset(C, 0, nn * sizeof(float));
    double *t = xmalloc((size_t)reps * sizeof(double));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
    for (int r = 0; r < reps; r++) {
        double t0 = now_seconds();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
        t[r] = now_seconds() - t0;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double_);
    double med = (reps % 2) ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
    if (median_seconds) *median_seconds = med;
    free(t); free(A); free(B); free(C);
    return med > 0.0 ? 2.0 * (double)n * n * n / med / 1e9 : 0.0;
}

/* ---------------------------------------------------------------------------------------------
 * Setup */

static struct {
    int set_up;
    char note[320];     /* text inside the parentheses after the core name */
    int check_ok;
    double check_err;
} state_;

void blas_runtime_set_threads(int threads) {
    if (threads <= 0) return;
    openblas_set_num_threads(threads);
    omp_set_num_threads(threads);
}

const char *blas_runtime_describe(void) {
    static char buf[640];
    if (!state_.set_up) {
        snprintf(buf, sizeof buf, "OpenBLAS core %s (blas_runtime_setup not called)",
                 openblas_get_corename());
        return buf;
    }
    /* "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ..." -> "OpenBLAS 0.3.21" */
    char ver[64];
    snprintf(ver, sizeof ver, "%s", openblas_get_config());
    char *sp = strchr(ver, ' ');
    if (sp) sp = strchr(sp + 1, ' ');
    if (sp) *sp = '\0';
    int par = openblas_get_parallel();
    const char *ptxt = par == 2 ? "OpenMP" : par == 1 ? "pthreads" : "sequential";
    snprintf(buf, sizeof buf, "%s %s, core %s (%s), %d threads, GEMM check %s (max rel err %.1e)",
             ver, ptxt, openblas_get_corename(), state_.note, openblas_get_num_threads(),
             state_.check_ok ? "ok" : "FAILED", state_.check_err);
    return buf;
}

/* Replace the process image with a fresh copy of itself; the new environment takes effect in
 * OpenBLAS's constructor. Returns only on failure (after a warning). */
static void reexec_(char **argv) {
    /* When the program runs through a loader or a tool (ld-linux.so ./prog, valgrind),
     * /proc/self/exe is that loader and argv[0] the program: exec'ing it with argv would run
     * something else. Refuse; the user can set OPENBLAS_CORETYPE by hand. */
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        const char *base = strrchr(exe, '/');
        base = base ? base + 1 : exe;
        if (strncmp(base, "ld-linux", 8) == 0 || strncmp(base, "ld.so", 5) == 0 ||
            strstr(base, "valgrind") || strstr(base, "memcheck")) {
            fprintf(stderr, "blas_runtime: warning: running under %s, not re-executing; set "
                    "OPENBLAS_CORETYPE=%s yourself for the fast kernel\n", base,
                    getenv(ENV_OB) ? getenv(ENV_OB) : "?");
            return;
        }
    }
    fflush(NULL);
    execv("/proc/self/exe", argv);
    fprintf(stderr, "blas_runtime: warning: execv(/proc/self/exe) failed: %s; continuing with "
            "OpenBLAS core %s\n", strerror(errno), openblas_get_corename());
}

static void restore_env_(const char *name, const char *old) {
    if (old) setenv(name, old, 1);
    else unsetenv(name);
}

void blas_runtime_setup(int argc, char **argv, int threads, int verbose) {
    (void)argc;
    if (state_.set_up) {   /* second call: the kernel is settled, only the threads may change */
        blas_runtime_set_threads(threads);
        return;
    }
    const char *lib_core = openblas_get_corename();
    const char *mode = getenv(ENV_MODE);
    if (!mode || !*mode) mode = "auto";
    const char *stage_s = getenv(ENV_STAGE);
    int stage = stage_s ? atoi(stage_s) : 0;
    const char *ob = getenv(ENV_OB);
    int is_off = strcasecmp(mode, "off") == 0, is_auto = strcasecmp(mode, "auto") == 0;

    if (stage == 0) {
        const char *want = NULL, *why = "";
        char whybuf[160];
        if (is_off && ob && *ob) {
            snprintf(state_.note, sizeof state_.note, "%s=%s set by user, %s=off", ENV_OB, ob,
                     ENV_MODE);
        } else if (is_off) {
            snprintf(state_.note, sizeof state_.note, "library choice, %s=off", ENV_MODE);
        } else if (is_auto && ob && *ob) {
            if (strcasecmp(ob, lib_core) == 0)
                snprintf(state_.note, sizeof state_.note, "%s=%s set by user", ENV_OB, ob);
            else
                snprintf(state_.note, sizeof state_.note,
                         "%s=%s set by user but OpenBLAS did not accept it", ENV_OB, ob);
        } else if (is_auto) {
            BlasCpuFeatures f;
            blas_cpu_detect(&f);
            want = blas_coretype_decide(&f, lib_core, &why);
            if (!want) snprintf(state_.note, sizeof state_.note, "library choice: %s", why);
        } else {   /* forced name */
            if (blas_core_level(mode) < 0)
                fprintf(stderr, "blas_runtime: warning: %s=%s is not a core type known to this "
                        "program; passing it to OpenBLAS anyway\n", ENV_MODE, mode);
            if (ob && *ob && strcasecmp(ob, mode) != 0)
                fprintf(stderr, "blas_runtime: note: %s=%s overrides %s=%s\n", ENV_MODE, mode,
                        ENV_OB, ob);
            if (strcasecmp(mode, lib_core) != 0) {
                snprintf(whybuf, sizeof whybuf, "forced by %s", ENV_MODE);
                want = mode;
                why = whybuf;
            } else {
                snprintf(state_.note, sizeof state_.note, "forced by %s", ENV_MODE);
            }
        }
        if (want) {
            char *old_ob = ob ? xstrdup(ob) : NULL;
            setenv(ENV_OB, want, 1);
            setenv(ENV_STAGE, "1", 1);
            setenv(ENV_LIBCORE, lib_core, 1);
            setenv(ENV_WHY, why, 1);
            reexec_(argv);
            /* exec failed: undo and carry on with the current kernel */
            restore_env_(ENV_OB, old_ob);
            unsetenv(ENV_STAGE); unsetenv(ENV_LIBCORE); unsetenv(ENV_WHY);
            free(old_ob);
            snprintf(state_.note, sizeof state_.note, "wanted %s but re-exec failed", want);
        }
    } else {
        const char *libdef = getenv(ENV_LIBCORE), *why = getenv(ENV_WHY);
        if (!libdef) libdef = "?";
        if (!why) why = "?";
        if (stage == 1) {
            if (ob && strcasecmp(ob, lib_core) != 0)
                fprintf(stderr, "blas_runtime: warning: OpenBLAS did not accept core type %s "
                        "(it chose %s)\n", ob, lib_core);
            snprintf(state_.note, sizeof state_.note, "selected: %s; library default %s", why,
                     libdef);
        } else {
            snprintf(state_.note, sizeof state_.note,
                     "library default again: GEMM check failed under %s", why);
        }
    }

    state_.check_ok = blas_gemm_selfcheck(&state_.check_err) == 0;
    state_.set_up = 1;
    if (!state_.check_ok && stage == 1) {
        const char *libdef = getenv(ENV_LIBCORE);
        char tried[96];
        snprintf(tried, sizeof tried, "%s", lib_core);
        fprintf(stderr,
                "\n*** blas_runtime: WARNING: OpenBLAS sgemm gives WRONG results under core type "
                "%s\n*** (normalised error %.3g > tolerance %.3g). Re-running with the library's "
                "own choice (%s);\n*** expect lower speed. Please report this.\n\n",
                tried, state_.check_err, blas_gemm_tolerance(SELFCHECK_K), libdef ? libdef : "?");
        unsetenv(ENV_OB);
        setenv(ENV_STAGE, "2", 1);
        setenv(ENV_WHY, tried, 1);
        reexec_(argv);
        FATAL("set T5_BLAS_CORETYPE=off to keep the library's default kernel",
              "OpenBLAS sgemm is wrong under core %s and re-exec failed", tried);
    }
    if (!state_.check_ok) {
        FATAL("try another kernel, e.g. T5_BLAS_CORETYPE=Haswell or T5_BLAS_CORETYPE=off (and "
              "unset OPENBLAS_CORETYPE), or install a different BLAS build",
              "OpenBLAS sgemm self-check failed under core %s (%s): normalised error %.3g > "
              "tolerance %.3g", openblas_get_corename(), state_.note, state_.check_err,
              blas_gemm_tolerance(SELFCHECK_K));
    }
    /* Done: drop the markers so that child processes start clean. OPENBLAS_CORETYPE stays (a
     * child then treats the verified core type as the user's setting and keeps it). */
    unsetenv(ENV_STAGE);
    unsetenv(ENV_LIBCORE);
    unsetenv(ENV_WHY);
    blas_runtime_set_threads(threads);
    if (verbose > 0) fprintf(stderr, "blas: %s\n", blas_runtime_describe());
}
