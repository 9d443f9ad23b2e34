/*
 * parallel/mpi_check.h: every MPI call is checked, and a fatal error on one rank ends the job.
 *
 *   MPI_CHECK(MPI_Allreduce(...));
 *
 * On a return code other than MPI_SUCCESS it prints, on stderr,
 *   "fatal: rank R step S: MPI_Allreduce(...) failed at FILE:LINE: <MPI error string>"
 * and a HINT, then calls MPI_Abort(MPI_COMM_WORLD, 1), so no other rank is left waiting. The
 * communicators of the process grid are set to MPI_ERRORS_RETURN (mpi_check_comm) so that errors
 * reach the check instead of Open MPI's default handler.
 * mpi_check_set_step() records the step named in messages (-1 = before training).
 *
 * Waits that could hang (a peer died without the runtime noticing, or never posted its side) go
 * through mpi_wait_timeout: it polls MPI_Test (spinning for the first second, then sleeping 1 ms
 * between tests) and aborts the job with the label of the stuck operation after
 * mpi_timeout_seconds() (T5_MPI_TIMEOUT, default 600 s).
 *
 * What ends a job when a rank is killed (measured, Open MPI 4.1.4, one node): mpirun notices the
 * dead process, prints "mpirun noticed that process rank R ... exited on signal 9", sends SIGTERM
 * to every survivor and SIGKILL about 1 s later; the job is over ~1-2 s after the death. A
 * survivor's SIGTERM handler can call mpi_check_signal_note() to print which collective it was
 * stuck in (async-signal-safe). When the runtime does not notice (e.g. a hung peer), the
 * mpi_wait_timeout deadline ends the job.
 */
#ifndef T5_PARALLEL_MPI_CHECK_H
#define T5_PARALLEL_MPI_CHECK_H

#include <mpi.h>

void mpi_check_fail(int rc, const char *call, const char *file, int line);
#define MPI_CHECK(call) do { int mpi_rc_ = (call); \
    if (mpi_rc_ != MPI_SUCCESS) mpi_check_fail(mpi_rc_, #call, __FILE__, __LINE__); } while (0)

void mpi_check_set_step(long step);
long mpi_check_step(void);

/* Set MPI_ERRORS_RETURN on comm (checked). */
void mpi_check_comm(MPI_Comm comm);

/* Abort the whole job with a message naming this rank and step (never returns). */
#if defined(__GNUC__)
__attribute__((noreturn, format(printf, 2, 3)))
#endif
void mpi_fatal(const char *hint, const char *fmt, ...);

/* MPI_Wait with a deadline; label names the operation in the abort message. On return *req is
 * MPI_REQUEST_NULL. */
void mpi_wait_timeout(MPI_Request *req, const char *label);
double mpi_timeout_seconds(void);   /* T5_MPI_TIMEOUT (seconds, > 0), default 600 */

/* Async-signal-safe: write "rank R step S: signal SIG while waiting in <label>" (or "... not in
 * an MPI wait") to stderr. For signal handlers of programs that want survivors of a dead peer to
 * name the collective they were stuck in. */
void mpi_check_signal_note(int sig);

#endif
