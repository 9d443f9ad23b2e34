/*
 * data/span.c: T5 span corruption and packing. See span.h and docs/t5-recipe.md section 4.
 *
 * Counts follow the TF graph bit for bit: float32 products rounded half-to-even (rintf in the
 * default rounding mode), so e.g. n = 190 gives 29 noise tokens, not the 28 of double maths.
 */
#include "span.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int span_num_noise(int n) {
    int np = n < 2 ? 2 : n;
    int noise = (int)rintf((float)np * SPAN_NOISE_DENSITY);
    if (noise < 1) noise = 1;
    if (noise > np - 1) noise = np - 1;
    return noise;
}

int span_num_spans(int num_noise) {
    int spans = (int)rintf((float)num_noise / SPAN_MEAN_LENGTH);
    return spans < 1 ? 1 : spans;
}

/* The Python helper: int(round(T * density)) in double, round() being half-to-even. */
static void helper_lengths_(int T, int *inputs, int *targets) {
    int noise = (int)rint((double)T * (double)0.15);
    int spans = (int)rint((double)noise / 3.0);
    *inputs = (T - noise) + spans + 1;
    *targets = noise + spans + 1;
}

int span_random_spans_helper(int inputs_length, int *targets_length) {
    int T = inputs_length - 1, in, tg;
    for (;;) {
        helper_lengths_(T + 1, &in, &tg);
        if (in > inputs_length) break;
        T++;
    }
    helper_lengths_(T, &in, &tg);
    if (targets_length) *targets_length = tg;
    return T;
}

void span_corrupted_lengths(int n, int *n_inputs, int *n_targets) {
    if (n <= 1) { *n_inputs = n + 1; *n_targets = 2; return; }   /* mask is all kept */
    int noise = span_num_noise(n), spans = span_num_spans(noise);
    *n_inputs = (n - noise) + spans + 1;
    *n_targets = noise + spans + 1;
}

long span_select_chunk(long n, Rng *rng, long *len) {
    const long L = SPAN_CHUNK_TOKENS;
    if (n <= L) { *len = n; return 0; }
    long windows = (n + L - 1) / L;
    long m = (long)rng_next_below(rng, (uint64_t)windows);
    long start = m * L;
    *len = (start + L <= n) ? L : n - start;
    return start;
}

/* Uniformly random composition of `items` into `S` positive parts: choose which of the
 * items - 1 gaps start a new part by a uniform permutation (Fisher-Yates) of S - 1 ones and
 * items - S zeros. lengths gets S entries; flags needs items entries. */
static void segment_(int items, int S, Rng *rng, int *flags, int *lengths) {
    int g = items - 1;
    for (int i = 0; i < g; i++) flags[i] = i < S - 1;
    for (int i = g - 1; i > 0; i--) {
        int j = (int)rng_next_below(rng, (uint64_t)i + 1);
        int t = flags[i]; flags[i] = flags[j]; flags[j] = t;
    }
    int s = 0, run = 1;
    for (int i = 0; i < g; i++) {
        if (flags[i]) { lengths[s++] = run; run = 1; } else run++;
    }
    lengths[s] = run;
}

void span_noise_mask(int n, Rng *rng, uint8_t *mask, int *scratch) {
    int np = n < 2 ? 2 : n;
    int noise = span_num_noise(n), spans = span_num_spans(noise), keep = np - noise;
    if (spans > keep) spans = keep;      /* never with density 0.15; keeps segment_ defined */
    int *own = NULL;
    /* scratch: flags (np) then two length arrays (spans each) live in one allocation. */
    size_t need = (size_t)np + 2 * (size_t)spans + 2;
    if (!scratch || need > (size_t)2 * (size_t)n + 8) { own = xmalloc(need * sizeof(int)); scratch = own; }
    int *flags = scratch, *noise_len = flags + np, *keep_len = noise_len + spans;
    /* Order matters for determinism: noise segmentation first, then keep, as in T5. */
    segment_(noise, spans, rng, flags, noise_len);
    segment_(keep, spans, rng, flags, keep_len);
    int pos = 0;
    for (int s = 0; s < spans; s++) {
        for (int i = 0; i < keep_len[s]; i++, pos++) if (pos < n) mask[pos] = 0;
        for (int i = 0; i < noise_len[s]; i++, pos++) if (pos < n) mask[pos] = 1;
    }
    free(own);
}

