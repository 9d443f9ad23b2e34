/*
 * pretrain/t5_model.h: the T5 encoder-decoder (v1.0 as T5-Efficient uses it; v1.1 optional),
 * forward and backward on the CPU.
 *
 * Memory: all parameters live in ONE contiguous fp32 buffer (m->params), carved into named
 * tensors that carry their Hugging Face names and shapes (Linear weights [out, in], embedding
 * [V, d], relative_attention_bias [32, h]). Gradients (m->grads) use the same layout, so the
 * optimizer, all-reduce and checkpoint I/O are loops over one range. Activations are owned by the
 * model and sized for the largest micro-batch seen so far.
 *
 * Loss: for each decoder position t with label y_t != 0,
 *   ce_t = logZ_t - logit_t[y_t],  z_t = logZ_t^2,  per-token training loss = ce_t + zc * z_t.
 * forward() returns the sums; backward() adds to m->grads the gradient of
 *   loss_scale * sum_t (ce_t + zc * z_t)
 * with the zc given to the last forward(). The trainer passes loss_scale = 1 / (B_global * Ld)
 * (docs/t5-recipe.md section 5.4); t5eval passes zc = 0 and loss_scale = 1 / tokens.
 */
#ifndef T5_MODEL_H
#define T5_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "t5_batch.h"
#include "t5_config.h"

/* How a tensor-parallel rank's tensor relates to the global one (T = tp size, r = tp rank;
 * parallel/tp.h): whole, rows [r R/T, (r+1) R/T) (a contiguous element range), or columns
 * [r C/T, (r+1) C/T) held as a dense [R, C/T] array. */
typedef enum { T5_SPLIT_NONE = 0, T5_SPLIT_ROWS = 1, T5_SPLIT_COLS = 2 } T5Split;

typedef struct {
    char name[96];     /* Hugging Face name, e.g. "encoder.block.0.layer.0.SelfAttention.q.weight" */
    int ndim;          /* 1 or 2 */
    int shape[2];      /* shape held here (the Hugging Face shape, or this rank's piece of it) */
    int gshape[2];     /* the Hugging Face (global) shape */
    T5Split split;     /* T5_SPLIT_NONE unless tensor-parallel */
    size_t offset;     /* in floats, into params/grads */
    size_t numel;
    int global_index;  /* index in the full model's table (a stage holds a subset) */
} T5Tensor;

typedef struct {
    double ce_sum;     /* sum of ce_t over labels != 0 */
    double z_sum;      /* sum of logZ_t^2 over labels != 0 */
    long tokens;       /* number of labels != 0 */
} T5LossStats;

/* The part of the block sequence [embedding, encoder blocks, encoder final norm, decoder blocks
 * (the decoder input embedding goes with decoder block 0), decoder final norm + head + loss]
 * that one model object runs: the whole model, or one pipeline stage. */
typedef struct {
    int embed;                 /* encoder input embedding */
    int enc_begin, enc_end;    /* encoder blocks [enc_begin, enc_end) */
    int enc_norm;              /* encoder final norm (produces the encoder output) */
    int dec_begin, dec_end;    /* decoder blocks [dec_begin, dec_end) */
    int head;                  /* decoder final norm, LM head, loss */
} T5StageRange;

typedef struct T5Acts T5Acts;          /* one micro-batch's saved activations; t5_model.c */
typedef struct T5Scratch T5Scratch;    /* backward scratch shared by all micro-batches */

struct TpCtx;   /* parallel/tp.h */

typedef struct {
    T5Config cfg;             /* the whole model's config */
    T5Config lc;              /* what this rank computes: cfg with n_heads, d_ff and vocab_size
                                 divided by the tensor-parallel size (== cfg without it) */
    struct TpCtx *tp;         /* NULL, or the tensor-parallel group (size > 1); not owned */
    int tp_size, tp_rank;
    float *tp_work;           /* [2 nb H] tensor-parallel relative-bias work (NULL without) */
    T5StageRange range;
    size_t num_params;
    float *params;            /* [num_params], 64-byte aligned */
    float *grads;             /* [num_params], same layout */
    T5Tensor *tensors;
    int num_tensors;
    int recompute;            /* keep only block inputs; recompute each block in backward */
    T5Acts *acts;             /* of t5_model_forward/backward; NULL until the first forward */
    T5Scratch *scratch;       /* NULL until the first backward */
} T5Model;

/* Lay out the parameter table for cfg and allocate params (zeroed) and grads (zeroed).
 * Fatal on out of memory. The tensor order is the Hugging Face state-dict order. */
void t5_model_build(T5Model *m, const T5Config *cfg);
/* The same for a stage: only the tensors the range uses, plus the tensors it shares with other
 * stages (shared.weight where the encoder embedding, the decoder embedding or the tied head is;
 * each stack's relative_attention_bias on every stage running blocks of that stack). */
void t5_model_build_stage(T5Model *m, const T5Config *cfg, const T5StageRange *range);
void t5_stage_range_full(const T5Config *cfg, T5StageRange *range);
/* Parameters a stage holds (shared tensors included), without allocating anything. */
size_t t5_stage_num_params(const T5Config *cfg, const T5StageRange *range);

/* Tensor parallelism (Megatron-LM's split, parallel/tp.h): q, k, v, wi (wi_0, wi_1), the
 * embedding and lm_head are split by rows (heads, d_ff, vocabulary), o and wo by columns; norms
 * and relative-bias tables are whole on every rank. Each sub-layer's forward ends with one sum
 * over the group, and so does the backward of its input; the vocabulary-parallel loss never
 * gathers the logits. tp == NULL or of size 1 is t5_model_build_stage. Initialisation gives each
 * rank its piece of the whole model's values. The split dimensions must divide by the size
 * (tp_check_dims). */
