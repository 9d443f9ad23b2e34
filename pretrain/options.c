/* pretrain/options.c: see options.h. */
#include "options.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"

#define S(f, ch, meta, help, dflt) ARG_STR_(TrainOptions, f, ch, meta, help, dflt)
#define N(kind, f, lo, hi, meta, help, dflt) ARG_NUM_(TrainOptions, kind, f, lo, hi, meta, help, dflt)
#define F(f, help) ARG_FLAG_(TrainOptions, f, help)

/* Flag names use '-' where the field uses '_' ("--run-dir" -> run_dir). */
static const ArgSpec SPECS[] = {
    S(variant, NULL, "NAME", "model variant, e.g. small, t5-efficient-small-el16-dl8, google/t5-efficient-mini (see --list-variants)", "required"),
    S(run_dir, NULL, "DIR", "output directory: metrics.jsonl, config.txt, ckpt/, final/", NULL),
    S(data, NULL, "GLOB", "training data: comma-separated globs of C4 files (.json.gz/.json.zst/.json/.tar)", NULL),
    S(spm, NULL, "MODEL", "SentencePiece model (spiece.model)", NULL),
    S(val_data, NULL, "GLOB", "validation data globs (validation loss every --eval-every steps)", NULL),
    F(synthetic, "train on generated span-corrupted batches of the real shapes (no data files)"),
    N(ARG_LONG, steps, 1, 1e12, NULL, "training steps (the T5-Efficient budget is 524288)", NULL),
    N(ARG_INT, batch, 1, 1 << 20, NULL, "global batch in sequences (T5-Efficient: 128)", NULL),
    N(ARG_INT, micro_batch, 0, 1 << 20, NULL, "sequences per forward/backward on one rank; gradients accumulate up to the batch", "auto: the largest share of the rank's rows that fits in memory"),
    N(ARG_INT, threads, 0, 4096, NULL, "threads per rank", "auto: SLURM_CPUS_PER_TASK, else OMP_NUM_THREADS, else the CPUs of this process / ranks on the node"),
    N(ARG_LONG, seed, 0, 9.2e18, NULL, "seed of initialisation and data order (validation data uses seed + 1)", NULL),
    S(optimizer, "adafactor|adamw", NULL, "adafactor (Mesh TF, the T5 recipe) or adamw", NULL),
    S(lr_schedule, "auto|rsqrt|cosine", NULL, "rsqrt: lr / sqrt(max(step, warmup)) (the T5 recipe); cosine: linear warm-up to lr, cosine down to min-lr", "auto: rsqrt for adafactor, cosine for adamw"),
    N(ARG_DOUBLE, lr, -1, 1e3, "X", "rsqrt: multiplier; cosine: peak learning rate (must be > 0)", "auto: rsqrt 1.0; cosine 0.01 (adafactor) or 1e-3 (adamw)"),
    N(ARG_LONG, warmup_steps, -1, 1e12, NULL, "rsqrt: the constant phase; cosine: the linear warm-up (must be < --steps)", "auto: rsqrt 10000; cosine min(1000, steps / 10)"),
    N(ARG_DOUBLE, min_lr, -1, 1e3, "X", "cosine: final learning rate", "auto: lr / 10"),
    N(ARG_DOUBLE, weight_decay, 0, 10, "X", "adamw: decoupled weight decay of 2-D tensors", NULL),
    N(ARG_DOUBLE, z_loss, 0, 1, "X", "z-loss coefficient (T5: 1e-4)", NULL),
    N(ARG_INT, enc_len, 8, 1 << 16, NULL, "encoder length (T5: 512)", NULL),
    N(ARG_INT, dec_len, 4, 1 << 16, NULL, "decoder length (T5: 114 real tokens; 128 leaves room for packing)", NULL),
    N(ARG_INT, log_every, 1, 1 << 30, NULL, "progress line every N steps", NULL),
    N(ARG_INT, eval_every, 0, 1 << 30, NULL, "validation loss every N steps (0 = never)", NULL),
    N(ARG_INT, eval_batches, 1, 1 << 20, NULL, "validation batches (of --batch rows) per evaluation", NULL),
    S(t5_version, "1.0|1.1", NULL, "1.0: ReLU, tied embedding (T5-Efficient); 1.1: gated-GELU, untied head", NULL),
    S(precision, "auto|fp32|bf16", NULL, "inputs of matrix products in fp32 or bf16 (fp32 accumulation, weights and everything else)", "auto: bf16 where the CPU has AMX-BF16/AVX512-BF16 and oneDNN works, else fp32"),
    N(ARG_INT, prefetch, 0, 64, NULL, "batches the data thread keeps ready (0 = no thread)", NULL),
    N(ARG_INT, max_epochs, 0, 1 << 20, NULL, "stop after this many passes over the data (0 = unlimited)", NULL),
    N(ARG_LONG, save_every, 0, 1e12, NULL, "checkpoint every N steps (0 = only when stopping and at the end)", NULL),
    N(ARG_DOUBLE, save_every_minutes, 0, 1e9, "X", "also checkpoint when X minutes passed since the last one (0 = off)", NULL),
    N(ARG_INT, keep_last, 0, 1 << 30, "K", "keep the newest K checkpoints (0 = all)", NULL),
    N(ARG_LONG, keep_every, 0, 1e12, "M", "also keep forever every checkpoint whose step is a multiple of M (0 = none)", NULL),
    F(resume, "continue from RUN_DIR/ckpt/latest (options not given come from the checkpoint)"),
    S(init_from, NULL, "HF_DIR", "start a new run from Hugging Face weights (t5ckpt import/export folder), fresh optimizer", NULL),
    N(ARG_DOUBLE, end_time, 0, 1e12, "UNIX_S", "stop with a checkpoint (exit 75) before this time (a job's end)", "0: none"),
    N(ARG_DOUBLE, end_time_margin, 0, 1e7, "S", "seconds kept free before --end-time for the last step and save", NULL),
    N(ARG_INT, pp, 1, 4096, "P", "pipeline-parallel stages (data-parallel size = ranks / (pp * tp))", NULL),
    S(pp_split, NULL, "auto|LIST", "stage split: auto (balanced by the cost model) or blocks per stage, e.g. 14,13,13,20 for 48 + 12 blocks", NULL),
    N(ARG_INT, zero, 0, 1, NULL, "1: ZeRO-1, optimizer state sharded over data-parallel ranks", NULL),
    S(recompute, "auto|on|off", NULL, "activation recomputation: keep only block inputs, recompute in backward", "auto: on when the activations would not fit"),
    N(ARG_INT, tp, 1, 4096, "T", "tensor-parallel size: heads, d_ff and vocabulary split over T adjacent ranks (ranks = pp x dp x tp)", NULL),
    S(tp_reduce, "mpi|pblas", NULL, "tensor-parallel sums: mpi (local products + MPI_Allreduce) or pblas (the attention output products o as one psgemm each on a BLACS grid, the other sums by MPI; fp32 only; slower, for comparison)", NULL),
    N(ARG_INT, plan_world, 0, 1 << 24, NULL, "--dry-run: plan for this many ranks instead of the real ones", "0: the real ones"),
    N(ARG_INT, plan_ranks_per_node, 0, 1 << 16, NULL, "--dry-run: ranks per node of the plan", "0: the real ones"),
    F(list_variants, "print the known variants as TSV (name el dl dm ff kv nh params) and exit"),
    F(dry_run, "check the configuration, print the plan and memory estimate (last line: plan: JSON), exit"),
};
#define N_SPECS ((int)(sizeof SPECS / sizeof SPECS[0]))
static unsigned char given_[N_SPECS];
static const ArgParser PARSER = {
    "usage: t5pretrain --variant NAME (--data GLOB --spm MODEL | --synthetic) [options]\n"
    "       t5pretrain --resume --run-dir DIR [options to change, e.g. --steps N]\n"
    "       t5pretrain --list-variants\n"
    "Trains a T5-Efficient variant: RUN_DIR/metrics.jsonl (one JSON line per step), RUN_DIR/ckpt/\n"
    "(resumable checkpoints) and RUN_DIR/final/ (Hugging Face folder).\n"
    "Exit codes: 0 done, 1 failure, 2 bad configuration, 3 data exhausted, 75 stopped with a\n"
    "checkpoint (resume with --resume).\n\n"
    "  --config FILE                read options from FILE ('name = value' lines); flags override it",
    SPECS, N_SPECS, given_};

