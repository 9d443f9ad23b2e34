/*
 * pretrain/t5_model.c: the T5 encoder-decoder on the CPU, forward and backward.
 *
 * Read top to bottom: the parameter table (Hugging Face names and order), the Mesh TF
 * initialisation, the activation buffers, the two sub-layers both stacks share, and the model
 * forward and its mirror image, the model backward. The ops themselves (each forward next to its
 * backward) are in t5_ops.c.
 *
 * An untied lm_head (v1.1) is initialised like MTF's dense kernels: truncated normal, stddev
 * d^-0.5.
 */
#include "t5_model.h"

#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"   /* FATAL, xmalloc*, Rng */
#include "t5_ops.h"

/* ---------------------------------------------------------------------------------------------
 * Parameter table: Hugging Face names, shapes and state-dict order. */

static void add_tensor_(T5Model *m, int *cap, size_t *off, const char *name, int ndim, int s0,
                        int s1) {
    if (m->num_tensors == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        m->tensors = xrealloc(m->tensors, (size_t)*cap * sizeof(T5Tensor));
    }
    T5Tensor *t = &m->tensors[m->num_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = s0;
    t->shape[1] = ndim == 2 ? s1 : 0;
    t->numel = (size_t)s0 * (ndim == 2 ? (size_t)s1 : 1);
    t->offset = *off;
    *off += t->numel;
}

void t5_model_build(T5Model *m, const T5Config *cfg) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    const T5Config *c = cfg;
    if (c->n_enc_layers < 1 || c->n_dec_layers < 1 || c->d_model < 1 || c->d_ff < 1 ||
        c->n_heads < 1 || c->d_kv < 1 || c->vocab_size < 2 || c->num_buckets < 2 ||
        c->max_distance < 2 || (c->ffn != T5_FFN_RELU && c->ffn != T5_FFN_GATED_GELU))
        FATAL("validate the config with t5_config_validate first",
              "t5_model_build: invalid config '%s' (el=%d dl=%d d=%d f=%d h=%d k=%d V=%d ffn=%d "
              "tied=%d)", c->name, c->n_enc_layers, c->n_dec_layers, c->d_model, c->d_ff,
              c->n_heads, c->d_kv, c->vocab_size, (int)c->ffn, c->tied_embedding);
    int d = c->d_model, f = c->d_ff, H = c->n_heads, HK = c->n_heads * c->d_kv;
    int V = c->vocab_size, nb = c->num_buckets, gated = c->ffn == T5_FFN_GATED_GELU;
    int cap = 0;
    size_t off = 0;
    char nm[96];
    add_tensor_(m, &cap, &off, "shared.weight", 2, V, d);
    for (int stack = 0; stack < 2; stack++) {
        const char *sn = stack == 0 ? "encoder" : "decoder";
        int L = stack == 0 ? c->n_enc_layers : c->n_dec_layers;
        for (int l = 0; l < L; l++) {
            static const char *qkvo[4] = {"q", "k", "v", "o"};
            for (int w = 0; w < 4; w++) {
                snprintf(nm, sizeof nm, "%s.block.%d.layer.0.SelfAttention.%s.weight", sn, l, qkvo[w]);
                add_tensor_(m, &cap, &off, nm, 2, w < 3 ? HK : d, w < 3 ? d : HK);
            }
            if (l == 0) {
                snprintf(nm, sizeof nm, "%s.block.0.layer.0.SelfAttention.relative_attention_bias.weight", sn);
                add_tensor_(m, &cap, &off, nm, 2, nb, H);
            }
            snprintf(nm, sizeof nm, "%s.block.%d.layer.0.layer_norm.weight", sn, l);
            add_tensor_(m, &cap, &off, nm, 1, d, 0);
            int ff = 1;
            if (stack == 1) {
                for (int w = 0; w < 4; w++) {
                    snprintf(nm, sizeof nm, "%s.block.%d.layer.1.EncDecAttention.%s.weight", sn, l, qkvo[w]);
                    add_tensor_(m, &cap, &off, nm, 2, w < 3 ? HK : d, w < 3 ? d : HK);
                }
                snprintf(nm, sizeof nm, "%s.block.%d.layer.1.layer_norm.weight", sn, l);
                add_tensor_(m, &cap, &off, nm, 1, d, 0);
                ff = 2;
            }
            if (gated) {
                snprintf(nm, sizeof nm, "%s.block.%d.layer.%d.DenseReluDense.wi_0.weight", sn, l, ff);
                add_tensor_(m, &cap, &off, nm, 2, f, d);
                snprintf(nm, sizeof nm, "%s.block.%d.layer.%d.DenseReluDense.wi_1.weight", sn, l, ff);
                add_tensor_(m, &cap, &off, nm, 2, f, d);
            } else {
                snprintf(nm, sizeof nm, "%s.block.%d.layer.%d.DenseReluDense.wi.weight", sn, l, ff);
                add_tensor_(m, &cap, &off, nm, 2, f, d);
            }
            snprintf(nm, sizeof nm, "%s.block.%d.layer.%d.DenseReluDense.wo.weight", sn, l, ff);
            add_tensor_(m, &cap, &off, nm, 2, d, f);
            snprintf(nm, sizeof nm, "%s.block.%d.layer.%d.layer_norm.weight", sn, l, ff);
            add_tensor_(m, &cap, &off, nm, 1, d, 0);
        }
        snprintf(nm, sizeof nm, "%s.final_layer_norm.weight", sn);
        add_tensor_(m, &cap, &off, nm, 1, d, 0);
    }
    if (!c->tied_embedding) add_tensor_(m, &cap, &off, "lm_head.weight", 2, V, d);
    m->num_params = off;
    m->params = xmalloc_aligned(off * sizeof(float));
    m->grads = xmalloc_aligned(off * sizeof(float));
    memset(m->params, 0, off * sizeof(float));
    memset(m->grads, 0, off * sizeof(float));
}

