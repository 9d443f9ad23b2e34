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
#include "../parallel/tp.h"

/* ---------------------------------------------------------------------------------------------
 * Parameter table: Hugging Face names, shapes and state-dict order. */

/* Append tensor `name` of global shape [s0, s1] to the table when keep is set, split as given
 * over T tensor-parallel ranks; the global index counts every tensor of the full model, kept or
 * not, so a stage's tensors carry their whole-model index. */
static void add_tensor_(T5Model *m, int *cap, size_t *off, int *gidx, int keep, const char *name,
                        int ndim, int s0, int s1, T5Split split, int T) {
    int g = (*gidx)++;
    if (!keep) return;
    if (m->num_tensors == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        m->tensors = xrealloc(m->tensors, (size_t)*cap * sizeof(T5Tensor));
    }
    T5Tensor *t = &m->tensors[m->num_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    if (T <= 1) split = T5_SPLIT_NONE;
    t->ndim = ndim;
    t->gshape[0] = s0;
    t->gshape[1] = ndim == 2 ? s1 : 0;
    t->split = split;
    t->shape[0] = split == T5_SPLIT_ROWS ? s0 / T : s0;
    t->shape[1] = ndim == 2 ? (split == T5_SPLIT_COLS ? s1 / T : s1) : 0;
    t->numel = (size_t)t->shape[0] * (ndim == 2 ? (size_t)t->shape[1] : 1);
    t->offset = *off;
    t->global_index = g;
    *off += t->numel;
}

void t5_stage_range_full(const T5Config *cfg, T5StageRange *r) {
    r->embed = 1;
    r->enc_begin = 0;
    r->enc_end = cfg->n_enc_layers;
    r->enc_norm = 1;
    r->dec_begin = 0;
    r->dec_end = cfg->n_dec_layers;
    r->head = 1;
}

void t5_model_build(T5Model *m, const T5Config *cfg) {
    T5StageRange r;
    t5_stage_range_full(cfg, &r);
    t5_model_build_stage(m, cfg, &r);
}

void t5_config_tp_local(const T5Config *cfg, int T, T5Config *local) {
    *local = *cfg;
    if (T <= 1) return;
    local->n_heads = cfg->n_heads / T;
    local->d_ff = cfg->d_ff / T;
    local->vocab_size = cfg->vocab_size / T;
}

/* The tensor table of a range split over T ranks (no allocation of the buffers). */
static void build_table_(T5Model *m, const T5Config *cfg, const T5StageRange *range, int T) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    t5_config_tp_local(cfg, T, &m->lc);
    m->tp_size = T > 1 ? T : 1;
    m->range = *range;
    const T5Config *c = cfg;
    const T5StageRange *r = range;
    if (c->n_enc_layers < 1 || c->n_dec_layers < 1 || c->d_model < 1 || c->d_ff < 1 ||
        c->n_heads < 1 || c->d_kv < 1 || c->vocab_size < 2 || c->num_buckets < 2 ||
        c->max_distance < 2 || (c->ffn != T5_FFN_RELU && c->ffn != T5_FFN_GATED_GELU))
        FATAL("validate the config with t5_config_validate first",
              "t5_model_build: invalid config '%s' (el=%d dl=%d d=%d f=%d h=%d k=%d V=%d ffn=%d "
              "tied=%d)", c->name, c->n_enc_layers, c->n_dec_layers, c->d_model, c->d_ff,
              c->n_heads, c->d_kv, c->vocab_size, (int)c->ffn, c->tied_embedding);
    if (r->enc_begin < 0 || r->enc_end > c->n_enc_layers || r->enc_begin > r->enc_end ||
        r->dec_begin < 0 || r->dec_end > c->n_dec_layers || r->dec_begin > r->dec_end)
        FATAL("this is a bug in the stage split", "t5_model_build_stage: bad range enc [%d,%d) dec [%d,%d)",
              r->enc_begin, r->enc_end, r->dec_begin, r->dec_end);
    int d = c->d_model, f = c->d_ff, H = c->n_heads, HK = c->n_heads * c->d_kv;
    int V = c->vocab_size, nb = c->num_buckets, gated = c->ffn == T5_FFN_GATED_GELU;
    int dec_embed = r->dec_begin == 0 && r->dec_end > 0;
    int cap = 0, gidx = 0;
    size_t off = 0;
    char nm[96];
    const T5Split R = T5_SPLIT_ROWS, C = T5_SPLIT_COLS, W = T5_SPLIT_NONE;
    add_tensor_(m, &cap, &off, &gidx, r->embed || dec_embed || (r->head && c->tied_embedding),
                "shared.weight", 2, V, d, R, T);
    for (int stack = 0; stack < 2; stack++) {
        const char *sn = stack == 0 ? "encoder" : "decoder";
        int L = stack == 0 ? c->n_enc_layers : c->n_dec_layers;
        int b0 = stack == 0 ? r->enc_begin : r->dec_begin, b1 = stack == 0 ? r->enc_end : r->dec_end;
        for (int l = 0; l < L; l++) {
            int keep = l >= b0 && l < b1;
            static const char *qkvo[4] = {"q", "k", "v", "o"};
            for (int w = 0; w < 4; w++) {
                snprintf(nm, sizeof nm, "%s.block.%d.layer.0.SelfAttention.%s.weight", sn, l, qkvo[w]);
                add_tensor_(m, &cap, &off, &gidx, keep, nm, 2, w < 3 ? HK : d, w < 3 ? d : HK, w < 3 ? R : C, T);
            }
            if (l == 0) {   /* the stack's one bias table: on every stage running its blocks */
                snprintf(nm, sizeof nm, "%s.block.0.layer.0.SelfAttention.relative_attention_bias.weight", sn);
                add_tensor_(m, &cap, &off, &gidx, b1 > b0, nm, 2, nb, H, W, T);
            }
            snprintf(nm, sizeof nm, "%s.block.%d.layer.0.layer_norm.weight", sn, l);
            add_tensor_(m, &cap, &off, &gidx, keep, nm, 1, d, 0, W, T);
            int ff = 1;
            if (stack == 1) {
                for (int w = 0; w < 4; w++) {
                    snprintf(nm, sizeof nm, "%s.block.%d.layer.1.EncDecAttention.%s.weight", sn, l, qkvo[w]);
                    add_tensor_(m, &cap, &off, &gidx, keep, nm, 2, w < 3 ? HK : d, w < 3 ? d : HK, w < 3 ? R : C, T);
                }
                snprintf(nm, sizeof nm, "%s.block.%d.layer.1.layer_norm.weight", sn, l);
                add_tensor_(m, &cap, &off, &gidx, keep, nm, 1, d, 0, W, T);
                ff = 2;
            }
            if (gated) {
                snprintf(nm, sizeof nm, "%s.block.%d.layer.%d.DenseReluDense.wi_0.weight", sn, l, ff);
                add_tensor_(m, &cap, &off, &gidx, keep, nm, 2, f, d, R, T);
                snprintf(nm, sizeof nm, "%s.block.%d.layer.%d.DenseReluDense.wi_1.weight", sn, l, ff);
                add_tensor_(m, &cap, &off, &gidx, keep, nm, 2, f, d, R, T);
            } else {
                snprintf(nm, sizeof nm, "%s.block.%d.layer.%d.DenseReluDense.wi.weight", sn, l, ff);
                add_tensor_(m, &cap, &off, &gidx, keep, nm, 2, f, d, R, T);
            }
            snprintf(nm, sizeof nm, "%s.block.%d.layer.%d.DenseReluDense.wo.weight", sn, l, ff);
            add_tensor_(m, &cap, &off, &gidx, keep, nm, 2, d, f, C, T);
            snprintf(nm, sizeof nm, "%s.block.%d.layer.%d.layer_norm.weight", sn, l, ff);
            add_tensor_(m, &cap, &off, &gidx, keep, nm, 1, d, 0, W, T);
        }
        snprintf(nm, sizeof nm, "%s.final_layer_norm.weight", sn);
        add_tensor_(m, &cap, &off, &gidx, stack == 0 ? r->enc_norm : r->head, nm, 1, d, 0, W, T);
    }
    if (!c->tied_embedding) add_tensor_(m, &cap, &off, &gidx, r->head, "lm_head.weight", 2, V, d, R, T);
    m->num_params = off;
}

