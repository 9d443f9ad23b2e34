/*
 * pretrain/trainer.c: see trainer.h.
 *
 * Read top to bottom: the Trainer, stop signals, option resolution (threads, schedule,
 * precision, memory plan), the batch source, one step, validation, checkpoints (pieces, save,
 * resume), the run loop.
 */
#include "trainer.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../ckpt/ckpt.h"
#include "../ckpt/hf.h"
#include "../common/blas_runtime.h"
#include "../common/resources.h"
#include "../common/util.h"
#include "../data/loader.h"
#include "../data/synthetic.h"
#include "../parallel/dp.h"
#include "../parallel/grid.h"
#include "../parallel/mpi_check.h"
#include "../parallel/pipeline.h"
#include "../parallel/tp.h"
#include "gemm.h"
#include "metrics.h"
#include "optim.h"
#include "t5_config.h"
#include "t5_model.h"

/* The figures of one step, for metrics and the progress line. */
typedef struct {
    double loss, ce_tok, z_tok, lr, grad_norm, param_rms, target_tokens, wait_s, step_s;
    double pp_wait_s, dp_wait_s, dp_reduce_s, tp_reduce_s;
    double pp_bytes, dp_bytes, tp_bytes;   /* sent per rank on each axis, averaged over ranks */
} StepResult;

struct Trainer {
    TrainOptions o;
    Grid grid;
    int is_root;                 /* world rank 0: prints, metrics, manifest */
    T5Config cfg;
    T5StageRange *ranges;        /* every pipeline stage's range; this rank runs ranges[pp_rank] */
    double *stage_cost;          /* each stage's share of the cost model */
    int recompute;
    int plan_pp, plan_dp;        /* the layout planned for (the real one, or --plan-world's) */
    T5Model model;               /* this stage's tensors (this tensor-parallel rank's pieces) */
    TpCtx tp;                    /* the tensor-parallel group (tp.size 0 until tp_init) */
    Pipeline *pipe;              /* pp > 1 */
    DpReducer *dp;
    int *owner;                  /* per tensor: the data-parallel rank that updates and saves it */
    int *opt_index;              /* per tensor: its index in the optimizer's table, -1 if not ours */
    OptimConfig oc;
    Optim opt;
    OptimTensor *otensors;
    int threads;
    int micro;                   /* rows per forward/backward */
    int local_rows;              /* rows of the global batch on this data-parallel rank */
    /* data */
    char **files, **val_files;
    int n_files, n_val_files;
    DataLoaderConfig dc, val_cfg;
    DataLoader *loader;          /* NULL when synthetic */
    int synthetic_pieces, sentinel_top;
    T5Batch local;
    long batches_before;         /* loader batches returned at the start of the current step */
    int step_failed;             /* the current step failed: checkpoints use the data position
                                    of its start (before its batch, if this rank got it) */
    int auto_threads, auto_micro, auto_recompute;   /* resolved from "auto" (resume re-plans them) */
    int background_saves;        /* MPI gives MPI_THREAD_MULTIPLE */
    /* progress */
    long step;                   /* optimizer steps done */
    long long tokens;            /* encoder positions seen */
    double last_loss;
    double peak_gflops;          /* sgemm peak of all ranks, measured at start */
    double step_flops;
    double t_start, elapsed_before;   /* elapsed_before: wall time of earlier runs (resume) */
    MetricsWriter *metrics;
    double last_save_time;
    long last_saved_step;
    double last_save_seconds, max_step_seconds;
    CkptAsync *pending_save;
    size_t estimate_bytes;
    StepResult last;             /* the last step trainer_step completed */
};

/* ---------------------------------------------------------------------------------------------
 * Stop signals: the first asks for a checkpoint and a stop at the next step boundary; a second
 * ends the process at once. */

static volatile sig_atomic_t stop_signal_ = 0;

static void on_stop_signal_(int sig) {
    if (stop_signal_) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    stop_signal_ = sig;
}

void trainer_install_signal_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal_;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    /* past a file-size limit (ulimit -f) a save fails with EFBIG and a message instead of a kill */
    signal(SIGXFSZ, SIG_IGN);
}

/* ---------------------------------------------------------------------------------------------
 * Small helpers. */

#define ROOT_PRINTF(t, ...) do { if ((t)->is_root) { printf(__VA_ARGS__); fflush(stdout); } } while (0)

/* A configuration error: printed once, every rank returns T5_EXIT_CONFIG. All ranks evaluate
 * the same options, so they reach it together; `local` errors (one rank's files) go through
 * agree_error_ instead. */
static int config_error_(const Trainer *t, const char *msg) {
    if (t->is_root) fprintf(stderr, "t5pretrain: error: %s\n", msg);
    return T5_EXIT_CONFIG;
}

/* Agree on a per-rank failure: returns 1 on every rank if any rank had failed (its message is
 * printed by that rank, prefixed by its rank). */
static int agree_error_(const Trainer *t, int failed, const char *msg) {
    if (failed) fprintf(stderr, "t5pretrain: error: rank %d: %s\n", t->grid.rank, msg);
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, t->grid.world));
    return failed;
}

