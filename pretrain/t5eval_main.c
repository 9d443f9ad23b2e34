/*
 * pretrain/t5eval_main.c: bin/t5eval, the loss and gradient of a model on one batch.
 *
 *   t5eval --model DIR --batch DIR [--grads FILE] [--threads N]
 *
 * --model: a weights folder (config.json + model.safetensors, ckpt/hf.h); Hugging Face folders
 * and the project's own weights folders have the same layout for now.
 * --batch: a folder with NumPy files (common/npy.h), int32 or int64, shape [B, L]:
 *   input_ids.npy [B, Le], decoder_input_ids.npy [B, Ld], labels.npy [B, Ld]   required
 *   encoder_segment_ids.npy [B, Le], decoder_segment_ids.npy [B, Ld]          optional
 * Labels < 0 (Hugging Face's -100) are treated as 0 = ignored. Without segment files the
 * segments come from the ids (input id 0 = padding, label 0 = padding; one segment per row);
 * with them attention is packed (0 = padding, equal ids attend to each other). Every id must be
 * in [0, vocab_size).
 *
 * Prints ONE JSON line on stdout:
 *   {"loss": L, "loss_sum": S, "tokens": N, "grad_norm": G, "log_z_squared": Z}
 *   N = number of labels != 0, S = sum of the token cross-entropies (natural log) over them,
 *   L = S / N (no z-loss), G = L2 norm over all parameters of dL/dparams (tied embedding counted
 *   once), Z = mean of logZ^2 over the same tokens (informational; not part of L or G).
 * --grads FILE writes dL/dparams as safetensors (Hugging Face names and [out, in] layout, F32).
 * Exit status 0 on success, 1 on bad input or I/O errors, 2 on usage errors.
 *
 *   t5eval --model DIR --data GLOB --spm MODEL --batches N [--batch-size B] [--seed S]
 *          [--enc-len N] [--dec-len N] [--threads N]
 *
 * Validation mode: N batches of B rows (default 8) from the same data pipeline as training
 * (data/loader.h: files of GLOB, seed S (default 1: the trainer validates with its --seed + 1), B canonical streams, one epoch at most),
 * forward only. Prints ONE JSON line
 *   {"loss": L, "loss_sum": S, "tokens": N, "neg_log_perplexity": -L, "log_z_squared": Z, "batches": n}
 * with the same definitions summed over all batches (docs/t5-recipe.md section 6.2: neg_log_perplexity is the
 * mean of -cross-entropy over non-pad targets, in nats). If the data runs out first, the batches
 * read so far are reported (n < N, with a note on stderr); none at all is an error.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/hf.h"
#include "common/args.h"
#include "common/blas_runtime.h"
#include "common/npy.h"
#include "common/util.h"
#include "data/loader.h"
#include "pretrain/gemm.h"
#include "pretrain/t5_batch.h"
#include "pretrain/t5_model.h"

typedef struct {
    char model[4096], batch[4096], grads[4096], data[4096], spm[4096], precision[8];
    int threads, batches, batch_size, enc_len, dec_len;
    long seed;
} EvalOptions;

#define S_(f, ch, meta, help, dflt) ARG_STR_(EvalOptions, f, ch, meta, help, dflt)
#define N_(kind, f, lo, hi, meta, help, dflt) ARG_NUM_(EvalOptions, kind, f, lo, hi, meta, help, dflt)
static const ArgSpec SPECS[] = {
    S_(model, NULL, "DIR", "a Hugging Face folder (config.json + model.safetensors), e.g. RUN_DIR/final", "required"),
    S_(batch, NULL, "DIR", "input_ids.npy, decoder_input_ids.npy, labels.npy (int32 [B, L]); optional encoder_segment_ids.npy, decoder_segment_ids.npy", NULL),
    S_(grads, NULL, "FILE", "write the gradient of the mean loss as safetensors (with --batch)", NULL),
    N_(ARG_INT, threads, 0, 4096, NULL, "OpenMP/OpenBLAS threads", "OMP_NUM_THREADS, else all cores"),
    S_(precision, "auto|fp32|bf16", NULL, "inputs of matrix products in fp32 or bf16 (as t5pretrain --precision)", "fp32"),
    S_(data, NULL, "GLOB", "validation mode: C4 files (comma-separated globs); needs --spm and --batches", NULL),
    S_(spm, NULL, "MODEL", "validation mode: the SentencePiece model", NULL),
    N_(ARG_INT, batches, 0, 1 << 30, NULL, "validation mode: batches to evaluate", NULL),
    N_(ARG_INT, batch_size, 1, 1 << 20, NULL, "validation mode: rows per batch (the trainer's --batch)", NULL),
    N_(ARG_LONG, seed, 0, 9.2e18, NULL, "validation mode: data seed (the trainer validates with its --seed + 1)", NULL),
    N_(ARG_INT, enc_len, 8, 1 << 16, NULL, "validation mode: encoder length", NULL),
    N_(ARG_INT, dec_len, 4, 1 << 16, NULL, "validation mode: decoder length", NULL),
};
static const ArgParser PARSER = {
    "usage: t5eval --model DIR --batch DIR [--grads FILE] [--threads N] [--precision P]\n"
    "       t5eval --model DIR --data GLOB --spm MODEL --batches N [--batch-size B] [--seed S]\n"
    "              [--enc-len N] [--dec-len N] [--threads N] [--precision P]\n"
    "prints {\"loss\", \"loss_sum\", \"tokens\", \"grad_norm\", \"log_z_squared\"} as one JSON line\n"
    "(validation mode: \"neg_log_perplexity\" and \"batches\" instead of \"grad_norm\")",
    SPECS, (int)(sizeof SPECS / sizeof SPECS[0]), NULL};

static void defaults_(EvalOptions *o) {
    memset(o, 0, sizeof *o);
    snprintf(o->precision, sizeof o->precision, "fp32");
    o->batch_size = 8;
    o->seed = 1;   /* the trainer's validation seed for its default --seed 0 */
    o->enc_len = 512;
    o->dec_len = 128;
}

