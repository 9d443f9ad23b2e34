/* pretrain/options.c: see options.h. */
#include "options.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"

typedef enum { OPT_STR, OPT_INT, OPT_LONG, OPT_DOUBLE, OPT_FLAG } OptKind;

typedef struct {
    const char *name;
    OptKind kind;
    size_t offset;
    size_t size;        /* for strings: buffer size */
    double min, max;    /* accepted range for numbers */
    const char *help;
} OptSpec;

#define STR(f, help) { #f, OPT_STR, offsetof(TrainOptions, f), sizeof(((TrainOptions *)0)->f), 0, 0, help }
#define NUM(kind, f, lo, hi, help) { #f, kind, offsetof(TrainOptions, f), 0, lo, hi, help }
#define FLAG(f, help) { #f, OPT_FLAG, offsetof(TrainOptions, f), 0, 0, 1, help }

/* Flag names use '-' where the field uses '_' ("--run-dir" -> run_dir). */
static const OptSpec OPTIONS[] = {
    STR(variant, "model variant, e.g. small, t5-efficient-small-el16-dl8, google/t5-efficient-mini"),
    STR(run_dir, "output directory: metrics.jsonl, weights"),
    STR(data, "training data: comma-separated globs of C4 files (.json.gz/.json.zst/.json/.tar)"),
    STR(spm, "SentencePiece model (spiece.model)"),
    STR(val_data, "validation data globs (validation loss every --eval-every steps)"),
    FLAG(synthetic, "train on generated span-corrupted batches of the real shapes (no data files)"),
    NUM(OPT_LONG, steps, 1, 1e12, "training steps (default 524288, the T5-Efficient budget)"),
    NUM(OPT_INT, batch, 1, 1 << 20, "global batch in sequences (default 128, as T5-Efficient)"),
    NUM(OPT_INT, micro_batch, 0, 1 << 20, "sequences per forward/backward on one rank (0 = the largest share of the rank's rows that fits in memory)"),
    NUM(OPT_INT, threads, 0, 4096, "threads per rank (0 = OMP_NUM_THREADS, else the cores divided by the ranks)"),
    NUM(OPT_LONG, seed, 0, 9.2e18, "seed for initialisation and data order (default 0; validation data uses seed + 1)"),
    STR(optimizer, "adafactor (T5 recipe) or adamw"),
    STR(lr_schedule, "rsqrt: lr/sqrt(max(step, warmup)) (T5 recipe, Adafactor's default); cosine: linear warm-up, cosine to min-lr (AdamW's default)"),
    NUM(OPT_DOUBLE, lr, 0, 1e3, "rsqrt: multiplier (default 1.0 = T5 recipe); cosine: peak learning rate (default 1e-3)"),
    NUM(OPT_LONG, warmup_steps, -1, 1e12, "warm-up steps (rsqrt: the constant phase, 10000 in T5; cosine: 1000); -1 = default"),
    NUM(OPT_DOUBLE, min_lr, -1, 1e3, "cosine: final learning rate (-1 = lr / 10)"),
    NUM(OPT_DOUBLE, weight_decay, 0, 10, "adamw: decoupled weight decay"),
    NUM(OPT_DOUBLE, z_loss, 0, 1, "z-loss coefficient (T5: 1e-4)"),
    NUM(OPT_INT, enc_len, 8, 1 << 16, "encoder length (T5: 512)"),
    NUM(OPT_INT, dec_len, 4, 1 << 16, "decoder length (T5: 128 packed, 114 real tokens)"),
    NUM(OPT_INT, log_every, 1, 1 << 30, "progress line every N steps"),
    NUM(OPT_INT, eval_every, 0, 1 << 30, "validation loss every N steps (0 = never)"),
    NUM(OPT_INT, eval_batches, 1, 1 << 20, "validation batches per evaluation"),
    STR(t5_version, "1.0 (ReLU, tied embedding: T5-Efficient) or 1.1 (gated-GELU, untied head)"),
    NUM(OPT_INT, prefetch, 0, 64, "batches the data thread keeps ready (0 = no thread)"),
    NUM(OPT_INT, max_epochs, 0, 1 << 20, "stop after this many passes over the data (0 = unlimited)"),
    NUM(OPT_LONG, save_every, 0, 1e12, "write weights every N steps (0 = only at the end)"),
    FLAG(list_variants, "print the known variants as TSV (name el dl dm ff kv nh params) and exit"),
    FLAG(dry_run, "check the configuration, print the plan and memory estimate, exit"),
};
#define NUM_OPTIONS ((int)(sizeof OPTIONS / sizeof OPTIONS[0]))