static double wall_clock_(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Sum of squares of x[0..n), the same bits for any thread count: fixed pieces are summed in
 * parallel, then the piece sums in order. (An OpenMP reduction would not be reproducible.) */
static double sum_squares_(const float *x, size_t n) {
    enum { PIECE = 1 << 16 };
    size_t pieces = (n + PIECE - 1) / PIECE;
    double *part = xcalloc(pieces ? pieces : 1, sizeof(double));
#pragma omp parallel for schedule(static)
    for (size_t p = 0; p < pieces; p++) {
        size_t end = (p + 1) * PIECE < n ? (p + 1) * PIECE : n;
        double s = 0;
        for (size_t i = p * PIECE; i < end; i++) s += (double)x[i] * x[i];
        part[p] = s;
    }
    double total = 0;
    for (size_t p = 0; p < pieces; p++) total += part[p];
    free(part);
    return total;
}

static int all_finite_(const float *g, size_t n) {
    int ok = 1;
#pragma omp parallel for reduction(&&:ok) schedule(static)
    for (size_t i = 0; i < n; i++) ok = ok && isfinite(g[i]);
    return ok;
}

static void format_eta_(double seconds, char *buf, size_t n) {
    if (!isfinite(seconds) || seconds < 0) { snprintf(buf, n, "?"); return; }
    long s = (long)seconds;
    if (s >= 86400) snprintf(buf, n, "%ldd%02ldh", s / 86400, (s % 86400) / 3600);
    else snprintf(buf, n, "%02ld:%02ld:%02ld", s / 3600, (s % 3600) / 60, s % 60);
}

static int is_dir_(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ---------------------------------------------------------------------------------------------
 * Option resolution: every "auto" value becomes the value in force (recorded in config.txt
 * and checkpoints); an explicit value that cannot be honoured is refused, never replaced. */

static int resolve_threads_(Trainer *t, char *why, size_t whylen) {
    if (t->o.threads > 0) { snprintf(why, whylen, "--threads"); return t->o.threads; }
    const char *slurm = getenv("SLURM_CPUS_PER_TASK");
    const char *omp = getenv("OMP_NUM_THREADS");
    if (!(slurm && atoi(slurm) > 0) && omp && atoi(omp) > 0) {
        snprintf(why, whylen, "OMP_NUM_THREADS=%d", atoi(omp));
        return atoi(omp);
    }
    return resources_default_threads(t->grid.node_size, why, whylen);
}

/* Learning-rate schedule from the options; fills t->oc. */
static int resolve_schedule_(Trainer *t, char *err, size_t errlen) {
    TrainOptions *o = &t->o;
    OptimKind kind = OPTIM_ADAFACTOR;
    optim_kind_from_string(o->optimizer, &kind);
    optim_config_default(&t->oc, kind);
    LrSchedule *s = &t->oc.lr;
    if (!strcmp(o->lr_schedule, "auto")) s->kind = kind == OPTIM_ADAFACTOR ? LR_RSQRT : LR_COSINE;
    else lr_schedule_kind_from_string(o->lr_schedule, &s->kind);
    if (s->kind == LR_RSQRT) {
        s->multiplier = o->lr > 0 ? o->lr : 1.0;
        s->warmup_steps = o->warmup_steps >= 0 ? o->warmup_steps : 10000;
        if (o->min_lr >= 0 && options_given("min_lr")) {
            set_error(err, errlen, "--min-lr applies to the cosine schedule only (the rsqrt schedule has none)");
            return -1;
        }
    } else {
        s->peak_lr = o->lr > 0 ? o->lr : (kind == OPTIM_ADAFACTOR ? 0.01 : 1e-3);
        s->total_steps = o->steps;
        if (o->warmup_steps >= 0) {
            if (o->warmup_steps >= o->steps) {
                set_error(err, errlen, "cosine --warmup-steps %ld must be smaller than --steps %ld",
                          o->warmup_steps, o->steps);
                return -1;
            }
            s->warmup_steps = o->warmup_steps;
        } else {
            s->warmup_steps = o->steps > 10000 ? 1000 : o->steps / 10;
        }
        s->min_lr = o->min_lr >= 0 ? o->min_lr : s->peak_lr * 0.1;
    }
    t->oc.weight_decay = o->weight_decay;
    if (optim_config_validate(&t->oc, err, errlen)) return -1;
    /* the options now say what is in force */
    snprintf(o->lr_schedule, sizeof o->lr_schedule, "%s", s->kind == LR_RSQRT ? "rsqrt" : "cosine");
    o->lr = s->kind == LR_RSQRT ? s->multiplier : s->peak_lr;
    o->warmup_steps = s->warmup_steps;
    o->min_lr = s->kind == LR_RSQRT ? 0 : s->min_lr;
    return 0;
}

static int resolve_precision_(Trainer *t, char *msg, size_t msglen, char *err, size_t errlen) {
    GemmConfig gc = {GEMM_FP32, GEMM_BACKEND_OPENBLAS};
    char why[256] = "";
    if (!strcmp(t->o.precision, "auto")) {
        gemm_default_config(&gc, why, sizeof why);
    } else {
        gc.precision = !strcmp(t->o.precision, "bf16") ? GEMM_BF16 : GEMM_FP32;
        gc.backend = gc.precision == GEMM_BF16 ? GEMM_BACKEND_ONEDNN : GEMM_BACKEND_OPENBLAS;
        snprintf(why, sizeof why, "--precision %s", t->o.precision);
    }
    if (gemm_set_config(&gc, err, errlen)) return -1;
    snprintf(t->o.precision, sizeof t->o.precision, "%s", gc.precision == GEMM_BF16 ? "bf16" : "fp32");
    snprintf(msg, msglen, "%s (%s)", t->o.precision, why);
    return 0;
}

/* Memory one rank needs: its stage's parameters and gradients, its share of the optimizer state
 * (AdamW: two moments; Adafactor's factored state is ~1%; ZeRO-1 divides it by dp), the
 * activation sets its stage keeps in flight (1F1B: P - s of them), the backward scratch, and the
 * bf16 copies when products run in bf16. With tensor parallelism, parameters, state and the split
 * activations are this rank's pieces. */
static double stage_memory_bytes_(const Trainer *t, int stage, int micro, int recompute) {
    T5Config lc;   /* what one tensor-parallel rank computes */
    t5_config_tp_local(&t->cfg, t->o.tp, &lc);
    const T5Config *c = &lc;
    const T5StageRange *r = &t->ranges[stage];
    double params = (double)t5_stage_num_params_tp(&t->cfg, r, t->o.tp);
    double state = strcmp(t->o.optimizer, "adamw") == 0 ? 2 * params : 0.02 * params;
    if (t->o.zero) state /= t->plan_dp;
    GemmConfig gc;
    gemm_get_config(&gc);
    size_t M = (size_t)micro * t->o.dec_len, N = (size_t)micro * t->o.enc_len;
    size_t widest = (size_t)(c->d_ff > c->d_model ? c->d_ff : c->d_model) * (c->ffn == T5_FFN_GATED_GELU ? 2 : 1);
    double extra = (double)gemm_extra_bytes(gc.precision, (size_t)params, r->head ? M * (size_t)c->vocab_size : M * widest,
                                            N * widest, t->threads);
    int m = t->local_rows / micro, in_flight = t->plan_pp - stage;
    if (in_flight > m) in_flight = m;
    double acts = (double)in_flight * t5_acts_bytes(c, r, micro, t->o.enc_len, t->o.dec_len, recompute)
                + (double)t5_scratch_bytes(c, r, micro, t->o.enc_len, t->o.dec_len, recompute);
    double pipe = t->plan_pp > 1 ? (double)(in_flight + 3) * micro * (t->o.enc_len + t->o.dec_len) * c->d_model * 4.0 : 0;
    /* the data-parallel reducer stages about two buckets (dp_staging_bytes: 52-78 MB on small) */
    double staging = t->plan_dp > 1 ? 3.0 * DP_DEFAULT_BUCKET_BYTES : 0;
    return params * 8.0 + state * 4.0 + extra + acts + pipe + staging;
}

/* The largest need over the stages: every rank plans the same, so all agree. */
static double rank_memory_bytes_(const Trainer *t, int micro, int recompute) {
    double worst = 0;
    for (int s = 0; s < t->plan_pp; s++) {
        double v = stage_memory_bytes_(t, s, micro, recompute);
        if (v > worst) worst = v;
    }
    return worst;
}

/* The micro-batch and recomputation (--micro-batch 0, --recompute auto): the largest divisor of
 * the rank's rows whose memory fits in 85% of what the process may use (the job's cgroup or the
 * node, shared by the node's ranks), first without recomputation, then with it; with pipeline
 * stages, first among the choices that give at least 4 micro-batches per stage (a small
 * bubble). Every rank takes the smallest choice made anywhere; a configuration that cannot fit
 * stops before work. */
static int plan_memory_(Trainer *t, int ranks_on_node, double *avail_out, char *note, size_t notelen,
                        char *err, size_t errlen) {
    char why[256] = "";
    double avail = (double)resources_memory_available(why, sizeof why) / ranks_on_node;
    double budget = 0.85 * avail;
    int fixed_micro = t->o.micro_batch, P = t->plan_pp;
    int rec_opts[2] = {0, 1}, n_rec = 2;
    if (!strcmp(t->o.recompute, "on")) { rec_opts[0] = 1; n_rec = 1; }
    if (!strcmp(t->o.recompute, "off")) n_rec = 1;
    int micro = 0, rec = rec_opts[0];
    note[0] = 0;
    for (int pass = P > 1 && !fixed_micro ? 0 : 1; pass < 2 && !micro; pass++)
        for (int d = fixed_micro ? fixed_micro : t->local_rows; d >= 1 && !micro; d--) {
            if (t->local_rows % d) continue;
            if (pass == 0 && t->local_rows / d < 4 * P) continue;
            for (int k = 0; k < n_rec && !micro; k++)
                if (avail <= 0 || rank_memory_bytes_(t, d, rec_opts[k]) <= budget) { micro = d; rec = rec_opts[k]; }
            if (fixed_micro) break;
        }
    int fail = micro == 0;
    if (fail) { micro = fixed_micro ? fixed_micro : 1; rec = rec_opts[n_rec - 1]; }
    int agree[2] = {micro, -rec};   /* the smallest micro-batch, and recomputation if any rank needs it */
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, agree, 2, MPI_INT, MPI_MIN, t->grid.world));
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &fail, 1, MPI_INT, MPI_MAX, t->grid.world));
    micro = agree[0];
    rec = -agree[1];
    *avail_out = avail;
    double need = rank_memory_bytes_(t, micro, rec);
    if (fail && t->o.dry_run && t->o.plan_world > 0) {
        /* a plan for another cluster: report the most frugal choice, the scheduler decides */
        snprintf(note, notelen, "planning for %d ranks: %.1f GiB per rank needed (micro-batch %d%s) is more than "
                 "this machine has per rank (%.1f GiB); check it against the nodes of the cluster",
                 t->o.plan_world, need / 1073741824.0, micro, rec ? ", recomputing" : "", avail / 1073741824.0);
        fail = 0;
        t->micro = micro;
        t->recompute = rec;
        snprintf(t->o.recompute, sizeof t->o.recompute, "%s", rec ? "on" : "off");
        return 0;
    }
    if (fail) {
        set_error(err, errlen, "%s needs about %.1f GiB per rank (micro-batch %d%s) but only %.1f GiB are "
                  "available per rank (%s, %d rank(s) per node); use a smaller --micro-batch (gradients "
                  "accumulate up to --batch), --recompute on, --zero 1, more pipeline stages (--pp), fewer "
                  "ranks per node, or more nodes",
                  t->cfg.name, need / 1073741824.0, micro, rec ? ", recomputing" : "", avail / 1073741824.0, why,
                  ranks_on_node);
        return -1;
    }
    if (rec && !strcmp(t->o.recompute, "auto"))
        snprintf(note, notelen, "activation recomputation on: the activations would not fit otherwise");
    if (P > 1 && !fixed_micro && t->local_rows / micro < 4 * P)
        snprintf(note + strlen(note), notelen - strlen(note), "%sonly %d micro-batches per step for %d stages "
                 "(memory allows no more): the bubble is %.0f%%", note[0] ? "; " : "", t->local_rows / micro, P,
                 100.0 * (P - 1) / (t->local_rows / micro + P - 1));
    t->micro = micro;
    t->recompute = rec;
    snprintf(t->o.recompute, sizeof t->o.recompute, "%s", rec ? "on" : "off");
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The batch source: the C4 pipeline or synthetic span-corrupted batches. */

/* This rank's rows of the next batch. Returns 0, 1 when the data is exhausted, -1 on a data
 * error (the loader printed it). */
static int next_batch_(Trainer *t, double *wait_s) {
    *wait_s = 0.0;
    if (t->loader) return data_loader_next(t->loader, &t->local, wait_s);
    synthetic_batch(&t->local, t->synthetic_pieces, t->sentinel_top, (uint64_t)t->o.seed, t->step,
                    t->grid.dp_rank * t->local_rows);
    return 0;
}

static int open_data_(Trainer *t, char *err, size_t errlen) {
    TrainOptions *o = &t->o;
    if (o->synthetic) {
        t->synthetic_pieces = t->cfg.vocab_size - 128;   /* 32000 for T5's 32128 rows */
        t->sentinel_top = t->synthetic_pieces + 99;
        return 0;
    }
    if (data_expand_globs(o->data, &t->files, &t->n_files, err, errlen)) return -1;
    DataLoaderConfig *dc = &t->dc;
    data_loader_config_default(dc);
    dc->files = (const char **)t->files;
    dc->n_files = t->n_files;
    dc->spm_model = o->spm;
    dc->seed = (uint64_t)o->seed;
    dc->global_batch = o->batch;
    dc->n_streams = o->batch;
    dc->rank = t->grid.dp_rank;
    dc->world = t->grid.dp_size;
    dc->enc_len = o->enc_len;
    dc->dec_len = o->dec_len;
    dc->prefetch = o->prefetch;
    dc->max_epochs = o->max_epochs;
    if (o->val_data[0]) {
        if (data_expand_globs(o->val_data, &t->val_files, &t->n_val_files, err, errlen)) return -1;
        t->val_cfg = *dc;
        t->val_cfg.files = (const char **)t->val_files;
        t->val_cfg.n_files = t->n_val_files;
        t->val_cfg.prefetch = 0;
        t->val_cfg.max_epochs = 1;
        t->val_cfg.seed = (uint64_t)o->seed + 1;
        char msg[2048];
        int same = data_files_overlap((const char *const *)t->files, t->n_files, (const char *const *)t->val_files,
                                      t->n_val_files, msg, sizeof msg);
        if (same && t->is_root)
            fprintf(stderr, "t5pretrain: warning: %d validation file(s) are also training files (%s); the "
                    "validation loss then measures memorisation, not generalisation\n", same, msg);
    }
    return 0;
}

/* Open the loader of this rank's rows (after the model config is known). */
static int open_loader_(Trainer *t, char *err, size_t errlen) {
    if (t->o.synthetic) return 0;
    t->loader = data_loader_open(&t->dc, err, errlen);
    return t->loader ? 0 : -1;
}

/* ---------------------------------------------------------------------------------------------
 * One step. */


/* Tensors whose values this rank counts in sums over the whole model (gradient norm, parameter
 * RMS, checkpoint pieces): the ones it owns among data-parallel replicas, of a tensor several
 * pipeline stages hold only the first stage's copy, and of a tensor the tensor-parallel ranks
 * hold whole only tp rank 0's (split tensors: every rank's piece). */
static int counts_tensor_(const Trainer *t, int i) {
    if (t->owner[i] != t->grid.dp_rank) return 0;
    /* a tensor every tensor-parallel rank holds whole: the first one's copy */
    if (t->grid.tp_rank != 0 && t->model.tensors[i].split == T5_SPLIT_NONE) return 0;
    return !(t->pipe && pp_is_secondary_copy(t->pipe, i));
}

/* Sum of squares over the whole model (every rank gets it) and whether all are finite: one
 * collective of two doubles. */
static double global_sum_squares_(const Trainer *t, const float *buf, int *finite) {
    double v[2] = {0, 0};
    for (int i = 0; i < t->model.num_tensors; i++) {
        if (!counts_tensor_(t, i)) continue;
        const T5Tensor *tt = &t->model.tensors[i];
        v[0] += sum_squares_(buf + tt->offset, tt->numel);
        if (finite && !all_finite_(buf + tt->offset, tt->numel)) v[1] = 1;
    }
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_DOUBLE, MPI_SUM, t->grid.world));
    if (finite) *finite = v[1] == 0;
    return v[0];
}