/* Options a config file (and config.txt) does not hold. */
static const char *NOT_IN_FILES = "list_variants|dry_run|resume|plan_world|plan_ranks_per_node";

const ArgParser *options_parser(void) { return &PARSER; }
int options_given(const char *name) { return args_given(&PARSER, name); }

void options_defaults(TrainOptions *o) {
    memset(o, 0, sizeof *o);
    snprintf(o->run_dir, sizeof o->run_dir, "run");
    o->steps = 524288;
    o->batch = 128;
    snprintf(o->optimizer, sizeof o->optimizer, "adafactor");
    snprintf(o->lr_schedule, sizeof o->lr_schedule, "auto");
    o->lr = -1;
    o->warmup_steps = -1;
    o->min_lr = -1;
    o->z_loss = 1e-4;
    o->enc_len = 512;
    o->dec_len = 128;
    o->log_every = 1;
    o->eval_batches = 4;
    snprintf(o->t5_version, sizeof o->t5_version, "1.0");
    snprintf(o->precision, sizeof o->precision, "auto");
    o->prefetch = 2;
    o->end_time_margin = 60;
    o->pp = 1;
    snprintf(o->pp_split, sizeof o->pp_split, "auto");
    snprintf(o->recompute, sizeof o->recompute, "auto");
    o->tp = 1;
    snprintf(o->tp_reduce, sizeof o->tp_reduce, "mpi");
}