int t5_model_find_tensor(const T5Model *m, const char *name) {
    if (!strcmp(name, "encoder.embed_tokens.weight") || !strcmp(name, "decoder.embed_tokens.weight") ||
        (m->cfg.tied_embedding && !strcmp(name, "lm_head.weight")))
        name = "shared.weight";
    for (int i = 0; i < m->num_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return i;
    return -1;
}

/* Pointer to tensor `fmt` (formatted) inside base (params or grads); fatal if missing, which
 * would be a bug in the table above. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static float *tensor_ptr_(const T5Model *m, float *base, const char *fmt, ...) {
    char nm[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(nm, sizeof nm, fmt, ap);
    va_end(ap);
    int i = t5_model_find_tensor(m, nm);
    if (i < 0) FATAL("this is a bug in t5_model.c", "tensor '%s' missing from the table", nm);
    return base + m->tensors[i].offset;
}

/* The weights of one layer as pointers into base. q,k,v are adjacent in the table, so
 * qkv is one [3I, d] matrix; likewise cross-attention k,v ([2I, d]) and wi_0,wi_1 ([2f, d]). */
typedef struct {
    float *qkv, *o, *ln_sa;             /* self-attention */
    float *xq, *xkv, *xo, *ln_ca;       /* cross-attention (decoder only) */
    float *wi, *wo, *ln_ff;             /* feed-forward */
} LayerW;

static void layer_ptrs_(const T5Model *m, float *base, int dec, int l, LayerW *w) {
    const char *sn = dec ? "decoder" : "encoder";
    int gated = m->cfg.ffn == T5_FFN_GATED_GELU, ff = dec ? 2 : 1;
    memset(w, 0, sizeof *w);
    w->qkv = tensor_ptr_(m, base, "%s.block.%d.layer.0.SelfAttention.q.weight", sn, l);
    w->o = tensor_ptr_(m, base, "%s.block.%d.layer.0.SelfAttention.o.weight", sn, l);
    w->ln_sa = tensor_ptr_(m, base, "%s.block.%d.layer.0.layer_norm.weight", sn, l);
    if (dec) {
        w->xq = tensor_ptr_(m, base, "%s.block.%d.layer.1.EncDecAttention.q.weight", sn, l);
        w->xkv = tensor_ptr_(m, base, "%s.block.%d.layer.1.EncDecAttention.k.weight", sn, l);
        w->xo = tensor_ptr_(m, base, "%s.block.%d.layer.1.EncDecAttention.o.weight", sn, l);
        w->ln_ca = tensor_ptr_(m, base, "%s.block.%d.layer.1.layer_norm.weight", sn, l);
    }
    w->wi = tensor_ptr_(m, base, gated ? "%s.block.%d.layer.%d.DenseReluDense.wi_0.weight"
                                       : "%s.block.%d.layer.%d.DenseReluDense.wi.weight", sn, l, ff);
    w->wo = tensor_ptr_(m, base, "%s.block.%d.layer.%d.DenseReluDense.wo.weight", sn, l, ff);
    w->ln_ff = tensor_ptr_(m, base, "%s.block.%d.layer.%d.layer_norm.weight", sn, l, ff);
}

/* ---------------------------------------------------------------------------------------------
 * Mesh TensorFlow initialisation (t5-spec.md section 3). Each tensor is filled in chunks of
 * 2^16 elements; chunk c of tensor t draws from the counter-based stream (seed, t<<32 | c), so
 * the result is a pure function of the seed, independent of the thread count. */

enum { INIT_NORMAL, INIT_TRUNC, INIT_UNIFORM, INIT_ONES };

void t5_model_init_weights(T5Model *m, uint64_t seed) {
    const T5Config *c = &m->cfg;
    double d = c->d_model, k = c->d_kv, HK = (double)c->n_heads * c->d_kv, f = c->d_ff;
    for (int ti = 0; ti < m->num_tensors; ti++) {
        const T5Tensor *t = &m->tensors[ti];
        const char *nm = t->name;
        int kind;
        double s;
        if (!strcmp(nm, "shared.weight")) { kind = INIT_NORMAL; s = 1.0; }
        else if (!strcmp(nm, "lm_head.weight")) { kind = INIT_TRUNC; s = 1.0 / sqrt(d); }
        else if (strstr(nm, "relative_attention_bias")) {
            kind = INIT_UNIFORM; s = sqrt(6.0 / (c->n_heads + c->num_buckets));
        }
        else if (strstr(nm, "layer_norm")) { kind = INIT_ONES; s = 1.0; }
        else if (strstr(nm, "DenseReluDense.wi")) { kind = INIT_TRUNC; s = 1.0 / sqrt(d); }
        else if (strstr(nm, "DenseReluDense.wo")) { kind = INIT_TRUNC; s = 1.0 / sqrt(f); }
        else if (strstr(nm, ".q.weight")) { kind = INIT_NORMAL; s = 1.0 / sqrt(d * k); }
        else if (strstr(nm, ".k.weight") || strstr(nm, ".v.weight")) {
            kind = INIT_NORMAL; s = 1.0 / sqrt(d);
        }
        else if (strstr(nm, ".o.weight")) { kind = INIT_NORMAL; s = 1.0 / sqrt(HK); }
        else FATAL("this is a bug in t5_model.c", "no initialiser for tensor '%s'", nm);
        float *p = m->params + t->offset;
        const size_t chunk = (size_t)1 << 16;
        long nchunks = (long)((t->numel + chunk - 1) / chunk);
#pragma omp parallel for schedule(dynamic, 1)
        for (long ch = 0; ch < nchunks; ch++) {
            Rng r = rng_make(seed, ((uint64_t)ti << 32) | (uint64_t)ch);
            size_t i0 = (size_t)ch * chunk, i1 = i0 + chunk < t->numel ? i0 + chunk : t->numel;
            for (size_t i = i0; i < i1; i++) {
                double x;
                switch (kind) {
                case INIT_NORMAL: x = s * rng_next_normal(&r); break;
                case INIT_TRUNC:  /* resample outside +-2 sigma, as tf.truncated_normal */
                    do { x = rng_next_normal(&r); } while (fabs(x) > 2.0);
                    x *= s; break;
                case INIT_UNIFORM: x = s * (2.0 * rng_next_double(&r) - 1.0); break;
                default: x = 1.0; break;
                }
                p[i] = (float)x;
            }
        }
    }
}

void t5_model_zero_grad(T5Model *m) {
    memset(m->grads, 0, m->num_params * sizeof(float));
}

/* ---------------------------------------------------------------------------------------------
 * Activations: one allocation carved into named buffers, sized for (B, Le, Ld); grows when a
 * larger batch comes. The same carving function counts the bytes for
 * t5_model_activation_bytes. */

struct T5Activations {
    int B, Le, Ld, nthreads;
    size_t cap_floats, cap_ints;
    float *mem;
    int32_t *imem;
    float zc;
    int have_forward;
    /* inputs (copies) */
    int32_t *enc_ids, *enc_seg, *dec_ids, *labels, *dec_seg;   /* [N] / [M] */
    /* encoder, N = B*Le tokens */
    float *enc_res;     /* [2el+1, N, d] residual stream: 2l = attn input, 2l+1 = ffn input */
    float *enc_ln;      /* [2el, N, d] normed sub-layer inputs */
    float *enc_rstd;    /* [2el, N] */
    float *enc_qkv;     /* [el, N, 3I] */
    float *enc_att;     /* [el, B, H, Le, Le] probabilities */
    float *enc_ctx;     /* [el, N, HK] */
    float *enc_ffu;     /* [el, N, 2f] gated pre-activations (gated only) */
    float *enc_ffh;     /* [el, N, f] */
    float *enc_out;     /* [N, d] after the final norm */
    float *enc_out_rstd;/* [N] */
    float *enc_bias;    /* [H, 2Le-1] */
    /* decoder, M = B*Ld tokens */
    float *dec_res;     /* [3dl+1, M, d]: 3l self, 3l+1 cross, 3l+2 ffn input */
    float *dec_ln;      /* [3dl, M, d] */
    float *dec_rstd;    /* [3dl, M] */
    float *dec_qkv;     /* [dl, M, 3I] */
    float *dec_att;     /* [dl, B, H, Ld, Ld] */
    float *dec_ctx;     /* [dl, M, HK] */
    float *dec_xq;      /* [dl, M, HK] */
    float *dec_xkv;     /* [dl, N, 2I] */
    float *dec_xatt;    /* [dl, B, H, Ld, Le] */
    float *dec_xctx;    /* [dl, M, HK] */
    float *dec_ffu;     /* [dl, M, 2f] (gated only) */
    float *dec_ffh;     /* [dl, M, f] */
    float *dec_out;     /* [M, d] */
    float *dec_out_rstd;/* [M] */
    float *dec_bias;    /* [H, 2Ld-1] */
    float *logits;      /* [M, V]; becomes dlogits in backward */
    float *logZ;        /* [M] */
    /* backward scratch */
    float *d_res;       /* [max(N,M), d] running residual gradient */
    float *d_ln;        /* [max(N,M), d] */
    float *d_enc_out;   /* [N, d] */
    float *d_qkv;       /* [max(N*3I, M*3I)] also cross dkv [N, 2I] */
    float *d_q;         /* [M, HK] */
    float *d_ctx;       /* [max(N,M), HK] */
    float *d_ffh;       /* [max(N,M), f] */
    float *d_ffu;       /* [max(N,M), 2f] (gated only) */
    float *d_bias_enc;  /* [B, H, 2Le-1] */
    float *d_bias_dec;  /* [B, H, 2Ld-1] */
    float *att_scratch; /* [nthreads, max(Le*Le, Ld*Le)] */
};

static float *bump_(float *base, size_t *off, size_t n) {
    float *p = base ? base + *off : NULL;
    *off += (n + 15) & ~(size_t)15;   /* keep every buffer 64-byte aligned */
    return p;
}

/* Carve (or, with base == NULL, only count) the activation floats for (B, Le, Ld). */
static size_t carve_(T5Activations *a, const T5Config *c, float *base, int B, int Le, int Ld,
                     int nthreads) {
    size_t d = c->d_model, f = c->d_ff, H = c->n_heads, HK = H * c->d_kv, V = c->vocab_size;
    size_t el = c->n_enc_layers, dl = c->n_dec_layers;
    size_t N = (size_t)B * Le, M = (size_t)B * Ld, NM = N > M ? N : M;
    size_t fu = c->ffn == T5_FFN_GATED_GELU ? 2 * f : 0;
    size_t o = 0;
    T5Activations t;
    if (!a) a = &t;
    a->enc_res = bump_(base, &o, (2 * el + 1) * N * d);
    a->enc_ln = bump_(base, &o, 2 * el * N * d);
    a->enc_rstd = bump_(base, &o, 2 * el * N);
    a->enc_qkv = bump_(base, &o, el * N * 3 * HK);
    a->enc_att = bump_(base, &o, el * B * H * Le * Le);
    a->enc_ctx = bump_(base, &o, el * N * HK);
    a->enc_ffu = bump_(base, &o, el * N * fu);
    a->enc_ffh = bump_(base, &o, el * N * f);
    a->enc_out = bump_(base, &o, N * d);
    a->enc_out_rstd = bump_(base, &o, N);
    a->enc_bias = bump_(base, &o, H * (2 * Le - 1));
    a->dec_res = bump_(base, &o, (3 * dl + 1) * M * d);
    a->dec_ln = bump_(base, &o, 3 * dl * M * d);
    a->dec_rstd = bump_(base, &o, 3 * dl * M);
    a->dec_qkv = bump_(base, &o, dl * M * 3 * HK);
    a->dec_att = bump_(base, &o, dl * B * H * Ld * Ld);
    a->dec_ctx = bump_(base, &o, dl * M * HK);
    a->dec_xq = bump_(base, &o, dl * M * HK);
    a->dec_xkv = bump_(base, &o, dl * N * 2 * HK);
    a->dec_xatt = bump_(base, &o, dl * B * H * Ld * Le);
    a->dec_xctx = bump_(base, &o, dl * M * HK);
    a->dec_ffu = bump_(base, &o, dl * M * fu);
    a->dec_ffh = bump_(base, &o, dl * M * f);
    a->dec_out = bump_(base, &o, M * d);
    a->dec_out_rstd = bump_(base, &o, M);
    a->dec_bias = bump_(base, &o, H * (2 * Ld - 1));
    a->logits = bump_(base, &o, M * V);
    a->logZ = bump_(base, &o, M);
    a->d_res = bump_(base, &o, NM * d);
    a->d_ln = bump_(base, &o, NM * d);
    a->d_enc_out = bump_(base, &o, N * d);
    a->d_qkv = bump_(base, &o, NM * 3 * HK);
    a->d_q = bump_(base, &o, M * HK);
    a->d_ctx = bump_(base, &o, NM * HK);
    a->d_ffh = bump_(base, &o, NM * f);
    a->d_ffu = bump_(base, &o, NM * fu);
    a->d_bias_enc = bump_(base, &o, (size_t)B * H * (2 * Le - 1));
    a->d_bias_dec = bump_(base, &o, (size_t)B * H * (2 * Ld - 1));
    size_t LL = (size_t)Le * Le > (size_t)Ld * Le ? (size_t)Le * Le : (size_t)Ld * Le;
    a->att_scratch = bump_(base, &o, (size_t)nthreads * LL);
    return o;
}

size_t t5_model_activation_bytes(const T5Config *cfg, int B, int Le, int Ld) {
    size_t floats = carve_(NULL, cfg, NULL, B, Le, Ld, omp_get_max_threads());
    size_t ints = 2 * (size_t)B * Le + 3 * (size_t)B * Ld;   /* as acts_prepare_ */
    return floats * sizeof(float) + ints * sizeof(int32_t);
}

static void acts_prepare_(T5Model *m, int B, int Le, int Ld) {
    T5Activations *a = m->acts;
    if (!a) { a = m->acts = xcalloc(1, sizeof *a); }
    int nt = omp_get_max_threads();
    size_t need = carve_(NULL, &m->cfg, NULL, B, Le, Ld, nt);
    if (need > a->cap_floats) {
        free(a->mem);
        a->mem = xmalloc_aligned(need * sizeof(float));
        a->cap_floats = need;
    }
    size_t ni = 2 * (size_t)B * Le + 3 * (size_t)B * Ld;
    if (ni > a->cap_ints) {
        free(a->imem);
        a->imem = xmalloc(ni * sizeof(int32_t));
        a->cap_ints = ni;
    }
    carve_(a, &m->cfg, a->mem, B, Le, Ld, nt);
    a->B = B; a->Le = Le; a->Ld = Ld; a->nthreads = nt;
    size_t N = (size_t)B * Le, M = (size_t)B * Ld;
    a->enc_ids = a->imem;
    a->enc_seg = a->enc_ids + N;
    a->dec_ids = a->enc_seg + N;
    a->labels = a->dec_ids + M;
    a->dec_seg = a->labels + M;
}

void t5_model_free(T5Model *m) {
    if (m->acts) { free(m->acts->mem); free(m->acts->imem); free(m->acts); }
    free(m->params);
    free(m->grads);
    free(m->tensors);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------------------------------------
 * The two pre-norm sub-layers both stacks share, forward next to backward. T = B*L tokens of one
 * stack; the backward takes a->d_res = dL/d(sub-layer output) and leaves dL/d(sub-layer input)
 * there (the residual path plus the rmsnorm input gradient); weight gradients go to gw (+=). */

/* Self-attention: x1[T,d] = x0 + Attn(ln = rmsnorm(x0)) . o^T, keeping ln[T,d], rstd[T],
 * qkv[T,3HK], att[B,H,L,L] and ctx[T,HK]. bias: [H, 2L-1] of the stack; causal for the decoder. */
static void self_attn_forward_(const T5Config *c, const LayerW *w, float *x1, const float *x0,
                               float *ln, float *rstd, float *qkv, float *att, float *ctx,
                               const float *bias, const int32_t *seg, int causal, int B, int L) {
    int d = c->d_model, H = c->n_heads, K = c->d_kv, HK = H * K, T = B * L;
    t5_rmsnorm_forward(ln, rstd, x0, w->ln_sa, T, d, c->layer_norm_eps);
    t5_matmul_forward(qkv, ln, w->qkv, T, d, 3 * HK, 1.0f, 0.0f);
    t5_attention_forward(ctx, HK, att, qkv, 3 * HK, qkv + HK, 3 * HK, qkv + 2 * HK, 3 * HK, bias,
                         seg, seg, causal, B, L, L, H, K);
    memcpy(x1, x0, (size_t)T * d * sizeof(float));
    t5_matmul_forward(x1, ctx, w->o, T, HK, d, 1.0f, 1.0f);
}

/* dbias[B,H,2L-1] += the relative-bias gradient of this layer. */
static void self_attn_backward_(T5Activations *a, const T5Config *c, const LayerW *w,
                                const LayerW *gw, const float *x0, const float *ln,
                                const float *rstd, const float *qkv, const float *att,
                                const float *ctx, float *dbias, int B, int L) {
    int d = c->d_model, H = c->n_heads, K = c->d_kv, HK = H * K, T = B * L;
    t5_matmul_backward(a->d_ctx, 0.0f, gw->o, a->d_res, ctx, w->o, T, HK, d, 1.0f);
    t5_attention_backward(a->d_qkv, 3 * HK, a->d_qkv + HK, 3 * HK, a->d_qkv + 2 * HK, 3 * HK, dbias,
                        a->d_ctx, HK, att, qkv, 3 * HK, qkv + HK, 3 * HK, qkv + 2 * HK, 3 * HK, B,
                        L, L, H, K, a->att_scratch, a->nthreads);
    t5_matmul_backward(a->d_ln, 0.0f, gw->qkv, a->d_qkv, ln, w->qkv, T, d, 3 * HK, 1.0f);
    t5_rmsnorm_backward(a->d_res, gw->ln_sa, a->d_ln, x0, w->ln_sa, rstd, T, d);
}

/* Feed-forward: x1[T,d] = x0 + FFN(ln = rmsnorm(x0)), keeping ln, rstd, ffu (gated only), ffh. */
static void ffn_sublayer_forward_(const T5Config *c, const LayerW *w, float *x1, const float *x0,
                                  float *ln, float *rstd, float *ffu, float *ffh, int T) {
    int d = c->d_model;
    t5_rmsnorm_forward(ln, rstd, x0, w->ln_ff, T, d, c->layer_norm_eps);
    memcpy(x1, x0, (size_t)T * d * sizeof(float));
    t5_ffn_forward(x1, ffu, ffh, ln, w->wi, w->wo, T, d, c->d_ff, c->ffn);
}

static void ffn_sublayer_backward_(T5Activations *a, const T5Config *c, const LayerW *w,
                                   const LayerW *gw, const float *x0, const float *ln,
                                   const float *rstd, const float *ffu, const float *ffh, int T) {
    int d = c->d_model;
    t5_ffn_backward(a->d_ln, gw->wi, gw->wo, a->d_ffh, a->d_ffu, a->d_res, ffu, ffh, ln, w->wi,
                    w->wo, T, d, c->d_ff, c->ffn);
    t5_rmsnorm_backward(a->d_res, gw->ln_ff, a->d_ln, x0, w->ln_ff, rstd, T, d);
}

/* ---------------------------------------------------------------------------------------------
 * Model forward. */

static float *head_weight_(const T5Model *m, float *base) {
    return tensor_ptr_(m, base, m->cfg.tied_embedding ? "shared.weight" : "lm_head.weight");
}

void t5_model_forward(T5Model *m, const T5Batch *b, float z_loss_coef, T5LossStats *out) {
    const T5Config *c = &m->cfg;
    int B = b->B, Le = b->Le, Ld = b->Ld;
    if (B < 1 || Le < 1 || Ld < 1)
        FATAL("the batch must have B, Le, Ld >= 1", "t5_model_forward: bad batch %dx%d/%d", B, Le, Ld);
    acts_prepare_(m, B, Le, Ld);
    T5Activations *a = m->acts;
    int d = c->d_model, f = c->d_ff, H = c->n_heads, K = c->d_kv, HK = H * K, V = c->vocab_size;
    int el = c->n_enc_layers, dl = c->n_dec_layers;
    size_t N = (size_t)B * Le, M = (size_t)B * Ld;
    float eps = c->layer_norm_eps;
    T5FfnKind kind = c->ffn;
    size_t fu = kind == T5_FFN_GATED_GELU ? 2 * (size_t)f : 0;
    memcpy(a->enc_ids, b->enc_ids, N * sizeof(int32_t));
    memcpy(a->enc_seg, b->enc_seg, N * sizeof(int32_t));
    memcpy(a->dec_ids, b->dec_in_ids, M * sizeof(int32_t));
    memcpy(a->labels, b->labels, M * sizeof(int32_t));
    memcpy(a->dec_seg, b->dec_seg, M * sizeof(int32_t));
    a->zc = z_loss_coef;
    float *P = m->params;
    float *E = tensor_ptr_(m, P, "shared.weight");

    /* encoder */
    t5_relbias_forward(a->enc_bias,
        tensor_ptr_(m, P, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        Le, Le, H, 1, c->num_buckets, c->max_distance);
    t5_embedding_forward(a->enc_res, a->enc_ids, E, (int)N, d);
    for (int l = 0; l < el; l++) {
        LayerW w;
        layer_ptrs_(m, P, 0, l, &w);
        float *x0 = a->enc_res + (size_t)(2 * l) * N * d, *x1 = x0 + N * d, *x2 = x1 + N * d;
        float *ln0 = a->enc_ln + (size_t)(2 * l) * N * d, *ln1 = ln0 + N * d;
        float *r0 = a->enc_rstd + (size_t)(2 * l) * N, *r1 = r0 + N;
        float *qkv = a->enc_qkv + (size_t)l * N * 3 * HK, *ctx = a->enc_ctx + (size_t)l * N * HK;
        float *att = a->enc_att + (size_t)l * B * H * Le * Le;
        /* bidirectional self-attention, then feed-forward */
        self_attn_forward_(c, &w, x1, x0, ln0, r0, qkv, att, ctx, a->enc_bias, a->enc_seg, 0, B, Le);
        ffn_sublayer_forward_(c, &w, x2, x1, ln1, r1, a->enc_ffu + (size_t)l * N * fu,
                              a->enc_ffh + (size_t)l * N * f, (int)N);
    }
    t5_rmsnorm_forward(a->enc_out, a->enc_out_rstd, a->enc_res + (size_t)(2 * el) * N * d,
                       tensor_ptr_(m, P, "encoder.final_layer_norm.weight"), (int)N, d, eps);

    /* decoder */
    t5_relbias_forward(a->dec_bias,
        tensor_ptr_(m, P, "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        Ld, Ld, H, 0, c->num_buckets, c->max_distance);
    t5_embedding_forward(a->dec_res, a->dec_ids, E, (int)M, d);
    for (int l = 0; l < dl; l++) {
        LayerW w;
        layer_ptrs_(m, P, 1, l, &w);
        float *x0 = a->dec_res + (size_t)(3 * l) * M * d, *x1 = x0 + M * d, *x2 = x1 + M * d,
              *x3 = x2 + M * d;
        float *ln0 = a->dec_ln + (size_t)(3 * l) * M * d, *ln1 = ln0 + M * d, *ln2 = ln1 + M * d;
        float *r0 = a->dec_rstd + (size_t)(3 * l) * M, *r1 = r0 + M, *r2 = r1 + M;
        float *qkv = a->dec_qkv + (size_t)l * M * 3 * HK, *ctx = a->dec_ctx + (size_t)l * M * HK;
        float *att = a->dec_att + (size_t)l * B * H * Ld * Ld;
        float *xq = a->dec_xq + (size_t)l * M * HK, *xkv = a->dec_xkv + (size_t)l * N * 2 * HK;
        float *xatt = a->dec_xatt + (size_t)l * B * H * Ld * Le;
        float *xctx = a->dec_xctx + (size_t)l * M * HK;
        /* causal self-attention */
        self_attn_forward_(c, &w, x1, x0, ln0, r0, qkv, att, ctx, a->dec_bias, a->dec_seg, 1, B, Ld);
        /* cross-attention on the encoder output, no position bias */
        t5_rmsnorm_forward(ln1, r1, x1, w.ln_ca, (int)M, d, eps);
        t5_matmul_forward(xq, ln1, w.xq, (int)M, d, HK, 1.0f, 0.0f);
        t5_matmul_forward(xkv, a->enc_out, w.xkv, (int)N, d, 2 * HK, 1.0f, 0.0f);
        t5_attention_forward(xctx, HK, xatt, xq, HK, xkv, 2 * HK, xkv + HK, 2 * HK, NULL, a->dec_seg,
                             a->enc_seg, 0, B, Ld, Le, H, K);
        memcpy(x2, x1, M * d * sizeof(float));
        t5_matmul_forward(x2, xctx, w.xo, (int)M, HK, d, 1.0f, 1.0f);
        /* feed-forward */
        ffn_sublayer_forward_(c, &w, x3, x2, ln2, r2, a->dec_ffu + (size_t)l * M * fu,
                              a->dec_ffh + (size_t)l * M * f, (int)M);
    }
    t5_rmsnorm_forward(a->dec_out, a->dec_out_rstd, a->dec_res + (size_t)(3 * dl) * M * d,
                       tensor_ptr_(m, P, "decoder.final_layer_norm.weight"), (int)M, d, eps);

    /* output head: logits[M,V] = (dec_out * d^-0.5) E^T (tied) or dec_out lm_head^T */
    float alpha = c->tied_embedding ? 1.0f / sqrtf((float)d) : 1.0f;
    t5_matmul_forward(a->logits, a->dec_out, head_weight_(m, P), (int)M, d, V, alpha, 0.0f);
    out->ce_sum = 0.0; out->z_sum = 0.0; out->tokens = 0;
    t5_xent_forward(out, a->logZ, a->logits, a->labels, (int)M, V);
    a->have_forward = 1;
}

/* ---------------------------------------------------------------------------------------------
 * Model backward: the forward in reverse. d_res carries the gradient of the residual stream;
 * each rmsnorm backward adds its input gradient into it. */


void t5_model_backward(T5Model *m, float loss_scale) {
    T5Activations *a = m->acts;
    if (!a || !a->have_forward)
        FATAL("call t5_model_forward before t5_model_backward", "t5_model_backward: no forward");
    const T5Config *c = &m->cfg;
    int B = a->B, Le = a->Le, Ld = a->Ld;
    int d = c->d_model, f = c->d_ff, H = c->n_heads, K = c->d_kv, HK = H * K, V = c->vocab_size;
    int el = c->n_enc_layers, dl = c->n_dec_layers;
    size_t N = (size_t)B * Le, M = (size_t)B * Ld;
    T5FfnKind kind = c->ffn;
    size_t fu = kind == T5_FFN_GATED_GELU ? 2 * (size_t)f : 0;
    float *P = m->params, *G = m->grads;
    float *dE = tensor_ptr_(m, G, "shared.weight");

    /* loss and head */
    t5_xent_backward(a->logits, a->logZ, a->labels, (int)M, V, a->zc, loss_scale);
    float alpha = c->tied_embedding ? 1.0f / sqrtf((float)d) : 1.0f;
    t5_matmul_backward(a->d_ln, 0.0f, head_weight_(m, G), a->logits, a->dec_out,
                       head_weight_(m, P), (int)M, d, V, alpha);
    memset(a->d_res, 0, M * d * sizeof(float));
    t5_rmsnorm_backward(a->d_res, tensor_ptr_(m, G, "decoder.final_layer_norm.weight"), a->d_ln,
                        a->dec_res + (size_t)(3 * dl) * M * d,
                        tensor_ptr_(m, P, "decoder.final_layer_norm.weight"), a->dec_out_rstd,
                        (int)M, d);

    /* decoder layers, last to first */
    memset(a->d_enc_out, 0, N * d * sizeof(float));
    memset(a->d_bias_dec, 0, (size_t)B * H * (2 * Ld - 1) * sizeof(float));
    for (int l = dl - 1; l >= 0; l--) {
        LayerW w, gw;
        layer_ptrs_(m, P, 1, l, &w);
        layer_ptrs_(m, G, 1, l, &gw);
        float *x0 = a->dec_res + (size_t)(3 * l) * M * d, *x1 = x0 + M * d, *x2 = x1 + M * d;
        float *ln0 = a->dec_ln + (size_t)(3 * l) * M * d, *ln1 = ln0 + M * d, *ln2 = ln1 + M * d;
        float *r0 = a->dec_rstd + (size_t)(3 * l) * M, *r1 = r0 + M, *r2 = r1 + M;
        float *qkv = a->dec_qkv + (size_t)l * M * 3 * HK, *ctx = a->dec_ctx + (size_t)l * M * HK;
        float *att = a->dec_att + (size_t)l * B * H * Ld * Ld;
        float *xq = a->dec_xq + (size_t)l * M * HK, *xkv = a->dec_xkv + (size_t)l * N * 2 * HK;
        float *xatt = a->dec_xatt + (size_t)l * B * H * Ld * Le;
        float *xctx = a->dec_xctx + (size_t)l * M * HK;
        /* feed-forward */
        ffn_sublayer_backward_(a, c, &w, &gw, x2, ln2, r2, a->dec_ffu + (size_t)l * M * fu,
                               a->dec_ffh + (size_t)l * M * f, (int)M);
        /* cross-attention */
        t5_matmul_backward(a->d_ctx, 0.0f, gw.xo, a->d_res, xctx, w.xo, (int)M, HK, d, 1.0f);
        float *dxkv = a->d_qkv;
        t5_attention_backward(a->d_q, HK, dxkv, 2 * HK, dxkv + HK, 2 * HK, NULL, a->d_ctx, HK, xatt,
                            xq, HK, xkv, 2 * HK, xkv + HK, 2 * HK, B, Ld, Le, H, K,
                            a->att_scratch, a->nthreads);
        t5_matmul_backward(a->d_ln, 0.0f, gw.xq, a->d_q, ln1, w.xq, (int)M, d, HK, 1.0f);
        t5_matmul_backward(a->d_enc_out, 1.0f, gw.xkv, dxkv, a->enc_out, w.xkv, (int)N, d,
                           2 * HK, 1.0f);
        t5_rmsnorm_backward(a->d_res, gw.ln_ca, a->d_ln, x1, w.ln_ca, r1, (int)M, d);
        /* causal self-attention */
        self_attn_backward_(a, c, &w, &gw, x0, ln0, r0, qkv, att, ctx, a->d_bias_dec, B, Ld);
    }
    t5_embedding_backward(dE, a->dec_ids, a->d_res, (int)M, d);
    t5_relbias_backward(
        tensor_ptr_(m, G, "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        a->d_bias_dec, B, Ld, Ld, H, 0, c->num_buckets, c->max_distance);

    /* encoder: final norm, then layers last to first */
    memset(a->d_res, 0, N * d * sizeof(float));
    t5_rmsnorm_backward(a->d_res, tensor_ptr_(m, G, "encoder.final_layer_norm.weight"),
                        a->d_enc_out, a->enc_res + (size_t)(2 * el) * N * d,
                        tensor_ptr_(m, P, "encoder.final_layer_norm.weight"), a->enc_out_rstd,
                        (int)N, d);
    memset(a->d_bias_enc, 0, (size_t)B * H * (2 * Le - 1) * sizeof(float));
    for (int l = el - 1; l >= 0; l--) {
        LayerW w, gw;
        layer_ptrs_(m, P, 0, l, &w);
        layer_ptrs_(m, G, 0, l, &gw);
        float *x0 = a->enc_res + (size_t)(2 * l) * N * d, *x1 = x0 + N * d;
        float *ln0 = a->enc_ln + (size_t)(2 * l) * N * d, *ln1 = ln0 + N * d;
        float *r0 = a->enc_rstd + (size_t)(2 * l) * N, *r1 = r0 + N;
        float *qkv = a->enc_qkv + (size_t)l * N * 3 * HK, *ctx = a->enc_ctx + (size_t)l * N * HK;
        float *att = a->enc_att + (size_t)l * B * H * Le * Le;
        ffn_sublayer_backward_(a, c, &w, &gw, x1, ln1, r1, a->enc_ffu + (size_t)l * N * fu,
                               a->enc_ffh + (size_t)l * N * f, (int)N);
        self_attn_backward_(a, c, &w, &gw, x0, ln0, r0, qkv, att, ctx, a->d_bias_enc, B, Le);
    }
    t5_embedding_backward(dE, a->enc_ids, a->d_res, (int)N, d);
    t5_relbias_backward(
        tensor_ptr_(m, G, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        a->d_bias_enc, B, Le, Le, H, 1, c->num_buckets, c->max_distance);
    a->have_forward = 0;   /* the logits buffer now holds gradients */
    t5_profile_report();
}

/* ---------------------------------------------------------------------------------------------
 * FLOPs (t5-spec.md section 8): matrix products only, 2 per multiply-add, full squares. */

double t5_model_flops_per_step(const T5Config *cfg, int B, int Le, int Ld) {
    double d = cfg->d_model, f = cfg->d_ff, HK = (double)cfg->n_heads * cfg->d_kv;
    double V = cfg->vocab_size, le = Le, ld = Ld;
    double ff = cfg->ffn == T5_FFN_GATED_GELU ? 6.0 * d * f : 4.0 * d * f;
    double enc_layer = le * (8.0 * d * HK + ff) + 4.0 * le * le * HK;
    double dec_layer = ld * 8.0 * d * HK + 4.0 * ld * ld * HK + ld * 4.0 * d * HK + le * 4.0 * d * HK +
                       4.0 * ld * le * HK + ld * ff;
    double logits = 2.0 * ld * d * V;
    double fwd = cfg->n_enc_layers * enc_layer + cfg->n_dec_layers * dec_layer + logits;
    return 3.0 * B * fwd;
}