/* Backward's "tensor i is final": start its data-parallel reduction, and keep MPI progressing. */
static void grad_ready_(void *ctx, int tensor) {
    Trainer *t = ctx;
    dp_tensor_ready(t->dp, tensor);
    dp_progress(t->dp);
}

int trainer_step(Trainer *t) {
    StepResult r;
    memset(&r, 0, sizeof r);
    mpi_check_set_step(t->step);
    double t0 = now_seconds();
    t->batches_before = t->loader ? data_loader_batches(t->loader) : 0;
    int rc = next_batch_(t, &r.wait_s);
    int status[2] = {rc, rc < 0};
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, status, 2, MPI_INT, MPI_MAX, t->grid.world));
    if (status[1]) return -1;
    if (status[0] == 1) return 1;

    const float loss_scale = 1.0f / (float)((double)t->o.batch * t->o.dec_len);
    const float zc = (float)t->o.z_loss;
    t5_model_zero_grad(&t->model);
    memset(&t->tp.stats, 0, sizeof t->tp.stats);
    dp_begin(t->dp, t->model.grads);
    T5LossStats sum = {0, 0, 0};
    if (t->pipe) {
        pp_train_step(t->pipe, &t->local, zc, loss_scale, &sum, grad_ready_, t);
        pp_reduce_shared(t->pipe, grad_ready_, t);
        PpStats ps;
        pp_last_stats(t->pipe, &ps);
        r.pp_wait_s = ps.wait_s;   /* the bubble as the stage that waited most saw it */
        r.pp_bytes = ps.bytes_sent;
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &r.pp_wait_s, 1, MPI_DOUBLE, MPI_MAX, t->grid.world));
    } else {
        for (int row = 0; row < t->local_rows; row += t->micro) {
            T5Batch mb = t5_batch_slice(&t->local, row, t->micro);
            T5LossStats st;
            t5_model_forward(&t->model, &mb, zc, &st);
            int last = row + t->micro >= t->local_rows;
            t5_model_backward_ready(&t->model, loss_scale, last ? grad_ready_ : NULL, t);
            sum.ce_sum += st.ce_sum;
            sum.z_sum += st.z_sum;
            sum.tokens += st.tokens;
        }
    }
    dp_finish(t->dp);
    DpStats ds;
    dp_last_stats(t->dp, &ds);
    r.dp_wait_s = ds.wait_s;
    r.dp_reduce_s = ds.reduce_s;
    r.dp_bytes = ds.bytes;
    if (t->grid.size > 1) {
        double vol[2] = {r.pp_bytes, r.dp_bytes};
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, vol, 2, MPI_DOUBLE, MPI_SUM, t->grid.world));
        r.pp_bytes = vol[0] / t->grid.size;
        r.dp_bytes = vol[1] / t->grid.size;
    }
    /* the loss sums are the same on every tensor-parallel rank: counted once */
    if (t->grid.tp_rank != 0) memset(&sum, 0, sizeof sum);
    double sums[3] = {sum.ce_sum, sum.z_sum, (double)sum.tokens};
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sums, 3, MPI_DOUBLE, MPI_SUM, t->grid.world));
    int finite = 1;
    double ss = global_sum_squares_(t, t->model.grads, &finite);
    if (!finite) return -2;
    r.grad_norm = sqrt(ss);
    r.lr = optim_step(&t->opt, t->model.params, t->model.grads, t->step);
    if (t->grid.tp_size > 1) {   /* the sums of forward, backward and the split Adafactor updates */
        double v[2] = {t->tp.stats.bytes, t->tp.stats.seconds};
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_DOUBLE, MPI_SUM, t->grid.world));
        r.tp_bytes = v[0] / t->grid.size;
        r.tp_reduce_s = v[1] / t->grid.size;
    }
    dp_allgather_params(t->dp, t->model.params);
    gemm_weights_updated();
    r.param_rms = sqrt(global_sum_squares_(t, t->model.params, NULL) / (double)t5_config_num_params(&t->cfg));
    r.step_s = now_seconds() - t0;
    r.loss = (sums[0] + t->o.z_loss * sums[1]) / ((double)t->o.batch * t->o.dec_len);
    r.ce_tok = sums[2] > 0 ? sums[0] / sums[2] : NAN;
    r.z_tok = sums[2] > 0 ? t->o.z_loss * sums[1] / sums[2] : NAN;
    r.target_tokens = sums[2];
    t->step++;
    t->tokens += (long long)t->o.batch * t->o.enc_len;
    t->last_loss = r.loss;
    if (r.step_s > t->max_step_seconds) t->max_step_seconds = r.step_s;
    t->last = r;
    return 0;
}

long trainer_current_step(const Trainer *t) { return t->step; }
double trainer_last_loss(const Trainer *t) { return t->last_loss; }

/* ---------------------------------------------------------------------------------------------
 * Validation: mean cross-entropy per target token (no z-loss) over eval_batches batches of the
 * validation files (seed + 1). Returns 0, or -1 when the validation data failed (every rank). */

static int evaluate_(Trainer *t, int batches, double *loss, double *tokens_out) {
    char err[1024] = "";
    DataLoader *val = data_loader_open(&t->val_cfg, err, sizeof err);
    int failed = val == NULL;
    double sums[2] = {0, 0};
    int got = 0;
    for (int b = 0; b < batches; b++) {
        double wait;
        int rc = failed ? -1 : data_loader_next(val, &t->local, &wait);
        if (rc < 0 && !failed) { failed = 1; snprintf(err, sizeof err, "%s", data_loader_error(val)); }
        /* every rank stops at the same batch: the forward below is collective (pipeline, tp) */
        int stop[2] = {rc < 0, rc == 1};
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, stop, 2, MPI_INT, MPI_MAX, t->grid.world));
        if (stop[0] || stop[1]) break;
        got++;
        if (t->pipe) {
            T5LossStats st;
            pp_forward(t->pipe, &t->local, &st);
            sums[0] += st.ce_sum;
            sums[1] += (double)st.tokens;
            continue;
        }
        for (int row = 0; row < t->local_rows; row += t->micro) {
            T5Batch mb = t5_batch_slice(&t->local, row, t->micro);
            T5LossStats st;
            t5_model_forward(&t->model, &mb, 0.0f, &st);
            sums[0] += st.ce_sum;
            sums[1] += (double)st.tokens;
        }
    }
    data_loader_close(val);
    int short_data = got < batches;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &short_data, 1, MPI_INT, MPI_MAX, t->grid.world));
    if (agree_error_(t, failed, err)) return -1;
    if (short_data) {
        if (t->is_root) fprintf(stderr, "t5pretrain: error: the validation data holds fewer than --eval-batches %d batches of %d rows\n", batches, t->o.batch);
        return -1;
    }
    if (t->grid.tp_rank != 0) sums[0] = sums[1] = 0;   /* the same on every tensor-parallel rank */
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sums, 2, MPI_DOUBLE, MPI_SUM, t->grid.world));
    *tokens_out = sums[1];
    *loss = sums[1] > 0 ? sums[0] / sums[1] : NAN;
    return 0;
}

/* Before any work: can the validation files fill --eval-batches batches? (A run must not train
 * for hours and then die at its first evaluation.) */
