/*
 * tests/unit/test_stages.c: the model cut into stages (pipeline parallelism) computes what the
 * whole model computes.
 *
 * A tiny model (3 encoder + 3 decoder blocks, packed segments and padding) is run whole and as a
 * chain of stage models built with t5_model_build_stage, for several splits: one where a stage
 * holds the last encoder blocks with the first decoder blocks, one with a decoder-only and a
 * head-only stage, one with the encoder norm alone. Forward: the loss sums must be bit-identical
 * (the same ops on the same inputs). Backward: the encoder output's gradient is summed over the
 * stages holding decoder blocks, and the shared tensors (tied embedding, relative-bias tables)
 * over the stages holding a copy, so every gradient must equal the whole model's up to summation
 * order (1e-5 relative in norm per tensor). Recomputation must give bit-identical gradients to
 * keeping the activations.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "pretrain/t5_model.h"
#include "tests/unit/test.h"

static T5Config cfg_(int gated) {
    T5Config c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "test-stages");
    c.n_enc_layers = 3; c.n_dec_layers = 3; c.d_model = 16; c.d_ff = 24; c.n_heads = 2;
    c.d_kv = 8; c.vocab_size = 80; c.num_buckets = 32; c.max_distance = 128;
    c.ffn = gated ? T5_FFN_GATED_GELU : T5_FFN_RELU;
    c.tied_embedding = gated ? 0 : 1;
    c.layer_norm_eps = 1e-6f;
    return c;
}

static void batch_(T5Batch *b, int V) {
    int B = 2, Le = 10, Ld = 6;
    t5_batch_alloc(b, B, Le, Ld);
    int32_t es[2][10] = {{1, 1, 1, 1, 2, 2, 2, 0, 0, 0}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1}};
    int32_t ds[2][6] = {{1, 1, 2, 2, 2, 0}, {1, 1, 1, 1, 0, 0}};
    Rng r = rng_make(7, 0);
    for (int i = 0; i < B; i++) {
        for (int t = 0; t < Le; t++) {
            b->enc_seg[i * Le + t] = es[i][t];
            b->enc_ids[i * Le + t] = es[i][t] ? 1 + (int)rng_next_below(&r, V - 1) : 0;
        }
        for (int t = 0; t < Ld; t++) {
            b->dec_seg[i * Ld + t] = ds[i][t];
            b->labels[i * Ld + t] = ds[i][t] ? 1 + (int)rng_next_below(&r, V - 1) : 0;
            int start = t == 0 || ds[i][t - 1] != ds[i][t];
            b->dec_in_ids[i * Ld + t] = (ds[i][t] && !start) ? b->labels[i * Ld + t - 1] : 0;
        }
    }
}

/* A split: per stage the range. */
typedef struct { int n; T5StageRange r[4]; } Split;

static void copy_params_(T5Model *dst, const T5Model *src) {
    for (int i = 0; i < dst->num_tensors; i++) {
        int j = t5_model_find_tensor(src, dst->tensors[i].name);
        memcpy(dst->params + dst->tensors[i].offset, src->params + src->tensors[j].offset,
               dst->tensors[i].numel * sizeof(float));
    }
}