size_t t5_stage_num_params_tp(const T5Config *cfg, const T5StageRange *range, int T) {
    T5Model m;
    build_table_(&m, cfg, range, T);
    free(m.tensors);
    return m.num_params;
}

size_t t5_stage_num_params(const T5Config *cfg, const T5StageRange *range) {
    return t5_stage_num_params_tp(cfg, range, 1);
}

void t5_model_build_stage(T5Model *m, const T5Config *cfg, const T5StageRange *range) {
    t5_model_build_stage_tp(m, cfg, range, NULL);
}

void t5_model_build_stage_tp(T5Model *m, const T5Config *cfg, const T5StageRange *range, struct TpCtx *tp) {
    int T = tp ? tp->size : 1;
    if (T > 1) {
        char err[256];
        if (tp_check_dims(cfg, T, err, sizeof err))
            FATAL("check the split with tp_check_dims first", "t5_model_build_stage_tp: %s", err);
    }
    build_table_(m, cfg, range, T);
    if (T > 1) {
        m->tp = tp;
        m->tp_rank = tp->rank;
        m->tp_work = xmalloc(2 * (size_t)cfg->num_buckets * cfg->n_heads * sizeof(float));
    }
    size_t off = m->num_params;
    m->params = xmalloc_aligned((off ? off : 1) * sizeof(float));
    m->grads = xmalloc_aligned((off ? off : 1) * sizeof(float));
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
 * Mesh TensorFlow initialisation (docs/t5-recipe.md section 3). Each tensor is filled in chunks of
 * 2^16 elements; chunk c of tensor t draws from the counter-based stream (seed, t<<32 | c), so
 * the result is a pure function of the seed, independent of the thread count. */

enum { INIT_NORMAL, INIT_TRUNC, INIT_UNIFORM, INIT_ONES };

/* Elements [first, first + count) of the tensor with global index gidx into p[0..count): each
 * chunk is drawn from its start (a truncated normal takes a variable number of draws). */
static void init_values_(float *p, size_t first, size_t count, int kind, double s, uint64_t seed, int gidx) {
    const size_t chunk = (size_t)1 << 16;
    size_t end = first + count;
    long c0 = (long)(first / chunk), c1 = (long)((end + chunk - 1) / chunk);
#pragma omp parallel for schedule(dynamic, 1)
    for (long ch = c0; ch < c1; ch++) {
        Rng r = rng_make(seed, ((uint64_t)gidx << 32) | (uint64_t)ch);
        size_t i0 = (size_t)ch * chunk, i1 = i0 + chunk < end ? i0 + chunk : end;
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
            if (i >= first) p[i - first] = (float)x;
        }
    }
}

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
        /* the global tensor's values; a split tensor keeps its piece */
        size_t gnumel = (size_t)t->gshape[0] * (t->ndim == 2 ? (size_t)t->gshape[1] : 1);
        size_t first = t->split == T5_SPLIT_ROWS ? (size_t)m->tp_rank * t->numel : 0;
        size_t count = t->split == T5_SPLIT_COLS ? gnumel : t->numel;
        float *p = t->split == T5_SPLIT_COLS ? xmalloc(gnumel * sizeof(float)) : m->params + t->offset;
        init_values_(p, first, count, kind, s, seed, t->global_index);
        if (t->split == T5_SPLIT_COLS) {
            tp_shard_cols_local(m->params + t->offset, p, t->gshape[0], t->gshape[1], m->tp_size, m->tp_rank);
            free(p);
        }
    }
}

void t5_model_zero_grad(T5Model *m) {
    memset(m->grads, 0, m->num_params * sizeof(float));
}

/* ---------------------------------------------------------------------------------------------
 * Activations. A T5Acts holds what one micro-batch's backward needs: the residual stream at
 * every sub-layer boundary and, unless recomputing, every block's internals (normed inputs,
 * q/k/v, attention probabilities, contexts, FFN activations). With recompute only the residual
 * stream is kept per micro-batch; the internals of the one block being computed live in the
 * model's T5Scratch and are recomputed from the block's input in backward (the same code on the
 * same inputs: the gradients are bit-identical). T5Scratch also holds the backward's running
 * gradients, shared by all micro-batches. Each is one allocation carved into named buffers by a
 * function that, given no base, only counts (for the memory plan). */

struct T5Acts {
    int B, Le, Ld, d, recompute, have_forward;
    T5StageRange r;
    float zc;
    float *mem;
    int32_t *imem;
    int32_t *enc_ids, *enc_seg, *dec_ids, *labels, *dec_seg;   /* [N] / [M] copies */
    /* encoder, nE = enc_end - enc_begin local blocks, N = B*Le; S = recompute ? 0 : nE slots */
    float *enc_res;      /* [2nE+1, N, d]: 2l = block l's input, 2l+1 its FFN input, 2nE = output */
    float *enc_ln;       /* [2S, N, d] */
    float *enc_rstd;     /* [2S, N] */
    float *enc_qkv;      /* [S, N, 3HK] */
    float *enc_att;      /* [S, B, H, Le, Le] probabilities */
    float *enc_ctx;      /* [S, N, HK] */
    float *enc_ffu;      /* [S, N, 2f] (gated only) */
    float *enc_ffh;      /* [S, N, f] */
    float *enc_out;      /* [N, d] encoder output (computed here, or received) */
    float *enc_out_rstd; /* [N] */
    float *enc_bias;     /* [H, 2Le-1] */
    /* decoder, nD local blocks, M = B*Ld */
    float *dec_res;      /* [3nD+1, M, d]: 3l self, 3l+1 cross, 3l+2 FFN input, 3nD = output */
    float *dec_ln;       /* [3S, M, d] */
    float *dec_rstd;     /* [3S, M] */
    float *dec_qkv;      /* [S, M, 3HK] */
    float *dec_att;      /* [S, B, H, Ld, Ld] */
    float *dec_ctx;      /* [S, M, HK] */
    float *dec_xq;       /* [S, M, HK] */
    float *dec_xkv;      /* [S, N, 2HK] */
    float *dec_xatt;     /* [S, B, H, Ld, Le] */
    float *dec_xctx;     /* [S, M, HK] */
    float *dec_ffu;      /* [S, M, 2f] (gated only) */
    float *dec_ffh;      /* [S, M, f] */
    float *dec_out;      /* [M, d] (head) */
    float *dec_out_rstd; /* [M] */
    float *dec_bias;     /* [H, 2Ld-1] */
    float *logits;       /* [M, V] (head); becomes dlogits in backward */
    float *logZ;         /* [M] */
};

