/*
 * pretrain/optim.c: Adafactor (docs/t5-recipe.md section 5.2/5.3) and AdamW over a tensor table, and the LR
 * schedules. Layout of the state buffer: see optim.h.
 *
 * Numerics: weights, gradients and state are float32 (as in MTF); every per-element expression
 * is evaluated in double and every mean / RMS is accumulated in double. Reductions are split into
 * fixed pieces (one per row, per column block or per CHUNK_ elements) whose partial sums are then
 * added serially, so results do not depend on the number of OpenMP threads.
 */
#include "pretrain/optim.h"

#include <math.h>      /* sqrt, pow, cos */
#include <stdarg.h>    /* error formatting */
#include <stdio.h>     /* vsnprintf */
#include <stdlib.h>    /* qsort, free */
#include <string.h>

#include "common/util.h"   /* xmalloc, xcalloc */

#define CHUNK_ 4096         /* elements per partial sum for unfactored / elementwise passes */
#define COL_BLOCK_ 64       /* columns per task when summing over rows */
#define PAR_MIN_ 32768      /* below this many elements a tensor is updated by one thread */
#define PI_ 3.14159265358979323846

/* ------------------------------------------------------------------------------------------ */
/* Configuration and schedules. */

/* Fills *cfg with the defaults of kind (values listed in optim.h). Cannot fail. */
void optim_config_default(OptimConfig *cfg, OptimKind kind) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->kind = kind;
    cfg->decay_exponent = 0.8;
    cfg->eps1 = 1e-30;
    cfg->eps2 = 1e-3;
    cfg->clip_threshold = 1.0;
    cfg->factored = 1;
    cfg->min_dim_to_factor = 128;
    cfg->param_scale = 1;
    cfg->beta1 = 0.9;
    cfg->beta2 = 0.999;
    cfg->eps = 1e-8;
    cfg->weight_decay = 0.0;
    cfg->lr.multiplier = 1.0;
    if (kind == OPTIM_ADAFACTOR) {
        cfg->lr.kind = LR_RSQRT;
        cfg->lr.warmup_steps = 10000;
    } else {
        cfg->lr.kind = LR_COSINE;
        cfg->lr.warmup_steps = 1000;
        cfg->lr.peak_lr = 1e-3;
        cfg->lr.min_lr = 1e-4;
        cfg->lr.total_steps = 524288;
    }
}

/* Returns 0 if every field the chosen optimizer and schedule use is in range, else -1 with the
 * field, its value and the allowed range in err. Fields of the other optimizer are not checked. */
