/*
 * ckpt/t5ckpt_main.c: bin/t5ckpt, inspect and convert model weight folders and training checkpoints.
 *
 *   t5ckpt info DIR                               summary of a weights folder or a checkpoint
 *   t5ckpt verify DIR                             weights: load fully, every value finite;
 *                                                 checkpoint: every piece's checksums and coverage,
 *                                                 every parameter finite
 *   t5ckpt export --model DIR --out HFDIR [--spm FILE] [--force]
 *                                                 weights folder or checkpoint -> Hugging Face folder
 *   t5ckpt import --hf HFDIR --out DIR [--force]  Hugging Face folder -> project weights
 *   t5ckpt init --variant NAME [--seed N] --out DIR [--force]
 *                                                 fresh Mesh-TF-initialised weights
 *
 * DIR may be a weights folder (config.json + model.safetensors, see ckpt/hf.h), a checkpoint
 * directory RUN/ckpt/step_NNNNNNNN (manifest.json, see ckpt/ckpt.h), or a run directory RUN
 * without config.json (its RUN/ckpt/latest is used). Exporting a checkpoint takes the model
 * config from the manifest's meta "config" and every "param/<HF name>" tensor, and writes
 * config.json, model.safetensors and the tokenizer (spiece.model copied from --spm or meta
 * "options"."spm", tokenizer_config.json, special_tokens_map.json).
 * Every output folder is written atomically (ckpt/hf.h hf_save_folder); an existing one is
 * refused unless --force is given (then it is replaced whole, atomically). Exit status 0 on
 * success, 1 on any error (message on stderr), 2 on a usage error.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sys/stat.h>

#include "ckpt/ckpt.h"
#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "common/util.h"
#include "pretrain/t5_config.h"
#include "pretrain/t5_model.h"

static void usage_(FILE *out) {
    fputs("usage: t5ckpt COMMAND ...\n"
          "  info DIR                                print config / checkpoint summary\n"
          "  verify DIR                              check every tensor (checksums, finite values)\n"
          "  export --model DIR --out HFDIR [--spm FILE] [--force]\n"
          "                                          write a Hugging Face T5 folder\n"
          "  import --hf HFDIR --out DIR [--force]   read a Hugging Face T5 folder (f16/bf16/sharded ok)\n"
          "  init --variant NAME [--seed N] --out DIR [--force]\n"
          "                                          fresh Mesh TF initialisation (seed default 0)\n"
          "DIR: a folder with config.json + model.safetensors (or model.safetensors.index.json +\n"
          "shards), a checkpoint RUN/ckpt/step_NNNNNNNN, or a run directory RUN (its latest checkpoint).\n"
          "An existing output folder is refused unless --force (then it is replaced atomically).\n",
          out);
}

static int die_usage_(const char *msg, const char *arg) {
    fprintf(stderr, "t5ckpt: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    usage_(stderr);
    return 2;
}

/* Parse "--key value" pairs into vals (indexed like keys) and the flag --force; 0 or a usage error
 * code. Keys in `optional` may be absent. */
static int parse_opts_(int argc, char **argv, const char *const *keys, const char **vals, int nkeys,
                       const char *optional, int *force) {
    *force = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--force")) { *force = 1; continue; }
        int k = 0;
        while (k < nkeys && strcmp(argv[i], keys[k]) != 0) k++;
        if (k == nkeys) return die_usage_("unknown option", argv[i]);
        if (i + 1 >= argc) return die_usage_("option needs a value", argv[i]);
        vals[k] = argv[++i];
    }
    for (int k = 0; k < nkeys; k++)
        if (!vals[k] && !strstr(optional, keys[k])) return die_usage_("missing option", keys[k]);
    return 0;
}