struct T5Scratch {
    int B, Le, Ld, nthreads;
    size_t cap;
    float *mem;
    float *d_res;        /* [max(N,M), d] running residual gradient */
    float *d_ln;         /* [max(N,M), d] */
    float *d_enc_out;    /* [N, d] gradient of the encoder output from this stage's decoder blocks */
    float *d_qkv;        /* [max(N,M) * 3HK] also cross dkv [N, 2HK] */
    float *d_q;          /* [M, HK] */
    float *d_ctx;        /* [max(N,M), HK] */
    float *d_ffh;        /* [max(N,M), f] */
    float *d_ffu;        /* [max(N,M), 2f] (gated only) */
    float *d_bias_enc;   /* [B, H, 2Le-1] */
    float *d_bias_dec;   /* [B, H, 2Ld-1] */
    float *att_scratch;  /* [nthreads, max(Le*Le, Ld*Le)] */
    /* recompute: the internals of the one block being computed (layouts as in T5Acts, 1 slot) */
    float *ws_enc_ln, *ws_enc_rstd, *ws_enc_qkv, *ws_enc_att, *ws_enc_ctx, *ws_enc_ffu, *ws_enc_ffh;
    float *ws_dec_ln, *ws_dec_rstd, *ws_dec_qkv, *ws_dec_att, *ws_dec_ctx, *ws_dec_xq, *ws_dec_xkv,
          *ws_dec_xatt, *ws_dec_xctx, *ws_dec_ffu, *ws_dec_ffh;
};

static float *bump_(float *base, size_t *off, size_t n) {
    float *p = base ? base + *off : NULL;
    *off += (n + 15) & ~(size_t)15;   /* keep every buffer 64-byte aligned */
    return p;
}

/* Which parts of the sequence a range runs. */
static int has_enc_part_(const T5StageRange *r) { return r->embed || r->enc_end > r->enc_begin || r->enc_norm; }
static int has_dec_part_(const T5StageRange *r) { return r->dec_end > r->dec_begin || r->head; }
static int needs_enc_out_(const T5StageRange *r) { return r->enc_norm || r->dec_end > r->dec_begin; }

/* Carve (or, with base == NULL, only count) one activation set. */
static size_t carve_acts_(T5Acts *a, const T5Config *c, const T5StageRange *r, float *base, int B,
                          int Le, int Ld, int recompute) {
    size_t d = c->d_model, f = c->d_ff, H = c->n_heads, HK = H * c->d_kv, V = c->vocab_size;
    size_t nE = (size_t)(r->enc_end - r->enc_begin), nD = (size_t)(r->dec_end - r->dec_begin);
    size_t SE = recompute ? 0 : nE, SD = recompute ? 0 : nD;
    size_t N = (size_t)B * Le, M = (size_t)B * Ld;
    size_t fu = c->ffn == T5_FFN_GATED_GELU ? 2 * f : 0;
    int enc = has_enc_part_(r), dec = has_dec_part_(r);
    size_t o = 0;
    T5Acts t;
    if (!a) a = &t;
    a->enc_res = bump_(base, &o, enc ? (2 * nE + 1) * N * d : 0);
    a->enc_ln = bump_(base, &o, 2 * SE * N * d);
    a->enc_rstd = bump_(base, &o, 2 * SE * N);
    a->enc_qkv = bump_(base, &o, SE * N * 3 * HK);
    a->enc_att = bump_(base, &o, SE * B * H * Le * Le);
    a->enc_ctx = bump_(base, &o, SE * N * HK);
    a->enc_ffu = bump_(base, &o, SE * N * fu);
    a->enc_ffh = bump_(base, &o, SE * N * f);
    a->enc_out = bump_(base, &o, needs_enc_out_(r) ? N * d : 0);
    a->enc_out_rstd = bump_(base, &o, r->enc_norm ? N : 0);
    a->enc_bias = bump_(base, &o, nE ? H * (2 * Le - 1) : 0);
    a->dec_res = bump_(base, &o, dec ? (3 * nD + 1) * M * d : 0);
    a->dec_ln = bump_(base, &o, 3 * SD * M * d);
    a->dec_rstd = bump_(base, &o, 3 * SD * M);
    a->dec_qkv = bump_(base, &o, SD * M * 3 * HK);
    a->dec_att = bump_(base, &o, SD * B * H * Ld * Ld);
    a->dec_ctx = bump_(base, &o, SD * M * HK);
    a->dec_xq = bump_(base, &o, SD * M * HK);
    a->dec_xkv = bump_(base, &o, SD * N * 2 * HK);
    a->dec_xatt = bump_(base, &o, SD * B * H * Ld * Le);
    a->dec_xctx = bump_(base, &o, SD * M * HK);
    a->dec_ffu = bump_(base, &o, SD * M * fu);
    a->dec_ffh = bump_(base, &o, SD * M * f);
    a->dec_out = bump_(base, &o, r->head ? M * d : 0);
    a->dec_out_rstd = bump_(base, &o, r->head ? M : 0);
    a->dec_bias = bump_(base, &o, nD ? H * (2 * Ld - 1) : 0);
    a->logits = bump_(base, &o, r->head ? M * V : 0);
    a->logZ = bump_(base, &o, r->head ? M : 0);
    return o;
}

