/*
 * pretrain/t5_config.h: model configuration and the variant registry.
 *
 * A variant name (e.g. "small-el16-dl8", "t5-efficient-large-nh8-nl32",
 * "google/t5-efficient-mini") maps to a T5Config by the naming rules of
 * shared/seed-variants.tsv and t5-spec.md section 2.2.
 */
#ifndef T5_CONFIG_H
#define T5_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#define T5_VOCAB_SIZE 32128     /* model rows: 32000 pieces + 100 sentinels, rounded up to 128 */
#define T5_NUM_BUCKETS 32
#define T5_MAX_DISTANCE 128

typedef enum { T5_FFN_RELU = 0, T5_FFN_GATED_GELU = 1 } T5FfnKind;

typedef struct {
    char name[128];       /* canonical name, "t5-efficient-small-el16-dl8" */
    int n_enc_layers;     /* el */
    int n_dec_layers;     /* dl */
    int d_model;          /* d */
    int d_ff;             /* f */
    int n_heads;          /* h */
    int d_kv;             /* k; inner attention width I = h*k */
    int vocab_size;       /* V, 32128 for T5 */
    int num_buckets;      /* 32 */
    int max_distance;     /* 128 */
    T5FfnKind ffn;        /* v1.0: RELU; v1.1: GATED_GELU */
    int tied_embedding;   /* v1.0: 1 (with d^-0.5 rescale before the head); v1.1: 0 (no rescale) */
    float layer_norm_eps; /* 1e-6 */
} T5Config;

/* Parse a variant name into *cfg (v1.0 defaults: ReLU, tied, V=32128, 32 buckets, 128 max
 * distance, eps 1e-6). Accepts an optional "google/" and/or "t5-efficient-" prefix.
 * Returns 0 on success; on failure returns -1, leaves *cfg unspecified and writes a message that
 * names the nearest valid variants into err (errlen bytes). */
int t5_config_from_variant(const char *name, T5Config *cfg, char *err, size_t errlen);

/* Exact number of parameters of cfg (t5-spec.md section 2.5). */
size_t t5_config_num_params(const T5Config *cfg);

/* Check a config for values the model cannot run (non-positive sizes, ...). 0 if valid, else -1
 * with a message in err. */
int t5_config_validate(const T5Config *cfg, char *err, size_t errlen);

/* The published variants (at least the 100 of seed-variants.tsv), canonical names. */
int t5_variant_count(void);
const char *t5_variant_name(int i);

/* Print the TSV "name el dl dm ff kv nh params" (header + one row per variant), the stable
 * --list-variants contract of docs/architecture.md section 9. */
void t5_variants_print_tsv(FILE *out);

#endif