int optim_config_validate(const OptimConfig *c, char *err, size_t errlen) {
#define BAD_(...) do { set_error(err, errlen, __VA_ARGS__); return -1; } while (0)
#define OK_(x) (isfinite(x))
    if (!c) BAD_("optimizer config is NULL");
    if (c->kind == OPTIM_ADAFACTOR) {
        if (!OK_(c->decay_exponent) || c->decay_exponent <= 0.0 || c->decay_exponent > 1.0)
            BAD_("adafactor decay_exponent %g must be in (0, 1] (T5: 0.8)", c->decay_exponent);
        if (!OK_(c->eps1) || c->eps1 < 1e-37 || c->eps1 > 1e-3)
            BAD_("adafactor eps1 %g must be in [1e-37, 1e-3] (T5: 1e-30; it keeps zero gradients "
                 "from dividing 0 by 0)", c->eps1);
        if (!OK_(c->eps2) || c->eps2 < 0.0 || c->eps2 > 1.0)
            BAD_("adafactor eps2 %g must be in [0, 1] (T5: 1e-3)", c->eps2);
        if (!OK_(c->clip_threshold) || c->clip_threshold <= 0.0)
            BAD_("adafactor clip_threshold %g must be > 0 (T5: 1.0)", c->clip_threshold);
        if (c->factored != 0 && c->factored != 1)
            BAD_("adafactor factored must be 0 or 1, not %d", c->factored);
        if (c->min_dim_to_factor < 1)
            BAD_("adafactor min_dim_to_factor %d must be >= 1 (T5: 128)", c->min_dim_to_factor);
        if (c->param_scale != 0 && c->param_scale != 1)
            BAD_("adafactor param_scale must be 0 or 1, not %d", c->param_scale);
    } else if (c->kind == OPTIM_ADAMW) {
        if (!OK_(c->beta1) || c->beta1 < 0.0 || c->beta1 >= 1.0)
            BAD_("adamw beta1 %g must be in [0, 1)", c->beta1);
        if (!OK_(c->beta2) || c->beta2 < 0.0 || c->beta2 >= 1.0)
            BAD_("adamw beta2 %g must be in [0, 1)", c->beta2);
        if (!OK_(c->eps) || c->eps <= 0.0) BAD_("adamw eps %g must be > 0", c->eps);
        if (!OK_(c->weight_decay) || c->weight_decay < 0.0 || c->weight_decay >= 1.0)
            BAD_("adamw weight_decay %g must be in [0, 1)", c->weight_decay);
    } else {
        BAD_("unknown optimizer kind %d (0 = adafactor, 1 = adamw)", (int)c->kind);
    }
    const LrSchedule *s = &c->lr;
    if (s->kind == LR_RSQRT) {
        if (s->warmup_steps < 1)
            BAD_("rsqrt schedule warmup_steps %ld must be >= 1 (lr = m/sqrt(max(step, warmup)); "
                 "T5: 10000)", s->warmup_steps);
        if (!OK_(s->multiplier) || s->multiplier <= 0.0)
            BAD_("rsqrt schedule multiplier %g must be > 0 (T5: 1.0)", s->multiplier);
    } else if (s->kind == LR_COSINE) {
        if (!OK_(s->peak_lr) || s->peak_lr <= 0.0)
            BAD_("cosine schedule peak_lr %g must be > 0", s->peak_lr);
        if (!OK_(s->min_lr) || s->min_lr < 0.0 || s->min_lr > s->peak_lr)
            BAD_("cosine schedule min_lr %g must be in [0, peak_lr = %g]", s->min_lr, s->peak_lr);
        if (s->warmup_steps < 0)
            BAD_("cosine schedule warmup_steps %ld must be >= 0", s->warmup_steps);
        if (s->total_steps <= s->warmup_steps)
            BAD_("cosine schedule total_steps %ld must exceed warmup_steps %ld", s->total_steps,
                 s->warmup_steps);
    } else {
        BAD_("unknown LR schedule kind %d (0 = rsqrt, 1 = cosine)", (int)s->kind);
    }
#undef OK_
#undef BAD_
    if (err && errlen) err[0] = '\0';
    return 0;
}

/* Learning rate for global step g >= 0 (a negative g is treated as 0). Cannot fail for a
 * validated schedule. rsqrt: multiplier / sqrt(max(g, warmup)), so the T5 default gives 0.01 up
 * to g = 10000, then 1/sqrt(g). cosine: peak*(g+1)/warmup during warmup (the first update is
 * not wasted at lr 0), then min + (peak-min)*(1+cos(pi*r))/2 with r = (g-warmup)/(total-warmup),
 * and min_lr from g = total on. */
double lr_schedule_at(const LrSchedule *s, long g) {
    if (g < 0) g = 0;
    if (s->kind == LR_RSQRT) {
        long m = g > s->warmup_steps ? g : s->warmup_steps;
        return s->multiplier / sqrt((double)m);
    }
    if (g < s->warmup_steps) return s->peak_lr * (double)(g + 1) / (double)s->warmup_steps;
    if (g >= s->total_steps) return s->min_lr;
    double r = (double)(g - s->warmup_steps) / (double)(s->total_steps - s->warmup_steps);
    return s->min_lr + (s->peak_lr - s->min_lr) * 0.5 * (1.0 + cos(PI_ * r));
}

int optim_kind_from_string(const char *s, OptimKind *out) {
    if (s && strcmp(s, "adafactor") == 0) { *out = OPTIM_ADAFACTOR; return 0; }
    if (s && strcmp(s, "adamw") == 0) { *out = OPTIM_ADAMW; return 0; }
    return -1;
}

