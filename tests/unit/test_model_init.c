/*
 * tests/unit/test_model_init.c: the parameter table (counts, Hugging Face names, shapes, order),
 * the Mesh TF initialisation statistics (docs/t5-recipe.md section 3), reproducibility, the loss of a
 * freshly initialised full-vocabulary model, and the FLOP formula (docs/t5-recipe.md section 8).
 * Expected numbers come from the spec, not from the code under test.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "pretrain/t5_model.h"
#include "tests/unit/test.h"

static T5Config cfg_(int el, int dl, int d, int f, int h, int k, int gated) {
    T5Config c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "test-%d-%d-%d", el, dl, d);
    c.n_enc_layers = el; c.n_dec_layers = dl; c.d_model = d; c.d_ff = f; c.n_heads = h;
    c.d_kv = k; c.vocab_size = 32128; c.num_buckets = 32; c.max_distance = 128;
    c.ffn = gated ? T5_FFN_GATED_GELU : T5_FFN_RELU;
    c.tied_embedding = !gated;
    c.layer_norm_eps = 1e-6f;
    return c;
}

/* docs/t5-recipe.md section 2.5, written independently of the code under test. */
static size_t formula_(const T5Config *c) {
    size_t d = c->d_model, f = c->d_ff, h = c->n_heads, I = h * c->d_kv;
    size_t ffm = c->ffn == T5_FFN_GATED_GELU ? 3 : 2;
    size_t enc = c->n_enc_layers * (4 * d * I + ffm * d * f + 2 * d) + 32 * h + d;
    size_t dec = c->n_dec_layers * (8 * d * I + ffm * d * f + 3 * d) + 32 * h + d;
    return 32128 * d * (c->tied_embedding ? 1 : 2) + enc + dec;
}

static void test_param_counts(void) {
    struct { T5Config c; size_t want; } cases[] = {
        {cfg_(4, 4, 256, 1024, 4, 64, 0), 15570688},    /* Tiny, docs/t5-recipe.md section 2.2 */
        {cfg_(6, 6, 512, 2048, 8, 64, 0), 60506624},    /* Small */
        {cfg_(3, 2, 128, 320, 3, 32, 1), 0},            /* gated + untied: by the formula */
    };
    cases[2].want = formula_(&cases[2].c);
    for (int i = 0; i < 3; i++) {
        T5Model m;
        t5_model_build(&m, &cases[i].c);
        CHECK_EQ_INT(m.num_params, cases[i].want);
        CHECK_EQ_INT(m.num_params, formula_(&cases[i].c));
        /* state-dict tensors minus the embed_tokens aliases (and lm_head when tied) */
        int el = cases[i].c.n_enc_layers, dl = cases[i].c.n_dec_layers;
        int gated = cases[i].c.ffn == T5_FFN_GATED_GELU;
        CHECK_EQ_INT(m.num_tensors, 1 + (8 + gated) * el + 2 + (13 + gated) * dl + 2 + gated);
        size_t off = 0;
        for (int t = 0; t < m.num_tensors; t++) {   /* contiguous, in table order */
            CHECK_EQ_INT(m.tensors[t].offset, off);
            off += m.tensors[t].numel;
        }
        CHECK_EQ_INT(off, m.num_params);
        CHECK(((uintptr_t)m.params & 63) == 0);
        CHECK(((uintptr_t)m.grads & 63) == 0);
        for (size_t j = 0; j < m.num_params; j += 4099) CHECK(m.params[j] == 0.0f && m.grads[j] == 0.0f);
        t5_model_free(&m);
    }
}