/* Select the GEMM precision (auto: the trainer's default policy). 0, or prints and returns 2. */
static int set_precision_(const char *p) {
    GemmConfig gc = {GEMM_FP32, GEMM_BACKEND_OPENBLAS};
    char why[256], err[512];
    if (!strcmp(p, "auto")) gemm_default_config(&gc, why, sizeof why);
    else if (!strcmp(p, "bf16")) { gc.precision = GEMM_BF16; gc.backend = GEMM_BACKEND_ONEDNN; }
    if (gemm_set_config(&gc, err, sizeof err) != 0) {
        fprintf(stderr, "t5eval: --precision %s: %s\n", p, err);
        return 2;
    }
    return 0;
}

/* Read DIR/NAME.npy; returns NULL if optional and absent; exits with a message on any error. */
static int32_t *load_npy_(const char *dir, const char *name, int optional, int *rows, int *cols) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (optional && errno == ENOENT) return NULL;
        fprintf(stderr, "t5eval: %s: %s (HINT: t5data dump-batch writes the batch files)\n", path,
                strerror(errno));
        exit(1);
    }
    fclose(f);
    char err[1024];
    int32_t *a = npy_read_i32(path, rows, cols, err, sizeof err);
    if (!a) {
        fprintf(stderr, "t5eval: %s\n", err);
        exit(1);
    }
    return a;
}

static void check_shape_(const char *name, int r, int c, int want_r, int want_c, const char *why) {
    if (r != want_r || c != want_c) {
        fprintf(stderr, "t5eval: %s.npy has shape [%d, %d] but %s implies [%d, %d]\n", name, r, c,
                why, want_r, want_c);
        exit(1);
    }
}

static void check_range_(const char *name, const int32_t *a, int rows, int cols, int lo, int hi) {
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        if (a[i] < lo || a[i] >= hi) {
            fprintf(stderr, "t5eval: %s.npy[%zu][%zu] = %d is outside [%d, %d)%s\n", name,
                    i / (size_t)cols, i % (size_t)cols, a[i], lo, hi,
                    hi > 1000 ? " (vocab_size of the model; HINT: wrong tokenizer or model?)" : "");
            exit(1);
        }
}

/* Positions within each segment (informational for the model). */
static void positions_from_segments_(int32_t *pos, const int32_t *seg, int rows, int cols) {
    for (int r = 0; r < rows; r++) {
        int p = 0;
        for (int t = 0; t < cols; t++) {
            size_t i = (size_t)r * cols + t;
            if (t > 0 && seg[i] != seg[i - 1]) p = 0;
            pos[i] = seg[i] ? p++ : 0;
        }
    }
}

