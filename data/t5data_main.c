/*
 * data/t5data_main.c: bin/t5data, look at and measure the training data path.
 *
 *   t5data inspect    --data GLOB --spm MODEL [--seed N --batch N --rows N]
 *   t5data dump-batch --data GLOB --spm MODEL --batch N --seed N --step S --out DIR
 *   t5data stats      --data GLOB --spm MODEL
 *   t5data bench      --data GLOB --spm MODEL [--seconds N]
 *
 * Every command builds the same DataLoader the trainer uses (data/loader.h), so dump-batch writes
 * exactly the global batch training sees at step S (steps from 0) for the same --data, --seed,
 * --batch, --streams and lengths.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/args.h"
#include "../common/npy.h"
#include "../common/util.h"
#include "loader.h"
#include "span.h"
#include "spm.h"

static void usage_(FILE *f) {
    fprintf(f,
        "usage: t5data COMMAND --data GLOB --spm MODEL [options]\n"
        "\n"
        "commands:\n"
        "  inspect      decode a batch to text: inputs and targets of each packed example,\n"
        "               sentinels shown as <extra_id_k>\n"
        "  dump-batch   write the global batch of step S as .npy files (int32 [batch, length]) to\n"
        "               --out DIR: input_ids, decoder_input_ids, labels, encoder_segment_ids,\n"
        "               decoder_segment_ids\n"
        "  stats        one pass over all files: documents, tokens, pieces, bad records by reason,\n"
        "               damaged (truncated/corrupt) files; exit 1 if a file holds no valid record\n"
        "  bench        read+parse+tokenize+corrupt speed on one core, and peak RSS\n"
        "\n"
        "options:\n"
        "  --data GLOB      comma-separated globs or paths of C4 files (.json.gz, .json.zst,\n"
        "                   .json, .tar); required\n"
        "  --spm MODEL      SentencePiece model (spiece.model); required\n"
        "  --seed N         data seed (default 0)\n"
        "  --batch N        global batch size (default: 128 for dump-batch, 4 for inspect)\n"
        "  --streams K      canonical streams (default: the batch size, as in training)\n"
        "  --enc-len N      encoder length (default 512)\n"
        "  --dec-len N      decoder length (default 128)\n"
        "  --step S         dump-batch, inspect: the batch of step S, counted from 0 (default 0)\n"
        "  --out DIR        dump-batch: output directory (created)\n"
        "  --rows N         inspect: rows to print (default 2)\n"
        "  --epochs N       stop after N epochs (default: unlimited; stats always does 1)\n"
        "  --seconds N      bench: duration (default 10)\n"
        "  --help           this text\n");
}

static int usage_error_(const char *fmt, const char *arg) {
    fprintf(stderr, "t5data: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(run 't5data --help' for usage)\n");
    return 2;
}


typedef struct {
    const char *cmd, *data, *spm, *out;
    long seed, batch, streams, enc_len, dec_len, step, rows, epochs, seconds;
} Args;

/* Build a loader from the arguments; prints the error and returns NULL on failure. Every file
 * must hold a valid record (data_files_check) unless check_warn_only, which then only warns
 * and sets *files_bad. */
static DataLoader *open_loader_(const Args *a, int batch, int streams, int prefetch, int epochs,
                                char ***files, int *nf, int check_warn_only, int *files_bad) {
    char err[8192];
    if (data_expand_globs(a->data, files, nf, err, sizeof err) != 0) {
        fprintf(stderr, "t5data: %s\n", err);
        return NULL;
    }
    int bad = data_files_check((const char *const *)*files, *nf, 0, err, sizeof err);
    if (files_bad) *files_bad = bad;
    if (bad && !check_warn_only) {
        fprintf(stderr, "t5data: error: %s\n", err);
        data_free_files(*files, *nf);
        *files = NULL;
        return NULL;
    }
    if (bad) fprintf(stderr, "t5data: warning: %s\n", err);
    DataLoaderConfig cfg;
    data_loader_config_default(&cfg);
    cfg.files = (const char **)*files;
    cfg.n_files = *nf;
    cfg.spm_model = a->spm;
    cfg.seed = (uint64_t)a->seed;
    cfg.global_batch = batch;
    cfg.n_streams = streams;
    cfg.enc_len = (int)a->enc_len;
    cfg.dec_len = (int)a->dec_len;
    cfg.prefetch = prefetch;
    cfg.max_epochs = epochs;
    DataLoader *dl = data_loader_open(&cfg, err, sizeof err);
    if (!dl) {
        fprintf(stderr, "t5data: %s\n", err);
        data_free_files(*files, *nf);
        *files = NULL;
    }
    return dl;
}