void options_defaults(TrainOptions *o) {
    memset(o, 0, sizeof *o);
    snprintf(o->run_dir, sizeof o->run_dir, "run");
    o->steps = 524288;
    o->batch = 128;
    o->micro_batch = 0;
    o->seed = 0;
    snprintf(o->optimizer, sizeof o->optimizer, "adafactor");
    o->lr = 0;              /* 0: the schedule's default (rsqrt multiplier 1.0, cosine peak 1e-3) */
    o->warmup_steps = -1;   /* -1: the schedule's default (rsqrt 10000, cosine 1000) */
    o->min_lr = -1;         /* -1: cosine ends at lr / 10 */
    o->weight_decay = 0.0;
    o->z_loss = 1e-4;
    o->enc_len = 512;
    o->dec_len = 128;
    o->log_every = 1;
    o->eval_every = 0;
    o->eval_batches = 4;
    snprintf(o->t5_version, sizeof o->t5_version, "1.0");
    o->prefetch = 2;
}

static const OptSpec *find_option(const char *name, size_t len) {
    char norm[64];
    if (len >= sizeof norm) return NULL;
    for (size_t i = 0; i < len; i++) norm[i] = name[i] == '-' ? '_' : name[i];
    norm[len] = 0;
    for (int i = 0; i < NUM_OPTIONS; i++)
        if (strcmp(OPTIONS[i].name, norm) == 0) return &OPTIONS[i];
    return NULL;
}

static void flag_name(const OptSpec *s, char *buf, size_t n) {
    snprintf(buf, n, "--%s", s->name);
    for (char *p = buf + 2; *p; p++) if (*p == '_') *p = '-';
}

/* Store `value` into the field of spec s. `where` names the source for messages. */
static int set_option(TrainOptions *o, const OptSpec *s, const char *value, const char *where,
                      char *err, size_t errlen) {
    char fname[80];
    flag_name(s, fname, sizeof fname);
    char *field = (char *)o + s->offset;
    if (s->kind == OPT_STR) {
        if (strlen(value) >= s->size) {
            snprintf(err, errlen, "%s: %s value is too long (max %zu characters)", where, fname, s->size - 1);
            return -1;
        }
        memcpy(field, value, strlen(value) + 1);
        return 0;
    }
    if (s->kind == OPT_FLAG) {
        int v;
        if (!value || !*value || !strcmp(value, "1") || !strcmp(value, "true") || !strcmp(value, "yes")) v = 1;
        else if (!strcmp(value, "0") || !strcmp(value, "false") || !strcmp(value, "no")) v = 0;
        else {
            snprintf(err, errlen, "%s: %s takes true/false, got '%s'", where, fname, value);
            return -1;
        }
        *(int *)field = v;
        return 0;
    }
    char *end = NULL;
    errno = 0;
    double v = strtod(value, &end);
    if (!*value || errno || !end || *end || !isfinite(v)) {
        snprintf(err, errlen, "%s: %s expects a number, got '%s'", where, fname, value);
        return -1;
    }
    if (s->kind != OPT_DOUBLE && v != floor(v)) {
        snprintf(err, errlen, "%s: %s expects a whole number, got '%s'", where, fname, value);
        return -1;
    }
    if (v < s->min || v > s->max) {
        snprintf(err, errlen, "%s: %s must be in [%g, %g], got %s", where, fname, s->min, s->max, value);
        return -1;
    }
    if (s->kind == OPT_INT) *(int *)field = (int)v;
    else if (s->kind == OPT_LONG) *(long *)field = (long)v;
    else *(double *)field = v;
    return 0;
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) *--e = 0;
    return s;
}

static int parse_config_file(TrainOptions *o, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open config file '%s': %s", path, strerror(errno));
        return -1;
    }
    char line[8192];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char *s = trim(line);
        if (!*s) continue;
        size_t klen = strcspn(s, " \t=");
        char *rest = trim(s + klen);
        if (*rest == '=') rest = trim(rest + 1);
        char where[1200];
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        const OptSpec *spec = find_option(s, klen);
        if (!spec) {
            snprintf(err, errlen, "%s: unknown option '%.*s' (see t5pretrain --help)", where, (int)klen, s);
            rc = -1;
        } else if (!strcmp(spec->name, "list_variants")) {
            snprintf(err, errlen, "%s: list-variants is not a config-file option", where);
            rc = -1;
        } else {
            rc = set_option(o, spec, rest, where, err, errlen);
        }
    }
    fclose(f);
    return rc;
}

static void print_usage(FILE *out) {
    fprintf(out,
            "usage: t5pretrain --variant NAME (--data GLOB --spm MODEL | --synthetic) [options]\n"
            "       t5pretrain --list-variants\n"
            "Trains a T5-Efficient variant; writes RUN_DIR/metrics.jsonl (one JSON line per step)\n"
            "and RUN_DIR/final/ (Hugging Face config.json + model.safetensors).\n\n"
            "  --config FILE               read options from FILE ('name = value' lines); flags override it\n");
    for (int i = 0; i < NUM_OPTIONS; i++) {
        char fname[80], arg[96];
        flag_name(&OPTIONS[i], fname, sizeof fname);
        const char *meta = OPTIONS[i].kind == OPT_STR ? " S" : OPTIONS[i].kind == OPT_FLAG ? "" : " N";
        snprintf(arg, sizeof arg, "%s%s", fname, meta);
        fprintf(out, "  %-27s %s\n", arg, OPTIONS[i].help);
    }
}