static int is_file_(const char *dir, const char *name) {
    char p[4096];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* If DIR is a checkpoint (manifest.json) or a run directory with checkpoints and no weights of its
 * own, the checkpoint directory into out and 1; 0 if DIR is a weights folder; -1 on error. */
static int ckpt_dir_of_(const char *dir, char *out, size_t n) {
    if (is_file_(dir, "manifest.json")) { snprintf(out, n, "%s", dir); return 1; }
    if (is_file_(dir, "config.json")) return 0;
    char latest[4096];
    snprintf(latest, sizeof latest, "%s/ckpt/latest", dir);
    struct stat st;
    if (stat(latest, &st) != 0) return 0;
    char err[2048];
    if (ckpt_latest(dir, out, n, err, sizeof err) != 0) {
        fprintf(stderr, "t5ckpt: %s\n", err);
        return -1;
    }
    fprintf(stderr, "t5ckpt: %s: using its latest checkpoint %s\n", dir, out);
    return 1;
}

static const char *meta_str_(json_t *meta, const char *obj, const char *key) {
    json_t *o = obj ? json_object_get(meta, obj) : meta;
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Build *m from the checkpoint's meta "config" and fill it from its param/ tensors. */
static int model_from_ckpt_(Ckpt *ck, const char *dir, json_t *meta, T5Model *m) {
    char err[2048], where[4200];
    snprintf(where, sizeof where, "%s/manifest.json meta \"config\"", dir);
    json_t *cj = json_object_get(meta, "config");
    if (!json_is_object(cj)) {
        fprintf(stderr, "t5ckpt: %s/manifest.json: meta has no \"config\" object (the T5Config with "
                "config.json keys; HINT: written by a trainer older than this format?)\n", dir);
        return -1;
    }
    char *text = json_dumps(cj, JSON_COMPACT);
    const char *variant = meta_str_(meta, NULL, "variant");
    T5Config cfg;
    int rc = hf_config_parse(text, where, variant ? variant : dir, &cfg, err, sizeof err);
    free(text);
    if (rc != 0) { fprintf(stderr, "t5ckpt: %s\n", err); return -1; }
    t5_model_build(m, &cfg);
    int nparam = 0;
    for (int i = 0; i < ckpt_tensor_count(ck); i++) nparam += strncmp(ckpt_tensor_name(ck, i), "param/", 6) == 0;
    if (nparam != m->num_tensors)
        fprintf(stderr, "t5ckpt: %s: %d param/ tensors but the config has %d (checking each)\n", dir, nparam,
                m->num_tensors);
    for (int i = 0; i < m->num_tensors; i++) {
        const T5Tensor *t = &m->tensors[i];
        char name[160];
        snprintf(name, sizeof name, "param/%s", t->name);
        CkptDtype dt;
        int nd;
        int64_t sh[2];
        if (ckpt_tensor_info(ck, name, &dt, &nd, sh) != 0) {
            fprintf(stderr, "t5ckpt: %s: no tensor '%s' (the config %s needs it)\n", dir, name, cfg.name);
            goto fail;
        }
        if (dt != CKPT_F32 || nd != t->ndim || sh[0] != t->shape[0] || (nd > 1 && sh[1] != t->shape[1])) {
            fprintf(stderr, "t5ckpt: %s: tensor '%s' has dtype %s shape [%lld, %lld] but the config implies f32 "
                    "[%d, %d]\n", dir, name, dt == CKPT_F32 ? "f32" : "u8", (long long)sh[0], (long long)sh[1],
                    t->shape[0], t->ndim > 1 ? t->shape[1] : 0);
            goto fail;
        }
        if (ckpt_read(ck, name, 0, t->numel, m->params + t->offset, err, sizeof err) != 0) {
            fprintf(stderr, "t5ckpt: %s\n", err);
            goto fail;
        }
    }
    if (nparam != m->num_tensors) {
        fprintf(stderr, "t5ckpt: %s: has param/ tensors the config does not know\n", dir);
        goto fail;
    }
    return 0;
fail:
    t5_model_free(m);
    return -1;
}

static int nonfinite_(const T5Model *m, const char *dir) {
    size_t bad = 0, first_bad = 0;
    for (size_t i = 0; i < m->num_params; i++)
        if (!isfinite(m->params[i])) { if (!bad) first_bad = i; bad++; }
    if (!bad) return 0;
    const char *name = "?";
    for (int t = 0; t < m->num_tensors; t++)
        if (first_bad >= m->tensors[t].offset && first_bad < m->tensors[t].offset + m->tensors[t].numel)
            name = m->tensors[t].name;
    fprintf(stderr, "t5ckpt: %s: %zu non-finite values, the first in '%s'\n", dir, bad, name);
    return 1;
}

static int ckpt_info_(const char *dir, int verify) {
    char err[2048];
    if (verify && ckpt_verify(dir, err, sizeof err) != 0) {
        fprintf(stderr, "t5ckpt: %s\n", err);
        return 1;
    }
    Ckpt *ck = ckpt_open(dir, err, sizeof err);
    if (!ck) { fprintf(stderr, "t5ckpt: %s\n", err); return 1; }
    json_t *meta = json_loads(ckpt_meta_json(ck), 0, NULL);
    int rc = 0;
    if (verify) {
        /* parameters finite (only if the checkpoint carries a model config) */
        if (json_is_object(json_object_get(meta, "config"))) {
            T5Model m;
            if (model_from_ckpt_(ck, dir, meta, &m) != 0) rc = 1;
            else { rc = nonfinite_(&m, dir); t5_model_free(&m); }
        }
        uint64_t st, raw;
        ckpt_sizes(ck, &st, &raw);
        if (rc == 0) printf("ok\t%s\tstep %ld\t%d tensors\t%llu bytes\n", dir, ckpt_step(ck), ckpt_tensor_count(ck),
                            (unsigned long long)raw);
    } else {
        printf("checkpoint\t%s\nstep\t%ld\n", dir, ckpt_step(ck));
        json_t *tok = json_object_get(meta, "tokens");
        if (json_is_integer(tok)) printf("tokens\t%lld\n", (long long)json_integer_value(tok));
        const char *v = meta_str_(meta, NULL, "variant");
        printf("variant\t%s\n", v ? v : "(not recorded)");
        const char *data = meta_str_(meta, "options", "data"), *spm = meta_str_(meta, "options", "spm");
        printf("data\t%s\nspm\t%s\n", data ? data : "(not recorded)", spm ? spm : "(not recorded)");
        printf("writers\t%d\n", ckpt_writers(ck));
        json_t *lay = json_object_get(meta, "layout");
        if (lay) { char *t = json_dumps(lay, JSON_COMPACT | JSON_ENCODE_ANY); printf("layout\t%s\n", t); free(t); }
        /* tensors by kind (the part before '/') */
        json_t *kinds = json_object();
        size_t params = 0;
        for (int i = 0; i < ckpt_tensor_count(ck); i++) {
            const char *nm = ckpt_tensor_name(ck, i), *sl = strchr(nm, '/');
            char kind[64];
            snprintf(kind, sizeof kind, "%.*s", sl ? (int)(sl - nm) : (int)strlen(nm), nm);
            json_t *c = json_object_get(kinds, kind);
            json_object_set_new(kinds, kind, json_integer(c ? json_integer_value(c) + 1 : 1));
            if (sl && !strncmp(nm, "param/", 6)) {
                int nd;
                int64_t sh[2];
                ckpt_tensor_info(ck, nm, NULL, &nd, sh);
                params += (size_t)sh[0] * (size_t)(nd > 1 ? sh[1] : 1);
            }
        }
        printf("tensors\t%d\nparams\t%zu\nkinds\t", ckpt_tensor_count(ck), params);
        const char *k;
        json_t *c;
        int first = 1;
        json_object_foreach(kinds, k, c) { printf("%s%s:%lld", first ? "" : ",", k, (long long)json_integer_value(c)); first = 0; }
        printf("\n");
        json_decref(kinds);
        uint64_t st, raw;
        ckpt_sizes(ck, &st, &raw);
        printf("raw_bytes\t%llu\nstored_bytes\t%llu\nratio\t%.3f\n", (unsigned long long)raw,
               (unsigned long long)st, st ? (double)raw / (double)st : 0.0);
    }
    json_decref(meta);
    ckpt_close(ck);
    return rc;
}

static int export_ckpt_(const char *dir, const char *out, const char *spm, int force) {
    char err[2048];
    Ckpt *ck = ckpt_open(dir, err, sizeof err);
    if (!ck) { fprintf(stderr, "t5ckpt: %s\n", err); return 1; }
    json_t *meta = json_loads(ckpt_meta_json(ck), 0, NULL);
    T5Model m;
    int rc = 1;
    if (model_from_ckpt_(ck, dir, meta, &m) != 0) goto done;
    if (!spm) spm = meta_str_(meta, "options", "spm");
    if (!spm) {
        fprintf(stderr, "t5ckpt: %s/manifest.json: meta \"options\" has no \"spm\" (HINT: --spm FILE names the "
                "SentencePiece model)\n", dir);
        t5_model_free(&m);
        goto done;
    }
    HfSaveOpts o = {.replace = force, .spm_path = spm};
    if (hf_save_folder(out, &m, &o, err, sizeof err) != 0) {
        fprintf(stderr, "t5ckpt: %s\n", err);
    } else {
        fprintf(stderr, "t5ckpt: wrote %s from %s (step %ld, %d tensors, %zu parameters, tokenizer from %s)\n",
                out, dir, ckpt_step(ck), m.num_tensors, m.num_params, spm);
        rc = 0;
    }
    t5_model_free(&m);
done:
    json_decref(meta);
    ckpt_close(ck);
    return rc;
}

static int convert_(const char *in, const char *out, int force) {
    char err[1024];
    T5Model m;
    if (hf_load(in, &m, err, sizeof err) != 0) {
        fprintf(stderr, "t5ckpt: %s\n", err);
        return 1;
    }
    HfSaveOpts o = {.replace = force};
    int rc = hf_save_folder(out, &m, &o, err, sizeof err);
    if (rc != 0) fprintf(stderr, "t5ckpt: %s\n", err);
    else fprintf(stderr, "t5ckpt: wrote %s (%d tensors, %zu parameters)\n", out, m.num_tensors, m.num_params);
    t5_model_free(&m);
    return rc ? 1 : 0;
}

static int cmd_info_(const char *dir, int verify) {
    char err[1024], cdir[4096];
    int isck = ckpt_dir_of_(dir, cdir, sizeof cdir);
    if (isck < 0) return 1;
    if (isck) return ckpt_info_(cdir, verify);
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
    int rc = nonfinite_(&m, dir);
    if (rc == 0 && verify) printf("ok\t%s\t%d tensors\t%zu params\n", dir, m.num_tensors, m.num_params);
    t5_model_free(&m);
    return rc;
}

static int cmd_init_(const char *variant, const char *seed_s, const char *out, int force) {
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
    HfSaveOpts o = {.replace = force};
    int rc = hf_save_folder(out, &m, &o, err, sizeof err);
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
    int force;
    if (!strcmp(cmd, "export")) {
        const char *keys[3] = {"--model", "--out", "--spm"}, *vals[3] = {0};
        int rc = parse_opts_(argc - 2, argv + 2, keys, vals, 3, "--spm", &force);
        if (rc) return rc;
        char cdir[4096];
        int isck = ckpt_dir_of_(vals[0], cdir, sizeof cdir);
        if (isck < 0) return 1;
        if (isck) return export_ckpt_(cdir, vals[1], vals[2], force);
        if (vals[2]) fprintf(stderr, "t5ckpt: --spm is used only when exporting a checkpoint; ignored\n");
        return convert_(vals[0], vals[1], force);
    }
    if (!strcmp(cmd, "import")) {
        const char *keys[2] = {"--hf", "--out"}, *vals[2] = {0};
        int rc = parse_opts_(argc - 2, argv + 2, keys, vals, 2, "", &force);
        return rc ? rc : convert_(vals[0], vals[1], force);
    }
    if (!strcmp(cmd, "init")) {
        const char *keys[3] = {"--variant", "--seed", "--out"}, *vals[3] = {0};
        int rc = parse_opts_(argc - 2, argv + 2, keys, vals, 3, "--seed", &force);
        return rc ? rc : cmd_init_(vals[0], vals[1], vals[2], force);
    }
    return die_usage_("unknown command", cmd);
}
