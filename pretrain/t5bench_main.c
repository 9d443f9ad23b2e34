/*
 * pretrain/t5bench_main.c: bin/t5bench, speed and memory of one training configuration, measured
 * in ONE process so that MFU is relative to the sgemm peak of the same run.
 *
 *   t5bench [--variant NAME] [--batch B] [--enc-len Le] [--dec-len Ld] [--steps N] [--warmup W]
 *           [--threads T] [--gemm-n N] [--gemm-reps R] [--seed S] [--no-optimizer] [--gemm-only]
 *
 * Measures
 *   (a) the matrix-product peaks of both precisions (fp32: OpenBLAS sgemm; bf16: oneDNN on
 *       pre-converted operands), N^3 (default 2048^3), best of R calls, measured before and after
 *       the model (flagged when the rounds disagree: the machine was busy);
 *   (b) W warm-up then N timed training steps on synthetic span-corrupted batches: zero_grad,
 *       forward, backward, Adafactor update. Reports the median step time (and the phases), encoder
 *       tokens/s (B*Le / step), target tokens/s, achieved GFLOP/s by t5_model_flops_per_step
 *       (docs/t5-recipe.md section 8), MFU = achieved / the measured peak of the precision that ran
 *       (--precision; default as the trainer's), the per-op profile (t5_ops classes, bf16
 *       conversion vs kernels), and peak RSS against an analytical estimate (params + grads +
 *       optimizer state + t5_model_activation_bytes + gemm_extra_bytes).
 * Human-readable lines go to stdout; the LAST line of stdout is one JSON object with every number
 * (tests/bench.sh reads it).
 */
#include <cblas.h>    /* openblas_get_corename */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "common/blas_runtime.h"
#include "common/util.h"
#include "data/synthetic.h"
#include "pretrain/gemm.h"
#include "pretrain/optim.h"
#include "pretrain/t5_batch.h"
#include "pretrain/t5_config.h"
#include "pretrain/t5_model.h"
#include "pretrain/t5_ops.h"

typedef struct {
    char variant[128];
    int B, Le, Ld, steps, warmup, threads, gemm_n, gemm_reps, optimizer, gemm_only;
    int precision;           /* GemmPrecision, or -1: the default policy */
    long seed;
    const char *gemm_dump;   /* directory, or NULL */
} BenchOptions;


/* The options through the shared parser (common/args.h). */
typedef struct {
    char variant[128], precision[8], gemm_dump[4096];
    int batch, enc_len, dec_len, steps, warmup, threads, gemm_n, gemm_reps, no_optimizer, gemm_only;
    long seed;
} BenchArgs;
#define BN_(f, lo, help) ARG_NUM_(BenchArgs, ARG_INT, f, lo, 1e9, NULL, help, NULL)
static const ArgSpec SPECS[] = {
    ARG_STR_(BenchArgs, variant, NULL, "NAME", "model variant", NULL),
    BN_(batch, 0, "micro-batch rows"),
    BN_(enc_len, 0, "encoder length"),
    BN_(dec_len, 0, "decoder length"),
    BN_(steps, 0, "timed steps"),
    BN_(warmup, 1, "untimed steps first"),
    ARG_NUM_(BenchArgs, ARG_INT, threads, 0, 1e9, NULL, "threads", "all cores"),
    BN_(gemm_n, 0, "size of the peak's n^3 product"),
    BN_(gemm_reps, 0, "timed calls of the peak product"),
    ARG_NUM_(BenchArgs, ARG_LONG, seed, 1, 1e18, NULL, "seed", NULL),
    ARG_STR_(BenchArgs, precision, "auto|fp32|bf16", NULL, "matrix-product inputs", "auto: bf16 when the CPU has AMX-BF16 or AVX512_BF16"),
    ARG_FLAG_(BenchArgs, no_optimizer, "time forward + backward only"),
    ARG_FLAG_(BenchArgs, gemm_only, "only the matmul peaks (no model)"),
    ARG_STR_(BenchArgs, gemm_dump, NULL, "DIR", "also write a fixed product C = A B (A.f32 B.f32 C.f32, dims.txt) to compare kernels", NULL),
};
static const ArgParser PARSER = {"usage: t5bench [options]", SPECS, (int)(sizeof SPECS / sizeof SPECS[0]), NULL};
static BenchArgs args_;   /* keeps the strings BenchOptions points at */