/* The global batch of step a->step into *b (allocated here; free it with t5_batch_free).
 * Returns 0, or 1 after printing why there is none. */
static int batch_at_step_(const Args *a, DataLoader *dl, int B, T5Batch *b) {
    t5_batch_alloc(b, B, (int)a->enc_len, (int)a->dec_len);
    int rc = data_loader_skip(dl, a->step);
    if (rc == 0) rc = data_loader_next(dl, b, NULL);
    if (rc != 0)
        fprintf(stderr, "t5data: no batch at step %ld: %s\n", a->step,
                rc == 1 ? "data exhausted (--epochs)" : data_loader_error(dl));
    return rc == 0 ? 0 : 1;
}

static void print_ids_text_(SpmTokenizer *spm, const int32_t *ids, int n, const char *label) {
    char *txt = spm_decode(spm, ids, (size_t)n);
    printf("  %-8s (%3d tokens): %s\n", label, n, txt ? txt : "?");
    free(txt);
}

static int cmd_inspect_(const Args *a) {
    char **files = NULL;
    int nf = 0;
    int B = a->batch > 0 ? (int)a->batch : 4;
    DataLoader *dl = open_loader_(a, B, (int)a->streams, 0, (int)a->epochs, &files, &nf, 0, NULL);
    if (!dl) return 1;
    char err[512];
    SpmTokenizer *spm = spm_open(a->spm, err, sizeof err);
    if (!spm) { fprintf(stderr, "t5data: %s\n", err); data_loader_close(dl); return 1; }
    T5Batch b;
    int rc = batch_at_step_(a, dl, B, &b);
    if (rc == 0) {
        int rows = a->rows > 0 ? (int)a->rows : 2;
        if (rows > B) rows = B;
        printf("batch of step %ld: %d rows x %d/%d, seed %ld, %d files; showing %d rows\n",
               a->step, B, b.Le, b.Ld, a->seed, nf, rows);
        for (int r = 0; r < rows; r++) {
            const int32_t *ei = b.enc_ids + (size_t)r * b.Le, *es = b.enc_seg + (size_t)r * b.Le;
            const int32_t *lb = b.labels + (size_t)r * b.Ld, *ds = b.dec_seg + (size_t)r * b.Ld;
            for (int seg = 1;; seg++) {
                int e0 = -1, e1 = 0, d0 = -1, d1 = 0;
                for (int t = 0; t < b.Le; t++) if (es[t] == seg) { if (e0 < 0) e0 = t; e1 = t + 1; }
                for (int t = 0; t < b.Ld; t++) if (ds[t] == seg) { if (d0 < 0) d0 = t; d1 = t + 1; }
                if (e0 < 0) break;
                printf("=== row %d example %d ===\n", r, seg);
                print_ids_text_(spm, ei + e0, e1 - e0, "inputs");
                if (d0 >= 0) print_ids_text_(spm, lb + d0, d1 - d0, "targets");
            }
        }
    }
    t5_batch_free(&b);
    spm_close(spm);
    data_loader_close(dl);
    data_free_files(files, nf);
    return rc == 0 ? 0 : 1;
}

static int cmd_dump_(const Args *a) {
    if (!a->out) return usage_error_("dump-batch needs --out DIR%s", "");
    char **files = NULL;
    int nf = 0;
    int B = a->batch > 0 ? (int)a->batch : 128;
    DataLoader *dl = open_loader_(a, B, (int)a->streams, 0, (int)a->epochs, &files, &nf, 0, NULL);
    if (!dl) return 1;
    T5Batch b;
    int rc = batch_at_step_(a, dl, B, &b);
    if (rc == 0 && mkdir_p(a->out) != 0) {
        fprintf(stderr, "t5data: cannot create %s: %s\n", a->out, strerror(errno));
        rc = -1;
    } else if (rc == 0) {
        struct { const char *name; const int32_t *p; int L; } f[] = {
            { "input_ids", b.enc_ids, b.Le }, { "decoder_input_ids", b.dec_in_ids, b.Ld },
            { "labels", b.labels, b.Ld }, { "encoder_segment_ids", b.enc_seg, b.Le },
            { "decoder_segment_ids", b.dec_seg, b.Ld },
        };
        for (size_t i = 0; i < sizeof f / sizeof f[0] && rc == 0; i++) {
            char path[8192];
            snprintf(path, sizeof path, "%s/%s.npy", a->out, f[i].name);
            if (npy_write_i32(path, f[i].p, B, f[i].L) != 0) {
                fprintf(stderr, "t5data: cannot write %s: %s\n", path, strerror(errno));
                rc = -1;
            }
        }
        if (rc == 0)
            printf("wrote step %ld: %d x %d/%d (seed %ld, %d files, %ld target tokens) to %s\n",
                   a->step, B, b.Le, b.Ld, a->seed, nf, t5_batch_count_targets(&b), a->out);
    }
    t5_batch_free(&b);
    data_loader_close(dl);
    data_free_files(files, nf);
    return rc == 0 ? 0 : 1;
}

