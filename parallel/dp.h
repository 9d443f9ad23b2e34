/*
 * parallel/dp.h: data-parallel gradient reduction, bucketed and overlapped with backward, and
 * ZeRO-1 optimizer-state sharding.
 *
 * The reducer works on one fp32 gradient buffer and a table of tensors inside it (offset,
 * numel), in the model's table order. Backward produces gradients roughly in reverse table
 * order; buckets (~bucket_bytes, default 25 MB) are built over that reverse order. During the
 * LAST micro-batch of a step, the backward calls dp_tensor_ready(i) when tensor i's gradient is
 * final; a bucket whose tensors are all ready starts a non-blocking reduction at once. Open MPI
 * 4.1 progresses non-blocking collectives only inside MPI calls, so the backward calls
 * dp_progress() often (between layers; cheap when nothing is in flight), and dp_finish() waits
 * for the rest.
 *
 * zero = 0: every rank ends with the SUM over dp ranks of every tensor's gradient.
 * zero = 1: every tensor has one owner (dp_owner), balanced by size largest first; the owner ends
 *           with the summed gradient of its tensors (others' contents are unspecified), updates
 *           them, then dp_allgather_params() gives every rank the updated parameters.
 * Summation order is fixed (the same bits for the same dp size).
 */
#ifndef T5_PARALLEL_DP_H
#define T5_PARALLEL_DP_H

#include <mpi.h>
#include <stddef.h>

typedef struct {
    size_t offset, numel;   /* inside the gradient (and parameter) buffer, in floats */
} DpTensor;

typedef struct DpReducer DpReducer;

/* Collective over dp. tensors are copied. bucket_bytes 0 = 25 MB. */
DpReducer *dp_reducer_create(MPI_Comm dp, const DpTensor *tensors, int n_tensors, int zero,
                             size_t bucket_bytes);
void dp_reducer_free(DpReducer *r);

int dp_owner(const DpReducer *r, int tensor);   /* ZeRO-1 owner (dp rank); 0..dp-1; zero=0: -1 */

/* Start of a step's last micro-batch backward: grads is the buffer reductions will run on. */
void dp_begin(DpReducer *r, float *grads);
void dp_tensor_ready(DpReducer *r, int tensor);
void dp_progress(DpReducer *r);
void dp_finish(DpReducer *r);
/* ZeRO-1: every owner broadcasts its updated tensors of params to all dp ranks. */
void dp_allgather_params(DpReducer *r, float *params);

/* Measurements of the last step: seconds spent waiting in dp_finish, bytes reduced. */
typedef struct { double wait_s, reduce_s; double bytes; int buckets; } DpStats;
void dp_last_stats(const DpReducer *r, DpStats *st);

#endif