/* Run the chain forward and backward; compare with the whole model. */
static void check_split_(int gated, const Split *sp, int recompute, float **grads_out) {
    T5Config c = cfg_(gated);
    T5Model whole;
    t5_model_build(&whole, &c);
    t5_model_init_weights(&whole, 11);
    T5Batch b;
    batch_(&b, c.vocab_size);
    T5LossStats ref;
    t5_model_zero_grad(&whole);
    t5_model_forward(&whole, &b, 1e-4f, &ref);
    t5_model_backward(&whole, 0.05f);

    size_t N = (size_t)b.B * b.Le * c.d_model, M = (size_t)b.B * b.Ld * c.d_model;
    T5Model st[4];
    T5Acts *acts[4];
    for (int s = 0; s < sp->n; s++) {
        t5_model_build_stage(&st[s], &c, &sp->r[s]);
        st[s].recompute = recompute;
        t5_model_init_weights(&st[s], 11);
        /* init by global index must equal the whole model's values */
        for (int i = 0; i < st[s].num_tensors; i++) {
            int j = t5_model_find_tensor(&whole, st[s].tensors[i].name);
            CHECK(j >= 0 && memcmp(st[s].params + st[s].tensors[i].offset, whole.params + whole.tensors[j].offset,
                                   st[s].tensors[i].numel * sizeof(float)) == 0);
        }
        copy_params_(&st[s], &whole);
        t5_model_zero_grad(&st[s]);
        acts[s] = t5_acts_new(&st[s], b.B, b.Le, b.Ld);
    }
    /* forward along the chain */
    const float *enc_x = NULL, *dec_x = NULL, *enc_out = NULL;
    T5LossStats loss = {0, 0, 0};
    for (int s = 0; s < sp->n; s++) {
        T5StageIn in = {enc_x, dec_x, enc_out};
        T5LossStats ls;
        t5_stage_forward(&st[s], acts[s], &b, &in, 1e-4f, &ls);
        loss.ce_sum += ls.ce_sum; loss.z_sum += ls.z_sum; loss.tokens += ls.tokens;
        if (t5_acts_enc_x_out(acts[s])) enc_x = t5_acts_enc_x_out(acts[s]);
        if (t5_acts_enc_out(acts[s])) { enc_out = t5_acts_enc_out(acts[s]); enc_x = NULL; }
        if (t5_acts_dec_x_out(acts[s])) dec_x = t5_acts_dec_x_out(acts[s]);
    }
    CHECK(loss.ce_sum == ref.ce_sum);
    CHECK(loss.z_sum == ref.z_sum);
    CHECK_EQ_INT(loss.tokens, ref.tokens);
    /* backward along the chain, last stage first */
    float *d_enc_x = calloc(N, sizeof(float)), *d_dec_x = calloc(M, sizeof(float));
    float *d_enc_x_in = calloc(N, sizeof(float)), *d_dec_x_in = calloc(M, sizeof(float));
    float *d_enc_out_sum = calloc(N, sizeof(float)), *part = calloc(N, sizeof(float));
    int have_enc_out_sum = 0;
    for (int s = sp->n - 1; s >= 0; s--) {
        T5StageGrad g;
        memset(&g, 0, sizeof g);
        g.d_enc_x = d_enc_x;
        g.d_dec_x = d_dec_x;
        g.d_enc_out = st[s].range.enc_norm && have_enc_out_sum ? d_enc_out_sum : NULL;
        g.d_enc_x_in = d_enc_x_in;
        g.d_dec_x_in = d_dec_x_in;
        g.d_enc_out_part = part;
        t5_stage_backward(&st[s], acts[s], &g, 0.05f);
        int has_dec_blocks = st[s].range.dec_end > st[s].range.dec_begin;
        if (has_dec_blocks && !st[s].range.enc_norm) {
            for (size_t i = 0; i < N; i++) d_enc_out_sum[i] += part[i];
            have_enc_out_sum = 1;
        }
        memcpy(d_enc_x, d_enc_x_in, N * sizeof(float));
        memcpy(d_dec_x, d_dec_x_in, M * sizeof(float));
    }
    /* every tensor's gradient summed over the stages holding it vs the whole model */
    float *sum = calloc(whole.num_params, sizeof(float));
    for (int s = 0; s < sp->n; s++)
        for (int i = 0; i < st[s].num_tensors; i++) {
            int j = t5_model_find_tensor(&whole, st[s].tensors[i].name);
            for (size_t k = 0; k < st[s].tensors[i].numel; k++)
                sum[whole.tensors[j].offset + k] += st[s].grads[st[s].tensors[i].offset + k];
        }
    double worst = 0;
    for (int j = 0; j < whole.num_tensors; j++) {
        double dn = 0, rn = 0;
        for (size_t k = 0; k < whole.tensors[j].numel; k++) {
            double a = sum[whole.tensors[j].offset + k], r = whole.grads[whole.tensors[j].offset + k];
            dn += (a - r) * (a - r);
            rn += r * r;
        }
        double rel = sqrt(dn) / (sqrt(rn) + 1e-30);
        if (rel > worst) worst = rel;
        CHECKF(rel <= 1e-5, "%s: relative gradient difference %.3g", whole.tensors[j].name, rel);
    }
    printf("info: split of %d stages%s: worst relative gradient difference %.3g\n", sp->n,
           recompute ? " (recompute)" : "", worst);
    if (grads_out) *grads_out = sum;
    else free(sum);
    for (int s = 0; s < sp->n; s++) { t5_acts_free(acts[s]); t5_model_free(&st[s]); }
    free(d_enc_x); free(d_dec_x); free(d_enc_x_in); free(d_dec_x_in); free(d_enc_out_sum); free(part);
    t5_batch_free(&b);
    t5_model_free(&whole);
}

/* enc 0-1 | enc 2 + norm + dec 0 | dec 1-2 + head */
static const Split MIXED = {3, {{1, 0, 2, 0, 0, 0, 0}, {0, 2, 3, 1, 0, 1, 0}, {0, 3, 3, 0, 1, 3, 1}}};
/* enc all + norm | dec 0-1 | dec 2 | head alone */
static const Split DEC_ONLY = {4, {{1, 0, 3, 1, 0, 0, 0}, {0, 3, 3, 0, 0, 2, 0}, {0, 3, 3, 0, 2, 3, 0},
                                   {0, 3, 3, 0, 3, 3, 1}}};
