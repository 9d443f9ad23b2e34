/*
 * parallel/mpi_check.c: checked MPI calls, job-wide fatal errors, waits with a deadline.
 * Contracts in mpi_check.h.
 */
#include "parallel/mpi_check.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long step_ = -1;
static volatile int rank_cached_ = -1;
/* The operation mpi_wait_timeout is waiting on, for mpi_check_signal_note. */
static char wait_label_[160];
static volatile sig_atomic_t in_wait_ = 0;

static int world_rank_(void) {
    if (rank_cached_ >= 0) return rank_cached_;
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin) return -1;
    int r = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    rank_cached_ = r;
    return r;
}

void mpi_check_set_step(long step) { step_ = step; (void)world_rank_(); }
long mpi_check_step(void) { return step_; }

__attribute__((noreturn)) static void abort_job_(void) {
    fflush(stdout);
    fflush(stderr);
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

static const char *hint_for_(int rc) {
    int cls = rc;
    MPI_Error_class(rc, &cls);
    switch (cls) {
    case MPI_ERR_TRUNCATE: case MPI_ERR_COUNT: case MPI_ERR_BUFFER:
        return "the ranks disagree on a message size: are all ranks running the same program, "
               "configuration and tensor table?";
    case MPI_ERR_COMM: case MPI_ERR_REQUEST: case MPI_ERR_ARG: case MPI_ERR_ROOT:
        return "an invalid communicator, request or argument: a bug in the caller (report it "
               "with this message)";
    default:
        return "a peer rank may have died or the interconnect failed; the first error of the job "
               "(mpirun names the rank that exited) says which rank started it";
    }
}

/*
 * Print the failed call with this rank, the step, the place and MPI's error string, then a
 * HINT, and abort the whole job. Never returns.
 */
void mpi_check_fail(int rc, const char *call, const char *file, int line) {
    char es[MPI_MAX_ERROR_STRING + 1] = "unknown error";
    int len = 0;
    if (MPI_Error_string(rc, es, &len) != MPI_SUCCESS) snprintf(es, sizeof es, "error code %d", rc);
    fprintf(stderr, "fatal: rank %d step %ld: %s failed at %s:%d: %s\n", world_rank_(), step_,
            call, file, line, es);
    fprintf(stderr, "HINT: %s\n", hint_for_(rc));
    abort_job_();
}

void mpi_fatal(const char *hint, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "fatal: rank %d step %ld: %s\n", world_rank_(), step_, msg);
    if (hint && *hint) fprintf(stderr, "HINT: %s\n", hint);
    abort_job_();
}

void mpi_check_comm(MPI_Comm comm) {
    (void)world_rank_();
    MPI_CHECK(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
}

/* T5_MPI_TIMEOUT in seconds (a positive number); anything else is a fatal configuration error so
 * that a typo cannot silently give a 600 s default or a zero deadline. */
double mpi_timeout_seconds(void) {
    const char *s = getenv("T5_MPI_TIMEOUT");
    if (!s || !*s) return 600.0;
    char *end = NULL;
    double t = strtod(s, &end);
    if (end == s || *end != '\0' || !(t > 0)) {
        mpi_fatal("set T5_MPI_TIMEOUT to a number of seconds > 0, or unset it (default 600)",
                  "T5_MPI_TIMEOUT='%s' is not a positive number of seconds", s);
    }
    return t;
}

static double now_(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/*
 * Wait for *req, driving MPI progress with MPI_Test. Spins for the first second (a normal
 * reduction finishes well within it, and sleeping would delay every round of a non-blocking
 * collective's schedule), then sleeps 1 ms between tests so that a stuck job does not burn a core
 * for the whole deadline. After mpi_timeout_seconds() it aborts the job naming label.
 */
void mpi_wait_timeout(MPI_Request *req, const char *label) {
    if (*req == MPI_REQUEST_NULL) return;
    snprintf(wait_label_, sizeof wait_label_, "%s", label ? label : "(unnamed)");
    in_wait_ = 1;
    double limit = mpi_timeout_seconds();
    double t0 = now_();
    long iter = 0;
    double waited = 0;
    for (;;) {
        int done = 0;
        int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) {
            char call[256];
            snprintf(call, sizeof call, "MPI_Test while waiting for %s", wait_label_);
            mpi_check_fail(rc, call, __FILE__, __LINE__);
        }
        if (done) break;
        if ((++iter & 255) == 0) waited = now_() - t0;
        if (waited > limit) {
            in_wait_ = 0;
            mpi_fatal("a peer rank never reached this collective (died, hung, or took a "
                      "different code path); raise T5_MPI_TIMEOUT if the peer is only slow",
                      "timed out after %.1f s waiting for %s", waited, wait_label_);
        }
        if (waited > 1.0) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
            waited = now_() - t0;
        }
    }
    in_wait_ = 0;
}

/* Append s to buf at *n (async-signal-safe helpers: no stdio, no malloc). */
static void put_str_(char *buf, size_t cap, size_t *n, const char *s) {
    while (*s && *n + 1 < cap) buf[(*n)++] = *s++;
}
static void put_long_(char *buf, size_t cap, size_t *n, long v) {
    char tmp[24];
    int k = 0;
    unsigned long u = v < 0 ? (unsigned long)(-(v + 1)) + 1 : (unsigned long)v;
    do { tmp[k++] = (char)('0' + u % 10); u /= 10; } while (u && k < 23);
    if (v < 0 && *n + 1 < cap) buf[(*n)++] = '-';
    while (k > 0 && *n + 1 < cap) buf[(*n)++] = tmp[--k];
}

void mpi_check_signal_note(int sig) {
    char buf[320];
    size_t n = 0;
    put_str_(buf, sizeof buf, &n, "rank ");
    put_long_(buf, sizeof buf, &n, rank_cached_);
    put_str_(buf, sizeof buf, &n, " step ");
    put_long_(buf, sizeof buf, &n, step_);
    put_str_(buf, sizeof buf, &n, ": signal ");
    put_long_(buf, sizeof buf, &n, sig);
    if (in_wait_) {
        put_str_(buf, sizeof buf, &n, " while waiting in ");
        put_str_(buf, sizeof buf, &n, wait_label_);
    } else {
        put_str_(buf, sizeof buf, &n, " (not in an MPI wait)");
    }
    put_str_(buf, sizeof buf, &n, "\n");
    ssize_t w = write(STDERR_FILENO, buf, n);
    (void)w;
}
