/*
 * pretrain/options.h: t5pretrain's options, from flags, a config file, or a checkpoint.
 *
 * One table (options.c, through common/args.h) describes every option: name, kind, range or
 * choices, default and help. Flags override a --config file; with --resume the options saved in
 * the checkpoint are the base, so `--resume --run-dir DIR` alone continues a run. Values are
 * checked when parsed, then together by options_validate; options_resolve turns the "auto"
 * values (lr, warmup, threads, precision...) into the values in force, and those are what
 * config.txt and checkpoints record. A bad configuration stops before any work (exit code 2).
 */
#ifndef T5_OPTIONS_H
#define T5_OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../common/args.h"

typedef struct {
    char variant[128];
    char run_dir[1024];
    char data[4096];          /* comma-separated globs of C4 files */
    char spm[1024];           /* SentencePiece model */
    char val_data[4096];      /* validation globs ("" = none) */
    int synthetic;            /* train on generated span-corrupted batches */
    long steps;
    int batch;                /* global batch, sequences */
    int micro_batch;          /* sequences per forward/backward (0 = auto) */
    int threads;              /* per rank (0 = auto) */
    long seed;
    char optimizer[16];       /* adafactor | adamw */
    char lr_schedule[16];     /* auto | rsqrt | cosine */
    double lr;                /* -1 = auto; rsqrt: multiplier; cosine: peak */
    long warmup_steps;        /* -1 = auto */
    double min_lr;            /* -1 = auto (lr / 10) */
    double weight_decay;
    double z_loss;
    int enc_len, dec_len;
    int log_every;
    int eval_every;
    int eval_batches;
    char t5_version[8];       /* 1.0 | 1.1 */
    char precision[8];        /* auto | fp32 | bf16 */
    int prefetch;
    int max_epochs;
    /* checkpoints */
    long save_every;          /* steps (0 = only at stops and the end) */
    double save_every_minutes;
    int keep_last;            /* 0 = keep all */
    long keep_every;          /* 0 = none kept forever */
    int resume;
    char init_from[1024];     /* Hugging Face folder to start from (fresh optimizer) */
    double end_time;          /* unix seconds: stop with a checkpoint before (0 = none) */
    double end_time_margin;   /* seconds kept free before end_time for the save */
    /* parallel layout */
    int pp;                   /* pipeline stages */
    char pp_split[256];       /* auto | comma-separated block counts per stage */
    int zero;                 /* 0 | 1 */
    char recompute[8];        /* auto | on | off */
    int tp;                   /* tensor-parallel size */
    char tp_reduce[8];        /* mpi | pblas */
    /* planning and listing */
    int plan_world;           /* --dry-run: plan for this many ranks (0 = the real world) */
    int plan_ranks_per_node;  /* --dry-run: ranks per node for the plan (0 = the real ones) */
    int list_variants;
    int dry_run;
} TrainOptions;

/* Exit codes of t5pretrain (documented in README and docs/architecture.md). */
enum {
    T5_EXIT_DONE = 0,         /* every step trained; final checkpoint and final/ written */
    T5_EXIT_FAILURE = 1,      /* an error during the run; the last committed checkpoint is intact */
    T5_EXIT_CONFIG = 2,       /* bad configuration, found before any work */
    T5_EXIT_EXHAUSTED = 3,    /* --max-epochs reached before --steps; checkpoint and final/ written */
    T5_EXIT_STOPPED = 75,     /* stopped by a signal or --end-time with a committed checkpoint: resume */
};

void options_defaults(TrainOptions *o);

/* The parser over TrainOptions (given[] tracks explicit options). */
const ArgParser *options_parser(void);

/* Parse argv: the config file first if --config is present, then the flags. base (may be NULL)
 * is applied first as a JSON object of options (a checkpoint's). Returns 0, 1 if --help printed
 * the usage to out (out NULL: nothing printed), -1 with a message in err. */
int options_parse(TrainOptions *o, int argc, char **argv, const char *base_json, FILE *out,
                  char *err, size_t errlen);

/* 1 if option `name` was given on the command line or in --config (not a default). */
int options_given(const char *name);

/* Cross-field checks that need the world size. 0 if valid, else -1 with a message in err. */
int options_validate(const TrainOptions *o, int world, char *err, size_t errlen);

/* "name = value" lines of every option (a valid --config file). */
void options_print(const TrainOptions *o, FILE *out);
char *options_to_json(const TrainOptions *o);   /* malloc'ed */

/* Options that cannot change when a run resumes; a mismatch with the checkpoint's is refused
 * with the differing values named in err. 0 if compatible. */
int options_check_resume(const TrainOptions *now, const TrainOptions *saved, char *err, size_t errlen);

#endif