/* The exact Hugging Face state-dict order and shapes of a 1+1 layer v1.0 model. */
static void test_names_and_order(void) {
    T5Config c = cfg_(1, 1, 8, 12, 2, 3, 0);
    T5Model m;
    t5_model_build(&m, &c);
    static const char *want[] = {
        "shared.weight",
        "encoder.block.0.layer.0.SelfAttention.q.weight",
        "encoder.block.0.layer.0.SelfAttention.k.weight",
        "encoder.block.0.layer.0.SelfAttention.v.weight",
        "encoder.block.0.layer.0.SelfAttention.o.weight",
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "encoder.block.0.layer.0.layer_norm.weight",
        "encoder.block.0.layer.1.DenseReluDense.wi.weight",
        "encoder.block.0.layer.1.DenseReluDense.wo.weight",
        "encoder.block.0.layer.1.layer_norm.weight",
        "encoder.final_layer_norm.weight",
        "decoder.block.0.layer.0.SelfAttention.q.weight",
        "decoder.block.0.layer.0.SelfAttention.k.weight",
        "decoder.block.0.layer.0.SelfAttention.v.weight",
        "decoder.block.0.layer.0.SelfAttention.o.weight",
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "decoder.block.0.layer.0.layer_norm.weight",
        "decoder.block.0.layer.1.EncDecAttention.q.weight",
        "decoder.block.0.layer.1.EncDecAttention.k.weight",
        "decoder.block.0.layer.1.EncDecAttention.v.weight",
        "decoder.block.0.layer.1.EncDecAttention.o.weight",
        "decoder.block.0.layer.1.layer_norm.weight",
        "decoder.block.0.layer.2.DenseReluDense.wi.weight",
        "decoder.block.0.layer.2.DenseReluDense.wo.weight",
        "decoder.block.0.layer.2.layer_norm.weight",
        "decoder.final_layer_norm.weight",
    };
    static const int shapes[][2] = {
        {32128, 8}, {6, 8}, {6, 8}, {6, 8}, {8, 6}, {32, 2}, {8, 0}, {12, 8}, {8, 12}, {8, 0}, {8, 0},
        {6, 8}, {6, 8}, {6, 8}, {8, 6}, {32, 2}, {8, 0}, {6, 8}, {6, 8}, {6, 8}, {8, 6}, {8, 0},
        {12, 8}, {8, 12}, {8, 0}, {8, 0},
    };
    int n = (int)(sizeof want / sizeof want[0]);
    CHECK_EQ_INT(m.num_tensors, n);
    for (int t = 0; t < n && t < m.num_tensors; t++) {
        CHECK_STR(m.tensors[t].name, want[t]);
        CHECK_EQ_INT(m.tensors[t].shape[0], shapes[t][0]);
        CHECK_EQ_INT(m.tensors[t].ndim, shapes[t][1] ? 2 : 1);
        if (shapes[t][1]) CHECK_EQ_INT(m.tensors[t].shape[1], shapes[t][1]);
        CHECK_EQ_INT(t5_model_find_tensor(&m, want[t]), t);
    }
    CHECK_EQ_INT(t5_model_find_tensor(&m, "lm_head.weight"), 0);
    CHECK_EQ_INT(t5_model_find_tensor(&m, "encoder.embed_tokens.weight"), 0);
    CHECK_EQ_INT(t5_model_find_tensor(&m, "decoder.embed_tokens.weight"), 0);
    CHECK_EQ_INT(t5_model_find_tensor(&m, "encoder.block.1.layer.0.SelfAttention.q.weight"), -1);
    CHECK_EQ_INT(t5_model_find_tensor(&m, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"), -1);
    t5_model_free(&m);

    /* v1.1: wi_0, wi_1 in that order, and a separate lm_head at the end */
    T5Config g = cfg_(1, 1, 8, 12, 2, 3, 1);
    t5_model_build(&m, &g);
    int i0 = t5_model_find_tensor(&m, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight");
    int i1 = t5_model_find_tensor(&m, "encoder.block.0.layer.1.DenseReluDense.wi_1.weight");
    CHECK(i0 > 0 && i1 == i0 + 1);
    CHECK(t5_model_find_tensor(&m, "decoder.block.0.layer.2.DenseReluDense.wi_1.weight") > 0);
    CHECK_EQ_INT(t5_model_find_tensor(&m, "lm_head.weight"), m.num_tensors - 1);
    CHECK_STR(m.tensors[m.num_tensors - 1].name, "lm_head.weight");
    CHECK_EQ_INT(t5_model_find_tensor(&m, "encoder.embed_tokens.weight"), 0);
    t5_model_free(&m);
}

typedef struct { double mean, std, maxabs; } Stats;
static Stats stats_(const float *x, size_t n) {
    double s = 0, s2 = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        s += x[i]; s2 += (double)x[i] * x[i];
        if (fabs(x[i]) > mx) mx = fabs(x[i]);
    }
    Stats r = {s / n, sqrt(s2 / n - (s / n) * (s / n)), mx};
    return r;
}

/* Std of a normal truncated at +-2 sigma, in units of sigma:
 * sqrt(1 - 2 * 2 phi(2) / (Phi(2) - Phi(-2))). */
static double trunc_factor_(void) {
    double phi2 = exp(-2.0) / sqrt(2.0 * M_PI);
    return sqrt(1.0 - 4.0 * phi2 / erf(2.0 / sqrt(2.0)));
}

static void test_init_statistics(void) {
    int d = 256, f = 1024, h = 16, k = 64, I = h * k;
    T5Config c = cfg_(1, 1, d, f, h, k, 0);
    T5Model m;
    t5_model_build(&m, &c);
    t5_model_init_weights(&m, 1234);
    double tf = trunc_factor_();
    CHECK_NEAR(tf, 0.88, 0.005);   /* the spec's "~0.88" */
    for (int t = 0; t < m.num_tensors; t++) {
        const T5Tensor *T = &m.tensors[t];
        const float *x = m.params + T->offset;
        Stats s = stats_(x, T->numel);
        double want_std, maxabs = INFINITY;
        const char *nm = T->name;
        if (!strcmp(nm, "shared.weight")) want_std = 1.0;
        else if (strstr(nm, "relative_attention_bias")) {
            double a = sqrt(6.0 / (h + 32));
            want_std = a / sqrt(3.0);
            maxabs = a;
        } else if (strstr(nm, "layer_norm")) {
            for (size_t i = 0; i < T->numel; i++) CHECK(x[i] == 1.0f);
            continue;
        } else if (strstr(nm, ".wi.")) { want_std = tf / sqrt(d); maxabs = 2.0 / sqrt(d); }
        else if (strstr(nm, ".wo.")) { want_std = tf / sqrt(f); maxabs = 2.0 / sqrt(f); }
        else if (strstr(nm, ".q.")) want_std = 1.0 / sqrt((double)d * k);
        else if (strstr(nm, ".k.") || strstr(nm, ".v.")) want_std = 1.0 / sqrt(d);
        else if (strstr(nm, ".o.")) want_std = 1.0 / sqrt(I);
        else { CHECKF(0, "unexpected tensor %s", nm); continue; }
        /* relative tolerance: 5 standard errors of a std estimate (~0.7/sqrt(n)), at least 1% */
        double tol = fmax(0.01, 5 * 0.75 / sqrt((double)T->numel));
        CHECKF(fabs(s.std / want_std - 1.0) <= tol, "%s: std %.6g want %.6g", nm, s.std, want_std);
        CHECKF(fabs(s.mean) <= 5 * want_std / sqrt((double)T->numel), "%s: mean %.3g", nm, s.mean);
        if (isfinite(maxabs)) CHECKF(s.maxabs <= maxabs * (1 + 1e-6), "%s: max %.6g > %.6g", nm, s.maxabs, maxabs);
        else CHECKF(s.maxabs > 2.5 * want_std, "%s: looks truncated (max %.3g)", nm, s.maxabs);
    }
    t5_model_free(&m);
}

static void test_init_reproducible(void) {
    T5Config c = cfg_(2, 1, 64, 128, 2, 16, 0);
    T5Model a, b;
    t5_model_build(&a, &c);
    t5_model_build(&b, &c);
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    t5_model_init_weights(&a, 42);
    omp_set_num_threads(nt > 1 ? nt : 2);
    t5_model_init_weights(&b, 42);
    omp_set_num_threads(nt);
    CHECK(memcmp(a.params, b.params, a.num_params * sizeof(float)) == 0);
    t5_model_init_weights(&b, 43);
    size_t same = 0;
    for (size_t i = 0; i < a.num_params; i++) same += a.params[i] == b.params[i];
    /* only the norm gains (all ones) may coincide */
    CHECK(same < a.num_params / 100);
    t5_model_free(&a);
    t5_model_free(&b);
}

/* Fresh model on random tokens: logits = h E^T / sqrt(d) with |h|^2 = d and E ~ N(0,1) are
 * ~N(0,1), so logZ ~ ln V + 1/2 = 10.88 (docs/t5-recipe.md section 10.8) and the z-loss 1e-4 logZ^2 ~ 0.0118. */
static void test_initial_loss(void) {
    int q = test_quick();
    T5Config c = cfg_(2, 2, 64, 128, 2, 32, 0);
    T5Model m;
    t5_model_build(&m, &c);
    t5_model_init_weights(&m, 7);
    int B = 2, Le = q ? 32 : 96, Ld = q ? 16 : 48;
    T5Batch b;
    t5_batch_alloc(&b, B, Le, Ld);
    Rng r = rng_make(8, 0);
    for (int i = 0; i < B * Le; i++) b.enc_ids[i] = 2 + (int)rng_next_below(&r, 32000);
    for (int i = 0; i < B * Ld; i++) {
        int t = i % Ld;
        b.labels[i] = t < Ld - 3 ? 2 + (int)rng_next_below(&r, 32000) : 0;   /* 3 pads per row */
        b.dec_in_ids[i] = t == 0 ? 0 : b.labels[i - 1];
    }
    t5_batch_segments_from_ids(&b);
    T5LossStats st;
    t5_model_forward(&m, &b, 1e-4f, &st);
    CHECK_EQ_INT(st.tokens, B * (Ld - 3));
    double ce = st.ce_sum / st.tokens, z = 1e-4 * st.z_sum / st.tokens;
    printf("info: initial ce/token %.4f, z-loss/token %.5f (expect ~10.88, ~0.0118)\n", ce, z);
    CHECK_NEAR(ce, log(32128.0) + 0.5, 0.25);
    CHECK_NEAR(z, 1e-4 * pow(log(32128.0) + 0.5, 2), 0.001);
    t5_batch_free(&b);
    t5_model_free(&m);
}

/* Model FLOPs per step against the table of docs/t5-recipe.md section 8 (B = 128, Le = 512). */
static void test_flops(void) {
    struct { T5Config c; int Ld; double tflop; } cases[] = {
        {cfg_(4, 4, 256, 1024, 4, 64, 0), 128, 3.15},
        {cfg_(6, 6, 512, 2048, 8, 64, 0), 128, 14.1},
        {cfg_(6, 6, 512, 2048, 8, 64, 0), 114, 13.6},
        {cfg_(12, 12, 768, 3072, 12, 64, 0), 128, 56.0},
        {cfg_(24, 24, 1024, 4096, 16, 64, 0), 114, 185.0},
    };
    for (int i = 0; i < 5; i++) {
        double got = t5_model_flops_per_step(&cases[i].c, 128, 512, cases[i].Ld) / 1e12;
        CHECKF(fabs(got / cases[i].tflop - 1) < 0.006, "case %d: %.3f TFLOP want %.2f", i, got,
               cases[i].tflop);
    }
    /* linear in B; gated FFN adds 2 d f per token per layer (fwd), times 3 */
    T5Config s = cfg_(6, 6, 512, 2048, 8, 64, 0), g = s;
    g.ffn = T5_FFN_GATED_GELU; g.tied_embedding = 0;
    double f1 = t5_model_flops_per_step(&s, 1, 512, 128), f8 = t5_model_flops_per_step(&s, 8, 512, 128);
    CHECK_NEAR(f8 / f1, 8.0, 1e-9);
    double extra = 3.0 * 2.0 * 512 * 2048 * (6 * 512 + 6 * 128);
    CHECK_NEAR(t5_model_flops_per_step(&g, 1, 512, 128) - f1, extra, 1e-6 * f1);
    /* activation estimate grows with the batch */
    size_t a1 = t5_model_activation_bytes(&s, 1, 512, 128), a8 = t5_model_activation_bytes(&s, 8, 512, 128);
    CHECK(a1 > 0 && a8 > 7 * a1 && a8 < 9 * a1);
}

int main(void) {
    RUN(test_param_counts);
    RUN(test_names_and_order);
    RUN(test_init_statistics);
    RUN(test_init_reproducible);
    RUN(test_initial_loss);
    RUN(test_flops);
    return TEST_EXIT();
}
