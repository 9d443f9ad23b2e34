/*
 * common/blas_runtime.h: make OpenBLAS use the right kernel for this CPU, prove that its sgemm
 * computes correct products, and say in one line what it is running.
 *
 * Why: a DYNAMIC_ARCH OpenBLAS (Debian 12 ships 0.3.21) picks its kernels from the CPU model
 * number. On CPUs newer than the library (or under a hypervisor that reports an unknown model) it
 * falls back to a generic SSE3 kernel ("Prescott"), ~7x slower than the AVX-512 one. The kernel is
 * chosen once, in the library's load-time constructor, from the environment variable
 * OPENBLAS_CORETYPE, so the only reliable fix is: set the variable and re-exec the program.
 *
 * Environment (read by blas_runtime_setup):
 *   T5_BLAS_CORETYPE=auto  (default) detect the CPU and re-exec with a better core type when the
 *                          library chose a kernel older than the CPU supports
 *   T5_BLAS_CORETYPE=off   never touch the core type (still runs the GEMM check)
 *   T5_BLAS_CORETYPE=NAME  force OpenBLAS core type NAME (e.g. Haswell); overrides
 *                          OPENBLAS_CORETYPE
 *   OPENBLAS_CORETYPE=NAME set by the user (not by us): respected as is in auto mode
 *   T5_BLAS_REEXEC, T5_BLAS_LIBCORE, T5_BLAS_WHY: markers this module sets before re-exec (loop
 *                          guard and log text); users do not set them
 *   T5_BLAS_SELFTEST_FAIL=NAME[,NAME...]  test hook: the GEMM self-check corrupts one output
 *                          element when the running core is one of the NAMEs (exercises the
 *                          detector, the fallback re-exec and the fatal path)
 */
#ifndef T5_COMMON_BLAS_RUNTIME_H
#define T5_COMMON_BLAS_RUNTIME_H

#include <stddef.h>

/* CPU features that matter for the OpenBLAS kernel choice (1 = usable: CPU and OS support). */
typedef struct {
    int avx, avx2, fma;
    int avx512f, avx512bw, avx512dq, avx512vl;
} BlasCpuFeatures;

/* Call first thing in main(), before MPI_Init and before any thread is started. May replace the
 * process image (execv of /proc/self/exe with the same argv; the PID stays, so mpirun and Slurm
 * are unaffected) at most twice. Exits with a FATAL message if OpenBLAS computes wrong sgemm
 * results under every core type tried. threads > 0 sets the OpenBLAS and OpenMP thread counts
 * (0 leaves them alone; see blas_runtime_set_threads). verbose > 0 prints the describe line to
 * stderr. argv must be main's argv (NULL-terminated). A second call only sets the threads. */
void blas_runtime_setup(int argc, char **argv, int threads, int verbose);

/* Set the OpenBLAS and OpenMP thread counts (threads > 0; otherwise nothing happens). */
void blas_runtime_set_threads(int threads);

/* One line for the log, e.g. "OpenBLAS 0.3.21 OpenMP, core SkylakeX (selected: CPU has AVX-512;
 * library default Prescott), 2 threads, GEMM check ok (max rel err 3.1e-08)". Static storage,
 * refreshed on each call (thread count may change). Valid before blas_runtime_setup too (then it
 * says "not set up"). */
const char *blas_runtime_describe(void);

/* Features of the CPU this process runs on (cpuid + OS support via __builtin_cpu_supports). */
void blas_cpu_detect(BlasCpuFeatures *f);

/* Pure decision: which OpenBLAS core type to request, given the CPU's features and the core the
 * library picked by itself. Returns the core name to set (a string constant, "SkylakeX" or
 * "Haswell") or NULL to keep the library's choice. *why (may be NULL) gets a short reason.
 * Rule: rank the CPU (AVX-512 F+BW+DQ+VL > AVX2+FMA > other) and the library core by the widest
 * vector ISA its kernels use; request the CPU's best core only when the library core is KNOWN and
 * strictly lower. Unknown core names (e.g. from a newer OpenBLAS) are left alone, and CPUs without
 * AVX2+FMA are left alone. */
const char *blas_coretype_decide(const BlasCpuFeatures *f, const char *lib_core, const char **why);

/* Vector ISA level of an OpenBLAS core name: 3 AVX-512, 2 AVX2/FMA, 1 AVX, 0 SSE-only, -1 unknown
 * name. Case-insensitive. */
int blas_core_level(const char *core);

/* Error of a computed product C (M x N) = A (M x K) * B (K x N), all row-major and dense, against
 * a double-precision reference: returns max over (i,j) of |C_ij - sum_k A_ik B_kj| /
 * sum_k |A_ik B_kj| (0/0 counts as 0; NaN or Inf in C gives +Inf). */
double blas_gemm_error(int M, int N, int K, const float *A, const float *B, const float *C);

/* The tolerance blas_gemm_error is held to for inner dimension K: 2 * K * 2^-24 (see .c). */
double blas_gemm_tolerance(int K);

/* Run the built-in sgemm self-check (non-square odd shapes, NN and TT layouts, beta = 0 on a
 * NaN-filled output). Returns 0 if correct, -1 if not; *max_err (may be NULL) gets the largest
 * normalised error seen. */
int blas_gemm_selfcheck(double *max_err);

/* sgemm speed on an n x n x n product: runs one warm-up then reps timed calls; returns the
 * GFLOP/s of the median call and stores its seconds in *median_seconds (may be NULL).
 * threads > 0 sets the thread count first. Fatal on out of memory. */
double blas_measure_sgemm_gflops(int n, int threads, int reps, double *median_seconds);

#endif