static void parse_args_(BenchOptions *o, int argc, char **argv) {
    BenchArgs d;
    memset(&d, 0, sizeof d);
    snprintf(d.variant, sizeof d.variant, "t5-efficient-small");
    snprintf(d.precision, sizeof d.precision, "auto");
    d.batch = 8; d.enc_len = 512; d.dec_len = 128; d.steps = 5; d.warmup = 1; d.threads = 0;
    d.gemm_n = 2048; d.gemm_reps = 5; d.seed = 1;
    args_ = d;
    char err[1024];
    int rc = args_parse(&PARSER, &args_, &d, argc, argv, 1, stdout, NULL, 0, NULL, err, sizeof err);
    if (rc == 1) exit(0);
    if (rc < 0) {
        fprintf(stderr, "t5bench: %s (see --help)\n", err);
        exit(2);
    }
    memset(o, 0, sizeof *o);
    snprintf(o->variant, sizeof o->variant, "%s", args_.variant);
    o->B = args_.batch; o->Le = args_.enc_len; o->Ld = args_.dec_len; o->steps = args_.steps;
    o->warmup = args_.warmup; o->threads = args_.threads; o->gemm_n = args_.gemm_n;
    o->gemm_reps = args_.gemm_reps; o->optimizer = !args_.no_optimizer; o->gemm_only = args_.gemm_only;
    o->seed = args_.seed;
    o->gemm_dump = args_.gemm_dump[0] ? args_.gemm_dump : NULL;
    GemmPrecision p;
    o->precision = !strcmp(args_.precision, "auto") ? -1
                 : (gemm_parse_precision(args_.precision, &p), (int)p);
}