int options_parse(TrainOptions *o, int argc, char **argv, FILE *out, char *err, size_t errlen) {
    /* The config file comes first so that flags override it wherever it appears. */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--config")) {
            if (i + 1 >= argc) { snprintf(err, errlen, "--config needs a file name"); return -1; }
            if (parse_config_file(o, argv[i + 1], err, errlen)) return -1;
            i++;
        } else if (!strncmp(a, "--config=", 9)) {
            if (parse_config_file(o, a + 9, err, errlen)) return -1;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { print_usage(out); return 1; }
        if (!strcmp(a, "--config")) { i++; continue; }
        if (!strncmp(a, "--config=", 9)) continue;
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%s' (options start with --; quote globs such as "
                     "--data 'dir/c4-train.*.json.gz' so the shell does not expand them; see --help)", a);
            return -1;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const OptSpec *spec = find_option(name, nlen);
        if (!spec) {
            snprintf(err, errlen, "unknown option '%s' (see t5pretrain --help)", a);
            return -1;
        }
        const char *value;
        if (eq) value = eq + 1;
        else if (spec->kind == OPT_FLAG) value = "";
        else {
            if (i + 1 >= argc) { snprintf(err, errlen, "option '%s' needs a value", a); return -1; }
            value = argv[++i];
        }
        if (set_option(o, spec, value, "command line", err, errlen)) return -1;
    }
    return 0;
}

int options_validate(const TrainOptions *o, int world, char *err, size_t errlen) {
    if (o->list_variants) return 0;
    if (!o->variant[0]) { snprintf(err, errlen, "--variant is required (e.g. --variant small; see --list-variants)"); return -1; }
    if (o->synthetic && o->data[0]) { snprintf(err, errlen, "--synthetic and --data exclude each other"); return -1; }
    if (!o->synthetic && !o->data[0]) {
        snprintf(err, errlen, "no training data: give --data GLOB --spm MODEL, or --synthetic");
        return -1;
    }
    if (o->data[0] && !o->spm[0]) { snprintf(err, errlen, "--data needs --spm MODEL (the SentencePiece model)"); return -1; }
    if (o->val_data[0] && !o->spm[0]) { snprintf(err, errlen, "--val-data needs --spm MODEL"); return -1; }
    if (o->eval_every > 0 && !o->val_data[0]) {
        snprintf(err, errlen, "--eval-every %d needs --val-data GLOB", o->eval_every);
        return -1;
    }
    if (strcmp(o->optimizer, "adafactor") && strcmp(o->optimizer, "adamw")) {
        snprintf(err, errlen, "--optimizer must be adafactor or adamw, got '%s'", o->optimizer);
        return -1;
    }
    if (o->lr_schedule[0] && strcmp(o->lr_schedule, "rsqrt") && strcmp(o->lr_schedule, "cosine")) {
        snprintf(err, errlen, "--lr-schedule must be rsqrt or cosine, got '%s'", o->lr_schedule);
        return -1;
    }
    if (strcmp(o->t5_version, "1.0") && strcmp(o->t5_version, "1.1")) {
        snprintf(err, errlen, "--t5-version must be 1.0 or 1.1, got '%s'", o->t5_version);
        return -1;
    }
    if (o->batch % world != 0) {
        snprintf(err, errlen, "--batch %d is not divisible by the %d ranks; use a multiple of %d", o->batch, world, world);
        return -1;
    }
    int local = o->batch / world;
    int micro = o->micro_batch ? o->micro_batch : local;
    if (micro > local || local % micro != 0) {
        snprintf(err, errlen, "--micro-batch %d must divide the per-rank batch %d (= --batch %d / %d ranks)",
                 micro, local, o->batch, world);
        return -1;
    }
    if (o->synthetic && (o->enc_len < 512 || o->dec_len < 114)) {
        snprintf(err, errlen, "--synthetic makes full 512/114 examples: needs --enc-len >= 512 and --dec-len >= 114");
        return -1;
    }
    return 0;
}

void options_print(const TrainOptions *o, FILE *out) {
    for (int i = 0; i < NUM_OPTIONS; i++) {
        const OptSpec *s = &OPTIONS[i];
        const char *field = (const char *)o + s->offset;
        if (!strcmp(s->name, "list_variants") || !strcmp(s->name, "dry_run")) continue;
        switch (s->kind) {
        case OPT_STR: fprintf(out, "%s = %s\n", s->name, field); break;
        case OPT_INT: case OPT_FLAG: fprintf(out, "%s = %d\n", s->name, *(const int *)field); break;
        case OPT_LONG: fprintf(out, "%s = %ld\n", s->name, *(const long *)field); break;
        case OPT_DOUBLE: fprintf(out, "%s = %.9g\n", s->name, *(const double *)field); break;
        }
    }
}