/* Replace every run of tokens whose mask equals `drop` by one sentinel (counting down from
 * top); keep the others. Returns the output length. */
static int replace_runs_(const int32_t *tok, const uint8_t *mask, int n, uint8_t drop,
                         int32_t top, int32_t *out, int *runs) {
    int m = 0, r = 0;
    for (int i = 0; i < n; i++) {
        if (mask[i] != drop) { out[m++] = tok[i]; continue; }
        if (i == 0 || mask[i - 1] != drop) out[m++] = top - r++;
    }
    *runs = r;
    return m;
}

int span_corrupt(const int32_t *tokens, int n, const uint8_t *mask, int32_t sentinel_top,
                 int32_t *inputs, int *n_inputs, int32_t *targets, int *n_targets) {
    int ri, rt;
    int ni = replace_runs_(tokens, mask, n, 1, sentinel_top, inputs, &ri);
    int nt = replace_runs_(tokens, mask, n, 0, sentinel_top, targets, &rt);
    inputs[ni++] = SPAN_EOS_ID;
    targets[nt++] = SPAN_EOS_ID;
    *n_inputs = ni;
    *n_targets = nt;
    return (ri > 100 || rt > 100) ? -1 : 0;
}

void span_row_begin(SpanRow *r, T5Batch *b, int row) {
    r->b = b; r->row = row; r->used_e = 0; r->used_d = 0; r->segments = 0;
    size_t oe = (size_t)row * b->Le, od = (size_t)row * b->Ld;
    memset(b->enc_ids + oe, 0, (size_t)b->Le * sizeof(int32_t));
    memset(b->enc_seg + oe, 0, (size_t)b->Le * sizeof(int32_t));
    if (b->enc_pos) memset(b->enc_pos + oe, 0, (size_t)b->Le * sizeof(int32_t));
    memset(b->dec_in_ids + od, 0, (size_t)b->Ld * sizeof(int32_t));
    memset(b->labels + od, 0, (size_t)b->Ld * sizeof(int32_t));
    memset(b->dec_seg + od, 0, (size_t)b->Ld * sizeof(int32_t));
    if (b->dec_pos) memset(b->dec_pos + od, 0, (size_t)b->Ld * sizeof(int32_t));
}

int span_row_fits(const SpanRow *r, int ni, int nt) {
    if (r->segments == 0) return 1;
    return r->used_e + ni <= r->b->Le && r->used_d + nt <= r->b->Ld;
}

int span_row_full(const SpanRow *r) {
    /* Every corrupted example has >= 2 input and >= 2 target tokens (a token or sentinel + EOS). */
    return r->used_e >= r->b->Le - 1 || r->used_d >= r->b->Ld - 1;
}

/* Copy n ids into dst (capacity cap), trimming with EOS kept last (T5's ensure_eos). */
static int put_trimmed_(int32_t *dst, int cap, const int32_t *src, int n) {
    if (n <= cap) { memcpy(dst, src, (size_t)n * sizeof(int32_t)); return n; }
    memcpy(dst, src, (size_t)cap * sizeof(int32_t));
    if (cap > 0) dst[cap - 1] = SPAN_EOS_ID;
    return cap;
}

void span_row_add(SpanRow *r, const int32_t *inputs, int ni, const int32_t *targets, int nt) {
    T5Batch *b = r->b;
    int seg = ++r->segments;
    size_t oe = (size_t)r->row * b->Le + r->used_e, od = (size_t)r->row * b->Ld + r->used_d;
    int ke = put_trimmed_(b->enc_ids + oe, b->Le - r->used_e, inputs, ni);
    int kd = put_trimmed_(b->labels + od, b->Ld - r->used_d, targets, nt);
    for (int t = 0; t < ke; t++) {
        b->enc_seg[oe + t] = seg;
        if (b->enc_pos) b->enc_pos[oe + t] = t;
    }
    for (int t = 0; t < kd; t++) {
        b->dec_seg[od + t] = seg;
        if (b->dec_pos) b->dec_pos[od + t] = t;
        b->dec_in_ids[od + t] = t == 0 ? 0 : b->labels[od + t - 1];
    }
    r->used_e += ke;
    r->used_d += kd;
}
