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
 * (t5-spec.md section 5.4); t5eval passes zc = 0 and loss_scale = 1 / tokens.
 */
#ifndef T5_MODEL_H
#define T5_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "t5_batch.h"
#include "t5_config.h"

typedef struct {
    char name[96];     /* Hugging Face name, e.g. "encoder.block.0.layer.0.SelfAttention.q.weight" */
    int ndim;          /* 1 or 2 */
    int shape[2];      /* Hugging Face shape */
    size_t offset;     /* in floats, into params/grads */
    size_t numel;
} T5Tensor;

typedef struct {
    double ce_sum;     /* sum of ce_t over labels != 0 */
    double z_sum;      /* sum of logZ_t^2 over labels != 0 */
    long tokens;       /* number of labels != 0 */
} T5LossStats;

typedef struct T5Activations T5Activations;   /* private to t5_model.c */

typedef struct {
    T5Config cfg;
    size_t num_params;
    float *params;            /* [num_params], 64-byte aligned */
    float *grads;             /* [num_params], same layout */
    T5Tensor *tensors;
    int num_tensors;
    T5Activations *acts;      /* NULL until the first forward */
} T5Model;

/* Lay out the parameter table for cfg and allocate params (zeroed) and grads (zeroed).
 * Fatal on out of memory. The tensor order is the Hugging Face state-dict order. */
void t5_model_build(T5Model *m, const T5Config *cfg);
void t5_model_free(T5Model *m);

/* Mesh TensorFlow initialisation (t5-spec.md section 3), a pure function of seed. */
void t5_model_init_weights(T5Model *m, uint64_t seed);

/* Index of the tensor named `name` (Hugging Face name), or -1. "lm_head.weight",
 * "encoder.embed_tokens.weight" and "decoder.embed_tokens.weight" resolve to "shared.weight"
 * when the embedding is tied. */
int t5_model_find_tensor(const T5Model *m, const char *name);

/* Forward pass over a batch (b->B rows); keeps what backward needs. z_loss_coef is zc above.
 * Token ids must be in [0, V); the caller validates data. */
void t5_model_forward(T5Model *m, const T5Batch *b, float z_loss_coef, T5LossStats *out);

/* Backward of the last forward; ACCUMULATES into m->grads (call t5_model_zero_grad first). */
void t5_model_backward(T5Model *m, float loss_scale);

void t5_model_zero_grad(T5Model *m);

/* Bytes of activation memory forward+backward needs for a micro-batch of B rows. */
size_t t5_model_activation_bytes(const T5Config *cfg, int B, int Le, int Ld);

/* Model FLOPs of one training step (forward + backward) over B sequences, t5-spec.md section 8
 * (matrix products only, 2 FLOPs per multiply-add, full attention squares). */
double t5_model_flops_per_step(const T5Config *cfg, int B, int Le, int Ld);

#endif