static int cmp_double_(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median_(double *x, int n) {
    if (n <= 0) return 0.0;
    qsort(x, (size_t)n, sizeof(double), cmp_double_);
    return (n % 2) ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

/* Escape-free JSON string (variant and core names contain no quotes or backslashes; anything
 * else is replaced by '_' to stay valid). */
static void json_str_(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) fputc((*s == '"' || *s == '\\' || (unsigned char)*s < 0x20) ? '_' : *s, f);
    fputc('"', f);
}

typedef struct {
    double step_s, fwd_s, bwd_s, opt_s;   /* medians */
    double step_min_s, step_max_s;         /* spread of the timed steps (noise indicator) */
    double first_loss, last_loss;
    long targets;                          /* labels != 0 in one batch */
    size_t num_params, opt_state_floats, act_bytes, est_bytes, rss_before_model, peak_rss;
    double flops_per_step;
    size_t gemm_extra_bytes, gemm_cache_bytes;
    double prof_s[T5_PROFILE_CLASSES];     /* per timed step (mean) */
    const char *prof_names[T5_PROFILE_CLASSES];
    int prof_n;
    double conv_s, kern_s;                 /* gemm: bf16 conversion / kernels, per timed step */
    double fwdbwd_mean_s;                  /* mean forward+backward (the profile is a mean too) */
} ModelBench;

static void bench_model_(const BenchOptions *o, const T5Config *cfg, ModelBench *r) {
    memset(r, 0, sizeof *r);
    r->rss_before_model = current_rss_bytes();
    T5Model m;
    t5_model_build(&m, cfg);
    t5_model_init_weights(&m, (uint64_t)o->seed);
    gemm_weights_updated();
    t5_profile_enable(1);
    gemm_stats_enable(1);
    r->num_params = m.num_params;

    Optim opt;
    memset(&opt, 0, sizeof opt);
    if (o->optimizer) {
        OptimConfig oc;
        optim_config_default(&oc, OPTIM_ADAFACTOR);
        OptimTensor *tt = xcalloc((size_t)m.num_tensors, sizeof(OptimTensor));
        for (int i = 0; i < m.num_tensors; i++) {
            tt[i].offset = m.tensors[i].offset;
            tt[i].numel = m.tensors[i].numel;
            tt[i].rows = m.tensors[i].shape[0];
            tt[i].cols = m.tensors[i].ndim == 2 ? m.tensors[i].shape[1] : 0;
        }
        char err[256];
        if (optim_init(&opt, &oc, tt, m.num_tensors, m.num_params, err, sizeof err) != 0)
            FATAL("this is a bug in the optimizer table built by t5bench",
                  "optim_init failed: %s", err);
        free(tt);
        r->opt_state_floats = opt.state_numel;
    }

    T5Batch b;
    t5_batch_alloc(&b, o->B, o->Le, o->Ld);
    int total = o->warmup + o->steps;
    double *ts = xcalloc((size_t)total, sizeof(double)), *tf = xcalloc((size_t)total, sizeof(double));
    double *tb = xcalloc((size_t)total, sizeof(double)), *to = xcalloc((size_t)total, sizeof(double));
    const float zc = 1e-4f;                                    /* docs/t5-recipe.md section 5.4 */
    const float scale = 1.0f / ((float)o->B * (float)o->Ld);   /* sum / (batch x Ld) */
    for (int s = 0; s < total; s++) {
        /* T5 ids: 32000 SentencePiece pieces, sentinels <extra_id_0> = 32099 downwards */
        synthetic_batch(&b, 32000, 32099, (uint64_t)o->seed, s, 0);
        if (s == 0) r->targets = t5_batch_count_targets(&b);
        T5LossStats ls;
        if (s == o->warmup) { t5_profile_reset(); gemm_stats_reset(); }
        double t0 = now_seconds();
        t5_model_zero_grad(&m);
        t5_model_forward(&m, &b, zc, &ls);
        double t1 = now_seconds();
        t5_model_backward(&m, scale);
        double t2 = now_seconds();
        if (o->optimizer) {
            optim_step(&opt, m.params, m.grads, s);
            gemm_weights_updated();   /* the bf16 weight copies are stale now */
        }
        double t3 = now_seconds();
        double loss = ls.tokens > 0 ? ls.ce_sum / (double)ls.tokens : NAN;
        if (s == 0) r->first_loss = loss;
        r->last_loss = loss;
        if (!isfinite(loss))
            fprintf(stderr, "t5bench: warning: step %d loss is %g (not finite)\n", s, loss);
        printf("step %d%s: %.3f s (fwd %.3f, bwd %.3f, opt %.3f), loss %.4f\n", s,
               s < o->warmup ? " (warm-up)" : "", t3 - t0, t1 - t0, t2 - t1, t3 - t2, loss);
        fflush(stdout);
        if (s >= o->warmup) {
            int k = s - o->warmup;
            ts[k] = t3 - t0; tf[k] = t1 - t0; tb[k] = t2 - t1; to[k] = t3 - t2;
        }
    }
    r->step_s = median_(ts, o->steps);   /* sorts ts */
    r->step_min_s = ts[0];
    r->step_max_s = ts[o->steps - 1];
    for (int k = 0; k < o->steps; k++) r->fwdbwd_mean_s += (tf[k] + tb[k]) / o->steps;
    r->fwd_s = median_(tf, o->steps);
    r->bwd_s = median_(tb, o->steps);
    r->opt_s = median_(to, o->steps);
    r->prof_n = t5_profile_totals(r->prof_s, r->prof_names);
    for (int i = 0; i < r->prof_n; i++) r->prof_s[i] /= o->steps;
    GemmStats gs;
    gemm_stats_get(&gs);
    r->conv_s = gs.convert_s / o->steps;
    r->kern_s = gs.kernel_s / o->steps;
    r->gemm_cache_bytes = gemm_cache_bytes();
    r->peak_rss = peak_rss_bytes();
    r->act_bytes = t5_model_activation_bytes(cfg, o->B, o->Le, o->Ld);
    GemmConfig gc;
    gemm_get_config(&gc);
    size_t M = (size_t)o->B * o->Ld, N = (size_t)o->B * o->Le;
    size_t widest = (size_t)(cfg->d_ff > cfg->d_model ? cfg->d_ff : cfg->d_model) *
                    (cfg->ffn == T5_FFN_GATED_GELU ? 2 : 1);
    r->gemm_extra_bytes = gemm_extra_bytes(gc.precision, m.num_params, M * cfg->vocab_size,
                                           N * widest, omp_get_max_threads());
    r->est_bytes = 2 * r->num_params * sizeof(float) + r->opt_state_floats * sizeof(float) +
                   r->act_bytes + r->gemm_extra_bytes;
    r->flops_per_step = t5_model_flops_per_step(cfg, o->B, o->Le, o->Ld);
    free(ts); free(tf); free(tb); free(to);
    t5_batch_free(&b);
    if (o->optimizer) optim_free(&opt);
    t5_model_free(&m);
}

/* Write A (M x K), B (K x N) and C = A B from cblas_sgemm as raw float32 files into dir, so a
 * test can compare the products of two kernels with an independent reference. */
static void gemm_dump_(const char *dir, uint64_t seed) {
    const int M = 193, K = 321, N = 157;   /* odd: partial tiles in every dimension */
    float *A = xmalloc(sizeof(float) * M * K), *B = xmalloc(sizeof(float) * K * N);
    float *C = xmalloc(sizeof(float) * M * N);
    Rng r = rng_make(seed, 77);
    for (int i = 0; i < M * K; i++) A[i] = (float)(2.0 * rng_next_double(&r) - 1.0);
    for (int i = 0; i < K * N; i++) B[i] = (float)(2.0 * rng_next_double(&r) - 1.0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    char path[4096], dims[64];
    int dl = snprintf(dims, sizeof dims, "%d %d %d\n", M, K, N);
    struct { const char *name; const void *p; size_t n; } out[] = {
        {"A.f32", A, sizeof(float) * M * K}, {"B.f32", B, sizeof(float) * K * N},
        {"C.f32", C, sizeof(float) * M * N}, {"dims.txt", dims, (size_t)dl},
    };
    if (mkdir_p(dir) != 0)
        FATAL("check the --gemm-dump path", "cannot create directory %s", dir);
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, out[i].name);
        if (write_file_atomic(path, out[i].p, out[i].n) != 0)
            FATAL("check the --gemm-dump path and free space", "cannot write %s", path);
    }
    printf("gemm dump: C = A B (%d x %d x %d) written to %s\n", M, K, N, dir);
    free(A); free(B); free(C);
}