int options_parse(TrainOptions *o, int argc, char **argv, const char *base_json, FILE *out,
                  char *err, size_t errlen) {
    memset(given_, 0, sizeof given_);
    TrainOptions defaults;
    options_defaults(&defaults);
    if (base_json) {
        if (args_apply_json(&PARSER, o, base_json, 1, "checkpoint options", err, errlen)) return -1;
        memset(given_, 0, sizeof given_);   /* what the checkpoint holds is not "given" now */
    }
    /* The config file first, so that flags override it wherever it appears. */
    int n = 0;
    char **rest = xcalloc((size_t)argc + 1, sizeof *rest);
    rest[n++] = argv[0];
    int rc = 0;
    for (int i = 1; i < argc && rc == 0; i++) {
        if (!strcmp(argv[i], "--config") || !strncmp(argv[i], "--config=", 9)) {
            const char *path = argv[i][8] == '=' ? argv[i] + 9 : (i + 1 < argc ? argv[++i] : NULL);
            if (!path) { set_error(err, errlen, "--config needs a file name"); rc = -1; }
            else rc = args_parse_file(&PARSER, o, path, NOT_IN_FILES, err, errlen);
        } else {
            rest[n++] = argv[i];
        }
    }
    if (rc == 0) rc = args_parse(&PARSER, o, &defaults, n, rest, 1, out, NULL, 0, NULL, err, errlen);
    free(rest);
    return rc;
}