int lr_schedule_kind_from_string(const char *s, LrScheduleKind *out) {
    if (s && strcmp(s, "rsqrt") == 0) { *out = LR_RSQRT; return 0; }
    if (s && strcmp(s, "cosine") == 0) { *out = LR_COSINE; return 0; }
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Construction. */

typedef struct { size_t offset; int index; } Span_;   /* for the overlap check */
static int cmp_span_(const void *a, const void *b) {
    size_t x = ((const Span_ *)a)->offset, y = ((const Span_ *)b)->offset;
    return x < y ? -1 : x > y;
}

static size_t chunks_(size_t n) { return (n + CHUNK_ - 1) / CHUNK_; }

/*
 * Build an optimizer for the n_tensors tensors of the table (copied; the caller keeps its own).
 * buffer_numel is the length of the parameter/gradient buffers the tensors live in. Each tensor
 * must have numel > 0, rows*cols == numel when cols > 0, lie inside the buffer, and not overlap
 * another. The state buffer (layout in optim.h) is allocated and zeroed. n_tensors may be 0 (an
 * optimizer with nothing to update, e.g. an idle ZeRO rank).
 * Returns 0 on success; on a bad config or table returns -1, writes the reason to err and leaves
 * *opt zeroed (optim_free on it is a no-op). Out of memory is fatal.
 */
int optim_init(Optim *opt, const OptimConfig *cfg, const OptimTensor *tensors, int n_tensors,
               size_t buffer_numel, char *err, size_t errlen) {
    return optim_init_split(opt, cfg, tensors, NULL, n_tensors, buffer_numel, err, errlen);
}

int optim_init_split(Optim *opt, const OptimConfig *cfg, const OptimTensor *tensors, const OptimSplit *splits,
                     int n_tensors, size_t buffer_numel, char *err, size_t errlen) {
    memset(opt, 0, sizeof(*opt));
    if (optim_config_validate(cfg, err, errlen) != 0) return -1;
    if (n_tensors < 0 || (n_tensors > 0 && !tensors)) {
        set_error(err, errlen, "optimizer: bad tensor table (n_tensors = %d)", n_tensors);
        return -1;
    }
    for (int i = 0; i < n_tensors; i++) {
        const OptimTensor *t = &tensors[i];
        if (t->numel == 0) {
            set_error(err, errlen, "optimizer: tensor %d has no elements", i);
            return -1;
        }
        if (t->cols < 0 || (t->cols > 0 && (t->rows <= 0 ||
                                            (size_t)t->rows * (size_t)t->cols != t->numel))) {
            set_error(err, errlen, "optimizer: tensor %d has shape [%d, %d] but numel %zu "
                     "(use cols = 0 for a 1-D tensor)", i, t->rows, t->cols, t->numel);
            return -1;
        }
        if (t->offset > buffer_numel || t->numel > buffer_numel - t->offset) {
            set_error(err, errlen, "optimizer: tensor %d [%zu, %zu) lies outside the buffer of %zu "
                     "elements", i, t->offset, t->offset + t->numel, buffer_numel);
            return -1;
        }
    }
    if (n_tensors > 1) {
        Span_ *sp = xmalloc(sizeof(Span_) * (size_t)n_tensors);
        for (int i = 0; i < n_tensors; i++) sp[i] = (Span_){tensors[i].offset, i};
        qsort(sp, (size_t)n_tensors, sizeof(Span_), cmp_span_);
        for (int k = 1; k < n_tensors; k++) {
            const OptimTensor *a = &tensors[sp[k - 1].index], *b = &tensors[sp[k].index];
            if (a->offset + a->numel > b->offset) {
                set_error(err, errlen, "optimizer: tensors %d and %d overlap in the buffer "
                         "([%zu, %zu) and [%zu, %zu))", sp[k - 1].index, sp[k].index, a->offset,
                         a->offset + a->numel, b->offset, b->offset + b->numel);
                free(sp);
                return -1;
            }
        }
        free(sp);
    }

    opt->cfg = *cfg;
    opt->n_tensors = n_tensors;
    size_t nt = n_tensors > 0 ? (size_t)n_tensors : 1;
    opt->tensors = xmalloc(sizeof(OptimTensor) * nt);
    if (n_tensors > 0) memcpy(opt->tensors, tensors, sizeof(OptimTensor) * (size_t)n_tensors);
    if (splits) {
        opt->splits = xmalloc(sizeof(OptimSplit) * nt);
        if (n_tensors > 0) memcpy(opt->splits, splits, sizeof(OptimSplit) * (size_t)n_tensors);
    }
    opt->is_factored = xcalloc(nt, sizeof(int));
    opt->state_offset = xcalloc(nt, sizeof(size_t));
    opt->state_numel_of = xcalloc(nt, sizeof(size_t));
    size_t total = 0, scratch = 1;
    for (int i = 0; i < n_tensors; i++) {
        const OptimTensor *t = &tensors[i];
        size_t need, sc;
        if (cfg->kind == OPTIM_ADAMW) {
            need = 2 * t->numel;
            sc = 0;
        } else {
            const OptimSplit *sp = splits && splits[i].split ? &splits[i] : NULL;
            int r = sp ? sp->grows : t->rows, cc = sp ? sp->gcols : t->cols;   /* the global shape */
            int mn = cc > 0 ? (r < cc ? r : cc) : 0;
            opt->is_factored[i] = cfg->factored && cc > 0 && mn >= cfg->min_dim_to_factor;
            if (opt->is_factored[i]) {
                need = (size_t)t->rows + (size_t)t->cols;
                sc = (size_t)t->cols + 2 * (size_t)t->rows;
            } else {
                need = t->numel;
                sc = 2 * chunks_(t->numel);
            }
        }
        opt->state_offset[i] = total;
        opt->state_numel_of[i] = need;
        total += need;
        if (sc > scratch) scratch = sc;
    }
    opt->state_numel = total;
    opt->state = xcalloc(total > 0 ? total : 1, sizeof(float));
    opt->scratch_len = scratch;
    opt->scratch = xmalloc(sizeof(double) * scratch);
    return 0;
}

/* Frees everything optim_init allocated and zeroes *opt. Safe on a zeroed or freed Optim. */
void optim_free(Optim *opt) {
    if (!opt) return;
    free(opt->tensors);
    free(opt->splits);
    free(opt->is_factored);
    free(opt->state_offset);
    free(opt->state_numel_of);
    free(opt->state);
    free(opt->scratch);
    memset(opt, 0, sizeof(*opt));
}

/* ------------------------------------------------------------------------------------------ */
/* Adafactor (docs/t5-recipe.md section 5.2). */

/* Sum of x[j]^2 over j < m, in double with four independent accumulators (a fixed order, so
 * deterministic, but not one long dependency chain). */
double optim_sum_squares(const float *x, int m) {
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int j = 0;
    for (; j + 4 <= m; j += 4) {
        a0 += (double)x[j] * x[j];
        a1 += (double)x[j + 1] * x[j + 1];
        a2 += (double)x[j + 2] * x[j + 2];
        a3 += (double)x[j + 3] * x[j + 3];
    }
    for (; j < m; j++) a0 += (double)x[j] * x[j];
    return (a0 + a1) + (a2 + a3);
}

/* Sum over j < m of (g[j] * cf[j])^2, same scheme. */
double optim_sum_squares_scaled(const float *g, const double *cf, int m) {
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int j = 0;
    for (; j + 4 <= m; j += 4) {
        double u0 = g[j] * cf[j], u1 = g[j + 1] * cf[j + 1];
        double u2 = g[j + 2] * cf[j + 2], u3 = g[j + 3] * cf[j + 3];
        a0 += u0 * u0;
        a1 += u1 * u1;
        a2 += u2 * u2;
        a3 += u3 * u3;
    }
    for (; j < m; j++) { double u = g[j] * cf[j]; a0 += u * u; }
    return (a0 + a1) + (a2 + a3);
}

/* The factor k of W -= k * U, from su = sum(U^2) and sw = sum(W_old^2) over the N elements:
 * k = lr * max(RMS(W_old), eps2) / max(1, RMS(U) / clip_threshold) (docs/t5-recipe.md section 5.2). */
static double step_factor_(const OptimConfig *c, double lr, double su, double sw, size_t N) {
    double rms_u = sqrt(su / (double)N), rms_w = sqrt(sw / (double)N);
    double clip = rms_u / c->clip_threshold > 1.0 ? rms_u / c->clip_threshold : 1.0;
    double scale = c->param_scale ? lr * (rms_w > c->eps2 ? rms_w : c->eps2) : lr;
    return scale / clip;
}

/* Factored update of W [n, m] with gradient G [n, m]; R [n], C [m] are its state. */
static void adafactor_factored_(const OptimConfig *c, int n, int m, float *W, const float *G,
                                float *R, float *C, double lr, double beta2, double *scratch) {
    const double eps1 = c->eps1, b2 = beta2, a2 = 1.0 - beta2;
    const size_t N = (size_t)n * (size_t)m;
    double *cf = scratch;                 /* [m]: column sums, then 1/sqrt(C_j) */
    double *upart = scratch + m;          /* [n]: per-row sum of U^2 */
    double *wpart = scratch + m + n;      /* [n]: per-row sum of W^2 */
    const int par = N >= PAR_MIN_;

    /* R_i = b2 R_i + (1-b2) mean_j(G_ij^2 + eps1); mean(G^2 + eps1) is taken as
     * mean(G^2) + eps1 (equal in exact arithmetic) */
    #pragma omp parallel for schedule(static) if (par)
    for (int i = 0; i < n; i++)
        R[i] = (float)(b2 * R[i] + a2 * (optim_sum_squares(G + (size_t)i * m, m) / m + eps1));
    /* C_j = b2 C_j + (1-b2) mean_i(G_ij^2 + eps1), summed over rows in order per column block */
    int nblk = (m + COL_BLOCK_ - 1) / COL_BLOCK_;
    #pragma omp parallel for schedule(static) if (par)
    for (int b = 0; b < nblk; b++) {
        int j0 = b * COL_BLOCK_, j1 = j0 + COL_BLOCK_ < m ? j0 + COL_BLOCK_ : m;
        for (int j = j0; j < j1; j++) cf[j] = 0.0;
        for (int i = 0; i < n; i++) {
            const float *g = G + (size_t)i * m;
            for (int j = j0; j < j1; j++) cf[j] += (double)g[j] * g[j];
        }
        for (int j = j0; j < j1; j++) {
            C[j] = (float)(b2 * C[j] + a2 * (cf[j] / n + eps1));
            cf[j] = 1.0 / sqrt((double)C[j]);
        }
    }
    double rmean = 0.0;
    for (int i = 0; i < n; i++) rmean += R[i];
    rmean /= n;

    /* U_ij = G_ij / sqrt(R_i C_j / mean(R)); first pass: RMS(U) and RMS(W_old) */
    #pragma omp parallel for schedule(static) if (par)
    for (int i = 0; i < n; i++) {
        double rf2 = rmean / (double)R[i];   /* (1/sqrt(R_i/mean R))^2 */
        upart[i] = rf2 * optim_sum_squares_scaled(G + (size_t)i * m, cf, m);
        wpart[i] = optim_sum_squares(W + (size_t)i * m, m);
    }
    double su = 0.0, sw = 0.0;
    for (int i = 0; i < n; i++) { su += upart[i]; sw += wpart[i]; }
    double k = step_factor_(c, lr, su, sw, N);

    /* W -= scale * U / clip */
    #pragma omp parallel for schedule(static) if (par)
    for (int i = 0; i < n; i++) {
        const float *g = G + (size_t)i * m;
        float *w = W + (size_t)i * m;
        double rk = k / sqrt((double)R[i] / rmean);
        for (int j = 0; j < m; j++) w[j] = (float)((double)w[j] - rk * (double)g[j] * cf[j]);
    }
}

/* Unfactored update of W [N] with full second moment V [N]. */
static void adafactor_full_(const OptimConfig *c, size_t N, float *W, const float *G, float *V,
                            double lr, double beta2, double *scratch) {
    const double eps1 = c->eps1, b2 = beta2, a2 = 1.0 - beta2;
    const long nch = (long)chunks_(N);
    double *upart = scratch, *wpart = scratch + nch;
    const int par = N >= PAR_MIN_;

    #pragma omp parallel for schedule(static) if (par)
    for (long ch = 0; ch < nch; ch++) {
        size_t k0 = (size_t)ch * CHUNK_, k1 = k0 + CHUNK_ < N ? k0 + CHUNK_ : N;
        double su = 0.0, sw = 0.0;
        for (size_t k = k0; k < k1; k++) {
            double g = G[k];
            V[k] = (float)(b2 * V[k] + a2 * (g * g + eps1));
            double u = g / sqrt((double)V[k]);
            su += u * u;
            sw += (double)W[k] * W[k];
        }
        upart[ch] = su;
        wpart[ch] = sw;
    }
    double su = 0.0, sw = 0.0;
    for (long ch = 0; ch < nch; ch++) { su += upart[ch]; sw += wpart[ch]; }
    double k = step_factor_(c, lr, su, sw, N);

    #pragma omp parallel for schedule(static) if (par)
    for (long ch = 0; ch < nch; ch++) {
        size_t k0 = (size_t)ch * CHUNK_, k1 = k0 + CHUNK_ < N ? k0 + CHUNK_ : N;
        for (size_t q = k0; q < k1; q++)
            W[q] = (float)((double)W[q] - k * (double)G[q] / sqrt((double)V[q]));
    }
}

/* ------------------------------------------------------------------------------------------ */
/* AdamW. */

/* Decoupled weight decay (Loshchilov & Hutter): W -= lr*(mhat/(sqrt(vhat)+eps) + wd*W), with
 * bias corrections 1-beta^t, t = g+1. */
static void adamw_tensor_(const OptimConfig *c, size_t N, float *W, const float *G, float *M,
                          float *Vs, double lr, long g, double wd) {
    const double b1 = c->beta1, b2 = c->beta2, eps = c->eps;
    const double t = (double)g + 1.0;
    const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
    const long nch = (long)chunks_(N);
    #pragma omp parallel for schedule(static) if (N >= PAR_MIN_)
    for (long ch = 0; ch < nch; ch++) {
        size_t k0 = (size_t)ch * CHUNK_, k1 = k0 + CHUNK_ < N ? k0 + CHUNK_ : N;
        for (size_t k = k0; k < k1; k++) {
            double gk = G[k];
            double m = b1 * M[k] + (1.0 - b1) * gk;
            double v = b2 * Vs[k] + (1.0 - b2) * gk * gk;
            M[k] = (float)m;
            Vs[k] = (float)v;
            double upd = (m / bc1) / (sqrt(v / bc2) + eps) + wd * W[k];
            W[k] = (float)((double)W[k] - lr * upd);
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Steps. */

/*
 * Apply one update, for global step g (0-based number of updates already applied), to the
 * tensors [t_begin, t_end) of the table: params[offset .. offset+numel) of each tensor is
 * updated in place from grads at the same offsets, and the tensor's state advances. The
 * learning rate is lr_schedule_at(&cfg.lr, g); Adafactor uses beta2 = 1 - (g+1)^-decay_exponent.
 * Returns that learning rate. Cannot fail (the range is clamped to the table); grads are only
 * read. Non-finite gradients propagate into the weights: check them before calling.
 * Calling this for disjoint ranges with the same g is identical to one optim_step call.
 */
double optim_step_tensors(Optim *opt, float *params, const float *grads, long g, int t_begin,
                          int t_end) {
    const OptimConfig *c = &opt->cfg;
    double lr = lr_schedule_at(&c->lr, g);
    if (g < 0) g = 0;
    if (t_begin < 0) t_begin = 0;
    if (t_end > opt->n_tensors) t_end = opt->n_tensors;
    double beta2 = 1.0 - pow((double)g + 1.0, -c->decay_exponent);
    for (int i = t_begin; i < t_end; i++) {
        const OptimTensor *t = &opt->tensors[i];
        float *w = params + t->offset;
        const float *gr = grads + t->offset;
        float *st = opt->state + opt->state_offset[i];
        if (c->kind == OPTIM_ADAMW) {
            adamw_tensor_(c, t->numel, w, gr, st, st + t->numel, lr, g,
                          t->cols > 0 ? c->weight_decay : 0.0);
        } else if (opt->splits && opt->splits[i].split) {
            const OptimSplit *sp = &opt->splits[i];
            if (!opt->split_step)
                FATAL("set Optim.split_step for tensor-parallel pieces", "optimizer: tensor %d is split "
                      "but no split update is set", i);
            opt->split_step(opt->split_ctx, c, sp->split, sp->grows, sp->gcols, w, gr, st, g);
        } else if (opt->is_factored[i]) {
            adafactor_factored_(c, t->rows, t->cols, w, gr, st, st + t->rows, lr, beta2,
                                opt->scratch);
        } else {
            adafactor_full_(c, t->numel, w, gr, st, lr, beta2, opt->scratch);
        }
    }
    return lr;
}

/* optim_step_tensors over the whole table. Returns the learning rate used. */
double optim_step(Optim *opt, float *params, const float *grads, long g) {
    return optim_step_tensors(opt, params, grads, g, 0, opt->n_tensors);
}
