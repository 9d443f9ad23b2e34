/*
 * parallel/dp.h: data-parallel gradient reduction, bucketed and overlapped with backward, and
 * ZeRO-1 optimizer-state sharding.
 *
 * The reducer works on one fp32 gradient buffer and a table of tensors inside it (offset,
 * numel), in the model's table order. Backward produces gradients roughly in reverse table
 * order; buckets (~bucket_bytes, default 25 MB) are built over that reverse order: bucket 0 holds
 * the LAST tensors of the table, a bucket is closed as soon as it holds >= bucket_bytes, and
 * every bucket is a run of consecutive table indices (dp_plan_buckets; a pure function of the
 * table and bucket_bytes, so every rank and every run cuts the same buckets).
 *
 * During the LAST micro-batch of a step, the backward calls dp_tensor_ready(i) when tensor i's
 * gradient is final. Buckets START STRICTLY IN BUCKET ORDER: bucket k starts (non-blocking) once
 * all its tensors are ready and buckets 0..k-1 have started. That keeps the sequence of
 * collectives identical on every rank whatever the ready order (MPI requires it). Open MPI 4.1
 * progresses non-blocking collectives only inside MPI calls, so the backward calls dp_progress()
 * often (between layers; a few MPI_Test calls, nothing when nothing is in flight), or the reducer
 * runs a communication thread (dp_reducer_progress_thread). dp_finish() starts every bucket not
 * started yet (so "dp_begin; dp_finish" without any dp_tensor_ready is a correct, unoverlapped
 * reduction) and waits for all, each wait with the T5_MPI_TIMEOUT deadline (mpi_check.h).
 *
 * zero = 0: every rank ends with the SUM over dp ranks of every tensor's gradient
 *           (MPI_Iallreduce per bucket, in place; adjacent tensors merged into one call).
 * zero = 1: every tensor has one owner (dp_plan_owners: largest first, each to the least-loaded
 *           rank, ties to the lowest rank); the owner ends with the summed gradient of its
 *           tensors (MPI_Ireduce per tensor to the owner, in place; other ranks' copies are left
 *           as they were), updates them, then dp_allgather_params() broadcasts each tensor from
 *           its owner (MPI_Ibcast) so every rank has the updated parameters.
 * The caller scales (e.g. by 1/global_tokens) after the reduction; the reducer only sums.
 *
 * Summation order is fixed for a given dp size and table (the same bits run after run). For
 * dp <= 2 zero=0 and zero=1 give identical bits (a+b = b+a); for dp > 2 Open MPI's allreduce
 * and reduce algorithms may associate differently (equal up to summation order).
 *
 * dp size 1 is a no-op path: nothing is started, dp_finish returns at once, every tensor is
 * owned by rank 0.
 *
 * MPI errors and timeouts abort the whole job with the rank, step and operation (mpi_check.h).
 * Tensors larger than INT_MAX floats are split into several calls.
 */
#ifndef T5_PARALLEL_DP_H
#define T5_PARALLEL_DP_H

#include <mpi.h>
#include <stddef.h>

typedef struct {
    size_t offset, numel;   /* inside the gradient (and parameter) buffer, in floats */
} DpTensor;

#define DP_DEFAULT_BUCKET_BYTES ((size_t)25 << 20)

/* ---- planning: pure functions (no MPI), used by the reducer and by tests ---- */

/* One bucket: tensors first..last (table indices, first <= last), numel floats in total. */
typedef struct { int first, last; size_t numel; } DpBucket;

/* Cut n tensors (n >= 1) into buckets over reverse table order. buckets must hold n entries;
 * bucket_of (may be NULL) gets each tensor's bucket. bucket_bytes 0 = DP_DEFAULT_BUCKET_BYTES.
 * Returns the number of buckets. */
int dp_plan_buckets(const DpTensor *t, int n, size_t bucket_bytes, DpBucket *buckets,
                    int *bucket_of);
/* ZeRO-1 owners: tensors by numel descending (ties: lower index first), each to the rank with
 * the smallest load so far (ties: lowest rank). owner gets n entries in 0..dp_size-1. */
void dp_plan_owners(const DpTensor *t, int n, int dp_size, int *owner);

/* ---- the reducer ---- */

typedef struct DpReducer DpReducer;

/* Collective over dp. tensors are copied. bucket_bytes 0 = 25 MB. zero is 0 or 1. The ranks'
 * tables, zero and bucket_bytes are compared (one small allreduce); a mismatch is fatal. */
DpReducer *dp_reducer_create(MPI_Comm dp, const DpTensor *tensors, int n_tensors, int zero,
                             size_t bucket_bytes);
void dp_reducer_free(DpReducer *r);   /* stops the progress thread; NULL is fine */

int dp_owner(const DpReducer *r, int tensor);   /* ZeRO-1 owner (dp rank); 0..dp-1; zero=0: -1 */
/* Tensors this rank updates, ascending table order, into idx (may be NULL; room for n_tensors):
 * zero=1 its owned tensors, zero=0 all. Returns the count. The trainer builds its optimizer
 * over exactly these (pretrain/optim.h keeps state only for the tensors it is given). */
int dp_owned_tensors(const DpReducer *r, int *idx);
int dp_n_buckets(const DpReducer *r);
int dp_size(const DpReducer *r);
int dp_rank(const DpReducer *r);

/* Start a communication thread that calls MPI_Test every period_ms (e.g. 1.0) while a step's
 * reductions are in flight (between dp_begin and dp_finish). Needs MPI_THREAD_MULTIPLE: returns
 * -1 (and no thread) when MPI was initialised with less; 0 when started; dp size 1: 0, no thread.
 * With the thread, dp_progress() is still allowed (it then does nothing). */
int dp_reducer_progress_thread(DpReducer *r, double period_ms);

/* Start of a step's last micro-batch backward: grads is the buffer reductions will run on. */
void dp_begin(DpReducer *r, float *grads);
/* Tensor's gradient is final; marking a tensor twice in one step is fatal (a caller bug). */
void dp_tensor_ready(DpReducer *r, int tensor);
void dp_progress(DpReducer *r);
void dp_finish(DpReducer *r);
/* ZeRO-1: every owner broadcasts its updated tensors of params to all dp ranks (collective;
 * zero=0 or dp size 1: nothing). */
void dp_allgather_params(DpReducer *r, float *params);

/* The grad-norm and finite check as one scalar reduction over shards: the sum over tensors (table
 * order) of each tensor's sum of squares (double), computed by the rank that owns it (zero=1;
 * one MPI_Allreduce of n_tensors doubles, zeros for tensors a rank does not own, which makes the
 * result bit-identical to the zero=0 value) or by every rank locally (zero=0; no MPI). Collective
 * when zero=1. *finite (may be NULL) = 1 when every gradient value is finite. Call after
 * dp_finish. */
double dp_sum_squares_owned(DpReducer *r, const float *grads, int *finite);

/* Measurements of the last step. wait_s: seconds blocked in dp_finish; reduce_s: from the first
 * bucket's start to the completion of the last as observed (dp_finish's end); bytes reduced;
 * buckets; started_early: buckets started before dp_finish; progress_tests: MPI_Test calls made
 * by dp_progress or the thread; allgather_s: seconds in the last dp_allgather_params. */
typedef struct {
    double wait_s, reduce_s;
    double bytes;
    int buckets, started_early;
    long progress_tests;
    double allgather_s;
} DpStats;
void dp_last_stats(const DpReducer *r, DpStats *st);

#endif