static int cmd_stats_(const Args *a) {
    char **files = NULL;
    int nf = 0;
    int files_bad = 0;
    DataLoader *dl = open_loader_(a, 1, 1, 0, 1, &files, &nf, 1, &files_bad);
    if (!dl) return 1;
    T5Batch b;
    t5_batch_alloc(&b, 1, a->enc_len, a->dec_len);
    double t0 = now_seconds();
    int rc;
    while ((rc = data_loader_next(dl, &b, NULL)) == 0) {}
    printf("files=%d seconds=%.2f\n", nf, now_seconds() - t0);
    data_loader_print_stats(dl, stdout);
    DataLoaderStats st;
    data_loader_get_stats(dl, &st);
    if (rc == 1) {      /* one stream, one epoch: its rows are the packed rows of one epoch */
        long rows = st.rows;
        printf("one epoch = %ld packed rows of %ld/%ld tokens", rows, a->enc_len, a->dec_len);
        if (a->batch > 0) printf(" = about %ld steps at --batch %ld", (rows + a->batch - 1) / a->batch, a->batch);
        else printf(" = about %ld steps at global batch 8, %ld at 128 (rows / batch)",
                    (rows + 7) / 8, (rows + 127) / 128);
        printf("\n");
    }
    if (files_bad)
        printf("files_without_records=%d (named above; training refuses them)\n", files_bad);
    if (st.files_damaged)
        printf("%ld damaged file(s): truncated or corrupt (each reported above with its byte "
               "offset); their records before the damage were used\n", st.files_damaged);
    t5_batch_free(&b);
    data_loader_close(dl);
    data_free_files(files, nf);
    return rc == 1 && !files_bad ? 0 : 1;
}

static int cmd_bench_(const Args *a) {
    char **files = NULL;
    int nf = 0;
    DataLoader *dl = open_loader_(a, 1, 1, 0, (int)a->epochs, &files, &nf, 0, NULL);
    if (!dl) return 1;
    T5Batch b;
    t5_batch_alloc(&b, 1, a->enc_len, a->dec_len);
    double secs = a->seconds > 0 ? (double)a->seconds : 10.0;
    double t0 = now_seconds(), el = 0;
    int rc = 0;
    while (el < secs && (rc = data_loader_next(dl, &b, NULL)) == 0) el = now_seconds() - t0;
    el = now_seconds() - t0;
    DataLoaderStats st;
    data_loader_get_stats(dl, &st);
    printf("bench: %.2f s on one core, %d files\n", el, nf);
    printf("documents/s=%.0f tokens/s=%.0f text_MB/s=%.2f json_MB/s=%.2f examples/s=%.0f "
           "rows/s=%.0f\n", st.docs_read / el, (double)st.tokens / el,
           (double)st.text_bytes / el / 1e6, (double)st.input_bytes / el / 1e6,
           st.examples / el, st.rows / el);
    printf("peak_rss_MB=%.1f\n", (double)peak_rss_bytes() / 1048576.0);
    data_loader_print_stats(dl, stdout);
    /* breakdown: read + parse alone (one pass over the files, at most --seconds) */
    C4Stats rs = { 0 };
    double r0 = now_seconds();
    for (int i = 0; i < nf && now_seconds() - r0 < secs; i++) {
        char err[512];
        C4ReaderOptions opt = { 0, -1, NULL };
        C4Reader *r = c4_reader_open(files[i], &opt, err, sizeof err);
        if (!r) { fprintf(stderr, "t5data: bench: %s\n", err); continue; }
        C4Document d;
        while (c4_reader_next(r, &d) == 1) {}
        c4_stats_add(&rs, c4_reader_stats(r));
        c4_reader_close(r);
    }
    double rel = now_seconds() - r0;
    if (rel > 0 && rs.documents > 0)
        printf("read+parse only: documents/s=%.0f json_MB/s=%.2f (the rest of the time above is "
               "tokenization and corruption)\n", rs.documents / rel, (double)rs.input_bytes / rel / 1e6);
    t5_batch_free(&b);
    data_loader_close(dl);
    data_free_files(files, nf);
    return rc < 0 ? 1 : 0;
}

