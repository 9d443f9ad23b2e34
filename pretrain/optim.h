/*
 * pretrain/optim.h: Adafactor (docs/t5-recipe.md section 5.2, the T5-Efficient optimizer) and AdamW over one
 * contiguous fp32 parameter buffer, plus the learning-rate schedules.
 *
 * The optimizer knows nothing about the model: it receives a table of tensor descriptors
 * (offset and shape inside the parameter buffer; the gradient buffer has the same layout). It
 * updates exactly the tensors it was given, so a ZeRO-1 rank builds one with only the tensors it
 * owns and holds only their state.
 *
 * Optimizer state: ONE contiguous float buffer (opt->state, opt->state_numel floats, zero at
 * init), laid out tensor after tensor in table order; tensor i starts at opt->state_offset[i] and
 * holds opt->state_numel_of[i] floats:
 *
 *   Adafactor, factored (2-D, min(rows, cols) >= min_dim_to_factor):
 *       R[rows]  running mean over columns of G^2+eps1 (one value per row)
 *       C[cols]  running mean over rows of G^2+eps1 (one value per column)
 *   Adafactor, not factored:        V[numel] running mean of G^2+eps1, element order of W
 *   AdamW:                          m[numel] then v[numel] (first and second moments)
 *
 * The state never stores the step: the caller passes the global step g (0-based count of updates
 * already applied) to every call and saves it in checkpoints next to the state.
 */
#ifndef T5_OPTIM_H
#define T5_OPTIM_H

#include <stddef.h>

/* One trainable tensor inside the parameter (and gradient) buffer. */
typedef struct {
    size_t offset;   /* index of its first element in the buffer */
    size_t numel;    /* element count; equals rows*cols for a 2-D tensor */
    int rows, cols;  /* 2-D shape [rows, cols], row-major; cols = 0 (and rows ignored) for 1-D */
} OptimTensor;

/* Tensor parallelism (optim_init_split): split = 0 for a whole tensor; 1 (rows) or 2 (columns)
 * when the tensor is a piece [rows, cols] of the global [grows, gcols] (parallel/tp.h's TpSplit).
 * Adafactor then factors by the global shape and updates through Optim.split_step, whose
 * statistics are those of the whole tensor; the state keeps the layout above for the local
 * shape. */
typedef struct { int split, grows, gcols; } OptimSplit;

typedef enum { OPTIM_ADAFACTOR = 0, OPTIM_ADAMW = 1 } OptimKind;

typedef enum {
    LR_RSQRT = 0,   /* lr = multiplier / sqrt(max(g, warmup_steps))            (T5 "noam") */
    LR_COSINE = 1,  /* g < warmup: peak*(g+1)/warmup; then cosine from peak to min_lr at
                       total_steps; min_lr afterwards */
} LrScheduleKind;

typedef struct {
    LrScheduleKind kind;
    long warmup_steps;   /* rsqrt: 10000; cosine: linear warmup length (0 = none) */
    double multiplier;   /* rsqrt only: 1.0 */
    double peak_lr;      /* cosine only */
    double min_lr;       /* cosine only */
    long total_steps;    /* cosine only: step at which min_lr is reached (> warmup_steps) */
} LrSchedule;

typedef struct {
    OptimKind kind;
    LrSchedule lr;
    /* Adafactor (docs/t5-recipe.md section 5.1 values by default) */
    double decay_exponent;    /* beta2(t) = 1 - t^-decay_exponent, t = g+1; 0.8 */
    double eps1;              /* added to G^2; 1e-30 */
    double eps2;              /* floor of the parameter RMS in the relative step; 1e-3 */
    double clip_threshold;    /* update clipping: U /= max(1, RMS(U)/clip_threshold); 1.0 */
    int factored;             /* 1: factor 2-D tensors whose smaller dim >= min_dim_to_factor */
    int min_dim_to_factor;    /* 128 */
    int param_scale;          /* 1: step = lr * max(RMS(W), eps2) (multiply_by_parameter_scale) */
    /* AdamW */
    double beta1, beta2;      /* 0.9, 0.999 */
    double eps;               /* 1e-8 */
    double weight_decay;      /* decoupled, applied only to 2-D tensors (not norms); 0.0 */
} OptimConfig;

/* Adafactor on a tensor-parallel piece (tp_adafactor_step with its group). Returns the lr. */
typedef double (*OptimSplitStep)(void *ctx, const OptimConfig *cfg, int split, int grows, int gcols,
                                 float *W, const float *G, float *state, long g);

typedef struct {
    OptimConfig cfg;
    OptimSplitStep split_step;   /* set by the caller when the table has split tensors */
    void *split_ctx;
    OptimSplit *splits;          /* per tensor, or NULL (no tensor parallelism) */
    int n_tensors;
    OptimTensor *tensors;     /* copy of the table given to optim_init */
    int *is_factored;         /* per tensor: 1 if Adafactor uses the factored R/C state */
    size_t *state_offset;     /* per tensor: first float of its state in state[] */
    size_t *state_numel_of;   /* per tensor: floats of state it owns */
    size_t state_numel;       /* total floats in state[] */
    float *state;             /* the contiguous optimizer state (layout above) */
    double *scratch;          /* per-tensor partial sums (private) */
    size_t scratch_len;
} Optim;

/* Fill *cfg with the defaults of kind: Adafactor with the T5-Efficient values of docs/t5-recipe.md section 5.1
 * and the rsqrt schedule (warmup 10000, multiplier 1); AdamW with betas (0.9, 0.999), eps 1e-8,
 * weight decay 0, and a cosine schedule (peak 1e-3, min 1e-4, warmup 1000, total 524288). */
void optim_config_default(OptimConfig *cfg, OptimKind kind);

/* Check cfg; 0 if usable, else -1 with the offending field named in err. */
int optim_config_validate(const OptimConfig *cfg, char *err, size_t errlen);

/* Learning rate at global step g (the pre-increment step, as MTF passes it). */
double lr_schedule_at(const LrSchedule *s, long g);

/* "adafactor"/"adamw" and "rsqrt"/"cosine" to enums (case-sensitive). 0 on success, -1 if unknown. */
int optim_kind_from_string(const char *s, OptimKind *out);
int lr_schedule_kind_from_string(const char *s, LrScheduleKind *out);

/* Build an optimizer over tensors (table copied, state zeroed); -1 + err on a bad config/table. */
int optim_init(Optim *opt, const OptimConfig *cfg, const OptimTensor *tensors, int n_tensors,
               size_t buffer_numel, char *err, size_t errlen);
/* The same with each tensor's split (splits[n_tensors], or NULL = optim_init). */
int optim_init_split(Optim *opt, const OptimConfig *cfg, const OptimTensor *tensors, const OptimSplit *splits,
                     int n_tensors, size_t buffer_numel, char *err, size_t errlen);
void optim_free(Optim *opt);   /* safe on a zeroed or already freed Optim */

/* One update at global step g (0-based, pre-increment) of all tensors / of tensors
 * [t_begin, t_end): params and grads are the full buffers, indexed by each tensor's offset.
 * Returns the learning rate used. */
double optim_step(Optim *opt, float *params, const float *grads, long g);
double optim_step_tensors(Optim *opt, float *params, const float *grads, long g, int t_begin,
                          int t_end);

/* The sums Adafactor's statistics use, in its fixed order (four double accumulators): sum over
 * j < m of x[j]^2, and of (g[j] * cf[j])^2. Exposed so a split update (parallel/tp.c) sums the
 * same way and stays bit-identical. */
double optim_sum_squares(const float *x, int m);
double optim_sum_squares_scaled(const float *g, const double *cf, int m);

#endif
