/* data/synthetic.c: see synthetic.h. */
#include "synthetic.h"

#include <stdlib.h>

#include "../common/util.h"
#include "span.h"

void synthetic_batch(T5Batch *b, int vocab_pieces, int sentinel_top, uint64_t seed, long step,
                     int row0) {
    int T = span_random_spans_helper(b->Le, NULL);
    int32_t *tok = xmalloc((size_t)T * sizeof(int32_t));
    int32_t *in = xmalloc(((size_t)T + 1) * sizeof(int32_t));
    int32_t *tg = xmalloc(((size_t)T + 1) * sizeof(int32_t));
    uint8_t *mask = xmalloc((size_t)T);
    int *scratch = xmalloc((2 * (size_t)T + 8) * sizeof(int));
    uint64_t lo = vocab_pieces > 3 ? 3 : 0, span = vocab_pieces > 3 ? (uint64_t)vocab_pieces - 3 : 1;
    for (int r = 0; r < b->B; r++) {
        Rng rng = rng_make(seed, rng_mix64((uint64_t)step * 0x100000001B3ULL) ^ (uint64_t)(row0 + r));
        for (int i = 0; i < T; i++) tok[i] = (int32_t)(lo + rng_next_below(&rng, span));
        span_noise_mask(T, &rng, mask, scratch);
        int ni, nt;
        span_corrupt(tok, T, mask, sentinel_top, in, &ni, tg, &nt);
        SpanRow R;
        span_row_begin(&R, b, r);
        span_row_add(&R, in, ni, tg, nt);
    }
    free(tok); free(in); free(tg); free(mask); free(scratch);
}
