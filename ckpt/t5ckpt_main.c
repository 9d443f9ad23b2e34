/*
 * ckpt/t5ckpt_main.c: bin/t5ckpt, inspect and convert model weight folders.
 *
 *   t5ckpt info DIR                               config summary, tensor and parameter counts
 *   t5ckpt verify DIR                             load fully; every value finite
 *   t5ckpt export --model DIR --out HFDIR         project weights -> Hugging Face folder
 *   t5ckpt import --hf HFDIR --out DIR            Hugging Face folder -> project weights
 *   t5ckpt init --variant NAME --seed N --out DIR fresh Mesh-TF-initialised weights
 *
 * For now the project's weights folder IS the Hugging Face layout (config.json +
 * model.safetensors, see ckpt/hf.h), so export and import are validated conversions: every tensor
 * is checked against config.json, F16/BF16 become F32, tied duplicates are dropped, a sharded
 * folder becomes one file. Exit status 0 on success, 1 on any error (message on stderr), 2 on a
 * usage error.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "common/util.h"
#include "pretrain/t5_config.h"
#include "pretrain/t5_model.h"

static void usage_(FILE *out) {
    fputs("usage: t5ckpt COMMAND ...\n"
          "  info DIR                                print config, tensor count, parameter count\n"
          "  verify DIR                              load every tensor and check it is finite\n"
          "  export --model DIR --out HFDIR          write a Hugging Face T5 folder\n"
          "  import --hf HFDIR --out DIR             read a Hugging Face T5 folder (f16/bf16/sharded ok)\n"
          "  init --variant NAME [--seed N] --out DIR  fresh Mesh TF initialisation (seed default 0)\n"
          "A folder holds config.json + model.safetensors (or model.safetensors.index.json + shards).\n",
          out);
}

static int die_usage_(const char *msg, const char *arg) {
    fprintf(stderr, "t5ckpt: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    usage_(stderr);
    return 2;
}

/* Parse "--key value" pairs into vals (indexed like keys); 0 or a usage error code. */
static int parse_opts_(int argc, char **argv, const char *const *keys, const char **vals, int nkeys) {
    for (int i = 0; i < argc; i++) {
        int k = 0;
        while (k < nkeys && strcmp(argv[i], keys[k]) != 0) k++;
        if (k == nkeys) return die_usage_("unknown option", argv[i]);
        if (i + 1 >= argc) return die_usage_("option needs a value", argv[i]);
        vals[k] = argv[++i];
    }
    for (int k = 0; k < nkeys; k++)
        if (!vals[k] && strcmp(keys[k], "--seed") != 0) return die_usage_("missing option", keys[k]);
    return 0;
}

static int convert_(const char *in, const char *out) {
    char err[1024];
    T5Model m;
    if (hf_load(in, &m, err, sizeof err) != 0) {
        fprintf(stderr, "t5ckpt: %s\n", err);
        return 1;
    }
    int rc = hf_save(out, &m, err, sizeof err);
    if (rc != 0) fprintf(stderr, "t5ckpt: %s\n", err);
    else fprintf(stderr, "t5ckpt: wrote %s (%d tensors, %zu parameters)\n", out, m.num_tensors, m.num_params);
    t5_model_free(&m);
    return rc ? 1 : 0;
}