/* enc 0-2 | norm alone + dec 0 | dec 1-2 + head */
static const Split NORM_ALONE = {3, {{1, 0, 3, 0, 0, 0, 0}, {0, 3, 3, 1, 0, 1, 0}, {0, 3, 3, 0, 1, 3, 1}}};

static void test_stage_table_(void) {
    T5Config c = cfg_(0);
    T5Model whole, s0, s2;
    t5_model_build(&whole, &c);
    t5_model_build_stage(&s0, &c, &MIXED.r[0]);
    t5_model_build_stage(&s2, &c, &MIXED.r[2]);
    /* stage 0: shared (embedding), encoder bias, encoder blocks 0 and 1 only */
    CHECK(t5_model_find_tensor(&s0, "shared.weight") >= 0);
    CHECK(t5_model_find_tensor(&s0, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight") >= 0);
    CHECK(t5_model_find_tensor(&s0, "encoder.block.1.layer.1.DenseReluDense.wo.weight") >= 0);
    CHECK(t5_model_find_tensor(&s0, "encoder.block.2.layer.0.SelfAttention.q.weight") < 0);
    CHECK(t5_model_find_tensor(&s0, "decoder.block.0.layer.0.SelfAttention.q.weight") < 0);
    CHECK(t5_model_find_tensor(&s0, "encoder.final_layer_norm.weight") < 0);
    /* stage 2: decoder blocks 1-2, decoder bias (replicated), final norm, tied head */
    CHECK(t5_model_find_tensor(&s2, "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight") >= 0);
    CHECK(t5_model_find_tensor(&s2, "decoder.block.0.layer.0.SelfAttention.q.weight") < 0);
    CHECK(t5_model_find_tensor(&s2, "decoder.final_layer_norm.weight") >= 0);
    CHECK(t5_model_find_tensor(&s2, "shared.weight") >= 0);
    CHECK(s0.num_params + s2.num_params < whole.num_params + 2 * (size_t)c.vocab_size * c.d_model);
    /* global indices match the whole table */
    for (int i = 0; i < s2.num_tensors; i++) {
        int j = t5_model_find_tensor(&whole, s2.tensors[i].name);
        CHECK_EQ_INT(s2.tensors[i].global_index, j);
    }
    t5_model_free(&whole);
    t5_model_free(&s0);
    t5_model_free(&s2);
}

static void test_split_mixed(void) { check_split_(0, &MIXED, 0, NULL); }
static void test_split_decoder_only_stages(void) { check_split_(0, &DEC_ONLY, 0, NULL); }
static void test_split_norm_alone_gated(void) { check_split_(1, &NORM_ALONE, 0, NULL); }
static void test_stage_table(void) { test_stage_table_(); }

static void test_recompute_bit_identical(void) {
    float *keep = NULL, *again = NULL;
    check_split_(1, &MIXED, 0, &keep);
    check_split_(1, &MIXED, 1, &again);
    T5Config c = cfg_(1);
    size_t n = t5_config_num_params(&c);
    CHECK(keep && again && memcmp(keep, again, n * sizeof(float)) == 0);
    free(keep);
    free(again);
}

static void test_recompute_whole_model(void) {
    T5Config c = cfg_(0);
    T5Model a, b;
    t5_model_build(&a, &c);
    t5_model_build(&b, &c);
    b.recompute = 1;
    t5_model_init_weights(&a, 3);
    t5_model_init_weights(&b, 3);
    T5Batch batch;
    batch_(&batch, c.vocab_size);
    T5LossStats la, lb;
    t5_model_zero_grad(&a);
    t5_model_zero_grad(&b);
    t5_model_forward(&a, &batch, 1e-4f, &la);
    t5_model_backward(&a, 0.1f);
    t5_model_forward(&b, &batch, 1e-4f, &lb);
    t5_model_backward(&b, 0.1f);
    CHECK(la.ce_sum == lb.ce_sum);
    CHECK(memcmp(a.grads, b.grads, a.num_params * sizeof(float)) == 0);
    /* recompute keeps less */
    T5StageRange r;
    t5_stage_range_full(&c, &r);
    size_t keep = t5_acts_bytes(&c, &r, 8, 64, 16, 0), rec = t5_acts_bytes(&c, &r, 8, 64, 16, 1);
    CHECKF(rec < keep / 2, "recompute activations %zu vs %zu bytes", rec, keep);
    t5_batch_free(&batch);
    t5_model_free(&a);
    t5_model_free(&b);
}

int main(void) {
    RUN(test_stage_table);
    RUN(test_split_mixed);
    RUN(test_split_decoder_only_stages);
    RUN(test_split_norm_alone_gated);
    RUN(test_recompute_bit_identical);
    RUN(test_recompute_whole_model);
    return TEST_EXIT();
}