static size_t carve_scratch_(T5Scratch *s, const T5Config *c, const T5StageRange *r, float *base,
                             int B, int Le, int Ld, int recompute, int nthreads) {
    size_t d = c->d_model, f = c->d_ff, H = c->n_heads, HK = H * c->d_kv;
    size_t N = (size_t)B * Le, M = (size_t)B * Ld, NM = N > M ? N : M;
    size_t fu = c->ffn == T5_FFN_GATED_GELU ? 2 * f : 0;
    size_t RE = recompute && r->enc_end > r->enc_begin, RD = recompute && r->dec_end > r->dec_begin;
    size_t o = 0;
    T5Scratch t;
    if (!s) s = &t;
    s->d_res = bump_(base, &o, NM * d);
    s->d_ln = bump_(base, &o, NM * d);
    s->d_enc_out = bump_(base, &o, needs_enc_out_(r) ? N * d : 0);
    s->d_qkv = bump_(base, &o, NM * 3 * HK);
    s->d_q = bump_(base, &o, M * HK);
    s->d_ctx = bump_(base, &o, NM * HK);
    s->d_ffh = bump_(base, &o, NM * f);
    s->d_ffu = bump_(base, &o, NM * fu);
    s->d_bias_enc = bump_(base, &o, (size_t)B * H * (2 * Le - 1));
    s->d_bias_dec = bump_(base, &o, (size_t)B * H * (2 * Ld - 1));
    size_t LL = (size_t)Le * Le > (size_t)Ld * Le ? (size_t)Le * Le : (size_t)Ld * Le;
    s->att_scratch = bump_(base, &o, (size_t)nthreads * LL);
    s->ws_enc_ln = bump_(base, &o, RE * 2 * N * d);
    s->ws_enc_rstd = bump_(base, &o, RE * 2 * N);
    s->ws_enc_qkv = bump_(base, &o, RE * N * 3 * HK);
    s->ws_enc_att = bump_(base, &o, RE * B * H * Le * Le);
    s->ws_enc_ctx = bump_(base, &o, RE * N * HK);
    s->ws_enc_ffu = bump_(base, &o, RE * N * fu);
    s->ws_enc_ffh = bump_(base, &o, RE * N * f);
    s->ws_dec_ln = bump_(base, &o, RD * 3 * M * d);
    s->ws_dec_rstd = bump_(base, &o, RD * 3 * M);
    s->ws_dec_qkv = bump_(base, &o, RD * M * 3 * HK);
    s->ws_dec_att = bump_(base, &o, RD * B * H * Ld * Ld);
    s->ws_dec_ctx = bump_(base, &o, RD * M * HK);
    s->ws_dec_xq = bump_(base, &o, RD * M * HK);
    s->ws_dec_xkv = bump_(base, &o, RD * N * 2 * HK);
    s->ws_dec_xatt = bump_(base, &o, RD * B * H * Ld * Le);
    s->ws_dec_xctx = bump_(base, &o, RD * M * HK);
    s->ws_dec_ffu = bump_(base, &o, RD * M * fu);
    s->ws_dec_ffh = bump_(base, &o, RD * M * f);
    return o;
}

static size_t acts_ints_(int B, int Le, int Ld) { return 2 * (size_t)B * Le + 3 * (size_t)B * Ld; }

size_t t5_acts_bytes(const T5Config *cfg, const T5StageRange *r, int B, int Le, int Ld, int recompute) {
    return carve_acts_(NULL, cfg, r, NULL, B, Le, Ld, recompute) * sizeof(float) +
           acts_ints_(B, Le, Ld) * sizeof(int32_t);
}

size_t t5_scratch_bytes(const T5Config *cfg, const T5StageRange *r, int B, int Le, int Ld, int recompute) {
    return carve_scratch_(NULL, cfg, r, NULL, B, Le, Ld, recompute, omp_get_max_threads()) * sizeof(float);
}

size_t t5_model_activation_bytes(const T5Config *cfg, int B, int Le, int Ld) {
    T5StageRange r;
    t5_stage_range_full(cfg, &r);
    return t5_acts_bytes(cfg, &r, B, Le, Ld, 0) + t5_scratch_bytes(cfg, &r, B, Le, Ld, 0);
}

T5Acts *t5_acts_new(const T5Model *m, int B, int Le, int Ld) {
    T5Acts *a = xcalloc(1, sizeof *a);
    a->B = B; a->Le = Le; a->Ld = Ld; a->d = m->cfg.d_model;
    a->recompute = m->recompute;
    a->r = m->range;
    size_t n = carve_acts_(NULL, &m->lc, &m->range, NULL, B, Le, Ld, a->recompute);
    a->mem = xmalloc_aligned((n ? n : 1) * sizeof(float));
    carve_acts_(a, &m->lc, &m->range, a->mem, B, Le, Ld, a->recompute);
    a->imem = xmalloc(acts_ints_(B, Le, Ld) * sizeof(int32_t));
    size_t N = (size_t)B * Le, M = (size_t)B * Ld;
    a->enc_ids = a->imem;
    a->enc_seg = a->enc_ids + N;
    a->dec_ids = a->enc_seg + N;
    a->labels = a->dec_ids + M;
    a->dec_seg = a->labels + M;
    return a;
}

void t5_acts_free(T5Acts *a) {
    if (!a) return;
    free(a->mem);
    free(a->imem);
    free(a);
}

/* The model's scratch, grown to (B, Le, Ld) when needed. */
static T5Scratch *scratch_for_(T5Model *m, int B, int Le, int Ld) {
    T5Scratch *s = m->scratch;
    int nt = omp_get_max_threads();
    if (s && s->B >= B && s->Le == Le && s->Ld == Ld && s->nthreads == nt) return s;
    if (!s) s = m->scratch = xcalloc(1, sizeof *s);
    size_t need = carve_scratch_(NULL, &m->lc, &m->range, NULL, B, Le, Ld, m->recompute, nt);
    if (need > s->cap) {
        free(s->mem);
        s->mem = xmalloc_aligned(need * sizeof(float));
        s->cap = need;
    }
    carve_scratch_(s, &m->lc, &m->range, s->mem, B, Le, Ld, m->recompute, nt);
    s->B = B; s->Le = Le; s->Ld = Ld; s->nthreads = nt;
    return s;
}

void t5_model_free(T5Model *m) {
    t5_acts_free(m->acts);
    if (m->scratch) { free(m->scratch->mem); free(m->scratch); }
    free(m->params);
    free(m->grads);
    free(m->tensors);
    free(m->tp_work);
    memset(m, 0, sizeof *m);
}

/* Pointers to local encoder block l's activations (the shared workspace when recomputing). */
typedef struct { float *x0, *x1, *x2, *ln0, *ln1, *r0, *r1, *qkv, *att, *ctx, *ffu, *ffh; } EncBlockActs;
typedef struct {
    float *x0, *x1, *x2, *x3, *ln0, *ln1, *ln2, *r0, *r1, *r2, *qkv, *att, *ctx, *xq, *xkv, *xatt,
          *xctx, *ffu, *ffh;
} DecBlockActs;

static void enc_block_acts_(const T5Acts *a, const T5Scratch *s, const T5Config *c, int l, EncBlockActs *e) {
    size_t d = c->d_model, H = c->n_heads, HK = H * c->d_kv, f = c->d_ff, B = a->B, Le = a->Le;
    size_t N = B * Le, fu = c->ffn == T5_FFN_GATED_GELU ? 2 * f : 0;
    size_t k = a->recompute ? 0 : (size_t)l;
    e->x0 = a->enc_res + (size_t)(2 * l) * N * d;
    e->x1 = e->x0 + N * d;
    e->x2 = e->x1 + N * d;
    float *ln = a->recompute ? s->ws_enc_ln : a->enc_ln, *rs = a->recompute ? s->ws_enc_rstd : a->enc_rstd;
    e->ln0 = ln + 2 * k * N * d;
    e->ln1 = e->ln0 + N * d;
    e->r0 = rs + 2 * k * N;
    e->r1 = e->r0 + N;
    e->qkv = (a->recompute ? s->ws_enc_qkv : a->enc_qkv) + k * N * 3 * HK;
    e->att = (a->recompute ? s->ws_enc_att : a->enc_att) + k * B * H * Le * Le;
    e->ctx = (a->recompute ? s->ws_enc_ctx : a->enc_ctx) + k * N * HK;
    e->ffu = (a->recompute ? s->ws_enc_ffu : a->enc_ffu) + k * N * fu;
    e->ffh = (a->recompute ? s->ws_enc_ffh : a->enc_ffh) + k * N * f;
}