/* Peak of one precision measured before and after the model (the machine is shared: the best
 * call of both rounds is the peak; disturbed when a round's median is >15% below its best or the
 * two rounds' bests differ by more than 10%). */
typedef struct {
    GemmPeak before, after;
    double best;
    int disturbed, ok;
    char err[256];
} PeakPair;

static void peak_round_(PeakPair *pp, GemmPrecision p, const BenchOptions *o, int threads,
                        int after) {
    GemmPeak *g = after ? &pp->after : &pp->before;
    if (gemm_measure_peak(p, o->gemm_n, threads, o->gemm_reps, g, pp->err, sizeof pp->err) != 0) {
        pp->ok = 0;
        return;
    }
    if (!after) { pp->ok = 1; pp->best = g->best_gflops; pp->disturbed = g->disturbed; return; }
    if (!pp->ok) return;
    double a = pp->before.best_gflops, b = pp->after.best_gflops;
    pp->best = a > b ? a : b;
    pp->disturbed = pp->before.disturbed || pp->after.disturbed ||
                    fabs(a - b) > 0.10 * pp->best;
}

int main(int argc, char **argv) {
    BenchOptions o;
    parse_args_(&o, argc, argv);   /* pure; may exit before anything else happens */
    blas_runtime_setup(argc, argv, o.threads, 0);
    int threads = o.threads > 0 ? o.threads : omp_get_max_threads();
    blas_runtime_set_threads(threads);

    T5Config cfg;
    char err[512];
    if (!o.gemm_only && t5_config_from_variant(o.variant, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "t5bench: unknown variant '%s': %s\n", o.variant, err);
        return 2;
    }
    printf("t5bench: BLAS %s\n", blas_runtime_describe());
    char line[512];
    if (gemm_setup_precision(o.precision >= 0 ? gemm_precision_name((GemmPrecision)o.precision)
                                              : NULL, line, sizeof line, err, sizeof err) != 0) {
        fprintf(stderr, "t5bench: %s\n", err);
        return 2;
    }
    GemmConfig gc;
    gemm_get_config(&gc);
    printf("t5bench: %s\n", line);
    fflush(stdout);

    /* Both peaks, before and after the model (see PeakPair). */
    PeakPair pk[2];
    memset(pk, 0, sizeof pk);
    for (int p = 0; p < 2; p++) peak_round_(&pk[p], (GemmPrecision)p, &o, threads, 0);

    if (o.gemm_dump) gemm_dump_(o.gemm_dump, (uint64_t)o.seed);
    ModelBench r;
    memset(&r, 0, sizeof r);
    if (!o.gemm_only) {
        printf("t5bench: %s, B=%d Le=%d Ld=%d, %d warm-up + %d timed steps, %s, %d threads, %s\n",
               cfg.name, o.B, o.Le, o.Ld, o.warmup, o.steps,
               o.optimizer ? "forward+backward+Adafactor" : "forward+backward only", threads,
               gemm_precision_name(gc.precision));
        fflush(stdout);
        bench_model_(&o, &cfg, &r);
        printf("t5bench: %s\n", gemm_describe());
    }
    for (int p = 0; p < 2; p++) peak_round_(&pk[p], (GemmPrecision)p, &o, threads, 1);
    for (int p = 0; p < 2; p++) {
        if (!pk[p].ok) {
            printf("%s peak: not measured (%s)\n", gemm_precision_name((GemmPrecision)p),
                   pk[p].err);
            continue;
        }
        printf("%s peak: %.1f GFLOP/s (%d^3, best of 2 x %d calls; medians %.1f / %.1f), %s, "
               "%d threads%s\n", gemm_precision_name((GemmPrecision)p), pk[p].best, o.gemm_n,
               o.gemm_reps, pk[p].before.median_gflops, pk[p].after.median_gflops,
               pk[p].after.kernel, threads,
               pk[p].disturbed ? "  [DISTURBED: machine busy while measuring]" : "");
    }
    const PeakPair *mine = &pk[gc.precision];
    double peak = mine->ok ? mine->best : 0.0;

    double enc_tps = 0, tgt_tps = 0, dec_tps = 0, gflops = 0, mfu = 0, rss_ratio = 0;
    double tot_prof = 0;
    for (int i = 0; i < r.prof_n; i++) tot_prof += r.prof_s[i];
    int mfu_flag = mine->disturbed;
    if (!o.gemm_only) {
        enc_tps = (double)o.B * o.Le / r.step_s;
        dec_tps = (double)o.B * o.Ld / r.step_s;
        tgt_tps = (double)r.targets / r.step_s;
        gflops = r.flops_per_step / r.step_s / 1e9;
        mfu = peak > 0 ? gflops / peak : 0;
        if (mfu > 1.0) mfu_flag = 1;
        rss_ratio = r.est_bytes ? (double)r.peak_rss / (double)r.est_bytes : 0;
        const double MiB = 1048576.0;
        printf("step: median %.3f s (forward %.3f, backward %.3f, optimizer %.3f); min %.3f, "
               "max %.3f\n", r.step_s, r.fwd_s, r.bwd_s, r.opt_s, r.step_min_s, r.step_max_s);
        printf("tokens/s: %.0f encoder (B*Le), %.0f decoder positions (B*Ld), %.0f targets "
               "(%ld per batch)\n", enc_tps, dec_tps, tgt_tps, r.targets);
        printf("compute: %.2f GFLOP/step (docs/t5-recipe.md section 8), %.1f GFLOP/s achieved, MFU %.1f%% of the "
               "%s peak measured in this run%s\n", r.flops_per_step / 1e9, gflops, 100 * mfu,
               gemm_precision_name(gc.precision),
               mfu_flag ? " [UNRELIABLE: peak measurement disturbed]" : "");
        double tot = 0;
        printf("profile (s per step, mean of the timed steps, %s):",
               gemm_precision_name(gc.precision));
        for (int i = 0; i < r.prof_n; i++) {
            printf(" %s %.3f", r.prof_names[i], r.prof_s[i]);
            tot += r.prof_s[i];
        }
        printf(" | rest of fwd+bwd %.3f (of mean %.3f) | optimizer %.3f",
               r.fwdbwd_mean_s - tot, r.fwdbwd_mean_s, r.opt_s);
        printf(" | of matmul: bf16 conversion %.3f, kernels %.3f\n", r.conv_s, r.kern_s);
        printf("memory: peak RSS %.1f MiB; estimate %.1f MiB = params %.1f + grads %.1f + "
               "optimizer %.1f + activations %.1f + %s GEMM copies/buffers %.1f (held at end "
               "%.1f); ratio %.2f (RSS before model %.1f MiB)\n",
               r.peak_rss / MiB, r.est_bytes / MiB, r.num_params * 4 / MiB,
               r.num_params * 4 / MiB, r.opt_state_floats * 4 / MiB, r.act_bytes / MiB,
               gemm_precision_name(gc.precision), r.gemm_extra_bytes / MiB,
               r.gemm_cache_bytes / MiB, rss_ratio, r.rss_before_model / MiB);
        printf("loss: first %.4f, last %.4f\n", r.first_loss, r.last_loss);
    }

    /* machine-readable summary: the last line */
    printf("{\"variant\":");
    json_str_(stdout, o.gemm_only ? "" : cfg.name);
    printf(",\"blas_core\":");
    json_str_(stdout, openblas_get_corename());
    printf(",\"precision\":\"%s\",\"threads\":%d,\"gemm_n\":%d", gemm_precision_name(gc.precision),
           threads, o.gemm_n);
    printf(",\"sgemm_gflops\":%.2f,\"sgemm_median_s\":%.6f", pk[0].ok ? pk[0].best : 0.0,
           pk[0].ok ? 2.0 * o.gemm_n * (double)o.gemm_n * o.gemm_n / 1e9 /
                          (pk[0].after.median_gflops > 0 ? pk[0].after.median_gflops : 1) : 0.0);
    printf(",\"fp32_peak_gflops\":%.2f,\"fp32_peak_disturbed\":%d", pk[0].ok ? pk[0].best : 0.0,
           pk[0].disturbed);
    printf(",\"bf16_peak_gflops\":%.2f,\"bf16_peak_disturbed\":%d", pk[1].ok ? pk[1].best : 0.0,
           pk[1].disturbed);
    if (!o.gemm_only) {
        printf(",\"B\":%d,\"Le\":%d,\"Ld\":%d,\"steps\":%d,\"optimizer\":%s,\"params\":%zu",
               o.B, o.Le, o.Ld, o.steps, o.optimizer ? "true" : "false", r.num_params);
        printf(",\"step_s\":%.6f,\"step_min_s\":%.6f,\"step_max_s\":%.6f", r.step_s,
               r.step_min_s, r.step_max_s);
        printf(",\"fwd_s\":%.6f,\"bwd_s\":%.6f,\"opt_s\":%.6f", r.fwd_s, r.bwd_s, r.opt_s);
        printf(",\"enc_tokens_per_s\":%.1f,\"dec_tokens_per_s\":%.1f,\"target_tokens_per_s\":%.1f",
               enc_tps, dec_tps, tgt_tps);
        printf(",\"flops_per_step\":%.6g,\"gflops\":%.2f,\"mfu\":%.4f,\"mfu_unreliable\":%d",
               r.flops_per_step, gflops, mfu, mfu_flag);
        for (int i = 0; i < r.prof_n; i++) printf(",\"prof_%s_s\":%.6f", r.prof_names[i], r.prof_s[i]);
        printf(",\"prof_convert_s\":%.6f,\"prof_gemm_kernel_s\":%.6f,\"prof_rest_s\":%.6f",
               r.conv_s, r.kern_s, r.fwdbwd_mean_s - tot_prof);
        printf(",\"peak_rss_bytes\":%zu,\"est_bytes\":%zu,\"act_bytes\":%zu,\"gemm_extra_bytes\":%zu"
               ",\"rss_ratio\":%.3f", r.peak_rss, r.est_bytes, r.act_bytes, r.gemm_extra_bytes,
               rss_ratio);
        printf(",\"first_loss\":%.6f,\"last_loss\":%.6f", isfinite(r.first_loss) ? r.first_loss : -1,
               isfinite(r.last_loss) ? r.last_loss : -1);
    }
    printf("}\n");
    gemm_release();
    return 0;
}
