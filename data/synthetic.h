/*
 * data/synthetic.h: generated batches of the real shapes, for benchmarks and tests that must not
 * depend on a corpus.
 */
#ifndef SYNTHETIC_H
#define SYNTHETIC_H

#include <stdint.h>

#include "../pretrain/t5_batch.h"

/* Fill every row of b with one span-corrupted example: a piece of T = random_spans_helper(b->Le)
 * random token ids in [3, vocab_pieces) (568 for Le = 512), corrupted exactly as real data
 * (sentinels counting down from sentinel_top = P + 99, EOS appended): 512 input / 114 target
 * tokens padded to Le / Ld, segment ids 1 on real tokens, positions, shifted decoder inputs.
 * Row r of b is global row row0 + r; the content is a pure function of (seed, step, global row),
 * so rank slices of a global batch agree with the whole. Targets longer than Ld are trimmed with
 * EOS kept last. */
void synthetic_batch(T5Batch *b, int vocab_pieces, int sentinel_top, uint64_t seed, long step,
                     int row0);

#endif