static int cmd_info_(const char *dir, int verify) {
    char err[1024];
    T5Model m;
    if (hf_load(dir, &m, err, sizeof err) != 0) {
        fprintf(stderr, "t5ckpt: %s\n", err);
        return 1;
    }
    const T5Config *c = &m.cfg;
    if (!verify) {
        printf("name\t%s\n", c->name);
        printf("encoder_layers\t%d\ndecoder_layers\t%d\nd_model\t%d\nd_ff\t%d\nnum_heads\t%d\nd_kv\t%d\n",
               c->n_enc_layers, c->n_dec_layers, c->d_model, c->d_ff, c->n_heads, c->d_kv);
        printf("vocab_size\t%d\nnum_buckets\t%d\nmax_distance\t%d\nfeed_forward\t%s\ntied_embedding\t%s\n",
               c->vocab_size, c->num_buckets, c->max_distance,
               c->ffn == T5_FFN_GATED_GELU ? "gated-gelu" : "relu", c->tied_embedding ? "true" : "false");
        printf("layer_norm_eps\t%g\n", (double)c->layer_norm_eps);
        printf("tensors\t%d\nparams\t%zu\n", m.num_tensors, m.num_params);
        /* what is on disk (single-file folders only) */
        size_t n = strlen(dir) + 32;
        char *path = xmalloc(n);
        snprintf(path, n, "%s/model.safetensors", dir);
        StFile f;
        if (st_open(&f, path, err, sizeof err) == 0) {
            int counts[ST_F8_E5M2 + 1] = {0};
            for (int i = 0; i < f.num_tensors; i++) counts[f.tensors[i].dtype]++;
            printf("file_tensors\t%d\nfile_bytes\t%zu\nfile_dtypes\t", f.num_tensors, f.file_size);
            int first = 1;
            for (int d = 0; d <= ST_F8_E5M2; d++)
                if (counts[d]) { printf("%s%s:%d", first ? "" : ",", st_dtype_name((StDtype)d), counts[d]); first = 0; }
            printf("\n");
            st_close(&f);
        } else {
            printf("file_tensors\t(sharded)\n");
        }
        free(path);
    }
    size_t bad = 0, first_bad = 0;
    for (size_t i = 0; i < m.num_params; i++)
        if (!isfinite(m.params[i])) { if (!bad) first_bad = i; bad++; }
    int rc = 0;
    if (bad) {
        const char *name = "?";
        for (int t = 0; t < m.num_tensors; t++)
            if (first_bad >= m.tensors[t].offset && first_bad < m.tensors[t].offset + m.tensors[t].numel)
                name = m.tensors[t].name;
        fprintf(stderr, "t5ckpt: %s: %zu non-finite values, the first in '%s'\n", dir, bad, name);
        rc = 1;
    } else if (verify) {
        printf("ok\t%s\t%d tensors\t%zu params\n", dir, m.num_tensors, m.num_params);
    }
    t5_model_free(&m);
    return rc;
}

static int cmd_init_(const char *variant, const char *seed_s, const char *out) {
    char err[1024];
    T5Config cfg;
    if (t5_config_from_variant(variant, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "t5ckpt: %s\n", err);
        return 1;
    }
    uint64_t seed = 0;
    if (seed_s) {
        char *end;
        errno = 0;
        seed = strtoull(seed_s, &end, 10);
        if (errno || end == seed_s || *end || seed_s[0] == '-') {
            fprintf(stderr, "t5ckpt: --seed must be a non-negative integer, not '%s'\n", seed_s);
            return 2;
        }
    }
    T5Model m;
    t5_model_build(&m, &cfg);
    t5_model_init_weights(&m, seed);
    int rc = hf_save(out, &m, err, sizeof err);
    if (rc != 0) fprintf(stderr, "t5ckpt: %s\n", err);
    else fprintf(stderr, "t5ckpt: wrote %s (%s, seed %llu, %zu parameters)\n", out, cfg.name,
                 (unsigned long long)seed, m.num_params);
    t5_model_free(&m);
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return die_usage_("missing command", NULL);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage_(stdout);
        return 0;
    }
    if (!strcmp(cmd, "info") || !strcmp(cmd, "verify")) {
        if (argc != 3) return die_usage_("expected one folder", cmd);
        return cmd_info_(argv[2], !strcmp(cmd, "verify"));
    }
    if (!strcmp(cmd, "export")) {
        const char *keys[2] = {"--model", "--out"}, *vals[2] = {0};
        int rc = parse_opts_(argc - 2, argv + 2, keys, vals, 2);
        return rc ? rc : convert_(vals[0], vals[1]);
    }
    if (!strcmp(cmd, "import")) {
        const char *keys[2] = {"--hf", "--out"}, *vals[2] = {0};
        int rc = parse_opts_(argc - 2, argv + 2, keys, vals, 2);
        return rc ? rc : convert_(vals[0], vals[1]);
    }
    if (!strcmp(cmd, "init")) {
        const char *keys[3] = {"--variant", "--seed", "--out"}, *vals[3] = {0};
        int rc = parse_opts_(argc - 2, argv + 2, keys, vals, 3);
        return rc ? rc : cmd_init_(vals[0], vals[1], vals[2]);
    }
    return die_usage_("unknown command", cmd);
}