static void dec_block_acts_(const T5Acts *a, const T5Scratch *s, const T5Config *c, int l, DecBlockActs *e) {
    size_t d = c->d_model, H = c->n_heads, HK = H * c->d_kv, f = c->d_ff, B = a->B, Le = a->Le, Ld = a->Ld;
    size_t N = B * Le, M = B * Ld, fu = c->ffn == T5_FFN_GATED_GELU ? 2 * f : 0;
    size_t k = a->recompute ? 0 : (size_t)l;
    int rc = a->recompute;
    e->x0 = a->dec_res + (size_t)(3 * l) * M * d;
    e->x1 = e->x0 + M * d;
    e->x2 = e->x1 + M * d;
    e->x3 = e->x2 + M * d;
    float *ln = rc ? s->ws_dec_ln : a->dec_ln, *rs = rc ? s->ws_dec_rstd : a->dec_rstd;
    e->ln0 = ln + 3 * k * M * d;
    e->ln1 = e->ln0 + M * d;
    e->ln2 = e->ln1 + M * d;
    e->r0 = rs + 3 * k * M;
    e->r1 = e->r0 + M;
    e->r2 = e->r1 + M;
    e->qkv = (rc ? s->ws_dec_qkv : a->dec_qkv) + k * M * 3 * HK;
    e->att = (rc ? s->ws_dec_att : a->dec_att) + k * B * H * Ld * Ld;
    e->ctx = (rc ? s->ws_dec_ctx : a->dec_ctx) + k * M * HK;
    e->xq = (rc ? s->ws_dec_xq : a->dec_xq) + k * M * HK;
    e->xkv = (rc ? s->ws_dec_xkv : a->dec_xkv) + k * N * 2 * HK;
    e->xatt = (rc ? s->ws_dec_xatt : a->dec_xatt) + k * B * H * Ld * Le;
    e->xctx = (rc ? s->ws_dec_xctx : a->dec_xctx) + k * M * HK;
    e->ffu = (rc ? s->ws_dec_ffu : a->dec_ffu) + k * M * fu;
    e->ffh = (rc ? s->ws_dec_ffh : a->dec_ffh) + k * M * f;
}

/* ---------------------------------------------------------------------------------------------
 * Tensor parallelism inside the sub-layers (tp NULL: one rank). A column-parallel product
 * (q, k, v, wi, the head) needs nothing forward; its input gradient is this rank's part of a
 * sum (tp_sum_). A row-parallel product (o, wo) adds this rank's part into the replicated
 * residual stream and sums over the group (out_proj_). */

static void tp_sum_(TpCtx *tp, float *buf, size_t n) {
    if (tp) tp_allreduce_sum(tp, buf, n);
}

/* out[T, OC] += inp[T, Kl] . W[OC, Kl]^T, summed over the group. */
static void out_proj_(TpCtx *tp, float *out, const float *inp, const float *W, int T, int Kl, int OC) {
    if (tp) tp_rowpar_forward(tp, out, inp, W, T, Kl, OC, 1.0f);
    else t5_matmul_forward(out, inp, W, T, Kl, OC, 1.0f, 1.0f);
}

/* ---------------------------------------------------------------------------------------------
 * The two pre-norm sub-layers both stacks share, forward next to backward. T = B*L tokens of one
 * stack; the backward takes s->d_res = dL/d(sub-layer output) and leaves dL/d(sub-layer input)
 * there (the residual path plus the rmsnorm input gradient); weight gradients go to gw (+=). */

/* Self-attention: x1[T,d] = x0 + Attn(ln = rmsnorm(x0)) . o^T, keeping ln[T,d], rstd[T],
 * qkv[T,3HK], att[B,H,L,L] and ctx[T,HK]. bias: [H, 2L-1] of the stack; causal for the decoder. */
static void self_attn_forward_(TpCtx *tp, const T5Config *c, const LayerW *w, float *x1, const float *x0,
                               float *ln, float *rstd, float *qkv, float *att, float *ctx,
                               const float *bias, const int32_t *seg, int causal, int B, int L) {
    int d = c->d_model, H = c->n_heads, K = c->d_kv, HK = H * K, T = B * L;
    t5_rmsnorm_forward(ln, rstd, x0, w->ln_sa, T, d, c->layer_norm_eps);
    t5_matmul_forward(qkv, ln, w->qkv, T, d, 3 * HK, 1.0f, 0.0f);
    t5_attention_forward(ctx, HK, att, qkv, 3 * HK, qkv + HK, 3 * HK, qkv + 2 * HK, 3 * HK, bias,
                         seg, seg, causal, B, L, L, H, K);
    memcpy(x1, x0, (size_t)T * d * sizeof(float));
    out_proj_(tp, x1, ctx, w->o, T, HK, d);
}

/* dbias[B,H,2L-1] += the relative-bias gradient of this layer. */
static void self_attn_backward_(TpCtx *tp, T5Scratch *s, const T5Config *c, const LayerW *w,
                                const LayerW *gw, const float *x0, const float *ln,
                                const float *rstd, const float *qkv, const float *att,
                                const float *ctx, float *dbias, int B, int L) {
    int d = c->d_model, H = c->n_heads, K = c->d_kv, HK = H * K, T = B * L;
    t5_matmul_backward(s->d_ctx, 0.0f, gw->o, s->d_res, ctx, w->o, T, HK, d, 1.0f);
    t5_attention_backward(s->d_qkv, 3 * HK, s->d_qkv + HK, 3 * HK, s->d_qkv + 2 * HK, 3 * HK, dbias,
                          s->d_ctx, HK, att, qkv, 3 * HK, qkv + HK, 3 * HK, qkv + 2 * HK, 3 * HK, B,
                          L, L, H, K, s->att_scratch, s->nthreads);
    t5_matmul_backward(s->d_ln, 0.0f, gw->qkv, s->d_qkv, ln, w->qkv, T, d, 3 * HK, 1.0f);
    tp_sum_(tp, s->d_ln, (size_t)T * d);
    t5_rmsnorm_backward(s->d_res, gw->ln_sa, s->d_ln, x0, w->ln_sa, rstd, T, d);
}

/* Feed-forward: x1[T,d] = x0 + FFN(ln = rmsnorm(x0)), keeping ln, rstd, ffu (gated only), ffh. */
static void ffn_sublayer_forward_(TpCtx *tp, const T5Config *c, const LayerW *w, float *x1, const float *x0,
                                  float *ln, float *rstd, float *ffu, float *ffh, int T) {
    int d = c->d_model;
    t5_rmsnorm_forward(ln, rstd, x0, w->ln_ff, T, d, c->layer_norm_eps);
    memcpy(x1, x0, (size_t)T * d * sizeof(float));
    if (tp) tp_ffn_forward(tp, x1, ffu, ffh, ln, w->wi, w->wo, T, d, c->d_ff, c->ffn);
    else t5_ffn_forward(x1, ffu, ffh, ln, w->wi, w->wo, T, d, c->d_ff, c->ffn);
}

