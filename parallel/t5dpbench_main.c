/*
 * parallel/t5dpbench_main.c: how much of a data-parallel gradient reduction is hidden behind
 * backward compute.
 *
 *   mpirun --oversubscribe -np 2 bin/t5dpbench [--floats N] [--bucket-mb 25] [--compute-ms 1500]
 *                                             [--gemm 384] [--reps 3] [--zero 0|1]
 *
 * The gradient buffer is a T5-small-like tensor table (shared V x d embedding, 6 encoder and 6
 * decoder layers of d=512, ff=2048: ~60.5M floats, 242 MB), reduced in 25 MB buckets. A loop of
 * sgemm (gemm x gemm x gemm, one BLAS thread) stands in for backward; tensors become ready
 * during it in backward order, spread by size over the loop. Modes, each the median of --reps:
 *
 *   compute       the loop alone
 *   blocking      the loop, then the whole reduction (dp_finish with nothing started early):
 *                 its wait is the cost of an unoverlapped reduction, the reference
 *   allreduce     the loop, then one MPI_Allreduce of the whole buffer (the old trainer path)
 *   no-progress   buckets start during the loop, no MPI call until dp_finish
 *   progress      the same with dp_progress() after every sgemm (~1-5 ms)
 *   thread        the same with the communication thread (MPI_Test every 1 ms)
 *
 * Medians over --reps (modes interleaved in each repetition, so that load from other processes
 * falls on all modes alike).
 *   loop_s     the slowest rank's loop
 *   wait_s     from the end of the LAST rank's loop to the end of the last rank's reduction: the
 *              part of the reduction not hidden (a rank waiting for a slower peer's compute does
 *              not count; one node, one clock)
 *   step_s     the slowest rank's loop + reduction
 *   hidden     1 - wait / blocking wait
 *   mpi_tests  MPI_Testall calls by dp_progress or the thread (rank 0, per step)
 *   progress_s seconds rank 0 spent in them (tests and the roots' sums)
 *   done_early reductions (ops) seen complete before dp_finish, of all ops
 * The loop itself slows down when communication competes for the same cores and memory
 * bandwidth (on a 2-core machine the copies and sums of the reduction are CPU work either way);
 * compare loop_s across modes for that. With --zero 1 the reduction is reduce-to-owner and the
 * parameter allgather time is printed.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/blas_runtime.h"
#include "parallel/dp.h"
#include "parallel/mpi_check.h"

static double now_(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* T5-small-like table, ~60.5M floats; scaled down (more layers dropped) if max_floats is less. */
static int table_(DpTensor *t, int cap, size_t max_floats, size_t *total) {
    const size_t d = 512, ff = 2048, V = 32128;
    size_t sizes[256];
    int n = 0;
    sizes[n++] = V * d;
    sizes[n++] = 32 * 8;
    for (int l = 0; l < 6; l++) { for (int k = 0; k < 4; k++) sizes[n++] = d * d; sizes[n++] = d; sizes[n++] = d * ff; sizes[n++] = ff * d; sizes[n++] = d; }
    sizes[n++] = d;
    sizes[n++] = 32 * 8;
    for (int l = 0; l < 6; l++) { for (int k = 0; k < 8; k++) sizes[n++] = d * d; sizes[n++] = d; sizes[n++] = d; sizes[n++] = d * ff; sizes[n++] = ff * d; sizes[n++] = d; }
    sizes[n++] = d;
    size_t off = 0;
    int m = 0;
    for (int i = 0; i < n && m < cap; i++) {
        if (off + sizes[i] > max_floats) continue;
        t[m].offset = off;
        t[m].numel = sizes[i];
        off += sizes[i];
        m++;
    }
    *total = off;
    return m;
}

typedef enum { M_COMPUTE, M_BLOCKING, M_ALLREDUCE, M_NOPROGRESS, M_PROGRESS, M_THREAD, M_N } Mode;
static const char *mode_name_[M_N] = {"compute", "blocking", "allreduce", "no-progress", "progress",
                                      "thread"};

typedef struct { double loop_s, wait_s, step_s, allgather_s; long tests; } Result;