static int check_validation_(Trainer *t, char *err, size_t errlen) {
    if (!t->o.val_data[0] || t->o.eval_every <= 0) return 0;
    DataLoader *val = data_loader_open(&t->val_cfg, err, errlen);
    int failed = val == NULL, rc = 0;
    if (val) {
        rc = data_loader_skip(val, t->o.eval_batches);
        if (rc < 0) { failed = 1; set_error(err, errlen, "validation data: %s", data_loader_error(val)); }
        data_loader_close(val);
    }
    int short_data = rc == 1;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &short_data, 1, MPI_INT, MPI_MAX, t->grid.world));
    if (agree_error_(t, failed, err)) { set_error(err, errlen, "the validation data cannot be read (see above)"); return -1; }
    if (short_data) {
        set_error(err, errlen, "--val-data holds fewer than --eval-batches %d batches of --batch %d rows (one "
                  "epoch); give more validation files, or a smaller --eval-batches or --batch",
                  t->o.eval_batches, t->o.batch);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Checkpoints. Every data-parallel rank writes the tensors it owns (balanced by size, largest
 * first; with ZeRO-1 the owners of the optimizer state), so the writing is spread over ranks. */

/* The arrays of tensor i a checkpoint holds: its parameter, then its optimizer state (up to 2).
 * Each is named and shaped as the global array; `layout` says which part of it this
 * tensor-parallel rank holds:
 *   PART_WHOLE    all of it (no tensor parallelism, or a tensor every tp rank holds whole: then
 *                 counts_tensor_ lets only tp rank 0 write it)
 *   PART_ROWS     the contiguous block r of numel elements (rows r of a row split; for 1-D
 *                 state, e.g. Adafactor's C of a column split, the block r of the vector)
 *   PART_COLS     columns block r held as [rows, cols/T] (o, wo and their state): saved as the
 *                 global row block r (tp_cols_to_rows), so pieces stay contiguous ranges
 *   PART_REPLICA  all of it, on every tp rank of a split tensor (Adafactor's R of a column
 *                 split, C of a row split): tp rank 0 writes it */
typedef enum { PART_WHOLE, PART_ROWS, PART_COLS, PART_REPLICA } PartLayout;
typedef struct {
    char name[160];
    int ndim;
    int64_t shape[2];   /* global */
    size_t numel;       /* held here */
    float *data;
    PartLayout layout;
} TensorPart;

static int tensor_parts_(const Trainer *t, int i, TensorPart out[3]) {
    const T5Tensor *tt = &t->model.tensors[i];
    T5Split sp = tt->split;
    PartLayout as_param = sp == T5_SPLIT_ROWS ? PART_ROWS : sp == T5_SPLIT_COLS ? PART_COLS : PART_WHOLE;
    int n = 0;
    TensorPart *p = &out[n++];
    snprintf(p->name, sizeof p->name, "param/%s", tt->name);
    p->ndim = tt->ndim;
    p->shape[0] = tt->gshape[0];
    p->shape[1] = tt->gshape[1];
    p->numel = tt->numel;
    p->data = t->model.params + tt->offset;
    p->layout = as_param;
    int oi = t->opt_index[i];
    if (oi < 0) return n;
    float *st = t->opt.state + t->opt.state_offset[oi];
    if (t->oc.kind == OPTIM_ADAMW) {
        for (int k = 0; k < 2; k++) {
            TensorPart *q = &out[n++];
            *q = out[0];
            snprintf(q->name, sizeof q->name, "%s/%s", k ? "adamw_v" : "adamw_m", tt->name);
            q->data = st + k * tt->numel;
        }
        return n;
    }
    if (t->opt.is_factored[oi]) {   /* R [rows] then C [cols], local shape */
        TensorPart *r = &out[n++], *c = &out[n++];
        snprintf(r->name, sizeof r->name, "adafactor_r/%s", tt->name);
        r->ndim = 1; r->shape[0] = tt->gshape[0]; r->shape[1] = 0;
        r->numel = (size_t)tt->shape[0]; r->data = st;
        r->layout = sp == T5_SPLIT_ROWS ? PART_ROWS : sp == T5_SPLIT_COLS ? PART_REPLICA : PART_WHOLE;
        snprintf(c->name, sizeof c->name, "adafactor_c/%s", tt->name);
        c->ndim = 1; c->shape[0] = tt->gshape[1]; c->shape[1] = 0;
        c->numel = (size_t)tt->shape[1]; c->data = st + tt->shape[0];
        c->layout = sp == T5_SPLIT_COLS ? PART_ROWS : sp == T5_SPLIT_ROWS ? PART_REPLICA : PART_WHOLE;
        return n;
    }
    TensorPart *v = &out[n++];
    *v = out[0];
    snprintf(v->name, sizeof v->name, "adafactor_v/%s", tt->name);
    v->data = st;
    return n;
}

/* The checkpoint piece of part p on this rank (0 if this rank writes none of it). A column
 * block becomes a row block in a buffer *tmp the caller frees (collective over tp: every tp rank
 * calls this for the same parts in the same order). */
static int part_piece_(Trainer *t, const TensorPart *p, CkptPiece *out, float **tmp) {
    size_t off = 0;
    const float *data = p->data;
    *tmp = NULL;
    switch (p->layout) {
    case PART_WHOLE: break;
    case PART_REPLICA: if (t->grid.tp_rank != 0) return 0; break;
    case PART_ROWS: off = (size_t)t->grid.tp_rank * p->numel; break;
    case PART_COLS:
        *tmp = xmalloc(p->numel * sizeof(float));
        tp_cols_to_rows(&t->tp, *tmp, p->data, (int)p->shape[0], (int)p->shape[1]);
        data = *tmp;
        off = (size_t)t->grid.tp_rank * p->numel;
        break;
    }
    *out = (CkptPiece){p->name, CKPT_F32, p->ndim, {p->shape[0], p->shape[1]}, off, p->numel, data};
    return 1;
}

/* Read part p from ck into this rank's memory (local only: a column block is cut from the whole
 * tensor read into a temporary). */
static int read_part_(const Trainer *t, Ckpt *ck, const TensorPart *p, char *err, size_t errlen) {
    switch (p->layout) {
    case PART_WHOLE:
    case PART_REPLICA: return ckpt_read(ck, p->name, 0, p->numel, p->data, err, errlen);
    case PART_ROWS: return ckpt_read(ck, p->name, (size_t)t->grid.tp_rank * p->numel, p->numel, p->data, err, errlen);
    case PART_COLS: {
        size_t whole = (size_t)p->shape[0] * (size_t)p->shape[1];
        float *g = xmalloc(whole * sizeof(float));
        int rc = ckpt_read(ck, p->name, 0, whole, g, err, errlen);
        if (rc == 0) tp_shard_cols_local(p->data, g, (int)p->shape[0], (int)p->shape[1], t->grid.tp_size, t->grid.tp_rank);
        free(g);
        return rc;
    }
    }
    return -1;
}

/* The meta object of the manifest (rank 0). */
static char *meta_json_(const Trainer *t) {
    char *opts = options_to_json(&t->o), *cfg = hf_config_to_json(&t->cfg);
    json_error_t je;
    json_t *meta = json_object();
    json_object_set_new(meta, "variant", json_string(t->cfg.name));
    json_object_set_new(meta, "step", json_integer(t->step));
    json_object_set_new(meta, "tokens", json_integer(t->tokens));
    json_object_set_new(meta, "elapsed_s", json_real(t->elapsed_before + (now_seconds() - t->t_start)));
    json_object_set_new(meta, "created_unix", json_real(wall_clock_()));
    json_object_set_new(meta, "options", json_loads(opts, 0, &je));
    json_object_set_new(meta, "config", json_loads(cfg, 0, &je));
    json_object_set_new(meta, "rng", json_pack("{s:s, s:I}", "kind", "counter-based (seed, step)",
                                               "seed", (json_int_t)t->o.seed));
    json_object_set_new(meta, "layout", json_pack("{s:i, s:i, s:i, s:i, s:i, s:i}", "world", t->grid.size,
                                                  "pp", t->grid.pp_size, "dp", t->grid.dp_size,
                                                  "tp", t->grid.tp_size, "zero", t->o.zero,
                                                  "threads", t->threads));
    json_object_set_new(meta, "precision", json_string(t->o.precision));
    /* options that were resolved from "auto": a resume plans them afresh for its layout */
    json_t *autos = json_array();
    if (t->auto_threads) json_array_append_new(autos, json_string("threads"));
    if (t->auto_micro) json_array_append_new(autos, json_string("micro_batch"));
    if (t->auto_recompute) json_array_append_new(autos, json_string("recompute"));
    json_object_set_new(meta, "auto_options", autos);
    char *s = json_dumps(meta, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(meta);
    free(opts);
    free(cfg);
    return s;
}

/* Gather every data-parallel rank's cursor of the step boundary and merge them (rank 0). */
static char *merged_cursor_(Trainer *t, const char *mine) {
    if (!t->loader) return NULL;
    int len = (int)strlen(mine) + 1, n = t->grid.dp_size;
    int *lens = t->grid.dp_rank == 0 ? xcalloc((size_t)n, sizeof(int)) : NULL;
    MPI_CHECK(MPI_Gather(&len, 1, MPI_INT, lens, 1, MPI_INT, 0, t->grid.dp));
    int *displs = NULL;
    char *all = NULL;
    if (t->grid.dp_rank == 0) {
        displs = xcalloc((size_t)n, sizeof(int));
        long total = 0;
        for (int i = 0; i < n; i++) { displs[i] = (int)total; total += lens[i]; }
        all = xmalloc((size_t)total);
    }
    MPI_CHECK(MPI_Gatherv(mine, len, MPI_CHAR, all, lens, displs, MPI_CHAR, 0, t->grid.dp));
    char *merged = NULL;
    if (t->grid.dp_rank == 0) {
        const char **bufs = xcalloc((size_t)n, sizeof(char *));
        size_t *blens = xcalloc((size_t)n, sizeof(size_t));
        for (int i = 0; i < n; i++) { bufs[i] = all + displs[i]; blens[i] = (size_t)lens[i] - 1; }
        char err[1024];
        size_t mlen = 0;
        merged = data_cursor_merge(bufs, blens, n, &mlen, err, sizeof err);
        if (!merged) mpi_fatal("this is a bug in the trainer", "cannot merge the data cursors: %s", err);
        free(bufs);
        free(blens);
    }
    free(lens);
    free(displs);
    free(all);
    return merged;
}

int trainer_save(Trainer *t, int background) {
    double t0 = now_seconds();
    background = background && t->background_saves;
    char err[2048] = "";
    /* the lines the checkpoint covers are on disk before it is committed */
    if (t->is_root && metrics_sync(t->metrics) != 0)
        fprintf(stderr, "t5pretrain: warning: cannot fsync metrics.jsonl: %s\n", strerror(errno));
    if (t->pending_save) {   /* one background save at a time */
        if (ckpt_save_end(t->pending_save, err, sizeof err) != 0 && t->is_root)
            fprintf(stderr, "t5pretrain: error: the previous checkpoint was not saved: %s\n", err);
        t->pending_save = NULL;
    }
    /* after a failed step the state is that of the last completed step, data position included */
    int before = t->loader && t->step_failed && data_loader_batches(t->loader) > t->batches_before;
    char *cursor_now = !t->loader ? NULL : before ? data_loader_cursor_save_previous(t->loader, NULL)
                                                  : data_loader_cursor_save(t->loader, NULL);
    char *cursor = merged_cursor_(t, cursor_now);
    free(cursor_now);
    int cap = 3 * t->model.num_tensors + 1, n = 0;
    CkptPiece *pieces = xcalloc((size_t)cap, sizeof *pieces);
    TensorPart *parts = xcalloc((size_t)cap, sizeof *parts);
    float **tmps = xcalloc((size_t)cap, sizeof *tmps);
    int nparts = 0;
    for (int i = 0; i < t->model.num_tensors; i++) {
        if (!counts_tensor_(t, i)) continue;
        int k = tensor_parts_(t, i, parts + nparts);
        for (int j = 0; j < k; j++, nparts++)
            n += part_piece_(t, &parts[nparts], &pieces[n], &tmps[nparts]);
    }
    if (cursor && t->grid.rank == 0)
        pieces[n++] = (CkptPiece){"data_cursor", CKPT_U8, 1, {(int64_t)strlen(cursor), 0}, 0, strlen(cursor), cursor};
    char *meta = t->is_root ? meta_json_(t) : NULL;
    CkptSaveArgs args = {t->o.run_dir, t->step, meta, 0};
    int rc = 0;
    if (background) {
        t->pending_save = ckpt_save_begin(t->grid.world, &args, pieces, n, err, sizeof err);
        rc = t->pending_save ? 0 : -1;
    } else {
        rc = ckpt_save(t->grid.world, &args, pieces, n, err, sizeof err);
    }
    for (int i = 0; i < nparts; i++) free(tmps[i]);
    free(tmps);
    free(parts);
    free(pieces);
    free(meta);
    free(cursor);
    t->last_save_seconds = now_seconds() - t0;
    if (rc != 0) {
        if (t->is_root) fprintf(stderr, "t5pretrain: error: checkpoint of step %ld not saved: %s\n", t->step, err);
        return -1;
    }
    t->last_save_time = now_seconds();
    t->last_saved_step = t->step;
    if (!background && (t->o.keep_last > 0 || t->o.keep_every > 0) && t->is_root) {
        if (ckpt_retain(t->o.run_dir, t->o.keep_last, t->o.keep_every, err, sizeof err) < 0)
            fprintf(stderr, "t5pretrain: warning: retention: %s\n", err);
    }
    return 0;
}

/* Finish a background save (collective) and apply retention. */
static int finish_background_save_(Trainer *t) {
    if (!t->pending_save) return 0;
    char err[2048] = "";
    int rc = ckpt_save_end(t->pending_save, err, sizeof err);
    t->pending_save = NULL;
    if (rc != 0) {
        if (t->is_root) fprintf(stderr, "t5pretrain: error: checkpoint of step %ld not saved: %s\n", t->last_saved_step, err);
        return -1;
    }
    if ((t->o.keep_last > 0 || t->o.keep_every > 0) && t->is_root &&
        ckpt_retain(t->o.run_dir, t->o.keep_last, t->o.keep_every, err, sizeof err) < 0)
        fprintf(stderr, "t5pretrain: warning: retention: %s\n", err);
    return 0;
}

/* Open the newest checkpoint of RUN_DIR that verifies (ckpt_find_resume); loudly say when it is
 * not the one `latest` names. */
static Ckpt *open_resume_checkpoint_(const char *run_dir, int verbose, char *err, size_t errlen) {
    char dir[1400], note[2048] = "";
    if (ckpt_find_resume(run_dir, 1, dir, sizeof dir, note, sizeof note, err, errlen) != 0) {
        int n = 0;
        struct stat st;
        char mpath[1200];
        snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", run_dir);
        free(ckpt_list_steps(run_dir, &n));
        if (n == 0 && stat(mpath, &st) == 0) {   /* stopped before its first commit */
            size_t k = strlen(err);
            if (k + 1 < errlen)
                snprintf(err + k, errlen - k, ". The run stopped before its first checkpoint: there is nothing to "
                         "resume; delete %s (or choose a new --run-dir) and start without --resume", run_dir);
        }
        return NULL;
    }
    if (note[0] && verbose) fprintf(stderr, "t5pretrain: WARNING: %s\n", note);
    return ckpt_open(dir, err, errlen);
}

/* Read the options saved in a checkpoint (for --resume's base). malloc'ed JSON text or NULL. */
static char *checkpoint_options_(const Ckpt *ck) {
    json_error_t je;
    json_t *meta = json_loads(ckpt_meta_json(ck), 0, &je);
    json_t *opts = meta ? json_object_get(meta, "options") : NULL;
    char *s = opts ? json_dumps(opts, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(meta);
    return s;
}

/* Restore parameters, optimizer state, step, tokens and data position from ck. */
static int restore_(Trainer *t, Ckpt *ck, char *err, size_t errlen) {
    json_error_t je;
    json_t *meta = json_loads(ckpt_meta_json(ck), 0, &je);
    if (!meta) { set_error(err, errlen, "checkpoint meta is not JSON"); return -1; }
    t->step = ckpt_step(ck);
    t->tokens = (long long)json_integer_value(json_object_get(meta, "tokens"));
    t->elapsed_before = json_real_value(json_object_get(meta, "elapsed_s"));
    json_decref(meta);
    for (int i = 0; i < t->model.num_tensors; i++) {
        TensorPart parts[3];
        int k = tensor_parts_(t, i, parts);
        for (int j = 0; j < k; j++)
            if (read_part_(t, ck, &parts[j], err, errlen)) return -1;
    }
    if (t->loader) {
        CkptDtype dt;
        int nd;
        int64_t shape[2];
        if (ckpt_tensor_info(ck, "data_cursor", &dt, &nd, shape) != 0) {
            set_error(err, errlen, "the checkpoint has no data cursor (was it saved from a --synthetic run?)");
            return -1;
        }
        char *cur = xcalloc((size_t)shape[0] + 1, 1);
        int rc = ckpt_read(ck, "data_cursor", 0, (size_t)shape[0], cur, err, errlen);
        if (rc == 0) rc = data_loader_cursor_restore(t->loader, cur, (size_t)shape[0], err, errlen);
        free(cur);
        if (rc) return -1;
    }
    gemm_weights_updated();
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Opening a run. */

static int check_run_dir_(const Trainer *t, char *err, size_t errlen) {
    const char *dir = t->o.run_dir;
    struct stat st;
    if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode)) {
        set_error(err, errlen, "--run-dir %s exists and is not a directory; choose another --run-dir", dir);
        return -1;
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/ckpt", dir);
    int has_ckpt = is_dir_(path);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    int has_metrics = stat(path, &st) == 0 && st.st_size > 0;
    snprintf(path, sizeof path, "%s/final", dir);
    int has_final = is_dir_(path);
    int n_committed = 0;
    if (!t->o.resume && (has_ckpt || has_metrics) && !has_final) free(ckpt_list_steps(dir, &n_committed));
    if (!t->o.resume && (has_ckpt || has_metrics) && !has_final && n_committed == 0) {
        /* --resume would refuse it too: say what can be done instead of pointing at each other */
        set_error(err, errlen, "--run-dir %s holds a run that stopped before its first checkpoint (%s, no "
                  "committed ckpt/step_N): there is nothing to resume; delete %s or choose a new --run-dir",
                  dir, has_metrics ? "metrics.jsonl" : "ckpt/", dir);
        return -1;
    }
    if (!t->o.resume && (has_ckpt || has_metrics || has_final)) {
        set_error(err, errlen, "--run-dir %s already holds a run (%s); continue it with --resume, or choose "
                  "a new --run-dir", dir, has_ckpt ? "ckpt/" : has_metrics ? "metrics.jsonl" : "final/");
        return -1;
    }
    if (t->o.resume && !has_ckpt) {
        set_error(err, errlen, "--resume: %s has no ckpt/ directory; start without --resume", dir);
        return -1;
    }
    return 0;
}

/* A projection by the cost model of step time and bubble on larger clusters, to choose --pp:
 * the step's FLOPs spread over all ranks at an assumed sustained rate, stretched by the 1F1B
 * bubble (P-1)/(m+P-1), plus the data-parallel gradient all-reduce of one stage at an assumed
 * network bandwidth (not overlapped, so an upper bound), and with --tp T the tensor-parallel sums
 * (tp_comm_bytes_per_microbatch, ring all-reduce) at the same bandwidth. */
static void print_projection_(const Trainer *t, int ranks_per_node) {
    const double rate = 100e9 * t->threads;     /* FLOP/s per rank: ~100 GFLOP/s per core, fp32 */
    const double net = 10e9;                     /* bytes/s per rank for the all-reduce */
    const T5Config *c = &t->cfg;
    double flops = t5_model_flops_per_step(c, t->o.batch, t->o.enc_len, t->o.dec_len);
    static const int nodes_list[3] = {1, 8, 32};
    printf("t5pretrain: projection (cost model; assumes %.0f GFLOP/s per rank sustained and %.0f GB/s per rank "
           "for the gradient all-reduce, micro-batch 1):\n", rate / 1e9, net / 1e9);
    const int T = t->o.tp;
    printf("    nodes  ranks  pp   dp   tp  micro-batches  bubble   step_s  (compute + all-reduce + tp sums)  GiB/rank\n");
    for (int k = 0; k < 3; k++) {
        int world = nodes_list[k] * ranks_per_node;
        for (int P = 1; P <= 64 && P <= world; P *= 2) {
            if (world % (P * T) || P > c->n_enc_layers + c->n_dec_layers) continue;
            int dp = world / (P * T);
            if (t->o.batch % dp) continue;
            int m = t->o.batch / dp;
            T5StageRange *r = xcalloc((size_t)P, sizeof *r);
            double *cost = xcalloc((size_t)P, sizeof(double)), worst = 0;
            char e[256];
            if (pp_split(c, P, "auto", t->o.enc_len, t->o.dec_len, r, cost, e, sizeof e) == 0)
                for (int s = 0; s < P; s++) if (cost[s] > worst) worst = cost[s];
            double bubble = (double)(P - 1) / (m + P - 1);
            /* the slowest stage sets the pace: its share of the step's FLOPs over its dp ranks */
            double compute = flops * worst / ((double)dp * T * rate) * (m + P - 1) / m;
            double params = (double)tp_params_per_rank(c, T) * worst;
            double comm = dp > 1 ? 2.0 * params * 4.0 * (dp - 1) / dp / net : 0;
            double tpc = T > 1 ? tp_comm_bytes_per_microbatch(c, 1, t->o.enc_len, t->o.dec_len, T) * m * worst *
                                 2.0 * (T - 1) / T / net : 0;
            Trainer tmp = *t;   /* the memory plan of this layout, micro-batch 1, no recomputation */
            tmp.ranges = r;
            tmp.plan_pp = P;
            tmp.plan_dp = dp;
            tmp.local_rows = m;
            double mem = rank_memory_bytes_(&tmp, 1, 0);
            printf("    %5d  %5d  %2d  %3d  %3d  %13d  %5.1f%%  %7.2f  (%.2f + %.2f + %.2f)  %8.2f\n", nodes_list[k], world,
                   P, dp, T, m, 100 * bubble, compute + comm + tpc, compute, comm, tpc, mem / 1073741824.0);
            free(r);
            free(cost);
        }
    }
}

static void print_plan_(const Trainer *t, int world, int ranks_per_node, const char *threads_why,
                        const char *precision_msg, double avail) {
    const T5Config *c = &t->cfg;
    size_t params = t5_config_num_params(c);
    double mem = rank_memory_bytes_(t, t->micro, t->recompute);
    printf("t5pretrain: %s | el %d dl %d d_model %d d_ff %d heads %d d_kv %d vocab %d | %zu params (%.2fM)\n",
           c->name, c->n_enc_layers, c->n_dec_layers, c->d_model, c->d_ff, c->n_heads, c->d_kv,
           c->vocab_size, params, params / 1e6);
    printf("t5pretrain: %d rank(s) = pp %d x dp %d x tp %d, %d thread(s) per rank (%s); global batch %d = "
           "%d dp x %d micro-batch(es) x %d; lengths %d/%d; %s data\n",
           world, t->o.pp, world / (t->o.pp * t->o.tp), t->o.tp, t->threads, threads_why, t->o.batch,
           world / (t->o.pp * t->o.tp), t->local_rows / t->micro, t->micro, t->o.enc_len, t->o.dec_len,
           t->o.synthetic ? "synthetic" : "C4");
    printf("t5pretrain: %s, %s schedule: lr %g, warmup %ld steps%s; z-loss %g; precision %s\n",
           t->o.optimizer, t->o.lr_schedule, t->o.lr, t->o.warmup_steps,
           strcmp(t->o.lr_schedule, "cosine") ? "" : " (cosine to min-lr at --steps)", t->o.z_loss, precision_msg);
    if (!strcmp(t->o.lr_schedule, "cosine")) printf("t5pretrain: cosine min-lr %g at step %ld\n", t->o.min_lr, t->o.steps);
    printf("t5pretrain: memory estimate per rank %.1f MiB (micro-batch %d; %.1f GiB available per rank)\n",
           mem / 1048576.0, t->micro, avail / 1073741824.0);
    if (t->o.pp > 1) {
        char split[1024];
        pp_split_describe(t->ranges, t->o.pp, split, sizeof split);
        printf("t5pretrain: pipeline %d stages (%s split): %s\n", t->o.pp, t->o.pp_split, split);
        printf("t5pretrain: stage cost shares");
        for (int s2 = 0; s2 < t->o.pp; s2++)
            printf(" %.1f%%", 100 * t->stage_cost[s2]);
        printf("; parameters per stage");
        for (int s2 = 0; s2 < t->o.pp; s2++) printf(" %.2fM", t5_stage_num_params(c, &t->ranges[s2]) / 1e6);
        int m = t->local_rows / t->micro;
        printf("; %d micro-batches per step: ideal bubble (P-1)/(m+P-1) = %.1f%%\n", m,
               100.0 * (t->o.pp - 1) / (m + t->o.pp - 1));
    }
    double tp_mb = 0;
    if (t->o.tp > 1) {
        /* per micro-batch on the stage holding the most blocks is an upper bound; the model counts
         * the whole model, so it is shared out by the stage's cost */
        double worst = 0;
        for (int s2 = 0; s2 < t->o.pp; s2++) if (t->stage_cost[s2] > worst) worst = t->stage_cost[s2];
        tp_mb = tp_comm_bytes_per_microbatch(c, t->micro, t->o.enc_len, t->o.dec_len, t->o.tp) * worst *
                (t->local_rows / t->micro) / 1e6;
        printf("t5pretrain: tensor parallel %d ranks (heads %d, d_ff %d, vocabulary %d split; sums by %s): "
               "%.2fM parameters per rank of %.2fM; ~%.1f MB summed per rank per step\n",
               t->o.tp, c->n_heads, c->d_ff, c->vocab_size,
               strcmp(t->o.tp_reduce, "pblas") ? "mpi" : "pblas for the attention outputs, mpi for the rest",
               t5_stage_num_params_tp(c, &t->ranges[0], t->o.tp) / 1e6, t5_stage_num_params(c, &t->ranges[0]) / 1e6,
               tp_mb);
    }
    printf("t5pretrain: activation recomputation %s\n", t->recompute ? "on (block inputs kept, blocks recomputed in backward)" : "off");
    printf("t5pretrain: checkpoints: every %ld steps%s%s, keep last %d%s\n", t->o.save_every,
           t->o.save_every_minutes > 0 ? " and every " : "", t->o.save_every_minutes > 0 ? "few minutes" : "",
           t->o.keep_last, t->o.keep_every > 0 ? " and every multiple of --keep-every" : "");
    json_t *plan = json_pack("{s:s, s:I, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:I, s:s}",
                             "variant", c->name, "params", (json_int_t)params, "world", world, "pp", t->o.pp,
                             "dp", world / (t->o.pp * t->o.tp), "tp", t->o.tp, "threads", t->threads,
                             "micro_batch", t->micro, "memory_per_rank_bytes", mem,
                             "memory_per_node_bytes", mem * ranks_per_node, "steps", (json_int_t)t->o.steps,
                             "precision", t->o.precision);
    json_object_set_new(plan, "tp_reduce", json_string(t->o.tp_reduce));
    json_object_set_new(plan, "params_per_rank", json_integer((json_int_t)t5_stage_num_params_tp(c, &t->ranges[0], t->o.tp)));
    json_object_set_new(plan, "tp_bytes_per_step", json_real(tp_mb * 1e6));
    if (t->o.dry_run) print_projection_(t, ranks_per_node);
    char *s = json_dumps(plan, JSON_COMPACT | JSON_PRESERVE_ORDER);
    printf("plan: %s\n", s);
    free(s);
    json_decref(plan);
    fflush(stdout);
}

/* Tensor parallelism: the split dimensions must divide by --tp (and d_model too: the column-split
 * o and wo are checkpointed as row blocks); PBLAS multiplies in fp32 only. (Options only: every
 * rank decides the same.) */
static int check_tp_(const Trainer *t, char *err, size_t errlen) {
    const TrainOptions *o = &t->o;
    if (o->tp <= 1) return 0;
    if (tp_check_dims(&t->cfg, o->tp, err, errlen)) return -1;
    if (t->cfg.d_model % o->tp) {
        set_error(err, errlen, "--tp %d does not divide d_model %d of %s (the o and wo pieces are saved as row "
                  "blocks); use a --tp that divides it", o->tp, t->cfg.d_model, t->cfg.name);
        return -1;
    }
    if (!strcmp(o->tp_reduce, "pblas") && strcmp(o->precision, "fp32")) {
        set_error(err, errlen, "--tp-reduce pblas multiplies in fp32 only (PBLAS calls sgemm_); use --precision fp32 "
                  "or --tp-reduce mpi");
        return -1;
    }
    return 0;
}

static double split_step_(void *ctx, const OptimConfig *cfg, int split, int grows, int gcols, float *W,
                          const float *G, float *state, long g) {
    return tp_adafactor_step(ctx, cfg, (TpSplit)split, grows, gcols, W, G, state, g);
}

static OptimTensor *optim_table_(const T5Model *m) {
    OptimTensor *ot = xcalloc((size_t)m->num_tensors, sizeof *ot);
    for (int i = 0; i < m->num_tensors; i++) {
        const T5Tensor *tt = &m->tensors[i];
        ot[i].offset = tt->offset;
        ot[i].numel = tt->numel;
        ot[i].rows = tt->ndim == 2 ? tt->shape[0] : (int)tt->numel;
        ot[i].cols = tt->ndim == 2 ? tt->shape[1] : 0;
    }
    return ot;
}

/* Fill the parameters from a Hugging Face folder (--init-from): same shapes required. */
static int init_from_hf_(Trainer *t, char *err, size_t errlen) {
    T5Model src;
    if (hf_load(t->o.init_from, &src, err, errlen) != 0) return -1;
    int rc = 0;
    for (int i = 0; i < t->model.num_tensors && rc == 0; i++) {
        const T5Tensor *tt = &t->model.tensors[i];
        int j = t5_model_find_tensor(&src, tt->name);
        if (j < 0 || src.tensors[j].shape[0] != tt->gshape[0] || src.tensors[j].shape[1] != tt->gshape[1]) {
            set_error(err, errlen, "--init-from %s: tensor %s %s (the weights are not of variant %s%s)",
                      t->o.init_from, tt->name, j < 0 ? "is missing" : "has another shape", t->cfg.name,
                      t->cfg.tied_embedding ? ", T5 v1.0" : ", T5 v1.1");
            rc = -1;
        } else {
            const float *from = src.params + src.tensors[j].offset;
            float *to = t->model.params + tt->offset;
            if (tt->split == T5_SPLIT_COLS)
                tp_shard_cols_local(to, from, tt->gshape[0], tt->gshape[1], t->grid.tp_size, t->grid.tp_rank);
            else   /* whole, or the contiguous block of a row split */
                memcpy(to, from + (tt->split == T5_SPLIT_ROWS ? (size_t)t->grid.tp_rank * tt->numel : 0),
                       tt->numel * sizeof(float));
        }
    }
    t5_model_free(&src);
    return rc;
}

int trainer_open(Trainer **out, TrainOptions *opts, MPI_Comm world) {
    *out = NULL;
    Trainer *t = xcalloc(1, sizeof *t);
    t->o = *opts;
    TrainOptions *o = &t->o;
    char err[4096] = "", why[256] = "", precision_msg[512] = "";
    int code = T5_EXIT_CONFIG;
    int wrank = 0, wsize = 1;
    MPI_CHECK(MPI_Comm_rank(world, &wrank));
    MPI_CHECK(MPI_Comm_size(world, &wsize));
    t->is_root = wrank == 0;
    int provided = 0;
    MPI_CHECK(MPI_Query_thread(&provided));
    t->background_saves = provided >= MPI_THREAD_MULTIPLE;
    int plan_world = o->dry_run && o->plan_world > 0 ? o->plan_world : wsize;
    if (options_validate(o, wsize, err, sizeof err)) goto config_fail;
    if (grid_init(&t->grid, world, o->dry_run && o->plan_world > 0 ? 1 : o->pp,
                  o->dry_run && o->plan_world > 0 ? 1 : o->tp, err, sizeof err)) goto config_fail;
    t->plan_pp = o->pp;
    t->plan_dp = plan_world / (o->pp * o->tp);
    if (!o->dry_run && check_run_dir_(t, err, sizeof err)) goto config_fail;

    if (t5_config_from_variant(o->variant, &t->cfg, err, sizeof err)) goto config_fail;
    if (!strcmp(o->t5_version, "1.1")) { t->cfg.ffn = T5_FFN_GATED_GELU; t->cfg.tied_embedding = 0; }
    t->local_rows = o->batch / (plan_world / (o->pp * o->tp));
    int ranks_per_node = o->dry_run && o->plan_ranks_per_node > 0 ? o->plan_ranks_per_node : t->grid.node_size;
    t->auto_threads = o->threads == 0;
    t->auto_micro = o->micro_batch == 0;
    t->auto_recompute = !strcmp(o->recompute, "auto");
    t->threads = resolve_threads_(t, why, sizeof why);
    blas_runtime_set_threads(t->threads);
    o->threads = t->threads;
    if (resolve_schedule_(t, err, sizeof err)) goto config_fail;
    if (resolve_precision_(t, precision_msg, sizeof precision_msg, err, sizeof err)) goto config_fail;

    /* data: the files are checked here, so a bad file stops the dry run too */
    if (open_data_(t, err, sizeof err)) goto config_fail;
    if (!o->synthetic && t->is_root) {
        int bad = data_files_check((const char *const *)t->files, t->n_files, 0, err, sizeof err);
        if (!bad && t->n_val_files)
            bad = data_files_check((const char *const *)t->val_files, t->n_val_files, 0, err, sizeof err);
        if (bad) fprintf(stderr, "t5pretrain: error: %s\n", err);
        err[0] = 0;
        code = bad != 0;
    } else {
        code = 0;
    }
    MPI_CHECK(MPI_Bcast(&code, 1, MPI_INT, 0, world));
    if (code) { code = T5_EXIT_CONFIG; goto fail_quiet; }
    if (!o->synthetic) {
        int bad = open_loader_(t, err, sizeof err) != 0;
        if (agree_error_(t, bad, err)) { code = T5_EXIT_CONFIG; goto fail_quiet; }
        t->cfg.vocab_size = data_loader_vocab_size(t->loader);
    }
    if (t5_config_validate(&t->cfg, err, sizeof err)) goto config_fail;
    if (check_tp_(t, err, sizeof err)) goto config_fail;
    if (o->tp > 1) {   /* one BLAS in each process (ScaLAPACK's sgemm_ included): per rank, agreed */
        char why[1024];
        int bad = tp_blas_check(why, sizeof why) != 0;
        if (bad) set_error(err, sizeof err, "tensor parallelism needs one BLAS in the process: %s", why);
        if (agree_error_(t, bad, err)) { code = T5_EXIT_CONFIG; goto fail_quiet; }
    }
    t->ranges = xcalloc((size_t)o->pp, sizeof *t->ranges);
    t->stage_cost = xcalloc((size_t)o->pp, sizeof(double));
    if (pp_split(&t->cfg, o->pp, o->pp_split, o->enc_len, o->dec_len, t->ranges, t->stage_cost, err, sizeof err))
        goto config_fail;
    double avail = 0;
    char mem_note[512] = "";
    if (plan_memory_(t, ranks_per_node, &avail, mem_note, sizeof mem_note, err, sizeof err)) goto config_fail;
    if (mem_note[0] && t->is_root) printf("t5pretrain: %s\n", mem_note);
    o->micro_batch = t->micro;
    if (check_validation_(t, err, sizeof err)) goto config_fail;

    if (o->dry_run) {
        if (t->is_root) print_plan_(t, plan_world, ranks_per_node, why, precision_msg, avail);
        trainer_close(t);
        return T5_EXIT_DONE;
    }

    /* model (this stage's tensors) and optimizer: the same seed on every rank gives identical
     * parameters, whatever the layout (initialisation is keyed by each tensor's global index) */
    if (agree_error_(t, o->tp > 1 && tp_init(&t->tp, t->grid.tp, !strcmp(o->tp_reduce, "pblas") ? TP_REDUCE_PBLAS
                                                                                                 : TP_REDUCE_MPI,
                                              err, sizeof err) != 0, err)) {
        code = T5_EXIT_CONFIG;
        goto fail_quiet;
    }
    t5_model_build_stage_tp(&t->model, &t->cfg, &t->ranges[t->grid.pp_rank], o->tp > 1 ? &t->tp : NULL);
    t->model.recompute = t->recompute;
    t5_model_init_weights(&t->model, (uint64_t)o->seed);
    if (o->init_from[0]) {
        int bad = init_from_hf_(t, err, sizeof err) != 0;
        if (agree_error_(t, bad, err)) { code = T5_EXIT_CONFIG; goto fail_quiet; }
    }
    /* data-parallel reduction (and ZeRO-1 ownership) over this stage's tensors */
    DpTensor *dt = xcalloc((size_t)t->model.num_tensors, sizeof *dt);
    for (int i = 0; i < t->model.num_tensors; i++) {
        dt[i].offset = t->model.tensors[i].offset;
        dt[i].numel = t->model.tensors[i].numel;
    }
    t->dp = dp_reducer_create(t->grid.dp, dt, t->model.num_tensors, o->zero, 0);
    t->owner = xcalloc((size_t)t->model.num_tensors, sizeof(int));
    if (o->zero) for (int i = 0; i < t->model.num_tensors; i++) t->owner[i] = dp_owner(t->dp, i);
    else dp_plan_owners(dt, t->model.num_tensors, t->grid.dp_size, t->owner);   /* who writes what */
    free(dt);
    /* the optimizer updates the tensors this rank owns (ZeRO-1) or all of them */
    int *mine = xcalloc((size_t)t->model.num_tensors, sizeof(int));
    int n_mine = dp_owned_tensors(t->dp, mine);
    OptimTensor *all = optim_table_(&t->model);
    t->otensors = xcalloc((size_t)(n_mine ? n_mine : 1), sizeof *t->otensors);
    t->opt_index = xcalloc((size_t)t->model.num_tensors, sizeof(int));
    for (int i = 0; i < t->model.num_tensors; i++) t->opt_index[i] = -1;
    OptimSplit *splits = xcalloc((size_t)(n_mine ? n_mine : 1), sizeof *splits);
    for (int k = 0; k < n_mine; k++) {
        const T5Tensor *tt = &t->model.tensors[mine[k]];
        t->otensors[k] = all[mine[k]];
        t->opt_index[mine[k]] = k;
        splits[k] = (OptimSplit){(int)tt->split, tt->gshape[0], tt->gshape[1]};
    }
    free(all);
    free(mine);
    int bad_opt = optim_init_split(&t->opt, &t->oc, t->otensors, splits, n_mine, t->model.num_params, err, sizeof err);
    free(splits);
    if (bad_opt) goto config_fail;
    t->opt.split_step = split_step_;
    t->opt.split_ctx = &t->tp;
    if (o->pp > 1) t->pipe = pp_create(t->grid.pp, &t->model, t->ranges, o->pp, t->micro, o->enc_len, o->dec_len);
    t5_batch_alloc(&t->local, t->local_rows, o->enc_len, o->dec_len);

    if (o->resume) {
        Ckpt *ck = open_resume_checkpoint_(o->run_dir, t->is_root, err, sizeof err);
        int bad = ck == NULL || restore_(t, ck, err, sizeof err) != 0;
        long steps_saved = ck ? ckpt_step(ck) : -1;
        if (ck) ckpt_close(ck);
        if (agree_error_(t, bad, err)) { code = T5_EXIT_FAILURE; goto fail_quiet; }
        long root_step = steps_saved;
        MPI_CHECK(MPI_Bcast(&root_step, 1, MPI_LONG, 0, world));
        if (agree_error_(t, root_step != steps_saved, "ranks opened different checkpoints (a save was committed while resuming?)")) {
            code = T5_EXIT_FAILURE;
            goto fail_quiet;
        }
        if (t->step >= o->steps && t->is_root)
            printf("t5pretrain: the checkpoint is at step %ld >= --steps %ld: nothing to train (give a larger --steps)\n",
                   t->step, o->steps);
    }
    t->step_flops = t5_model_flops_per_step(&t->cfg, o->batch, o->enc_len, o->dec_len);
    t->estimate_bytes = (size_t)rank_memory_bytes_(t, t->micro, t->recompute);

    /* MFU against the peak of this machine now, measured by all ranks together. */
    MPI_CHECK(MPI_Barrier(world));
    GemmPeak peak;
    GemmConfig gcfg;
    gemm_get_config(&gcfg);
    int disturbed = 0;
    /* T5_PEAK_N: the size of the peak's n^3 product (tests use a small one to start faster) */
    const char *pn = getenv("T5_PEAK_N");
    int peak_n = pn && atoi(pn) >= 128 ? atoi(pn) : 2048;
    if (gemm_measure_peak(gcfg.precision, peak_n, t->threads, 5, &peak, err, sizeof err) == 0) {
        t->peak_gflops = peak.best_gflops;
        disturbed = peak.disturbed;
    }
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &t->peak_gflops, 1, MPI_DOUBLE, MPI_SUM, world));
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &disturbed, 1, MPI_INT, MPI_MAX, world));

    if (t->is_root) {
        print_plan_(t, wsize, ranks_per_node, why, precision_msg, avail);
        printf("t5pretrain: BLAS %s\n", blas_runtime_describe());
        printf("t5pretrain: GEMM %s\n", gemm_describe());
        printf("t5pretrain: %.3f TFLOP per step (docs/t5-recipe.md section 8); %s matmul peak measured now: %.1f GFLOP/s (all ranks)%s\n",
               t->step_flops / 1e12, o->precision, t->peak_gflops,
               disturbed ? " (the measurement varied: the machine looks busy; MFU may read high)" : "");
        if (o->resume) printf("t5pretrain: resumed at step %ld (%lld tokens seen)\n", t->step, t->tokens);
        fflush(stdout);
        if (mkdir_p(o->run_dir) != 0)
            mpi_fatal("choose a writable --run-dir", "cannot create run directory '%s': %s", o->run_dir, strerror(errno));
        char path[1200];
        snprintf(path, sizeof path, "%s/metrics.jsonl", o->run_dir);
        t->metrics = o->resume ? metrics_open_resume(path, t->step, err, sizeof err) : metrics_open(path, err, sizeof err);
        if (!t->metrics) mpi_fatal("check --run-dir", "%s", err);
        snprintf(path, sizeof path, "%s/config.txt", o->run_dir);
        char *text = NULL;
        size_t len = 0;
        FILE *mem = open_memstream(&text, &len);
        options_print(o, mem);
        fclose(mem);
        if (write_file_atomic(path, text, len) != 0)
            mpi_fatal("check free disk space of --run-dir", "cannot write %s: %s", path, strerror(errno));
        free(text);
    }
    MPI_CHECK(MPI_Barrier(world));
    t->t_start = now_seconds();
    t->last_save_time = t->t_start;
    t->last_saved_step = o->resume ? t->step : -1;
    *opts = *o;
    *out = t;
    return T5_EXIT_DONE;

