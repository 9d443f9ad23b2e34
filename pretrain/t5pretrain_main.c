/*
 * pretrain/t5pretrain_main.c: t5pretrain, the training program.
 *
 * One process per MPI rank (data parallel; one rank is a plain single-process run). Each step:
 *   every rank takes its slice of the global batch (batch / ranks sequences), runs forward and
 *   backward over micro-batches, accumulating gradients of the T5 objective
 *       sum_t w_t (ce_t + z * logZ_t^2) / (global_batch * dec_len)        (t5-spec.md 5.4)
 *   then the gradients are summed over ranks (MPI_Allreduce), and every rank applies the same
 *   optimizer update, so the parameters stay identical on all ranks.
 * Rank 0 writes RUN_DIR/metrics.jsonl (one JSON line per step) and the progress line, and at the
 * end RUN_DIR/final/ (Hugging Face config.json + model.safetensors).
 */
#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt/hf.h"
#include "common/blas_runtime.h"
#include "common/util.h"
#include "data/loader.h"
#include "data/synthetic.h"
#include "pretrain/optim.h"
#include "pretrain/options.h"
#include "pretrain/t5_config.h"
#include "pretrain/t5_model.h"

static volatile sig_atomic_t stop_requested = 0;
/* The first SIGINT/SIGTERM/SIGUSR1 asks for a stop at the next step boundary (the weights are
 * written); a second one ends the process at once. */
static void on_stop_signal(int sig) {
    if (stop_requested) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    stop_requested = 1;
}

static int mpi_rank = 0, mpi_world = 1;

/* Print a configuration error once (rank 0) and leave every rank with exit code 2. Every rank
 * parses the same arguments, so all of them reach this point together: no rank is left waiting. */
#if defined(__GNUC__)
__attribute__((noreturn))
#endif
static void config_error(const char *msg) {
    if (mpi_rank == 0) fprintf(stderr, "t5pretrain: error: %s\n", msg);
    MPI_Finalize();
    exit(2);
}

/* ---------------------------------------------------------------------------------------------- */
/* The step's batch source: the C4 data pipeline or synthetic span-corrupted batches.              */

typedef struct {
    DataLoader *loader;        /* NULL when synthetic */
    int synthetic_pieces;      /* synthetic: token ids 3 .. pieces-1 */
    int sentinel_top;          /* synthetic: id of <extra_id_0> */
    uint64_t seed;
} BatchSource;