static void ffn_sublayer_backward_(TpCtx *tp, T5Scratch *s, const T5Config *c, const LayerW *w,
                                   const LayerW *gw, const float *x0, const float *ln,
                                   const float *rstd, const float *ffu, const float *ffh, int T) {
    int d = c->d_model;
    t5_ffn_backward(s->d_ln, gw->wi, gw->wo, s->d_ffh, s->d_ffu, s->d_res, ffu, ffh, ln, w->wi,
                    w->wo, T, d, c->d_ff, c->ffn);
    tp_sum_(tp, s->d_ln, (size_t)T * d);
    t5_rmsnorm_backward(s->d_res, gw->ln_ff, s->d_ln, x0, w->ln_ff, rstd, T, d);
}

/* One encoder block forward: bidirectional self-attention, then feed-forward. */
static void enc_block_forward_(const T5Model *m, const T5Acts *a, const EncBlockActs *e, const LayerW *w) {
    const T5Config *c = &m->lc;
    int N = a->B * a->Le;
    self_attn_forward_(m->tp, c, w, e->x1, e->x0, e->ln0, e->r0, e->qkv, e->att, e->ctx, a->enc_bias,
                       a->enc_seg, 0, a->B, a->Le);
    ffn_sublayer_forward_(m->tp, c, w, e->x2, e->x1, e->ln1, e->r1, e->ffu, e->ffh, N);
}

/* One decoder block forward: causal self-attention, cross-attention on enc_out, feed-forward. */
static void dec_block_forward_(const T5Model *m, const T5Acts *a, const DecBlockActs *e, const LayerW *w) {
    const T5Config *c = &m->lc;
    int B = a->B, Le = a->Le, Ld = a->Ld, d = c->d_model, H = c->n_heads, K = c->d_kv, HK = H * K;
    int N = B * Le, M = B * Ld;
    self_attn_forward_(m->tp, c, w, e->x1, e->x0, e->ln0, e->r0, e->qkv, e->att, e->ctx, a->dec_bias,
                       a->dec_seg, 1, B, Ld);
    /* cross-attention on the encoder output, no position bias */
    t5_rmsnorm_forward(e->ln1, e->r1, e->x1, w->ln_ca, M, d, c->layer_norm_eps);
    t5_matmul_forward(e->xq, e->ln1, w->xq, M, d, HK, 1.0f, 0.0f);
    t5_matmul_forward(e->xkv, a->enc_out, w->xkv, N, d, 2 * HK, 1.0f, 0.0f);
    t5_attention_forward(e->xctx, HK, e->xatt, e->xq, HK, e->xkv, 2 * HK, e->xkv + HK, 2 * HK, NULL,
                         a->dec_seg, a->enc_seg, 0, B, Ld, Le, H, K);
    memcpy(e->x2, e->x1, (size_t)M * d * sizeof(float));
    out_proj_(m->tp, e->x2, e->xctx, w->xo, M, HK, d);
    ffn_sublayer_forward_(m->tp, c, w, e->x3, e->x2, e->ln2, e->r2, e->ffu, e->ffh, M);
}

/* ---------------------------------------------------------------------------------------------
 * Stage forward. */

