/*
 * parallel/pipeline.h: pipeline parallelism for the T5 encoder-decoder: the stage split and the
 * 1F1B schedule.
 *
 * The block sequence [embedding, encoder blocks, encoder final norm, decoder blocks, decoder
 * final norm + head] is cut into P contiguous stages. A stage may hold the last encoder blocks
 * together with decoder blocks. Boundary traffic per micro-batch (point to point on the pp
 * communicator, non-blocking sends):
 *   forward   the encoder hidden state [N,d] and/or the decoder hidden state [M,d] to the next
 *             stage; the encoder output [N,d] from the stage holding the encoder's final norm to
 *             every later stage that runs decoder blocks;
 *   backward  the gradients of those hidden states to the previous stage; each later decoder
 *             stage's contribution to the encoder output's gradient back to the norm's stage,
 *             summed there in stage order.
 * Tensors several stages hold (the tied embedding: encoder input, decoder input, head; each
 * stack's relative-bias table on every stage running that stack) have their gradients summed
 * over the stages holding them after the last micro-batch (pp_reduce_shared).
 *
 * 1F1B: stage s runs min(P - s - 1, m) warm-up forwards, then alternates one forward and one
 * backward, then the remaining backwards; it keeps at most min(P - s, m) activation sets.
 */
#ifndef T5_PARALLEL_PIPELINE_H
#define T5_PARALLEL_PIPELINE_H

#include <mpi.h>
#include <stddef.h>

#include "../pretrain/t5_model.h"

/* Relative cost of each unit of the sequence for the split (FLOPs of one row; t5-spec.md 8). */
double pp_cost_enc_block(const T5Config *c, int Le, int Ld);
double pp_cost_dec_block(const T5Config *c, int Le, int Ld);
double pp_cost_head(const T5Config *c, int Le, int Ld);

/* Split into P stages. spec "auto" balances the cost model (minimises the largest stage);
 * otherwise spec lists the blocks of each stage in sequence order, encoder then decoder blocks,
 * e.g. "14,13,13,20" for 48 + 12 blocks (the embedding goes with the first stage, the encoder
 * norm with the last encoder block, the head with the last stage). cost (may be NULL) gets
 * each stage's cost share (summing to 1). 0, or -1 with a message in err. */
int pp_split(const T5Config *c, int P, const char *spec, int Le, int Ld, T5StageRange *ranges,
             double *cost, char *err, size_t errlen);

/* "enc 0-13 | enc 14-26 | ... | enc 40-47 + norm, dec 0-11 + head" */
void pp_split_describe(const T5StageRange *ranges, int P, char *buf, size_t n);

typedef struct Pipeline Pipeline;

/* Collective over pp. m is this stage's model (built with ranges[stage]); ranges of all P
 * stages; micro-batches of B rows at lengths Le, Ld. */
Pipeline *pp_create(MPI_Comm pp, T5Model *m, const T5StageRange *ranges, int P, int B, int Le, int Ld);
void pp_free(Pipeline *p);

/* One step's forward and backward over the micro-batches of `local` (rows a multiple of B) in
 * 1F1B order; gradients accumulate into m->grads (zero them first). *loss (every stage) gets the
 * sums of the stages with the head (zeros elsewhere; reduce over pp). ready/ctx (may be NULL)
 * hear of each tensor whose gradient is final, during the last micro-batch's backward; tensors
 * that several stages hold are not announced (see pp_reduce_shared). */
void pp_train_step(Pipeline *p, const T5Batch *local, float zc, float loss_scale, T5LossStats *loss,
                   void (*ready)(void *ctx, int tensor), void *ctx);

/* Forward only (validation): loss sums as above. */
void pp_forward(Pipeline *p, const T5Batch *local, T5LossStats *loss);

/* Sum the gradients of the tensors several stages hold over those stages (collective over pp).
 * ready (may be NULL) then hears of each of them. */
void pp_reduce_shared(Pipeline *p, void (*ready)(void *ctx, int tensor), void *ctx);

/* 1 if tensor i of this stage's table is also held by an earlier stage (so sums over stages, such
 * as the gradient norm, count it only on the first holder). */
int pp_is_secondary_copy(const Pipeline *p, int tensor);

/* Measurements of the last step: seconds waiting for messages (the bubble, seen from this
 * stage), compute seconds, bytes sent. */
typedef struct { double wait_s, compute_s, bytes_sent; int micro_batches; } PpStats;
void pp_last_stats(const Pipeline *p, PpStats *st);

#endif