void t5_model_build_stage_tp(T5Model *m, const T5Config *cfg, const T5StageRange *range, struct TpCtx *tp);
size_t t5_stage_num_params_tp(const T5Config *cfg, const T5StageRange *range, int T);
/* cfg with n_heads, d_ff and vocab_size divided by T: what one rank computes (for the sizes of
 * t5_acts_bytes / t5_scratch_bytes). */
void t5_config_tp_local(const T5Config *cfg, int T, T5Config *local);
void t5_model_free(T5Model *m);

/* Mesh TensorFlow initialisation (docs/t5-recipe.md section 3), a pure function of seed and of each
 * tensor's global index: a stage gets exactly the values of the whole model. */
void t5_model_init_weights(T5Model *m, uint64_t seed);

/* Index of the tensor named `name` (Hugging Face name), or -1. "lm_head.weight",
 * "encoder.embed_tokens.weight" and "decoder.embed_tokens.weight" resolve to "shared.weight"
 * when the embedding is tied. */
int t5_model_find_tensor(const T5Model *m, const char *name);

/* Forward pass over a batch (b->B rows) of the whole model; keeps what backward needs.
 * z_loss_coef is zc above. Token ids must be in [0, V); the caller validates data. */
void t5_model_forward(T5Model *m, const T5Batch *b, float z_loss_coef, T5LossStats *out);

/* Backward of the last forward; ACCUMULATES into m->grads (call t5_model_zero_grad first). */
void t5_model_backward(T5Model *m, float loss_scale);
/* The same; ready(ctx, i) hears of tensor i as soon as its gradient is final (for the data-
 * parallel reduction to start during backward). */
void t5_model_backward_ready(T5Model *m, float loss_scale, void (*ready)(void *ctx, int tensor),
                             void *ctx);

void t5_model_zero_grad(T5Model *m);

/* ---- Stages: the same computation cut at block boundaries (pipeline parallelism). ----
 * N = B*Le encoder tokens, M = B*Ld decoder tokens. A stage's forward takes the hidden states
 * entering it and produces those leaving it; its backward takes their gradients and produces the
 * gradients of what entered. Outputs live in the T5Acts until its next forward. */

/* Saved activations of one micro-batch of B rows for m's range (recompute: m->recompute). */
T5Acts *t5_acts_new(const T5Model *m, int B, int Le, int Ld);
void t5_acts_free(T5Acts *a);
/* Bytes of one activation set, and of the backward scratch, for a range and micro-batch. */
size_t t5_acts_bytes(const T5Config *cfg, const T5StageRange *r, int B, int Le, int Ld, int recompute);
size_t t5_scratch_bytes(const T5Config *cfg, const T5StageRange *r, int B, int Le, int Ld, int recompute);

typedef struct {
    const float *enc_x;     /* [N,d] encoder hidden entering (when !embed and the range has encoder blocks or the norm) */
    const float *dec_x;     /* [M,d] decoder hidden entering (when dec_begin > 0 or the range starts at the head) */
    const float *enc_out;   /* [N,d] encoder output (when the range has decoder blocks and !enc_norm) */
} T5StageIn;

/* Forward; *loss gets the loss sums when the range has the head (else zeros). */
void t5_stage_forward(T5Model *m, T5Acts *a, const T5Batch *b, const T5StageIn *in, float z_loss_coef,
                      T5LossStats *loss);
/* Outputs of the last forward: encoder hidden leaving ([N,d], when the encoder goes on after
 * the range), encoder output ([N,d], when the range has enc_norm), decoder hidden leaving ([M,d],
 * when the decoder goes on after the range). NULL when the range has no such output. */
const float *t5_acts_enc_x_out(const T5Acts *a);
const float *t5_acts_enc_out(const T5Acts *a);
const float *t5_acts_dec_x_out(const T5Acts *a);

typedef struct {
    const float *d_enc_x;     /* [N,d] gradient of the encoder hidden leaving (when it goes on) */
    const float *d_dec_x;     /* [M,d] gradient of the decoder hidden leaving (when it goes on) */
    const float *d_enc_out;   /* [N,d] enc_norm ranges: summed gradient of the encoder output from
                                 decoder blocks of LATER stages (NULL = none) */
    float *d_enc_x_in;        /* [N,d] out: gradient of enc_x entering (when !embed and encoder part) */
    float *d_dec_x_in;        /* [M,d] out: gradient of dec_x entering (when dec_begin > 0 / head only) */
    float *d_enc_out_part;    /* [N,d] out: ranges with decoder blocks but no enc_norm: this stage's
                                 contribution to the encoder output's gradient (written) */
    void (*ready)(void *ctx, int tensor);   /* optional: tensor's gradient is final for this call */
    void *ready_ctx;
} T5StageGrad;

/* Backward of a's forward; ACCUMULATES into m->grads. */
void t5_stage_backward(T5Model *m, T5Acts *a, T5StageGrad *g, float loss_scale);

/* Bytes of activation memory forward+backward needs for a micro-batch of B rows. */
size_t t5_model_activation_bytes(const T5Config *cfg, int B, int Le, int Ld);

/* Model FLOPs of one training step (forward + backward) over B sequences, docs/t5-recipe.md section 8
 * (matrix products only, 2 FLOPs per multiply-add, full attention squares). */
double t5_model_flops_per_step(const T5Config *cfg, int B, int Le, int Ld);

#endif
