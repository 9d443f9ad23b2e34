/*
 * parallel/mpi_check.h: every MPI call is checked, and a fatal error on one rank ends the job.
 *
 *   MPI_CHECK(MPI_Allreduce(...));
 *
 * On a return code other than MPI_SUCCESS it prints, on stderr,
 *   "fatal: rank R step S: MPI_Allreduce(...) failed at FILE:LINE: <MPI error string>"
 * and a HINT, then calls MPI_Abort(MPI_COMM_WORLD, 1), so no other rank is left waiting. The
 * communicators of the process grid are set to MPI_ERRORS_RETURN so that errors reach the check.
 * mpi_check_set_step() records the step named in messages (-1 = before training).
 *
 * Waits that could hang (a peer died without the runtime noticing) go through
 * mpi_wait_timeout: it polls with MPI_Test and aborts the job with the label of the stuck
 * operation after timeout seconds (T5_MPI_TIMEOUT, default 600).
 */
#ifndef T5_PARALLEL_MPI_CHECK_H
#define T5_PARALLEL_MPI_CHECK_H

#include <mpi.h>

void mpi_check_fail(int rc, const char *call, const char *file, int line);
#define MPI_CHECK(call) do { int mpi_rc_ = (call); \
    if (mpi_rc_ != MPI_SUCCESS) mpi_check_fail(mpi_rc_, #call, __FILE__, __LINE__); } while (0)

void mpi_check_set_step(long step);
long mpi_check_step(void);

/* Abort the whole job with a message naming this rank and step (never returns). */
#if defined(__GNUC__)
__attribute__((noreturn, format(printf, 2, 3)))
#endif
void mpi_fatal(const char *hint, const char *fmt, ...);

/* MPI_Wait with a deadline; label names the operation in the abort message. */
void mpi_wait_timeout(MPI_Request *req, const char *label);
double mpi_timeout_seconds(void);

#endif