/* Fill `local` (this rank's rows) for `step`. Returns 0, or 1 when the data is exhausted. */
static int next_local_batch(BatchSource *src, T5Batch *local, long step, double *wait_s) {
    *wait_s = 0.0;
    if (src->loader) {
        int rc = data_loader_next(src->loader, local, wait_s);
        if (rc < 0) FATAL("see the data errors above", "rank %d step %ld: the data loader failed", mpi_rank, step);
        return rc;
    }
    synthetic_batch(local, src->synthetic_pieces, src->sentinel_top, src->seed, step, mpi_rank * local->B);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */

typedef struct {
    double ce_sum, z_sum, tokens;
} StepStats;

/* Sum of squares of x[0..n), the same bits for any thread count: fixed pieces are summed in
 * parallel, then the piece sums in order. (An OpenMP reduction would not be reproducible.) */
static double sum_squares(const float *x, size_t n) {
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

static double params_rms(const float *p, size_t n) { return sqrt(sum_squares(p, n) / (double)(n ? n : 1)); }
static double grad_l2_norm(const float *g, size_t n) { return sqrt(sum_squares(g, n)); }

static int all_finite(const float *g, size_t n) {
    int ok = 1;
    #pragma omp parallel for reduction(&&:ok) schedule(static)
    for (size_t i = 0; i < n; i++) ok = ok && isfinite(g[i]);
    return ok;
}

/* Validation: mean cross-entropy per target token (no z-loss) over eval_batches batches. */
static double evaluate(T5Model *m, const TrainOptions *o, const DataLoaderConfig *val_cfg,
                       T5Batch *local, int micro, double *tokens_out) {
    char err[1024];
    DataLoader *val = data_loader_open(val_cfg, err, sizeof err);
    if (!val) FATAL("check --val-data", "rank %d: cannot open validation data: %s", mpi_rank, err);
    double sums[2] = {0, 0};
    for (int b = 0; b < o->eval_batches; b++) {
        double wait;
        int rc = data_loader_next(val, local, &wait);
        if (rc < 0) FATAL("see the data errors above", "rank %d: validation data failed", mpi_rank);
        if (rc == 1) break;
        for (int r = 0; r < local->B; r += micro) {
            T5Batch mb = t5_batch_slice(local, r, micro);
            T5LossStats st;
            t5_model_forward(m, &mb, 0.0f, &st);
            sums[0] += st.ce_sum;
            sums[1] += (double)st.tokens;
        }
    }
    data_loader_close(val);
    MPI_Allreduce(MPI_IN_PLACE, sums, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    *tokens_out = sums[1];
    return sums[1] > 0 ? sums[0] / sums[1] : NAN;
}

/* Sum a float buffer over all ranks in place, in pieces small enough for MPI's int counts. */
static void allreduce_sum_floats(float *buf, size_t n) {
    const size_t piece = (size_t)1 << 28;
    for (size_t off = 0; off < n; off += piece) {
        size_t len = n - off < piece ? n - off : piece;
        MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)len, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
}

static void format_eta(double seconds, char *buf, size_t n) {
    if (!isfinite(seconds) || seconds < 0) { snprintf(buf, n, "?"); return; }
    long s = (long)seconds;
    if (s >= 86400) snprintf(buf, n, "%ldd%02ldh", s / 86400, (s % 86400) / 3600);
    else snprintf(buf, n, "%02ld:%02ld:%02ld", s / 3600, (s % 3600) / 60, s % 60);
}

/* Memory one rank needs: parameters, gradients, optimizer state (AdamW: two moments; Adafactor's
 * factored state is negligible) and the activations of one micro-batch. */
static double rank_memory_bytes(const T5Config *cfg, const TrainOptions *o, int micro) {
    double params = (double)t5_config_num_params(cfg);
    return params * 4.0 * (strcmp(o->optimizer, "adamw") == 0 ? 4 : 2)
         + (double)t5_model_activation_bytes(cfg, micro, o->enc_len, o->dec_len);
}

/* Choose the micro-batch (--micro-batch 0: the largest divisor of the rank's rows whose memory
 * fits in 85% of what this node has available, shared by its ranks) and stop before any work if
 * even the chosen one cannot fit. Returns the micro-batch. */
static int plan_memory(const T5Config *cfg, const TrainOptions *o, int local_rows) {
    MPI_Comm node;
    int local_ranks = 1;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &local_ranks);
    MPI_Comm_free(&node);
    double avail = (double)mem_available_bytes() / local_ranks;
    int micro = o->micro_batch;
    if (micro == 0) {
        micro = 1;
        for (int d = local_rows; d >= 1; d--)
            if (local_rows % d == 0 && (avail <= 0 || rank_memory_bytes(cfg, o, d) <= 0.85 * avail)) {
                micro = d;
                break;
            }
    }
    double need = rank_memory_bytes(cfg, o, micro);
    int fail = avail > 0 && need > avail;
    if (fail)
        fprintf(stderr, "t5pretrain: error: rank %d: %s needs about %.1f GiB per rank (micro-batch %d) but "
                "only %.1f GiB are available per rank (%d rank(s) on this node); use a smaller "
                "--micro-batch (gradients accumulate up to --batch), fewer ranks per node, or more nodes\n",
                mpi_rank, cfg->name, need / 1073741824.0, micro, avail / 1073741824.0, local_ranks);
    /* every rank takes the same decision: the smallest micro-batch chosen anywhere, or a stop */
    MPI_Allreduce(MPI_IN_PLACE, &fail, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &micro, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (fail) {
        MPI_Finalize();
        exit(2);
    }
    return micro;
}

/* A run directory that already holds results is never written over: nothing saved is lost. */
static int run_dir_has_results(const char *run_dir, char *err, size_t errlen) {
    const char *names[] = {"metrics.jsonl", "final"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[1200];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", run_dir, names[i]);
        /* an empty metrics file is what a run that failed before its first step leaves */
        if (stat(path, &st) == 0 && (S_ISDIR(st.st_mode) || st.st_size > 0)) {
            set_error(err, errlen, "--run-dir %s already holds a run (%s); choose a new --run-dir or "
                      "move the old one away", run_dir, path);
            return 1;
        }
    }
    return 0;
}

static void save_weights(const T5Model *m, const char *run_dir, const char *name) {
    char dir[1200], err[1024];
    snprintf(dir, sizeof dir, "%s/%s", run_dir, name);
    if (hf_save(dir, m, err, sizeof err) != 0)
        FATAL("check free disk space and permissions of --run-dir", "cannot save weights to %s: %s", dir, err);
}

int main(int argc, char **argv) {
    /* Before anything else: OpenBLAS picks its kernel when it loads, so a wrong choice is fixed
     * by re-executing this program with the right OPENBLAS_CORETYPE (see blas_runtime.h). */
    blas_runtime_setup(argc, argv, 0, 0);
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &mpi_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mpi_world);

    TrainOptions o;
    options_defaults(&o);
    char err[2048];
    int prc = options_parse(&o, argc, argv, mpi_rank == 0 ? stdout : stderr, err, sizeof err);
    if (prc == 1) { MPI_Finalize(); return 0; }
    if (prc < 0) config_error(err);
    if (o.list_variants) {
        if (mpi_rank == 0) t5_variants_print_tsv(stdout);
        MPI_Finalize();
        return 0;
    }
    if (options_validate(&o, mpi_world, err, sizeof err)) config_error(err);
    if (run_dir_has_results(o.run_dir, err, sizeof err)) config_error(err);

    T5Config cfg;
    if (t5_config_from_variant(o.variant, &cfg, err, sizeof err)) config_error(err);
    if (!strcmp(o.t5_version, "1.1")) { cfg.ffn = T5_FFN_GATED_GELU; cfg.tied_embedding = 0; }

    int threads = o.threads;
    if (threads <= 0) {
        const char *env = getenv("OMP_NUM_THREADS");
        threads = env && atoi(env) > 0 ? atoi(env) : (int)sysconf(_SC_NPROCESSORS_ONLN) / mpi_world;
        if (threads < 1) threads = 1;
    }
    blas_runtime_set_threads(threads);

    const int local_rows = o.batch / mpi_world;
    int micro = o.micro_batch;   /* chosen by plan_memory() once the model is known */

    /* Data: every rank opens the streams of its own rows only. */
    BatchSource src = {0};
    src.seed = (uint64_t)o.seed;
    char **files = NULL, **val_files = NULL;
    int n_files = 0, n_val_files = 0;
    DataLoaderConfig val_cfg;
    memset(&val_cfg, 0, sizeof val_cfg);
    if (!o.synthetic) {
        if (data_expand_globs(o.data, &files, &n_files, err, sizeof err)) config_error(err);
        DataLoaderConfig dc = {0};
        dc.files = (const char **)files;
        dc.n_files = n_files;
        dc.spm_model = o.spm;
        dc.seed = (uint64_t)o.seed;
        dc.global_batch = o.batch;
        dc.n_streams = o.batch;
        dc.rank = mpi_rank;
        dc.world = mpi_world;
        dc.enc_len = o.enc_len;
        dc.dec_len = o.dec_len;
        dc.prefetch = o.prefetch;
        dc.max_epochs = o.max_epochs;
        src.loader = data_loader_open(&dc, err, sizeof err);
        if (!src.loader) config_error(err);
        cfg.vocab_size = data_loader_vocab_size(src.loader);
        if (o.val_data[0]) {
            if (data_expand_globs(o.val_data, &val_files, &n_val_files, err, sizeof err)) config_error(err);
            val_cfg = dc;
            val_cfg.files = (const char **)val_files;
            val_cfg.n_files = n_val_files;
            val_cfg.prefetch = 0;
            val_cfg.max_epochs = 1;
            val_cfg.seed = (uint64_t)o.seed + 1;
        }
    } else {
        src.synthetic_pieces = cfg.vocab_size - 128;   /* 32000 for T5's 32128 rows */
        src.sentinel_top = src.synthetic_pieces + 99;
    }
    if (t5_config_validate(&cfg, err, sizeof err)) config_error(err);
    micro = plan_memory(&cfg, &o, local_rows);

    /* Model and optimizer. Same seed on every rank: identical initial parameters. */
    T5Model model;
    t5_model_build(&model, &cfg);
    t5_model_init_weights(&model, (uint64_t)o.seed);

    OptimConfig oc;
    OptimKind okind = OPTIM_ADAFACTOR;
    optim_kind_from_string(o.optimizer, &okind);
    optim_config_default(&oc, okind);
    if (o.lr_schedule[0]) lr_schedule_kind_from_string(o.lr_schedule, &oc.lr.kind);
    if (oc.lr.kind == LR_RSQRT) {
        if (o.lr > 0) oc.lr.multiplier = o.lr;
        if (o.warmup_steps >= 0) oc.lr.warmup_steps = o.warmup_steps;
        else if (okind != OPTIM_ADAFACTOR) oc.lr.warmup_steps = 10000;
    } else {
        if (o.lr > 0) oc.lr.peak_lr = o.lr;
        else if (oc.lr.peak_lr <= 0) oc.lr.peak_lr = okind == OPTIM_ADAFACTOR ? 0.01 : 1e-3;
        if (o.warmup_steps >= 0) oc.lr.warmup_steps = o.warmup_steps;
        else if (oc.lr.warmup_steps <= 0 || oc.lr.warmup_steps == 10000) oc.lr.warmup_steps = 1000;
        oc.lr.min_lr = o.min_lr >= 0 ? o.min_lr : oc.lr.peak_lr * 0.1;
        oc.lr.total_steps = o.steps;
        if (oc.lr.warmup_steps >= oc.lr.total_steps) oc.lr.warmup_steps = oc.lr.total_steps / 10;
    }
    oc.weight_decay = o.weight_decay;
    if (optim_config_validate(&oc, err, sizeof err)) config_error(err);
    /* config.txt records the values in force, not the "default" placeholders */
    snprintf(o.lr_schedule, sizeof o.lr_schedule, "%s", oc.lr.kind == LR_RSQRT ? "rsqrt" : "cosine");
    o.lr = oc.lr.kind == LR_RSQRT ? oc.lr.multiplier : oc.lr.peak_lr;
    o.warmup_steps = oc.lr.warmup_steps;
    o.min_lr = oc.lr.kind == LR_RSQRT ? 0 : oc.lr.min_lr;
    OptimTensor *otensors = xcalloc((size_t)model.num_tensors, sizeof *otensors);
    for (int i = 0; i < model.num_tensors; i++) {
        const T5Tensor *t = &model.tensors[i];
        otensors[i].offset = t->offset;
        otensors[i].numel = t->numel;
        otensors[i].rows = t->ndim == 2 ? t->shape[0] : (int)t->numel;
        otensors[i].cols = t->ndim == 2 ? t->shape[1] : 0;
    }
    Optim opt_state, *opt = &opt_state;
    if (optim_init(opt, &oc, otensors, model.num_tensors, model.num_params, err, sizeof err)) config_error(err);

    const int Le = o.enc_len, Ld = o.dec_len;
    const double step_flops = t5_model_flops_per_step(&cfg, o.batch, Le, Ld);
    const size_t act_bytes = t5_model_activation_bytes(&cfg, micro, Le, Ld);
    const size_t param_bytes = model.num_params * sizeof(float);
    const size_t opt_bytes = opt->state_numel * sizeof(float);
    const size_t estimate = 2 * param_bytes + opt_bytes + act_bytes;

    /* MFU is measured against the sgemm peak of this machine now: every rank measures at the same
     * time (as they will train), and the peak of the run is the sum over ranks. */
    double gemm_s = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    /* the first measurement also wakes the thread pool; the better of two is the peak */
    double peak_gflops = blas_measure_sgemm_gflops(2048, threads, 3, &gemm_s);
    double again = blas_measure_sgemm_gflops(2048, threads, 5, &gemm_s);
    if (again > peak_gflops) peak_gflops = again;
    MPI_Allreduce(MPI_IN_PLACE, &peak_gflops, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);

    if (mpi_rank == 0) {
        printf("t5pretrain: %s | el %d dl %d d_model %d d_ff %d heads %d d_kv %d vocab %d | %zu params (%.2fM)\n",
               cfg.name, cfg.n_enc_layers, cfg.n_dec_layers, cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.d_kv,
               cfg.vocab_size, model.num_params, model.num_params / 1e6);
        printf("t5pretrain: %d rank(s) x %d thread(s); global batch %d = %d rank(s) x %d micro-batch(es) x %d; "
               "lengths %d/%d; %s, %s lr; %s\n",
               mpi_world, threads, o.batch, mpi_world, local_rows / micro, micro, Le, Ld, o.optimizer,
               oc.lr.kind == LR_RSQRT ? "rsqrt" : "cosine", o.synthetic ? "synthetic data" : "C4 data");
        printf("t5pretrain: BLAS %s\n", blas_runtime_describe());
        printf("t5pretrain: memory estimate per rank %.1f MiB = params %.1f + grads %.1f + optimizer %.1f + "
               "activations %.1f (micro-batch %d)\n",
               estimate / 1048576.0, param_bytes / 1048576.0, param_bytes / 1048576.0, opt_bytes / 1048576.0,
               act_bytes / 1048576.0, micro);
        printf("t5pretrain: %.3f TFLOP per step (t5-spec section 8); sgemm peak measured now: %.1f GFLOP/s (all ranks)\n",
               step_flops / 1e12, peak_gflops);
        fflush(stdout);
    }
    if (o.dry_run) {
        optim_free(opt);
        free(otensors);
        t5_model_free(&model);
        if (src.loader) data_loader_close(src.loader);
        MPI_Finalize();
        return 0;
    }

    FILE *metrics = NULL;
    if (mpi_rank == 0) {
        if (mkdir_p(o.run_dir) != 0)
            FATAL("choose a writable --run-dir", "cannot create run directory '%s'", o.run_dir);
        char path[1200];
        snprintf(path, sizeof path, "%s/metrics.jsonl", o.run_dir);
        metrics = xfopen(path, "w");
        snprintf(path, sizeof path, "%s/config.txt", o.run_dir);
        FILE *cf = xfopen(path, "w");
        options_print(&o, cf);
        fclose(cf);
    }

    signal(SIGINT, on_stop_signal);
    signal(SIGTERM, on_stop_signal);
    signal(SIGUSR1, on_stop_signal);

    T5Batch local;
    t5_batch_alloc(&local, local_rows, Le, Ld);
    const float loss_scale = 1.0f / (float)((double)o.batch * Ld);
    const double t_start = now_seconds();
    long tokens_total = 0;
    long step = 0;
    int exhausted = 0;
    for (step = 0; step < o.steps; step++) {
        /* A stop request becomes a collective decision at the step boundary. */
        int stop = stop_requested;
        MPI_Allreduce(MPI_IN_PLACE, &stop, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (stop) break;

        double t0 = now_seconds(), wait_s;
        int rc = next_local_batch(&src, &local, step, &wait_s);
        MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (rc == 1) { exhausted = 1; break; }

        t5_model_zero_grad(&model);
        StepStats ss = {0, 0, 0};
        for (int r = 0; r < local_rows; r += micro) {
            T5Batch mb = t5_batch_slice(&local, r, micro);
            T5LossStats st;
            t5_model_forward(&model, &mb, (float)o.z_loss, &st);
            t5_model_backward(&model, loss_scale);
            ss.ce_sum += st.ce_sum;
            ss.z_sum += st.z_sum;
            ss.tokens += (double)st.tokens;
        }
        if (mpi_world > 1) {
            allreduce_sum_floats(model.grads, model.num_params);
            MPI_Allreduce(MPI_IN_PLACE, &ss, 3, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        }
        if (!all_finite(model.grads, model.num_params))
            FATAL("lower the learning rate, or report the batch (t5data dump-batch --step S)",
                  "rank %d step %ld: non-finite gradient; the update was not applied", mpi_rank, step);
        double gnorm = grad_l2_norm(model.grads, model.num_params);
        double lr = optim_step(opt, model.params, model.grads, step);
        double t1 = now_seconds();

        double step_s = t1 - t0;
        long tokens = (long)o.batch * Le;
        tokens_total += tokens;
        double objective = (ss.ce_sum + o.z_loss * ss.z_sum) / ((double)o.batch * Ld);
        double ce_tok = ss.tokens > 0 ? ss.ce_sum / ss.tokens : NAN;
        double z_tok = ss.tokens > 0 ? o.z_loss * ss.z_sum / ss.tokens : NAN;
        double gflops = step_flops / step_s / 1e9;
        double mfu = peak_gflops > 0 ? gflops / peak_gflops : 0;
        double elapsed = t1 - t_start;

        double val_loss = NAN, val_tokens = 0;
        if (o.eval_every > 0 && ((step + 1) % o.eval_every == 0 || step + 1 == o.steps))
            val_loss = evaluate(&model, &o, &val_cfg, &local, micro, &val_tokens);

        if (mpi_rank == 0) {
            fprintf(metrics,
                    "{\"step\": %ld, \"loss\": %.6f, \"ce\": %.6f, \"z_loss\": %.6f, \"lr\": %.8g, "
                    "\"grad_norm\": %.6g, \"param_rms\": %.6g, \"tokens\": %ld, \"target_tokens\": %.0f, "
                    "\"tokens_per_s\": %.1f, \"gflops\": %.2f, \"mfu\": %.4f, \"step_s\": %.4f, "
                    "\"data_wait_s\": %.4f, \"elapsed_s\": %.3f",
                    step + 1, objective, ce_tok, z_tok, lr, gnorm, params_rms(model.params, model.num_params),
                    tokens_total, ss.tokens, tokens / step_s, gflops, mfu, step_s, wait_s, elapsed);
            if (!isnan(val_loss))
                fprintf(metrics, ", \"val_loss\": %.6f, \"val_neg_log_perplexity\": %.6f, \"val_tokens\": %.0f",
                        val_loss, -val_loss, val_tokens);
            fprintf(metrics, "}\n");
            fflush(metrics);
            if ((step + 1) % o.log_every == 0 || step + 1 == o.steps || !isnan(val_loss)) {
                char eta[32];
                format_eta(elapsed / (double)(step + 1) * (double)(o.steps - step - 1), eta, sizeof eta);
                printf("step %ld/%ld | loss %.4f | ce/token %.4f | lr %.3g | grad norm %.3g | %.0f tok/s | "
                       "%.1f GFLOP/s | MFU %.1f%% | data wait %.0f ms | ETA %s",
                       step + 1, o.steps, objective, ce_tok, lr, gnorm, tokens / step_s, gflops, 100 * mfu,
                       1000 * wait_s, eta);
                if (!isnan(val_loss)) printf(" | val loss %.4f", val_loss);
                printf("\n");
                fflush(stdout);
            }
            if (o.save_every > 0 && (step + 1) % o.save_every == 0 && step + 1 < o.steps) {
                char name[64];
                snprintf(name, sizeof name, "weights_step_%08ld", step + 1);
                save_weights(&model, o.run_dir, name);
            }
        }
    }

    if (mpi_rank == 0) {
        if (stop_requested) printf("t5pretrain: stop requested; stopping after step %ld\n", step);
        if (exhausted) printf("t5pretrain: training data exhausted after step %ld (see --max-epochs)\n", step);
        if (src.loader) {
            printf("t5pretrain: data read by rank 0:\n");
            data_loader_print_stats(src.loader, stdout);
        }
        save_weights(&model, o.run_dir, "final");
        printf("t5pretrain: wrote %s/final (config.json + model.safetensors); metrics in %s/metrics.jsonl\n",
               o.run_dir, o.run_dir);
        printf("t5pretrain: peak RSS %.1f MiB (estimate %.1f MiB)\n", peak_rss_bytes() / 1048576.0,
               estimate / 1048576.0);
        fsync(fileno(metrics));
        fclose(metrics);
    }

    t5_batch_free(&local);
    optim_free(opt);
    free(otensors);
    t5_model_free(&model);
    if (src.loader) data_loader_close(src.loader);
    for (int i = 0; i < n_files; i++) free(files[i]);
    free(files);
    for (int i = 0; i < n_val_files; i++) free(val_files[i]);
    free(val_files);
    MPI_Finalize();
    return 0;
}