/* Validation mode (see the top of the file). Returns the exit status. */
static int validate_(const char *model_dir, const char *glob, const char *spm, long n_batches, int B,
                     uint64_t seed, int Le, int Ld) {
    char err[1024];
    char **files = NULL;
    int nf = 0;
    if (data_expand_globs(glob, &files, &nf, err, sizeof err) != 0) {
        fprintf(stderr, "t5eval: %s\n", err);
        return 1;
    }
    T5Model m;
    if (hf_load(model_dir, &m, err, sizeof err) != 0) {
        fprintf(stderr, "t5eval: %s\n", err);
        data_free_files(files, nf);
        return 1;
    }
    DataLoaderConfig cfg;
    data_loader_config_default(&cfg);
    cfg.files = (const char **)files;
    cfg.n_files = nf;
    cfg.spm_model = spm;
    cfg.seed = seed;
    cfg.global_batch = B;
    cfg.enc_len = Le;
    cfg.dec_len = Ld;
    cfg.max_epochs = 1;
    DataLoader *dl = data_loader_open(&cfg, err, sizeof err);
    int rc = 1;
    if (!dl) {
        fprintf(stderr, "t5eval: %s\n", err);
        goto done_model;
    }
    if (data_loader_vocab_size(dl) > m.cfg.vocab_size) {
        fprintf(stderr, "t5eval: the tokenizer %s produces ids up to %d but the model %s has "
                "vocab_size %d (HINT: wrong --spm for this model?)\n", spm,
                data_loader_vocab_size(dl) - 1, model_dir, m.cfg.vocab_size);
        goto done;
    }
    T5Batch b;
    t5_batch_alloc(&b, B, Le, Ld);
    double ce = 0.0, z = 0.0;
    long tokens = 0, done_batches = 0;
    for (; done_batches < n_batches; done_batches++) {
        int r = data_loader_next(dl, &b, NULL);
        if (r < 0) {
            fprintf(stderr, "t5eval: data error: %s\n", data_loader_error(dl));
            t5_batch_free(&b);
            goto done;
        }
        if (r == 1) {
            fprintf(stderr, "t5eval: note: the data ran out after %ld of %ld batches\n",
                    done_batches, n_batches);
            break;
        }
        T5LossStats st;
        t5_model_forward(&m, &b, 0.0f, &st);
        ce += st.ce_sum;
        z += st.z_sum;
        tokens += st.tokens;
    }
    t5_batch_free(&b);
    if (tokens == 0) {
        fprintf(stderr, "t5eval: no target tokens in %ld batches of %s\n", done_batches, glob);
        goto done;
    }
    if (!isfinite(ce)) {
        fprintf(stderr, "t5eval: the loss is not finite; HINT: t5ckpt verify %s\n", model_dir);
        goto done;
    }
    printf("{\"loss\": %.17g, \"loss_sum\": %.17g, \"tokens\": %ld, \"neg_log_perplexity\": %.17g, "
           "\"log_z_squared\": %.17g, \"batches\": %ld}\n", ce / (double)tokens, ce, tokens,
           -ce / (double)tokens, z / (double)tokens, done_batches);
    fflush(stdout);
    rc = 0;
done:
    data_loader_close(dl);
done_model:
    t5_model_free(&m);
    gemm_release();
    data_free_files(files, nf);
    return rc;
}