config_fail:
    config_error_(t, err);
    code = T5_EXIT_CONFIG;
fail_quiet:
    trainer_close(t);
    return code;
}

/* ---------------------------------------------------------------------------------------------
 * The run loop. */

enum { STOP_NONE = 0, STOP_SIGNAL = 1, STOP_DEADLINE = 2 };

static void write_metrics_(Trainer *t, const StepResult *r, double val_loss, double val_tokens) {
    MetricsWriter *w = t->metrics;
    double gflops = t->step_flops / r->step_s / 1e9;
    metrics_begin(w);
    metrics_int(w, "step", t->step);
    metrics_num(w, "loss", r->loss);
    metrics_num(w, "ce", r->ce_tok);
    metrics_num(w, "z_loss", r->z_tok);
    metrics_num(w, "lr", r->lr);
    metrics_num(w, "grad_norm", r->grad_norm);
    metrics_num(w, "param_rms", r->param_rms);
    metrics_int(w, "tokens", t->tokens);
    metrics_num(w, "target_tokens", r->target_tokens);
    metrics_num(w, "tokens_per_s", (double)t->o.batch * t->o.enc_len / r->step_s);
    metrics_num(w, "gflops", gflops);
    metrics_num(w, "mfu", t->peak_gflops > 0 ? gflops / t->peak_gflops : 0);
    metrics_num(w, "step_s", r->step_s);
    metrics_num(w, "data_wait_s", r->wait_s);
    metrics_num(w, "elapsed_s", t->elapsed_before + (now_seconds() - t->t_start));
    if (t->grid.dp_size > 1) {
        metrics_num(w, "dp_wait_s", r->dp_wait_s);
        metrics_num(w, "dp_reduce_s", r->dp_reduce_s);
        metrics_num(w, "dp_bytes", r->dp_bytes);
    }
    if (t->grid.tp_size > 1) {
        metrics_num(w, "tp_reduce_s", r->tp_reduce_s);
        metrics_num(w, "tp_bytes", r->tp_bytes);
    }
    if (t->pipe) {
        int m = t->local_rows / t->micro, P = t->grid.pp_size;
        metrics_num(w, "pp_bubble", r->pp_wait_s / r->step_s);
        metrics_num(w, "pp_bubble_ideal", (double)(P - 1) / (m + P - 1));
        metrics_num(w, "pp_bytes", r->pp_bytes);
    }
    if (!isnan(val_loss)) {
        metrics_num(w, "val_loss", val_loss);
        metrics_num(w, "val_neg_log_perplexity", -val_loss);
        metrics_num(w, "val_tokens", val_tokens);
    }
    if (metrics_end(w) != 0) fprintf(stderr, "t5pretrain: warning: cannot write metrics.jsonl: %s\n", strerror(errno));
}