static float *head_weight_(const T5Model *m, float *base) {
    return tensor_ptr_(m, base, m->cfg.tied_embedding ? "shared.weight" : "lm_head.weight");
}
static float *enc_bias_table_(const T5Model *m, float *base) {
    return tensor_ptr_(m, base, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
}
static float *dec_bias_table_(const T5Model *m, float *base) {
    return tensor_ptr_(m, base, "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
}

/* Relative position bias of this rank's heads: bias[Hl, Lq+Lk-1] from columns [r Hl, (r+1) Hl)
 * of the whole table [nb, H] (every rank holds it). */
static void relbias_forward_(const T5Model *m, float *bias, const float *table, int L, int bidir) {
    const T5Config *c = &m->cfg;
    int Hl = m->lc.n_heads;
    if (m->tp) {
        tp_shard_cols_local(m->tp_work, table, c->num_buckets, c->n_heads, m->tp_size, m->tp_rank);
        table = m->tp_work;
    }
    t5_relbias_forward(bias, table, L, L, Hl, bidir, c->num_buckets, c->max_distance);
}

/* dtable[nb, H] += the gradient of this call; with tensor parallelism each rank has its heads'
 * columns, summed over the group so that every rank holds the whole table's gradient. */
static void relbias_backward_(const T5Model *m, float *dtable, const float *dbias, int B, int L, int bidir) {
    const T5Config *c = &m->cfg;
    int nb = c->num_buckets, H = c->n_heads, Hl = m->lc.n_heads;
    if (!m->tp) {
        t5_relbias_backward(dtable, dbias, B, L, L, H, bidir, nb, c->max_distance);
        return;
    }
    float *local = m->tp_work, *whole = m->tp_work + (size_t)nb * H;
    memset(local, 0, (size_t)nb * Hl * sizeof(float));
    memset(whole, 0, (size_t)nb * H * sizeof(float));
    t5_relbias_backward(local, dbias, B, L, L, Hl, bidir, nb, c->max_distance);
    tp_unshard_cols_local(whole, local, nb, H, m->tp_size, m->tp_rank);
    tp_allreduce_sum(m->tp, whole, (size_t)nb * H);
    for (size_t i = 0; i < (size_t)nb * H; i++) dtable[i] += whole[i];
}

/* Embedding lookup (vocabulary-parallel: each rank holds rows [r V/T, ..), one sum). */
static void embed_forward_(const T5Model *m, float *out, const int32_t *ids, const float *E, int N) {
    if (m->tp) tp_embedding_forward(m->tp, out, ids, E, N, m->cfg.d_model, m->lc.vocab_size);
    else t5_embedding_forward(out, ids, E, N, m->cfg.d_model);
}
static void embed_backward_(const T5Model *m, float *dE, const int32_t *ids, const float *dout, int N) {
    if (m->tp) tp_embedding_backward(m->tp, dE, ids, dout, N, m->cfg.d_model, m->lc.vocab_size);
    else t5_embedding_backward(dE, ids, dout, N, m->cfg.d_model);
}

const float *t5_acts_enc_x_out(const T5Acts *a) {
    if (!has_enc_part_(&a->r) || a->r.enc_norm) return NULL;
    size_t N = (size_t)a->B * a->Le, nE = (size_t)(a->r.enc_end - a->r.enc_begin);
    return a->enc_res + 2 * nE * N * (size_t)a->d;
}

const float *t5_acts_enc_out(const T5Acts *a) { return a->r.enc_norm ? a->enc_out : NULL; }

const float *t5_acts_dec_x_out(const T5Acts *a) {
    if (!has_dec_part_(&a->r) || a->r.head) return NULL;
    size_t M = (size_t)a->B * a->Ld, nD = (size_t)(a->r.dec_end - a->r.dec_begin);
    return a->dec_res + 3 * nD * M * (size_t)a->d;
}

void t5_stage_forward(T5Model *m, T5Acts *a, const T5Batch *b, const T5StageIn *in, float z_loss_coef,
                      T5LossStats *out) {
    const T5Config *c = &m->lc;   /* this rank's heads, d_ff and vocabulary */
    const T5StageRange *r = &m->range;
    int B = b->B, Le = b->Le, Ld = b->Ld;
    if (B != a->B || Le != a->Le || Ld != a->Ld)
        FATAL("this is a bug: use an activation set made for the batch", "t5_stage_forward: batch %dx%d/%d, "
              "activations %dx%d/%d", B, Le, Ld, a->B, a->Le, a->Ld);
    int d = c->d_model, V = c->vocab_size, nE = r->enc_end - r->enc_begin, nD = r->dec_end - r->dec_begin;
    size_t N = (size_t)B * Le, M = (size_t)B * Ld;
    float eps = c->layer_norm_eps;
    memcpy(a->enc_ids, b->enc_ids, N * sizeof(int32_t));
    memcpy(a->enc_seg, b->enc_seg, N * sizeof(int32_t));
    memcpy(a->dec_ids, b->dec_in_ids, M * sizeof(int32_t));
    memcpy(a->labels, b->labels, M * sizeof(int32_t));
    memcpy(a->dec_seg, b->dec_seg, M * sizeof(int32_t));
    a->zc = z_loss_coef;
    T5Scratch *s = scratch_for_(m, B, Le, Ld);
    float *P = m->params;
    out->ce_sum = 0.0; out->z_sum = 0.0; out->tokens = 0;

    if (has_enc_part_(r)) {
        if (nE) relbias_forward_(m, a->enc_bias, enc_bias_table_(m, P), Le, 1);
        if (r->embed) embed_forward_(m, a->enc_res, a->enc_ids, tensor_ptr_(m, P, "shared.weight"), (int)N);
        else memcpy(a->enc_res, in->enc_x, N * d * sizeof(float));
        for (int l = 0; l < nE; l++) {
            LayerW w;
            EncBlockActs e;
            layer_ptrs_(m, P, 0, r->enc_begin + l, &w);
            enc_block_acts_(a, s, c, l, &e);
            enc_block_forward_(m, a, &e, &w);
        }
        if (r->enc_norm)
            t5_rmsnorm_forward(a->enc_out, a->enc_out_rstd, a->enc_res + (size_t)(2 * nE) * N * d,
                               tensor_ptr_(m, P, "encoder.final_layer_norm.weight"), (int)N, d, eps);
    }
    if (nD && !r->enc_norm) memcpy(a->enc_out, in->enc_out, N * d * sizeof(float));
    if (has_dec_part_(r)) {
        if (nD) relbias_forward_(m, a->dec_bias, dec_bias_table_(m, P), Ld, 0);
        if (r->dec_begin == 0 && nD) embed_forward_(m, a->dec_res, a->dec_ids, tensor_ptr_(m, P, "shared.weight"), (int)M);
        else memcpy(a->dec_res, in->dec_x, M * d * sizeof(float));
        for (int l = 0; l < nD; l++) {
            LayerW w;
            DecBlockActs e;
            layer_ptrs_(m, P, 1, r->dec_begin + l, &w);
            dec_block_acts_(a, s, c, l, &e);
            dec_block_forward_(m, a, &e, &w);
        }
        if (r->head) {
            t5_rmsnorm_forward(a->dec_out, a->dec_out_rstd, a->dec_res + (size_t)(3 * nD) * M * d,
                               tensor_ptr_(m, P, "decoder.final_layer_norm.weight"), (int)M, d, eps);
            /* logits[M,V] = (dec_out * d^-0.5) E^T (tied) or dec_out lm_head^T */
            float alpha = c->tied_embedding ? 1.0f / sqrtf((float)d) : 1.0f;
            t5_matmul_forward(a->logits, a->dec_out, head_weight_(m, P), (int)M, d, V, alpha, 0.0f);
            if (m->tp) tp_xent_forward(m->tp, out, a->logZ, a->logits, a->labels, (int)M, V);
            else t5_xent_forward(out, a->logZ, a->logits, a->labels, (int)M, V);
        }
    }
    a->have_forward = 1;
}

/* ---------------------------------------------------------------------------------------------
 * Stage backward: the forward in reverse. s->d_res carries the gradient of the residual stream;
 * each rmsnorm backward adds its input gradient into it. The ready callback hears of each
 * tensor as soon as its gradient is final (the data-parallel reduction starts it then). */

static void ready_prefix_(const T5Model *m, const T5StageGrad *g, const char *prefix) {
    if (!g || !g->ready) return;
    size_t n = strlen(prefix);
    for (int i = 0; i < m->num_tensors; i++) {
        const char *nm = m->tensors[i].name;
        if (strncmp(nm, prefix, n) == 0 && !strstr(nm, "relative_attention_bias")) g->ready(g->ready_ctx, i);
    }
}

static void ready_name_(const T5Model *m, const T5StageGrad *g, const char *name) {
    if (!g || !g->ready) return;
    int i = t5_model_find_tensor(m, name);
    if (i >= 0) g->ready(g->ready_ctx, i);
}

void t5_stage_backward(T5Model *m, T5Acts *a, T5StageGrad *g, float loss_scale) {
    if (!a || !a->have_forward)
        FATAL("call the forward before the backward", "t5_stage_backward: no forward");
    const T5Config *c = &m->lc;   /* this rank's heads, d_ff and vocabulary */
    const T5StageRange *r = &m->range;
    int B = a->B, Le = a->Le, Ld = a->Ld;
    int d = c->d_model, H = c->n_heads, K = c->d_kv, HK = H * K, V = c->vocab_size;
    int nE = r->enc_end - r->enc_begin, nD = r->dec_end - r->dec_begin;
    size_t N = (size_t)B * Le, M = (size_t)B * Ld;
    T5Scratch *s = scratch_for_(m, B, Le, Ld);
    float *P = m->params, *G = m->grads;
    char prefix[64];

    if (has_dec_part_(r)) {
        if (r->head) {   /* loss and head */
            if (m->tp) tp_xent_backward(m->tp, a->logits, a->logZ, a->labels, (int)M, V, a->zc, loss_scale);
            else t5_xent_backward(a->logits, a->logZ, a->labels, (int)M, V, a->zc, loss_scale);
            float alpha = c->tied_embedding ? 1.0f / sqrtf((float)d) : 1.0f;
            t5_matmul_backward(s->d_ln, 0.0f, head_weight_(m, G), a->logits, a->dec_out,
                               head_weight_(m, P), (int)M, d, V, alpha);
            tp_sum_(m->tp, s->d_ln, M * d);
            memset(s->d_res, 0, M * d * sizeof(float));
            t5_rmsnorm_backward(s->d_res, tensor_ptr_(m, G, "decoder.final_layer_norm.weight"), s->d_ln,
                                a->dec_res + (size_t)(3 * nD) * M * d,
                                tensor_ptr_(m, P, "decoder.final_layer_norm.weight"), a->dec_out_rstd, (int)M, d);
            ready_name_(m, g, "decoder.final_layer_norm.weight");
            if (!c->tied_embedding) ready_name_(m, g, "lm_head.weight");
        } else {
            memcpy(s->d_res, g->d_dec_x, M * d * sizeof(float));
        }
        if (nD) {
            memset(s->d_enc_out, 0, N * d * sizeof(float));
            memset(s->d_bias_dec, 0, (size_t)B * H * (2 * Ld - 1) * sizeof(float));
        }
        for (int l = nD - 1; l >= 0; l--) {
            int gl = r->dec_begin + l;
            LayerW w, gw;
            DecBlockActs e;
            layer_ptrs_(m, P, 1, gl, &w);
            layer_ptrs_(m, G, 1, gl, &gw);
            dec_block_acts_(a, s, c, l, &e);
            if (a->recompute) dec_block_forward_(m, a, &e, &w);
            /* feed-forward */
            ffn_sublayer_backward_(m->tp, s, c, &w, &gw, e.x2, e.ln2, e.r2, e.ffu, e.ffh, (int)M);
            /* cross-attention */
            t5_matmul_backward(s->d_ctx, 0.0f, gw.xo, s->d_res, e.xctx, w.xo, (int)M, HK, d, 1.0f);
            float *dxkv = s->d_qkv;
            t5_attention_backward(s->d_q, HK, dxkv, 2 * HK, dxkv + HK, 2 * HK, NULL, s->d_ctx, HK, e.xatt,
                                  e.xq, HK, e.xkv, 2 * HK, e.xkv + HK, 2 * HK, B, Ld, Le, H, K,
                                  s->att_scratch, s->nthreads);
            t5_matmul_backward(s->d_ln, 0.0f, gw.xq, s->d_q, e.ln1, w.xq, (int)M, d, HK, 1.0f);
            tp_sum_(m->tp, s->d_ln, M * d);
            /* this rank's part of the encoder output's gradient: summed once after the loop */
            t5_matmul_backward(s->d_enc_out, 1.0f, gw.xkv, dxkv, a->enc_out, w.xkv, (int)N, d, 2 * HK, 1.0f);
            t5_rmsnorm_backward(s->d_res, gw.ln_ca, s->d_ln, e.x1, w.ln_ca, e.r1, (int)M, d);
            /* causal self-attention */
            self_attn_backward_(m->tp, s, c, &w, &gw, e.x0, e.ln0, e.r0, e.qkv, e.att, e.ctx, s->d_bias_dec, B, Ld);
            snprintf(prefix, sizeof prefix, "decoder.block.%d.", gl);
            ready_prefix_(m, g, prefix);
        }
        if (nD) {
            relbias_backward_(m, dec_bias_table_(m, G), s->d_bias_dec, B, Ld, 0);
            tp_sum_(m->tp, s->d_enc_out, N * d);
            ready_name_(m, g, "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
        }
        if (r->dec_begin == 0 && nD) embed_backward_(m, tensor_ptr_(m, G, "shared.weight"), a->dec_ids, s->d_res, (int)M);
        else memcpy(g->d_dec_x_in, s->d_res, M * d * sizeof(float));
    }
    if (nD && !r->enc_norm) memcpy(g->d_enc_out_part, s->d_enc_out, N * d * sizeof(float));

    if (has_enc_part_(r)) {
        if (r->enc_norm) {
            /* the encoder output's gradient: this stage's decoder blocks plus later stages' */
            float *de = s->d_enc_out;
            if (!nD) memset(de, 0, N * d * sizeof(float));
            if (g && g->d_enc_out) {
                const float *src = g->d_enc_out;
                size_t n = N * d;
#pragma omp parallel for simd schedule(static)
                for (size_t i = 0; i < n; i++) de[i] += src[i];
            }
            memset(s->d_res, 0, N * d * sizeof(float));
            t5_rmsnorm_backward(s->d_res, tensor_ptr_(m, G, "encoder.final_layer_norm.weight"), de,
                                a->enc_res + (size_t)(2 * nE) * N * d,
                                tensor_ptr_(m, P, "encoder.final_layer_norm.weight"), a->enc_out_rstd, (int)N, d);
            ready_name_(m, g, "encoder.final_layer_norm.weight");
        } else {
            memcpy(s->d_res, g->d_enc_x, N * d * sizeof(float));
        }
        if (nE) memset(s->d_bias_enc, 0, (size_t)B * H * (2 * Le - 1) * sizeof(float));
        for (int l = nE - 1; l >= 0; l--) {
            int gl = r->enc_begin + l;
            LayerW w, gw;
            EncBlockActs e;
            layer_ptrs_(m, P, 0, gl, &w);
            layer_ptrs_(m, G, 0, gl, &gw);
            enc_block_acts_(a, s, c, l, &e);
            if (a->recompute) enc_block_forward_(m, a, &e, &w);
            ffn_sublayer_backward_(m->tp, s, c, &w, &gw, e.x1, e.ln1, e.r1, e.ffu, e.ffh, (int)N);
            self_attn_backward_(m->tp, s, c, &w, &gw, e.x0, e.ln0, e.r0, e.qkv, e.att, e.ctx, s->d_bias_enc, B, Le);
            snprintf(prefix, sizeof prefix, "encoder.block.%d.", gl);
            ready_prefix_(m, g, prefix);
        }
        if (nE) {
            relbias_backward_(m, enc_bias_table_(m, G), s->d_bias_enc, B, Le, 1);
            ready_name_(m, g, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
        }
        if (r->embed) embed_backward_(m, tensor_ptr_(m, G, "shared.weight"), a->enc_ids, s->d_res, (int)N);
        else memcpy(g->d_enc_x_in, s->d_res, N * d * sizeof(float));
    }
    ready_name_(m, g, "shared.weight");
    a->have_forward = 0;   /* the logits buffer now holds gradients */
    t5_profile_report();
}

/* ---------------------------------------------------------------------------------------------
 * The whole model: one stage holding every block, with the model's own activation set. */

void t5_model_forward(T5Model *m, const T5Batch *b, float z_loss_coef, T5LossStats *out) {
    if (b->B < 1 || b->Le < 1 || b->Ld < 1)
        FATAL("the batch must have B, Le, Ld >= 1", "t5_model_forward: bad batch %dx%d/%d", b->B, b->Le, b->Ld);
    T5Acts *a = m->acts;
    if (!a || a->B != b->B || a->Le != b->Le || a->Ld != b->Ld || a->recompute != m->recompute) {
        t5_acts_free(a);
        a = m->acts = t5_acts_new(m, b->B, b->Le, b->Ld);
    }
    T5StageIn in = {NULL, NULL, NULL};
    t5_stage_forward(m, a, b, &in, z_loss_coef, out);
}

void t5_model_backward_ready(T5Model *m, float loss_scale, void (*ready)(void *ctx, int tensor),
                             void *ctx) {
    if (!m->acts || !m->acts->have_forward)
        FATAL("call t5_model_forward before t5_model_backward", "t5_model_backward: no forward");
    T5StageGrad g;
    memset(&g, 0, sizeof g);
    g.ready = ready;
    g.ready_ctx = ctx;
    t5_stage_backward(m, m->acts, &g, loss_scale);
}

void t5_model_backward(T5Model *m, float loss_scale) { t5_model_backward_ready(m, loss_scale, NULL, NULL); }
/* ---------------------------------------------------------------------------------------------
 * FLOPs (docs/t5-recipe.md section 8): matrix products only, 2 per multiply-add, full squares. */

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