int main(int argc, char **argv) {
    EvalOptions o, dflt;
    defaults_(&o);
    defaults_(&dflt);
    char perr[2048];
    int prc = args_parse(&PARSER, &o, &dflt, argc, argv, 1, stdout, NULL, 0, NULL, perr, sizeof perr);
    if (prc == 1) return 0;
    if (prc < 0) {
        fprintf(stderr, "t5eval: %s\n", perr);
        return 2;
    }
    const char *model_dir = o.model[0] ? o.model : NULL, *batch_dir = o.batch[0] ? o.batch : NULL;
    const char *grads_path = o.grads[0] ? o.grads : NULL, *data_glob = o.data[0] ? o.data : NULL;
    const char *spm_path = o.spm[0] ? o.spm : NULL;
    int threads = o.threads;
    long n_batches = o.batches, batch_size = o.batch_size, seed = o.seed, enc_len = o.enc_len, dec_len = o.dec_len;
    if (data_glob) {
        if (!model_dir || !spm_path || !n_batches || batch_dir || grads_path) {
            fprintf(stderr, "t5eval: --data needs --model, --spm and --batches, and excludes --batch "
                    "and --grads (see --help)\n");
            return 2;
        }
        blas_runtime_setup(argc, argv, threads, 0);
        if (set_precision_(o.precision)) return 2;
        return validate_(model_dir, data_glob, spm_path, n_batches, (int)batch_size, (uint64_t)seed,
                         (int)enc_len, (int)dec_len);
    }
    if (!model_dir || !batch_dir) {
        fprintf(stderr, "t5eval: --model and --batch (or --data) are required (see --help)\n");
        return 2;
    }
    blas_runtime_setup(argc, argv, threads, 0);
    if (set_precision_(o.precision)) return 2;

    /* the batch first: cheap, and bad input should fail before the model is read */
    int B, Le, r, c;
    int32_t *enc_ids = load_npy_(batch_dir, "input_ids", 0, &B, &Le);
    int32_t *dec_ids = load_npy_(batch_dir, "decoder_input_ids", 0, &r, &c);
    int Ld = c;
    check_shape_("decoder_input_ids", r, c, B, c, "input_ids.npy");
    int32_t *labels = load_npy_(batch_dir, "labels", 0, &r, &c);
    check_shape_("labels", r, c, B, Ld, "input_ids.npy and decoder_input_ids.npy");
    int32_t *enc_seg = load_npy_(batch_dir, "encoder_segment_ids", 1, &r, &c);
    if (enc_seg) check_shape_("encoder_segment_ids", r, c, B, Le, "input_ids.npy");
    int32_t *dec_seg = load_npy_(batch_dir, "decoder_segment_ids", 1, &r, &c);
    if (dec_seg) check_shape_("decoder_segment_ids", r, c, B, Ld, "labels.npy");
    if (B < 1 || Le < 1 || Ld < 1) {
        fprintf(stderr, "t5eval: %s: empty batch (B=%d, Le=%d, Ld=%d)\n", batch_dir, B, Le, Ld);
        return 1;
    }
    for (size_t i = 0; i < (size_t)B * Ld; i++)
        if (labels[i] < 0) labels[i] = 0;   /* -100 = ignore (Hugging Face) */

    char err[1024];
    T5Model m;
    if (hf_load(model_dir, &m, err, sizeof err) != 0) {
        fprintf(stderr, "t5eval: %s\n", err);
        return 1;
    }
    gemm_weights_updated();
    int V = m.cfg.vocab_size;
    check_range_("input_ids", enc_ids, B, Le, 0, V);
    check_range_("decoder_input_ids", dec_ids, B, Ld, 0, V);
    check_range_("labels", labels, B, Ld, 0, V);
    if (enc_seg) check_range_("encoder_segment_ids", enc_seg, B, Le, 0, 1 << 30);
    if (dec_seg) check_range_("decoder_segment_ids", dec_seg, B, Ld, 0, 1 << 30);

    T5Batch b;
    t5_batch_alloc(&b, B, Le, Ld);
    memcpy(b.enc_ids, enc_ids, sizeof(int32_t) * (size_t)B * Le);
    memcpy(b.dec_in_ids, dec_ids, sizeof(int32_t) * (size_t)B * Ld);
    memcpy(b.labels, labels, sizeof(int32_t) * (size_t)B * Ld);
    t5_batch_segments_from_ids(&b);
    if (enc_seg) {
        memcpy(b.enc_seg, enc_seg, sizeof(int32_t) * (size_t)B * Le);
        positions_from_segments_(b.enc_pos, b.enc_seg, B, Le);
    }
    if (dec_seg) {
        memcpy(b.dec_seg, dec_seg, sizeof(int32_t) * (size_t)B * Ld);
        positions_from_segments_(b.dec_pos, b.dec_seg, B, Ld);
    }
    long tokens = t5_batch_count_targets(&b);
    if (tokens == 0) {
        fprintf(stderr, "t5eval: %s/labels.npy has no target tokens (every label is 0 or negative)\n",
                batch_dir);
        return 1;
    }

    T5LossStats st;
    t5_model_forward(&m, &b, 0.0f, &st);
    t5_model_zero_grad(&m);
    t5_model_backward(&m, (float)(1.0 / (double)tokens));
    double g2 = 0.0;
    for (size_t i = 0; i < m.num_params; i++) g2 += (double)m.grads[i] * (double)m.grads[i];
    if (st.tokens != tokens)
        fprintf(stderr, "t5eval: warning: model counted %ld target tokens, batch has %ld\n", st.tokens,
                tokens);
    int rc = 0;
    if (grads_path && hf_write_tensors(grads_path, &m, m.grads, err, sizeof err) != 0) {
        fprintf(stderr, "t5eval: %s\n", err);
        rc = 1;
    }
    if (rc == 0 && !(isfinite(st.ce_sum) && isfinite(g2))) {
        fprintf(stderr, "t5eval: the loss or gradient is not finite (loss_sum %g, grad_norm^2 %g); "
                "HINT: t5ckpt verify %s\n", st.ce_sum, g2, model_dir);
        rc = 1;
    }
    if (rc == 0) {
        printf("{\"loss\": %.17g, \"loss_sum\": %.17g, \"tokens\": %ld, \"grad_norm\": %.17g, "
               "\"log_z_squared\": %.17g}\n", st.ce_sum / (double)tokens, st.ce_sum, tokens, sqrt(g2),
               st.z_sum / (double)tokens);
        fflush(stdout);
    }
    t5_batch_free(&b);
    t5_model_free(&m);
    gemm_release();
    free(enc_ids); free(dec_ids); free(labels); free(enc_seg); free(dec_seg);
    return rc;
}