static void print_progress_(const Trainer *t, const StepResult *r, double val_loss, double run_steps_s) {
    char eta[32];
    format_eta_(run_steps_s * (double)(t->o.steps - t->step), eta, sizeof eta);
    double gflops = t->step_flops / r->step_s / 1e9;
    printf("step %ld/%ld | loss %.4f | ce/token %.4f | lr %.3g | grad norm %.3g | %.0f tok/s | %.1f GFLOP/s | "
           "MFU %.1f%% | data wait %.0f ms | ETA %s", t->step, t->o.steps, r->loss, r->ce_tok, r->lr,
           r->grad_norm, (double)t->o.batch * t->o.enc_len / r->step_s, gflops,
           t->peak_gflops > 0 ? 100 * gflops / t->peak_gflops : 0, 1000 * r->wait_s, eta);
    if (!isnan(val_loss)) printf(" | val loss %.4f", val_loss);
    printf("\n");
    fflush(stdout);
}

/* The final checkpoint and the Hugging Face folder final/. With pipeline stages or tensor
 * parallelism no rank holds every tensor, so rank 0 assembles the model from the checkpoint just
 * committed. */
static int save_final_(Trainer *t) {
    if (t->last_saved_step != t->step && trainer_save(t, 0) != 0) return -1;
    int rc = 0;
    if (t->grid.rank == 0) {
        char dir[1200], err[2048];
        snprintf(dir, sizeof dir, "%s/final", t->o.run_dir);
        HfSaveOpts ho = {1, t->o.spm[0] ? t->o.spm : NULL};
        if (t->grid.pp_size == 1 && t->grid.tp_size == 1) {
            rc = hf_save_folder(dir, &t->model, &ho, err, sizeof err);
        } else {
            char step_dir[1400];
            Ckpt *ck = NULL;
            T5Model whole;
            t5_model_build(&whole, &t->cfg);
            free(whole.grads);   /* the export needs the parameters only */
            whole.grads = NULL;
            rc = ckpt_latest(t->o.run_dir, step_dir, sizeof step_dir, err, sizeof err);
            if (rc == 0 && !(ck = ckpt_open(step_dir, err, sizeof err))) rc = -1;
            for (int i = 0; rc == 0 && i < whole.num_tensors; i++) {
                char name[200];
                snprintf(name, sizeof name, "param/%s", whole.tensors[i].name);
                rc = ckpt_read(ck, name, 0, whole.tensors[i].numel, whole.params + whole.tensors[i].offset, err, sizeof err);
            }
            if (rc == 0) rc = hf_save_folder(dir, &whole, &ho, err, sizeof err);
            if (ck) ckpt_close(ck);
            t5_model_free(&whole);
        }
        if (rc != 0) fprintf(stderr, "t5pretrain: error: cannot write %s: %s\n", dir, err);
        else printf("t5pretrain: wrote %s (Hugging Face config.json + model.safetensors) at step %ld\n", dir, t->step);
    }
    MPI_CHECK(MPI_Bcast(&rc, 1, MPI_INT, 0, t->grid.world));
    return rc;
}