/* The options of every command, through the shared parser (common/args.h). */
typedef struct {
    char data[4096], spm[4096], out[4096];
    long seed, batch, streams, enc_len, dec_len, step, rows, epochs, seconds;
} DataOpts;
#define NUMOPT_(f, hi, help) ARG_NUM_(DataOpts, ARG_LONG, f, 0, hi, NULL, help, NULL)
static const ArgSpec SPECS[] = {
    ARG_STR_(DataOpts, data, NULL, "GLOB", "C4 files: comma-separated globs", "required"),
    ARG_STR_(DataOpts, spm, NULL, "MODEL", "SentencePiece model", "required"),
    ARG_STR_(DataOpts, out, NULL, "DIR", "dump-batch: where the .npy files go", NULL),
    NUMOPT_(seed, 9.2e18, "data seed (the trainer's --seed; its validation uses seed + 1)"),
    NUMOPT_(batch, 2147483647.0, "global batch in rows (the trainer's --batch; 0 = the command's default)"),
    NUMOPT_(streams, 2147483647.0, "canonical streams (0 = the batch)"),
    NUMOPT_(enc_len, 2147483647.0, "encoder length"),
    NUMOPT_(dec_len, 2147483647.0, "decoder length"),
    NUMOPT_(step, 9.2e18, "dump-batch: the step (0-based) whose batch to write"),
    NUMOPT_(rows, 2147483647.0, "inspect: rows to show"),
    NUMOPT_(epochs, 2147483647.0, "stop after this many epochs (0 = unlimited)"),
    NUMOPT_(seconds, 2147483647.0, "bench: seconds to run (0 = the default)"),
};
static const ArgParser PARSER = {"usage: t5data inspect|dump-batch|stats|bench --data GLOB --spm MODEL [options] (t5data --help)",
                                 SPECS, (int)(sizeof SPECS / sizeof SPECS[0]), NULL};

int main(int argc, char **argv) {
    Args a = { 0 };
    DataOpts o, dflt;
    memset(&o, 0, sizeof o);
    o.enc_len = 512; o.dec_len = 128; o.rows = 2;
    dflt = o;
    if (argc < 2) { usage_(stderr); return 2; }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage_(stdout);
            printf("\noptions:\n");
            args_print_usage(&PARSER, &dflt, stdout);
            return 0;
        }
    }
    a.cmd = argv[1];
    if (strcmp(a.cmd, "inspect") && strcmp(a.cmd, "dump-batch") && strcmp(a.cmd, "stats") &&
        strcmp(a.cmd, "bench"))
        return usage_error_("unknown command '%s' (inspect, dump-batch, stats, bench)", a.cmd);
    char perr[2048];
    if (args_parse(&PARSER, &o, &dflt, argc, argv, 2, NULL, NULL, 0, NULL, perr, sizeof perr) != 0) {
        fprintf(stderr, "t5data: %s\n", perr);
        return 2;
    }
    a.data = o.data[0] ? o.data : NULL;
    a.spm = o.spm[0] ? o.spm : NULL;
    a.out = o.out[0] ? o.out : NULL;
    a.seed = o.seed; a.batch = o.batch; a.streams = o.streams; a.enc_len = o.enc_len;
    a.dec_len = o.dec_len; a.step = o.step; a.rows = o.rows; a.epochs = o.epochs; a.seconds = o.seconds;
    if (!a.data) return usage_error_("%s needs --data GLOB", a.cmd);
    if (!a.spm) return usage_error_("%s needs --spm MODEL", a.cmd);
    if (!strcmp(a.cmd, "inspect")) return cmd_inspect_(&a);
    if (!strcmp(a.cmd, "dump-batch")) return cmd_dump_(&a);
    if (!strcmp(a.cmd, "stats")) return cmd_stats_(&a);
    return cmd_bench_(&a);
}
