/*
 * pretrain/options.h: t5pretrain's options, from flags and from a config file.
 *
 * One table describes every option (name, kind, default, help); the same parser serves
 * command-line flags ("--name value", "--name=value", "--flag") and config files (one
 * "name = value" per line, '#' starts a comment). Flags given on the command line override the
 * config file. Values are checked when parsed and again together by options_validate(), so a bad
 * configuration stops before any work starts.
 */
#ifndef T5_OPTIONS_H
#define T5_OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
    char variant[128];
    char run_dir[1024];
    char data[4096];          /* comma-separated globs of C4 files */
    char spm[1024];           /* SentencePiece model */
    char val_data[4096];      /* validation globs ("" = none) */
    int synthetic;            /* train on generated span-corrupted batches */
    long steps;
    int batch;                /* global batch, sequences */
    int micro_batch;          /* sequences per forward/backward on one rank */
    int threads;              /* 0 = all cores of this rank's share */
    long seed;
    char optimizer[16];       /* adafactor | adamw */
    char lr_schedule[16];     /* rsqrt | cosine */
    double lr;                /* peak lr for AdamW / multiplier for rsqrt */
    long warmup_steps;
    double min_lr;
    double weight_decay;
    double z_loss;
    int enc_len, dec_len;
    int log_every;            /* progress line every N steps */
    int eval_every;           /* validation loss every N steps (0 = never) */
    int eval_batches;
    char t5_version[8];       /* 1.0 | 1.1 */
    int prefetch;
    int max_epochs;
    long save_every;          /* write weights every N steps (0 = only at the end) */
    int list_variants;
    int dry_run;              /* validate, print the plan and memory estimate, exit */
} TrainOptions;

/* Fill *o with the defaults (the T5-Efficient recipe: 524288 steps, batch 128, Adafactor, ...). */
void options_defaults(TrainOptions *o);

/* Parse argv (config file first if --config is present, then the flags). Returns 0 on success,
 * 1 if --help was given (usage already printed to out), -1 on error with a message in err. */
int options_parse(TrainOptions *o, int argc, char **argv, FILE *out, char *err, size_t errlen);

/* Cross-field checks that need the world size (batch divisible by ranks and micro-batch, ...).
 * 0 if valid, else -1 with a message in err. */
int options_validate(const TrainOptions *o, int world, char *err, size_t errlen);

/* Print every option with its value ("name = value" lines, a valid config file). */
void options_print(const TrainOptions *o, FILE *out);

#endif
