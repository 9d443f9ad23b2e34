/*
 * pretrain/t5_batch.h: one batch of span-corrupted, packed examples, as the model consumes it.
 *
 * Row-major int32 arrays. A row holds one or more packed examples (segments 1, 2, ...);
 * segment id 0 marks padding. labels[b][t] == 0 means "no loss at this position".
 * decoder_input_ids are the labels shifted right by one within each segment, 0 at the start
 * of every segment (T5's decoder start token).
 */
#ifndef T5_BATCH_H
#define T5_BATCH_H

#include <stdint.h>

typedef struct {
    int B;                 /* rows */
    int Le;                /* encoder length (512) */
    int Ld;                /* decoder length (128; 114 real tokens for a full example) */
    int32_t *enc_ids;      /* [B, Le] */
    int32_t *enc_seg;      /* [B, Le] segment ids, 0 = pad */
    int32_t *enc_pos;      /* [B, Le] position within its segment (informational) */
    int32_t *dec_in_ids;   /* [B, Ld] */
    int32_t *labels;       /* [B, Ld] target ids, 0 = ignored */
    int32_t *dec_seg;      /* [B, Ld] */
    int32_t *dec_pos;      /* [B, Ld] */
} T5Batch;

/* Allocate all arrays zeroed for B x Le / B x Ld. Fatal on out of memory. */
void t5_batch_alloc(T5Batch *b, int B, int Le, int Ld);
void t5_batch_free(T5Batch *b);
/* A view of rows [row0, row0+n) of src (no copy). */
T5Batch t5_batch_slice(const T5Batch *src, int row0, int n);
/* Fill segment ids from ids when a batch has no packing information: id != 0 -> 1, else 0
 * (encoder from enc_ids, decoder from labels); positions become the index within the row. */
void t5_batch_segments_from_ids(T5Batch *b);
/* Number of labels != 0. */
long t5_batch_count_targets(const T5Batch *b);

#endif