int trainer_run(Trainer *t) {
    TrainOptions *o = &t->o;
    int code = T5_EXIT_DONE;
    double run_t0 = now_seconds();
    long run_step0 = t->step;
    while (t->step < o->steps) {
        /* one collective decision per step: stop (signal or deadline) and time-based saves */
        int decide[2] = {stop_signal_ ? STOP_SIGNAL : STOP_NONE, 0};
        if (t->is_root) {
            double now = wall_clock_();
            double need = 2 * t->max_step_seconds + t->last_save_seconds + o->end_time_margin;
            if (o->end_time > 0 && now + need >= o->end_time && decide[0] == STOP_NONE) decide[0] = STOP_DEADLINE;
            if (o->save_every_minutes > 0 && now_seconds() - t->last_save_time >= 60 * o->save_every_minutes)
                decide[1] = 1;
        }
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, decide, 2, MPI_INT, MPI_MAX, t->grid.world));
        if (decide[0] != STOP_NONE) {
            ROOT_PRINTF(t, "t5pretrain: %s; saving a checkpoint at step %ld and stopping (exit %d: resume with --resume)\n",
                        decide[0] == STOP_SIGNAL ? "stop requested by a signal" : "the --end-time deadline is near",
                        t->step, T5_EXIT_STOPPED);
            if (finish_background_save_(t) != 0) return T5_EXIT_FAILURE;
            if (t->last_saved_step != t->step && trainer_save(t, 0) != 0) return T5_EXIT_FAILURE;
            return T5_EXIT_STOPPED;
        }
        if (decide[1] && t->last_saved_step != t->step && trainer_save(t, 1) != 0) code = T5_EXIT_FAILURE;

        int rc = trainer_step(t);
        if (rc == 1) {
            ROOT_PRINTF(t, "t5pretrain: training data exhausted after step %ld (--max-epochs %d)\n", t->step, o->max_epochs);
            code = T5_EXIT_EXHAUSTED;
            break;
        }
        if (rc < 0) {
            if (t->is_root)
                fprintf(stderr, "t5pretrain: error: step %ld: %s; the step was not applied. Saving the state of step %ld.\n"
                        "HINT: %s\n", t->step + 1, rc == -2 ? "non-finite gradient" : "the data loader failed (see above)",
                        t->step, rc == -2 ? "lower the learning rate, or inspect the batch with t5data dump-batch --step S"
                                          : "fix or remove the file named above and resume with --resume");
            if (t->is_root && t->loader && rc == -1) {
                printf("t5pretrain: data read by rank 0:\n");
                data_loader_print_stats(t->loader, stdout);
            }
            finish_background_save_(t);
            t->step_failed = 1;
            if (t->step > 0 && t->last_saved_step != t->step) trainer_save(t, 0);
            return T5_EXIT_FAILURE;
        }
        StepResult r = t->last;
        double val_loss = NAN, val_tokens = 0;
        if (o->eval_every > 0 && (t->step % o->eval_every == 0 || t->step == o->steps)) {
            if (evaluate_(t, o->eval_batches, &val_loss, &val_tokens) != 0) {
                if (t->is_root) fprintf(stderr, "t5pretrain: error: validation failed at step %ld; saving a checkpoint first\n", t->step);
                finish_background_save_(t);
                trainer_save(t, 0);
                return T5_EXIT_FAILURE;
            }
        }
        if (t->is_root) {
            write_metrics_(t, &r, val_loss, val_tokens);
            if (t->step % o->log_every == 0 || t->step == o->steps || !isnan(val_loss))
                print_progress_(t, &r, val_loss, (now_seconds() - run_t0) / (double)(t->step - run_step0));
        }
        if (o->save_every > 0 && t->step % o->save_every == 0 && t->step < o->steps) {
            if (finish_background_save_(t) != 0) code = T5_EXIT_FAILURE;
            if (trainer_save(t, 1) != 0) code = T5_EXIT_FAILURE;
        }
        if (code == T5_EXIT_FAILURE) {
            ROOT_PRINTF(t, "t5pretrain: stopping: a checkpoint could not be written (see above); the last committed one is intact\n");
            finish_background_save_(t);
            return T5_EXIT_FAILURE;
        }
    }
    if (finish_background_save_(t) != 0) return T5_EXIT_FAILURE;
    if (t->is_root && t->loader) {
        printf("t5pretrain: data read by rank 0:\n");
        data_loader_print_stats(t->loader, stdout);
    }
    /* the training's high-water mark, before final/ (which, with pipeline or tensor parallelism,
     * makes rank 0 assemble the whole model from the checkpoint) */
    double train_rss = (double)peak_rss_bytes();
    if (save_final_(t) != 0) return T5_EXIT_FAILURE;
    if (t->is_root) {
        printf("t5pretrain: checkpoint %s/ckpt/step_%08ld; metrics in %s/metrics.jsonl; peak RSS %.1f MiB (estimate %.1f MiB)",
               o->run_dir, t->step, o->run_dir, train_rss / 1048576.0, t->estimate_bytes / 1048576.0);
        if ((double)peak_rss_bytes() > 1.05 * train_rss)
            printf("; %.1f MiB while writing final/", peak_rss_bytes() / 1048576.0);
        printf("\n");
    }
    return code;
}