int options_validate(const TrainOptions *o, int world, char *err, size_t errlen) {
    if (o->list_variants) return 0;
    if (!o->variant[0]) { set_error(err, errlen, "--variant is required (e.g. --variant small; see --list-variants)"); return -1; }
    if (o->synthetic && o->data[0]) { set_error(err, errlen, "--synthetic and --data exclude each other"); return -1; }
    if (!o->synthetic && !o->data[0]) {
        set_error(err, errlen, "no training data: give --data GLOB --spm MODEL, or --synthetic");
        return -1;
    }
    if (o->data[0] && !o->spm[0]) { set_error(err, errlen, "--data needs --spm MODEL (the SentencePiece model)"); return -1; }
    if (o->val_data[0] && !o->spm[0]) { set_error(err, errlen, "--val-data needs --spm MODEL"); return -1; }
    if (o->eval_every > 0 && !o->val_data[0]) {
        set_error(err, errlen, "--eval-every %d needs --val-data GLOB", o->eval_every);
        return -1;
    }
    if (o->lr == 0) { set_error(err, errlen, "--lr 0 would never train; give a positive learning rate (or leave it out for the default)"); return -1; }
    if (o->lr < 0 && o->lr != -1) { set_error(err, errlen, "--lr must be positive, got %g", o->lr); return -1; }
    if (o->resume && o->init_from[0]) { set_error(err, errlen, "--resume and --init-from exclude each other (--init-from starts a new run)"); return -1; }
    int ranks = o->dry_run && o->plan_world > 0 ? o->plan_world : world;
    if (ranks % (o->pp * o->tp) != 0) {
        set_error(err, errlen, "%d ranks cannot form a grid of --pp %d x --tp %d (ranks must be a multiple of %d)",
                  ranks, o->pp, o->tp, o->pp * o->tp);
        return -1;
    }
    int dp = ranks / (o->pp * o->tp);
    if (o->batch % dp != 0) {
        set_error(err, errlen, "--batch %d is not divisible by the %d data-parallel ranks; use a multiple of %d", o->batch, dp, dp);
        return -1;
    }
    int local = o->batch / dp;
    int micro = o->micro_batch ? o->micro_batch : local;
    if (micro > local || local % micro != 0) {
        set_error(err, errlen, "--micro-batch %d must divide the per-rank batch %d (= --batch %d / %d data-parallel ranks)",
                  micro, local, o->batch, dp);
        return -1;
    }
    if (o->synthetic && (o->enc_len < 512 || o->dec_len < 114)) {
        set_error(err, errlen, "--synthetic makes full 512/114 examples: needs --enc-len >= 512 and --dec-len >= 114");
        return -1;
    }
    return 0;
}

void options_print(const TrainOptions *o, FILE *out) { args_print_config(&PARSER, o, NOT_IN_FILES, out); }
char *options_to_json(const TrainOptions *o) { return args_to_json(&PARSER, o); }

int options_check_resume(const TrainOptions *now, const TrainOptions *saved, char *err, size_t errlen) {
    static const char *fixed[] = {"variant", "batch", "seed", "data", "spm", "enc_len", "dec_len",
                                  "t5_version", "optimizer", "synthetic", "val_data"};
    char a[4200], b[4200], msg[2048] = "";
    size_t used = 0;
    for (size_t k = 0; k < sizeof fixed / sizeof fixed[0]; k++) {
        int i = args_find(&PARSER, fixed[k]);
        args_format(&PARSER, now, i, a, sizeof a);
        args_format(&PARSER, saved, i, b, sizeof b);
        char flag[64];
        snprintf(flag, sizeof flag, "%s", fixed[k]);
        for (char *c = flag; *c; c++) if (*c == '_') *c = '-';
        if (strcmp(a, b) != 0 && used < sizeof msg)
            used += (size_t)snprintf(msg + used, sizeof msg - used, "%s--%s is '%s' now but '%s' in the checkpoint",
                                     used ? "; " : "", flag, a, b);
    }
    if (!used) return 0;
    set_error(err, errlen, "cannot resume with changed options: %s (these cannot change in a run; "
              "start a new --run-dir, or use --init-from RUN_DIR/final for new options)", msg);
    return -1;
}
