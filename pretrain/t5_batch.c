/* pretrain/t5_batch.c: see t5_batch.h. */
#include "t5_batch.h"

#include <stdlib.h>
#include <string.h>

#include "../common/util.h"

void t5_batch_alloc(T5Batch *b, int B, int Le, int Ld) {
    memset(b, 0, sizeof *b);
    b->B = B; b->Le = Le; b->Ld = Ld;
    size_t ne = (size_t)B * Le, nd = (size_t)B * Ld;
    b->enc_ids = xcalloc(ne, sizeof(int32_t));
    b->enc_seg = xcalloc(ne, sizeof(int32_t));
    b->enc_pos = xcalloc(ne, sizeof(int32_t));
    b->dec_in_ids = xcalloc(nd, sizeof(int32_t));
    b->labels = xcalloc(nd, sizeof(int32_t));
    b->dec_seg = xcalloc(nd, sizeof(int32_t));
    b->dec_pos = xcalloc(nd, sizeof(int32_t));
}

void t5_batch_free(T5Batch *b) {
    free(b->enc_ids); free(b->enc_seg); free(b->enc_pos);
    free(b->dec_in_ids); free(b->labels); free(b->dec_seg); free(b->dec_pos);
    memset(b, 0, sizeof *b);
}

T5Batch t5_batch_slice(const T5Batch *src, int row0, int n) {
    T5Batch v = *src;
    size_t oe = (size_t)row0 * src->Le, od = (size_t)row0 * src->Ld;
    v.B = n;
    v.enc_ids = src->enc_ids + oe; v.enc_seg = src->enc_seg + oe;
    v.enc_pos = src->enc_pos ? src->enc_pos + oe : NULL;
    v.dec_in_ids = src->dec_in_ids + od; v.labels = src->labels + od;
    v.dec_seg = src->dec_seg + od;
    v.dec_pos = src->dec_pos ? src->dec_pos + od : NULL;
    return v;
}

void t5_batch_segments_from_ids(T5Batch *b) {
    for (int r = 0; r < b->B; r++) {
        for (int t = 0; t < b->Le; t++) {
            size_t i = (size_t)r * b->Le + t;
            b->enc_seg[i] = b->enc_ids[i] != 0;
            if (b->enc_pos) b->enc_pos[i] = t;
        }
        for (int t = 0; t < b->Ld; t++) {
            size_t i = (size_t)r * b->Ld + t;
            b->dec_seg[i] = b->labels[i] != 0;
            if (b->dec_pos) b->dec_pos[i] = t;
        }
    }
}

long t5_batch_count_targets(const T5Batch *b) {
    long n = 0;
    for (size_t i = 0; i < (size_t)b->B * b->Ld; i++) n += b->labels[i] != 0;
    return n;
}