void trainer_close(Trainer *t) {
    if (!t) return;
    if (t->pending_save) finish_background_save_(t);
    metrics_close(t->metrics);
    t5_batch_free(&t->local);
    optim_free(&t->opt);
    free(t->otensors);
    free(t->opt_index);
    free(t->owner);
    pp_free(t->pipe);
    dp_reducer_free(t->dp);
    free(t->ranges);
    free(t->stage_cost);
    if (t->model.params) t5_model_free(&t->model);
    if (t->tp.size > 1) tp_free(&t->tp);
    if (t->loader) data_loader_close(t->loader);
    data_free_files(t->files, t->n_files);
    data_free_files(t->val_files, t->n_val_files);
    gemm_release();
    if (t->grid.world != MPI_COMM_NULL && t->grid.size > 0) grid_free(&t->grid);
    free(t);
}

/* ---------------------------------------------------------------------------------------------
 * Options for --resume: the checkpoint's options are the base, the command line overrides the
 * ones that may change, and the ones that may not are compared. */

/* 1 if `name` is in the checkpoint's list of options resolved from "auto" (checkpoints without
 * the list: treat the layout-dependent options as auto). */
static int was_auto_(json_t *autos, const char *name) {
    if (!autos || !json_is_array(autos)) return 1;
    size_t i;
    json_t *v;
    json_array_foreach(autos, i, v) if (json_is_string(v) && !strcmp(json_string_value(v), name)) return 1;
    return 0;
}

int trainer_options_for_resume(TrainOptions *o, int argc, char **argv, char *err, size_t errlen) {
    Ckpt *ck = open_resume_checkpoint_(o->run_dir, 0, err, errlen);
    if (!ck) return -1;
    char *base = checkpoint_options_(ck);
    json_error_t je;
    json_t *meta = json_loads(ckpt_meta_json(ck), 0, &je);
    json_t *autos = meta ? json_incref(json_object_get(meta, "auto_options")) : NULL;
    json_decref(meta);
    ckpt_close(ck);
    if (!base) {
        json_decref(autos);
        set_error(err, errlen, "the checkpoint of %s holds no options", o->run_dir);
        return -1;
    }
    TrainOptions saved, now;
    options_defaults(&saved);
    if (args_apply_json(options_parser(), &saved, base, 1, "checkpoint options", err, errlen)) {
        json_decref(autos);
        free(base);
        return -1;
    }
    options_defaults(&now);
    int rc = options_parse(&now, argc, argv, base, NULL, err, errlen);
    free(base);
    if (rc) { json_decref(autos); return -1; }
    /* values that belong to one job, or to the layout of the earlier run, start afresh unless given */
    TrainOptions dflt;
    options_defaults(&dflt);
    if (!options_given("threads") && was_auto_(autos, "threads")) now.threads = dflt.threads;
    if (!options_given("micro_batch") && was_auto_(autos, "micro_batch")) now.micro_batch = dflt.micro_batch;
    if (!options_given("recompute") && was_auto_(autos, "recompute"))
        snprintf(now.recompute, sizeof now.recompute, "%s", dflt.recompute);
    if (!options_given("end_time")) now.end_time = dflt.end_time;
    if (!options_given("init_from")) now.init_from[0] = 0;
    json_decref(autos);
    now.resume = 1;
    if (options_check_resume(&now, &saved, err, errlen)) return -1;
    *o = now;
    return 0;
}
