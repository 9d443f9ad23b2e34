/*
 * data/span.h: T5 span corruption (docs/t5-recipe.md section 4) and sequential packing.
 *
 * Pipeline pieces implemented here, each a pure function of its inputs and an Rng:
 *   span_select_chunk        4.2  one uniformly chosen aligned 65536-token window of a document
 *   span_random_spans_helper 4.5  raw piece length for an encoder length (512 -> 568 / 114)
 *   span_noise_mask          4.6  random_spans_noise_mask, float32 round-half-even counts
 *   span_corrupt             4.7  unique sentinels counting down from sentinel_top, EOS appended
 *   SpanRow / span_row_*     4.8  greedy sequential packing into rows of Le / Ld positions
 * (reduce_concat_tokens and split_tokens, 4.3-4.4, are done incrementally by data/loader.c.)
 */
#ifndef SPAN_H
#define SPAN_H

#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"
#include "../pretrain/t5_batch.h"

#define SPAN_NOISE_DENSITY 0.15f
#define SPAN_MEAN_LENGTH 3.0f
#define SPAN_CHUNK_TOKENS 65536     /* select_random_chunk max_length */
#define SPAN_GROUP_DOCS 128         /* reduce_concat_tokens batch_size */
#define SPAN_EOS_ID 1

/* Noise and span counts of a mask of length n (n' = max(n, 2) as in T5). */
int span_num_noise(int n);
int span_num_spans(int num_noise);

/* random_spans_helper: the raw piece length T whose corrupted inputs just fit inputs_length,
 * and the resulting targets length (EOS included in both). Computed in double with
 * round-half-even like the Python helper. 512 -> (568, 114). Returns T; *targets_length may be
 * NULL. */
int span_random_spans_helper(int inputs_length, int *targets_length);

/* Lengths of the corrupted example of a raw piece of n tokens: inputs and targets, EOS included. */
void span_corrupted_lengths(int n, int *n_inputs, int *n_targets);

/* Choose one aligned window of at most SPAN_CHUNK_TOKENS tokens of a document of n tokens,
 * uniformly at random. Returns the window start; *len gets its length. n <= 65536: (0, n). */
long span_select_chunk(long n, Rng *rng, long *len);

/* Fill mask[0..n) with 0 (kept) / 1 (noise) per random_spans_noise_mask. Exactly
 * span_num_noise(n) noise tokens (for n >= 2) in span_num_spans(...) runs; the mask starts with
 * a kept run and ends with a noise run; every such layout is equally likely. Uses only rng.
 * scratch must hold 2 * n + 8 ints (may be NULL: then it is allocated internally). */
void span_noise_mask(int n, Rng *rng, uint8_t *mask, int *scratch);

/* Sentinel replacement + EOS (4.7): inputs get the kept tokens with every noise run replaced by
 * one sentinel (sentinel_top, sentinel_top - 1, ...), targets the noise tokens with every kept
 * run replaced the same way; EOS appended to both. inputs/targets need n + 1 entries.
 * Returns 0, or -1 if there are more runs than 100 sentinels (cannot happen for n <= 568). */
int span_corrupt(const int32_t *tokens, int n, const uint8_t *mask, int32_t sentinel_top,
                 int32_t *inputs, int *n_inputs, int32_t *targets, int *n_targets);

/* A row being packed (4.8): a view of one batch row plus its fill levels. */
typedef struct {
    T5Batch *b;
    int row;        /* row index in b */
    int used_e;     /* encoder positions used */
    int used_d;     /* decoder positions used */
    int segments;   /* examples placed */
} SpanRow;

/* Zero row `row` of b and start packing into it. */
void span_row_begin(SpanRow *r, T5Batch *b, int row);
/* Does an example of (ni, nt) tokens fit? An empty row accepts anything (over-long features
 * are trimmed with EOS kept last, T5's ensure_eos; cannot happen with helper lengths). */
int span_row_fits(const SpanRow *r, int ni, int nt);
/* Append an example as the next segment: ids, segment id (1, 2, ...), positions from 0, labels
 * = targets, decoder inputs = targets shifted right with 0 at the segment start. Caller checked
 * span_row_fits. */
void span_row_add(SpanRow *r, const int32_t *inputs, int ni, const int32_t *targets, int nt);
/* Is the row full in either feature (no further example can fit)? */
int span_row_full(const SpanRow *r);

#endif