static int cmp_d_(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    blas_runtime_setup(argc, argv, 1, 0);
    int level;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &level);
    int rank, size;
    MPI_Comm world;
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &world));
    mpi_check_comm(world);
    MPI_CHECK(MPI_Comm_rank(world, &rank));
    MPI_CHECK(MPI_Comm_size(world, &size));
    size_t max_floats = (size_t)1 << 40;
    double bucket_mb = 25, compute_ms = 1500;
    int gemm_n = 384, reps = 3, zero = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { if (rank == 0) fprintf(stderr, "t5dpbench: %s needs a value\n", a); MPI_Abort(MPI_COMM_WORLD, 2); }
        if (!strcmp(a, "--floats")) max_floats = (size_t)atof(v);
        else if (!strcmp(a, "--bucket-mb")) bucket_mb = atof(v);
        else if (!strcmp(a, "--compute-ms")) compute_ms = atof(v);
        else if (!strcmp(a, "--gemm")) gemm_n = atoi(v);
        else if (!strcmp(a, "--reps")) reps = atoi(v);
        else if (!strcmp(a, "--zero")) zero = atoi(v);
        else { if (rank == 0) fprintf(stderr, "t5dpbench: unknown option %s\n", a); MPI_Abort(MPI_COMM_WORLD, 2); }
        i++;
    }
    if (reps < 1 || reps > 15 || gemm_n < 16 || (zero != 0 && zero != 1)) {
        if (rank == 0) fprintf(stderr, "t5dpbench: --reps 1..15, --gemm >= 16, --zero 0|1\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    DpTensor t[256];
    size_t total;
    int n = table_(t, 256, max_floats, &total);
    float *grads = malloc(total * sizeof *grads), *params = malloc(total * sizeof *params);
    size_t nn = (size_t)gemm_n * (size_t)gemm_n;
    float *A = malloc(nn * sizeof *A), *B = malloc(nn * sizeof *B), *C = malloc(nn * sizeof *C);
    if (!grads || !params || !A || !B || !C) mpi_fatal("use --floats to shrink the buffer", "out of memory");
    for (size_t i = 0; i < total; i++) grads[i] = params[i] = (float)((i * 7 + (size_t)rank) % 13) * 0.01f;
    for (size_t i = 0; i < nn; i++) { A[i] = (float)(i % 17) * 0.01f; B[i] = (float)(i % 11) * 0.01f; C[i] = 0; }

    /* Calibrate: sgemms per loop so the loop takes ~compute_ms (rank 0's count for all). */
    for (int w = 0; w < 3; w++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, gemm_n, gemm_n, gemm_n, 1.0f, A, gemm_n, B, gemm_n, 0.0f, C, gemm_n);
    double c0 = now_();
    for (int w = 0; w < 10; w++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, gemm_n, gemm_n, gemm_n, 1.0f, A, gemm_n, B, gemm_n, 0.0f, C, gemm_n);
    double per_gemm = (now_() - c0) / 10;
    int n_gemm = (int)(compute_ms * 1e-3 / per_gemm + 0.5);
    if (n_gemm < 1) n_gemm = 1;
    MPI_CHECK(MPI_Bcast(&n_gemm, 1, MPI_INT, 0, world));

    DpReducer *r = dp_reducer_create(world, t, n, zero, (size_t)(bucket_mb * 1048576.0));
    DpReducer *rt = dp_reducer_create(world, t, n, zero, (size_t)(bucket_mb * 1048576.0));
    int have_thread = dp_reducer_progress_thread(rt, 1.0) == 0;
    /* ready_at[k]: the sgemm after which tensor n-1-k (backward order) is ready, by size share */
    int *ready_at = malloc((size_t)n * sizeof *ready_at);
    size_t cum = 0;
    for (int k = 0; k < n; k++) {
        cum += t[n - 1 - k].numel;
        ready_at[k] = (int)((double)cum / (double)total * n_gemm) - 1;
        if (ready_at[k] < 0) ready_at[k] = 0;
    }
    if (rank == 0) {
        printf("t5dpbench: %d ranks, %d tensors, %.1fM floats (%.0f MB), %d buckets of %.0f MB, zero %d, "
               "staging %.0f MB per rank\n", size, n, total / 1e6, total * 4 / 1048576.0, dp_n_buckets(r),
               bucket_mb, zero, dp_staging_bytes(r) / 1048576.0);
        printf("compute: %d sgemm %dx%dx%d (%.2f ms each, 1 BLAS thread per rank), median of %d\n",
               n_gemm, gemm_n, gemm_n, gemm_n, per_gemm * 1e3, reps);
        printf("%-12s %8s %8s %8s %8s %9s %10s %10s %11s\n", "mode", "loop_s", "wait_s", "step_s",
               "hidden", "mpi_tests", "progress_s", "done_early", "allgather_s");
    }
    double blocking_wait = 0;
    /* Modes interleaved inside each repetition, so that load from other processes on the machine
     * falls on all modes alike. */
    static double loop[M_N][15], wait[M_N][15], step[M_N][15], ag[M_N][15];
    static long tests[M_N], done_early[M_N], n_ops = 0;
    static double prog_s[M_N];
    for (int rep = 0; rep < reps; rep++) {
        for (int m = 0; m < M_N; m++) {
            if (m == M_THREAD && !have_thread) continue;
            if (m == M_ALLREDUCE && zero) continue;
            DpReducer *use = m == M_THREAD ? rt : r;
            MPI_CHECK(MPI_Barrier(world));
            double t0 = now_();
            int overlapped = m == M_NOPROGRESS || m == M_PROGRESS || m == M_THREAD;
            if (overlapped) dp_begin(use, grads);
            int k = 0;
            for (int g = 0; g < n_gemm; g++) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, gemm_n, gemm_n, gemm_n, 1.0f, A, gemm_n, B, gemm_n, 0.0f, C, gemm_n);
                if (overlapped) {
                    while (k < n && ready_at[k] <= g) { dp_tensor_ready(use, n - 1 - k); k++; }
                    if (m == M_PROGRESS) dp_progress(use);
                }
            }
            double t1 = now_();
            if (m == M_BLOCKING) { dp_begin(use, grads); dp_finish(use); }
            else if (overlapped) dp_finish(use);
            else if (m == M_ALLREDUCE) {
                for (size_t off = 0; off < total; off += (size_t)1 << 30) {
                    size_t c = total - off < ((size_t)1 << 30) ? total - off : (size_t)1 << 30;
                    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, grads + off, (int)c, MPI_FLOAT, MPI_SUM, world));
                }
            }
            double t2 = now_();
            DpStats st;
            ag[m][rep] = 0;
            if (zero && m != M_COMPUTE) {
                dp_allgather_params(use, params);
                dp_last_stats(use, &st);
                ag[m][rep] = st.allgather_s;
            }
            dp_last_stats(use, &st);
            if (overlapped) { tests[m] += st.progress_tests; prog_s[m] += st.progress_s; done_early[m] += st.ops_done_before_finish; n_ops = st.ops; }
            /* loop: the slowest rank's; wait: from the moment the LAST rank finished its loop to
             * the moment the last rank finished the reduction (CLOCK_MONOTONIC is one clock on
             * one node), so a rank's wait for a slower peer's compute does not count. */
            double v[4] = {t1 - t0, t1, t2, t2 - t0};
            MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, 4, MPI_DOUBLE, MPI_MAX, world));
            v[1] = v[2] - v[1];
            v[2] = v[3];
            loop[m][rep] = v[0]; wait[m][rep] = v[1]; step[m][rep] = v[2];
        }
    }
    for (int m = 0; m < M_N; m++) {
        if (m == M_THREAD && !have_thread) continue;
        if (m == M_ALLREDUCE && zero) continue;
        qsort(loop[m], (size_t)reps, sizeof(double), cmp_d_);
        qsort(wait[m], (size_t)reps, sizeof(double), cmp_d_);
        qsort(step[m], (size_t)reps, sizeof(double), cmp_d_);
        qsort(ag[m], (size_t)reps, sizeof(double), cmp_d_);
        double w = wait[m][reps / 2], s = step[m][reps / 2];
        if (m == M_BLOCKING) blocking_wait = w;
        char hidden[16] = "-";
        if (m >= M_NOPROGRESS && blocking_wait > 0)
            snprintf(hidden, sizeof hidden, "%.0f%%", 100.0 * (1.0 - w / blocking_wait));
        if (rank == 0)
            printf("%-12s %8.3f %8.3f %8.3f %8s %9ld %10.4f %5.1f/%-4ld %11.3f\n", mode_name_[m],
                   loop[m][reps / 2], w, s, hidden, tests[m] / reps, prog_s[m] / reps,
                   (double)done_early[m] / reps, n_ops, ag[m][reps / 2]);
    }
    if (rank == 0) {
        /* The bucket holding tensor 0 (the tied embedding) is complete only when backward ends. */
        DpBucket *bk = malloc((size_t)n * sizeof *bk);
        int nb = dp_plan_buckets(t, n, (size_t)(bucket_mb * 1048576.0), bk, NULL);
        printf("last bucket (tensors %d..%d, %.0f MB) is ready only when backward ends: at most "
               "%.0f%% of the reduction can overlap\n", bk[nb - 1].first, bk[nb - 1].last,
               bk[nb - 1].numel * 4 / 1048576.0, 100.0 * (1.0 - (double)bk[nb - 1].numel / (double)total));
        free(bk);
    }
    if (rank == 0 && !have_thread) printf("thread: skipped (MPI thread level below MPI_THREAD_MULTIPLE)\n");
    dp_reducer_free(r);
    dp_reducer_free(rt);
    free(ready_at); free(grads); free(params); free(A); free(B); free(C);
    MPI_CHECK(MPI_Comm_free(&world));
    MPI_Finalize();
    return 0;
}
