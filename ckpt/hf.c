/*
 * ckpt/hf.c: Hugging Face T5 folders (config.json + safetensors); contracts and layout in hf.h.
 */
#include "ckpt/hf.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt/safetensors.h"
#include "common/util.h"

static char *join_(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int file_exists_(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* ---- config.json ---- */

/* Shortest decimal that reads back as the same float, as a double (so 1e-6f prints "1e-06"). */
static double float_as_decimal_(float v) {
    char buf[64];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    return strtod(buf, NULL);
}

static int get_int_(json_t *root, const char *path, const char *key, int required, int def, int *out,
                    char *err, size_t errlen) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required) {
            set_error(err, errlen, "%s: missing required key \"%s\"", path, key);
            return -1;
        }
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 30)) {
        set_error(err, errlen, "%s: \"%s\" must be a non-negative integer", path, key);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

/* Fill *cfg from a parsed config object; where names the file (or checkpoint) in messages. */
static int config_from_json_(json_t *root, const char *path, const char *fallback_name, T5Config *cfg,
                             char *err, size_t errlen) {
    if (!json_is_object(root)) {
        set_error(err, errlen, "%s: not a JSON object", path);
        return -1;
    }
    memset(cfg, 0, sizeof *cfg);
    json_t *mt = json_object_get(root, "model_type");
    if (mt && (!json_is_string(mt) || (strcmp(json_string_value(mt), "t5") != 0 &&
                                       strcmp(json_string_value(mt), "mt5") != 0))) {
        set_error(err, errlen, "%s: model_type is %s, expected \"t5\"", path,
                json_is_string(mt) ? json_string_value(mt) : "not a string");
        return -1;
    }
    if (get_int_(root, path, "d_model", 1, 0, &cfg->d_model, err, errlen) ||
        get_int_(root, path, "d_kv", 1, 0, &cfg->d_kv, err, errlen) ||
        get_int_(root, path, "d_ff", 1, 0, &cfg->d_ff, err, errlen) ||
        get_int_(root, path, "num_layers", 1, 0, &cfg->n_enc_layers, err, errlen) ||
        get_int_(root, path, "num_decoder_layers", 0, cfg->n_enc_layers, &cfg->n_dec_layers, err, errlen) ||
        get_int_(root, path, "num_heads", 1, 0, &cfg->n_heads, err, errlen) ||
        get_int_(root, path, "vocab_size", 1, 0, &cfg->vocab_size, err, errlen) ||
        get_int_(root, path, "relative_attention_num_buckets", 0, 32, &cfg->num_buckets, err, errlen) ||
        get_int_(root, path, "relative_attention_max_distance", 0, 128, &cfg->max_distance, err, errlen))
        return -1;
    json_t *ff = json_object_get(root, "feed_forward_proj");
    const char *ffs = ff && json_is_string(ff) ? json_string_value(ff) : (ff ? NULL : "relu");
    if (ffs && strcmp(ffs, "relu") == 0) cfg->ffn = T5_FFN_RELU;
    else if (ffs && strcmp(ffs, "gated-gelu") == 0) cfg->ffn = T5_FFN_GATED_GELU;
    else {
        set_error(err, errlen, "%s: feed_forward_proj %s is not supported (\"relu\" for T5 v1.0 / "
                "T5-Efficient, \"gated-gelu\" for v1.1)", path, ffs ? ffs : "(not a string)");
        return -1;
    }
    json_t *tie = json_object_get(root, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie)) {
        set_error(err, errlen, "%s: tie_word_embeddings must be true or false", path);
        return -1;
    }
    cfg->tied_embedding = tie ? json_is_true(tie) : 1;
    if (cfg->ffn == T5_FFN_GATED_GELU && cfg->tied_embedding) {
        set_error(err, errlen, "%s: feed_forward_proj \"gated-gelu\" with a tied embedding is not "
                "supported (T5 v1.1 configs set \"tie_word_embeddings\": false)", path);
        return -1;
    }
    json_t *eps = json_object_get(root, "layer_norm_epsilon");
    if (eps && !json_is_number(eps)) {
        set_error(err, errlen, "%s: layer_norm_epsilon must be a number", path);
        return -1;
    }
    cfg->layer_norm_eps = eps ? (float)json_number_value(eps) : 1e-6f;
    json_t *nm = json_object_get(root, "_name_or_path");
    const char *name = nm && json_is_string(nm) && *json_string_value(nm) ? json_string_value(nm) : fallback_name;
    snprintf(cfg->name, sizeof cfg->name, "%s", name);
    char verr[256];
    if (t5_config_validate(cfg, verr, sizeof verr) != 0) {
        set_error(err, errlen, "%s: %s", path, verr);
        return -1;
    }
    return 0;
}

int hf_config_parse(const char *json_text, const char *where, const char *name, T5Config *cfg,
                    char *err, size_t errlen) {
    json_error_t jerr;
    json_t *root = json_loads(json_text, 0, &jerr);
    if (!root) {
        set_error(err, errlen, "%s: bad JSON: %s", where, jerr.text);
        return -1;
    }
    int rc = config_from_json_(root, where, name, cfg, err, errlen);
    json_decref(root);
    return rc;
}

int hf_config_read(const char *dir, T5Config *cfg, char *err, size_t errlen) {
    char *path = join_(dir, "config.json");
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    int rc = -1;
    if (!root) {
        char *in_final = join_(dir, "final/config.json");
        char *manifest = join_(dir, "manifest.json");
        if (!file_exists_(path) && file_exists_(in_final))
            set_error(err, errlen, "%s: not found; %s is a training run directory (HINT: its weights "
                      "are in %s/final)", path, dir, dir);
        else if (!file_exists_(path) && file_exists_(manifest))
            set_error(err, errlen, "%s: not found; %s is a training checkpoint (HINT: t5ckpt export "
                      "--model %s --out HFDIR makes a Hugging Face folder of it)", path, dir, dir);
        else if (!file_exists_(path))
            set_error(err, errlen, "%s: not found (HINT: name a folder holding config.json and "
                      "model.safetensors, such as a run's final/)", path);
        else
            set_error(err, errlen, "%s: bad JSON: %s (line %d)", path, jerr.text, jerr.line);
        free(in_final);
        free(manifest);
        goto done;
    }
    rc = config_from_json_(root, path, dir, cfg, err, errlen);
done:
    if (root) json_decref(root);
    free(path);
    return rc;
}

char *hf_config_to_json(const T5Config *c) {
    json_t *o = json_object();
    json_object_set_new(o, "architectures", json_pack("[s]", "T5ForConditionalGeneration"));
    json_object_set_new(o, "model_type", json_string("t5"));
    json_object_set_new(o, "_name_or_path", json_string(c->name));
    json_object_set_new(o, "d_model", json_integer(c->d_model));
    json_object_set_new(o, "d_kv", json_integer(c->d_kv));
    json_object_set_new(o, "d_ff", json_integer(c->d_ff));
    json_object_set_new(o, "num_layers", json_integer(c->n_enc_layers));
    json_object_set_new(o, "num_decoder_layers", json_integer(c->n_dec_layers));
    json_object_set_new(o, "num_heads", json_integer(c->n_heads));
    json_object_set_new(o, "relative_attention_num_buckets", json_integer(c->num_buckets));
    json_object_set_new(o, "relative_attention_max_distance", json_integer(c->max_distance));
    json_object_set_new(o, "vocab_size", json_integer(c->vocab_size));
    json_object_set_new(o, "feed_forward_proj",
                        json_string(c->ffn == T5_FFN_GATED_GELU ? "gated-gelu" : "relu"));
    json_object_set_new(o, "tie_word_embeddings", json_boolean(c->tied_embedding));
    json_object_set_new(o, "layer_norm_epsilon", json_real(float_as_decimal_(c->layer_norm_eps)));
    json_object_set_new(o, "initializer_factor", json_real(1.0));
    json_object_set_new(o, "dropout_rate", json_real(0.1));
    json_object_set_new(o, "decoder_start_token_id", json_integer(0));
    json_object_set_new(o, "eos_token_id", json_integer(1));
    json_object_set_new(o, "pad_token_id", json_integer(0));
    json_object_set_new(o, "is_encoder_decoder", json_true());
    json_object_set_new(o, "n_positions", json_integer(512));
    json_object_set_new(o, "torch_dtype", json_string("float32"));
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
    json_decref(o);
    if (!text) FATAL("out of memory?", "json_dumps failed for config.json");
    return text;
}

static int config_write_(const char *dir, const T5Config *c, char *err, size_t errlen) {
    char *text = hf_config_to_json(c);
    size_t n = strlen(text);
    text = xrealloc(text, n + 2);
    text[n] = '\n';
    text[n + 1] = 0;
    char *path = join_(dir, "config.json");
    int rc = write_file_atomic(path, text, n + 1);
    if (rc != 0)
        set_error(err, errlen, "%s: write failed: %s (HINT: check free space and permissions)", path,
                strerror(errno));
    free(path);
    free(text);
    return rc;
}

/* ---- tensors ---- */

static int is_tied_alias_(const T5Model *m, const char *name) {
    if (strcmp(name, "encoder.embed_tokens.weight") == 0) return 1;
    if (strcmp(name, "decoder.embed_tokens.weight") == 0) return 1;
    return m->cfg.tied_embedding && strcmp(name, "lm_head.weight") == 0;
}

int hf_write_tensors(const char *path, const T5Model *m, const float *buf, char *err, size_t errlen) {
    StWriteTensor *ts = xcalloc((size_t)m->num_tensors, sizeof *ts);
    int n = 0;
    for (int i = 0; i < m->num_tensors; i++) {
        const T5Tensor *t = &m->tensors[i];   /* the table holds no tied aliases */
        ts[n].name = t->name;
        ts[n].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) ts[n].shape[d] = t->shape[d];
        ts[n].data = buf + t->offset;
        n++;
    }
    int rc = st_write_f32(path, ts, n, NULL, 0, err, errlen);
    free(ts);
    return rc;
}

int hf_test_crash_point = 0;


static int write_text_(const char *dir, const char *name, const char *text, char *err, size_t errlen) {
    char *path = join_(dir, name);
    int rc = write_file_atomic(path, text, strlen(text));
    if (rc != 0)
        set_error(err, errlen, "%s: write failed: %s (HINT: check free space and permissions)", path,
                  strerror(errno));
    free(path);
    return rc;
}

int hf_write_tokenizer(const char *dir, const char *spm_path, char *err, size_t errlen) {
    size_t n;
    char *model = read_file_all(spm_path, &n);
    if (!model) {
        set_error(err, errlen, "%s: cannot read the SentencePiece model: %s (HINT: t5ckpt export --spm FILE "
                  "names another copy)", spm_path, strerror(errno));
        return -1;
    }
    char *path = join_(dir, "spiece.model");
    int rc = write_file_atomic(path, model, n);
    if (rc != 0)
        set_error(err, errlen, "%s: write failed: %s (HINT: check free space and permissions)", path,
                  strerror(errno));
    free(path);
    free(model);
    if (rc != 0) return -1;
    /* what transformers' T5Tokenizer reads: the special tokens and the 100 sentinels */
    json_t *extra = json_array();
    for (int i = 0; i < 100; i++) {
        char t[32];
        snprintf(t, sizeof t, "<extra_id_%d>", i);
        json_array_append_new(extra, json_string(t));
    }
    json_t *stm = json_pack("{s:s, s:s, s:s, s:O}", "eos_token", "</s>", "pad_token", "<pad>", "unk_token",
                            "<unk>", "additional_special_tokens", extra);
    json_t *tc = json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:O, s:b, s:b}", "tokenizer_class", "T5Tokenizer",
                           "eos_token", "</s>", "pad_token", "<pad>", "unk_token", "<unk>", "extra_ids", 100,
                           "model_max_length", 512, "additional_special_tokens", extra,
                           "legacy", 1, "clean_up_tokenization_spaces", 1);
    json_decref(extra);
    char *a = json_dumps(stm, JSON_INDENT(2) | JSON_SORT_KEYS), *b = json_dumps(tc, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(stm);
    json_decref(tc);
    if (!a || !b) FATAL("out of memory?", "json_dumps failed for the tokenizer files");
    size_t na = strlen(a), nb = strlen(b);
    a = xrealloc(a, na + 2); strcpy(a + na, "\n");
    b = xrealloc(b, nb + 2); strcpy(b + nb, "\n");
    rc = write_text_(dir, "special_tokens_map.json", a, err, errlen);
    if (rc == 0) rc = write_text_(dir, "tokenizer_config.json", b, err, errlen);
    free(a);
    free(b);
    return rc;
}

int hf_save_folder(const char *dir_in, const T5Model *m, const HfSaveOpts *opts, char *err, size_t errlen) {
    HfSaveOpts none = {0};
    if (!opts) opts = &none;
    if (m->tp_size > 1) {   /* a rank's pieces are not the model: assemble it from a checkpoint */
        set_error(err, errlen, "%s: a tensor-parallel rank holds pieces of the tensors; export the checkpoint "
                  "instead (t5ckpt export)", dir_in);
        return -1;
    }
    char *dir = xstrdup(dir_in);
    for (size_t n = strlen(dir); n > 1 && dir[n - 1] == '/'; n--) dir[n - 1] = 0;
    char *slash = strrchr(dir, '/');
    char *parent = slash ? (slash == dir ? xstrdup("/") : strndup(dir, (size_t)(slash - dir))) : xstrdup(".");
    const char *base = slash ? slash + 1 : dir;
    size_t tn = strlen(dir) + 32;
    char *tmp = xmalloc(tn);
    snprintf(tmp, tn, "%s.tmp-%ld", dir, (long)getpid());
    int rc = -1, made = 0;
    struct stat st;
    int exists = lstat(dir, &st) == 0;
    if (exists && !S_ISDIR(st.st_mode)) {
        set_error(err, errlen, "%s exists and is not a directory", dir);
        goto done;
    }
    if (exists && !opts->replace) {
        set_error(err, errlen, "%s already exists (HINT: --force replaces it; or choose another folder)", dir);
        goto done;
    }
    if (mkdir_p(parent) != 0) {
        set_error(err, errlen, "%s: cannot create directory: %s", parent, strerror(errno));
        goto done;
    }
    /* leftovers of a crashed writer of this folder: DIR.tmp-<pid> */
    DIR *d = opendir(parent);
    if (d) {
        struct dirent *e;
        size_t bl = strlen(base);
        while ((e = readdir(d))) {
            if (strncmp(e->d_name, base, bl) != 0 || strncmp(e->d_name + bl, ".tmp-", 5) != 0) continue;
            const char *q = e->d_name + bl + 5;
            if (!*q || strspn(q, "0123456789") != strlen(q)) continue;
            char *p = join_(parent, e->d_name);
            if (rm_rf(p) != 0) fprintf(stderr, "warning: %s: cannot remove a leftover: %s\n", p, strerror(errno));
            free(p);
        }
        closedir(d);
    }
    if (mkdir(tmp, 0755) != 0) {
        set_error(err, errlen, "%s: cannot create: %s (HINT: check free space and permissions)", tmp, strerror(errno));
        goto done;
    }
    made = 1;
    char *path = join_(tmp, "model.safetensors");
    int w = hf_write_tensors(path, m, m->params, err, errlen);
    free(path);
    if (w != 0) goto done;
    if (hf_test_crash_point == 1) { set_error(err, errlen, "simulated crash after the weights"); made = 0; goto done; }
    if (config_write_(tmp, &m->cfg, err, errlen) != 0) goto done;
    if (opts->spm_path && hf_write_tokenizer(tmp, opts->spm_path, err, errlen) != 0) goto done;
    if (exists) {
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dir, RENAME_EXCHANGE) != 0) {
            set_error(err, errlen, "%s: cannot replace atomically: %s", dir, strerror(errno));
            goto done;
        }
        /* tmp now holds the old folder */
    } else if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dir, RENAME_NOREPLACE) != 0) {
        if (errno != EINVAL || rename(tmp, dir) != 0) {
            set_error(err, errlen, "rename %s -> %s: %s", tmp, dir, strerror(errno));
            goto done;
        }
    } else {
        made = 0;
    }
    if (!exists) made = 0;
    int fd = open(parent, O_RDONLY | O_DIRECTORY);
    if (fd < 0 || fsync(fd) != 0) {
        set_error(err, errlen, "%s: fsync failed: %s", parent, strerror(errno));
        if (fd >= 0) close(fd);
        goto done;
    }
    close(fd);
    rc = 0;
done:
    if (made && rm_rf(tmp) != 0) fprintf(stderr, "warning: %s: cannot remove: %s\n", tmp, strerror(errno));
    free(tmp);
    free(parent);
    free(dir);
    return rc;
}

int hf_save(const char *dir, const T5Model *m, char *err, size_t errlen) {
    HfSaveOpts o = {.replace = 1};
    return hf_save_folder(dir, m, &o, err, errlen);
}

static void shape_str_(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

typedef struct {
    T5Model *m;
    unsigned char *loaded;     /* per model tensor */
    int shared_idx;
    float *alias_buf[3];       /* the tied duplicates, compared with shared.weight at the end */
    char *alias_names[3];
    int n_alias;
    char alias_src[3][512];
} LoadState;

/* Load every tensor of one safetensors file. weight_map (may be NULL) is the index's mapping. */
static int load_file_(LoadState *s, const char *path, const char *fname, json_t *weight_map,
                      char *err, size_t errlen) {
    StFile f;
    if (st_open(&f, path, err, errlen) != 0) return -1;
    T5Model *m = s->m;
    int rc = -1;
    for (int i = 0; i < f.num_tensors; i++) {
        const StTensorInfo *ti = &f.tensors[i];
        if (weight_map) {
            json_t *w = json_object_get(weight_map, ti->name);
            if (!w || !json_is_string(w) || strcmp(json_string_value(w), fname) != 0) {
                set_error(err, errlen, "%s: tensor '%s' is not listed for this file in "
                        "model.safetensors.index.json", path, ti->name);
                goto done;
            }
        }
        int alias = is_tied_alias_(m, ti->name);
        int idx = alias ? s->shared_idx : t5_model_find_tensor(m, ti->name);
        if (idx < 0 || (!alias && strcmp(m->tensors[idx].name, ti->name) != 0)) {
            set_error(err, errlen, "%s: unknown tensor '%s' for this config (%s: %d+%d layers, d_model "
                    "%d, %s embedding)", path, ti->name, m->cfg.name, m->cfg.n_enc_layers,
                    m->cfg.n_dec_layers, m->cfg.d_model, m->cfg.tied_embedding ? "tied" : "untied");
            goto done;
        }
        const T5Tensor *t = &m->tensors[idx];
        int64_t want[2] = {t->shape[0], t->ndim > 1 ? t->shape[1] : 0};
        int same = ti->ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = ti->shape[d] == want[d];
        if (!same) {
            char a[96], b[96];
            shape_str_(a, sizeof a, ti->ndim, ti->shape);
            shape_str_(b, sizeof b, t->ndim, want);
            set_error(err, errlen, "%s: tensor '%s' has shape %s but config.json implies %s", path,
                    ti->name, a, b);
            goto done;
        }
        if (alias) {
            /* keep a copy; compared with (or used as) shared.weight once everything is read */
            if (s->n_alias >= 3) {
                set_error(err, errlen, "%s: tensor '%s' appears more than once", path, ti->name);
                goto done;
            }
            for (int a = 0; a < s->n_alias; a++)
                if (strcmp(s->alias_names[a], ti->name) == 0) {
                    set_error(err, errlen, "%s: tensor '%s' appears in more than one file", path, ti->name);
                    goto done;
                }
            float *dst = xmalloc(t->numel * sizeof(float));
            s->alias_buf[s->n_alias] = dst;
            if (st_read_f32(&f, i, dst, err, errlen) != 0) goto done;
            s->alias_names[s->n_alias] = xstrdup(ti->name);
            snprintf(s->alias_src[s->n_alias], sizeof s->alias_src[0], "%s", path);
            s->n_alias++;
            continue;
        }
        if (s->loaded[idx]) {
            set_error(err, errlen, "%s: tensor '%s' appears in more than one file", path, ti->name);
            goto done;
        }
        if (st_read_f32(&f, i, m->params + t->offset, err, errlen) != 0) goto done;
        s->loaded[idx] = 1;
    }
    rc = 0;
done:
    st_close(&f);
    return rc;
}

int hf_load(const char *dir, T5Model *m, char *err, size_t errlen) {
    T5Config cfg;
    if (hf_config_read(dir, &cfg, err, errlen) != 0) return -1;
    memset(m, 0, sizeof *m);
    t5_model_build(m, &cfg);
    LoadState s = {.m = m, .shared_idx = t5_model_find_tensor(m, "shared.weight")};
    if (s.shared_idx < 0) FATAL("t5_model_build must create shared.weight", "model has no shared.weight");
    s.loaded = xcalloc((size_t)m->num_tensors, 1);
    int rc = -1;
    json_t *index = NULL;
    char *single = join_(dir, "model.safetensors");
    char *index_path = join_(dir, "model.safetensors.index.json");
    if (file_exists_(single)) {
        if (load_file_(&s, single, "model.safetensors", NULL, err, errlen) != 0) goto done;
    } else if (file_exists_(index_path)) {
        json_error_t jerr;
        index = json_load_file(index_path, 0, &jerr);
        json_t *wm = index ? json_object_get(index, "weight_map") : NULL;
        if (!wm || !json_is_object(wm)) {
            set_error(err, errlen, "%s: %s", index_path, index ? "no \"weight_map\" object" : jerr.text);
            goto done;
        }
        /* each distinct shard file once, in first-mention order */
        json_t *done_files = json_object();
        const char *key;
        json_t *val;
        int bad = 0;
        json_object_foreach(wm, key, val) {
            const char *fn = json_is_string(val) ? json_string_value(val) : NULL;
            if (!fn || !*fn || strchr(fn, '/')) {
                set_error(err, errlen, "%s: bad file name for tensor '%s'", index_path, key);
                bad = 1;
                break;
            }
            if (json_object_get(done_files, fn)) continue;
            json_object_set_new(done_files, fn, json_true());
            char *p = join_(dir, fn);
            int r = load_file_(&s, p, fn, wm, err, errlen);
            free(p);
            if (r != 0) { bad = 1; break; }
        }
        json_decref(done_files);
        if (bad) goto done;
    } else {
        char *bin = join_(dir, "pytorch_model.bin");
        int has_bin = file_exists_(bin);
        free(bin);
        set_error(err, errlen, "%s: no model.safetensors or model.safetensors.index.json%s", dir,
                has_bin ? " (only pytorch_model.bin, which is not supported; HINT: convert it with "
                          "transformers: T5ForConditionalGeneration.from_pretrained(d)"
                          ".save_pretrained(d, safe_serialization=True))" : "");
        goto done;
    }
    /* tied duplicates: supply shared.weight if it was absent, else must agree with it */
    size_t n_sh = m->tensors[s.shared_idx].numel;
    float *shared = m->params + m->tensors[s.shared_idx].offset;
    for (int a = 0; a < s.n_alias; a++) {
        const float *v = s.alias_buf[a];
        if (!s.loaded[s.shared_idx]) {
            memcpy(shared, v, n_sh * sizeof(float));
            s.loaded[s.shared_idx] = 1;
            continue;
        }
        size_t diff = 0;
        for (size_t j = 0; j < n_sh; j++) diff += v[j] != shared[j];
        if (diff)
            fprintf(stderr, "warning: %s: tied tensor '%s' differs from shared.weight in %zu of %zu "
                    "values; using shared.weight\n", s.alias_src[a], s.alias_names[a], diff, n_sh);
    }
    int missing = 0;
    char list[512] = "";
    for (int i = 0; i < m->num_tensors; i++) {
        if (s.loaded[i]) continue;
        if (missing < 4) {
            size_t k = strlen(list);
            snprintf(list + k, sizeof list - k, "%s'%s'", missing ? ", " : "", m->tensors[i].name);
        }
        missing++;
    }
    if (missing) {
        set_error(err, errlen, "%s: %d tensor(s) missing: %s%s (the weights do not match config.json)",
                dir, missing, list, missing > 4 ? ", ..." : "");
        goto done;
    }
    rc = 0;
done:
    if (index) json_decref(index);
    for (int a = 0; a < 3; a++) { free(s.alias_names[a]); free(s.alias_buf[a]); }
    free(s.loaded);
    free(single);
    free(index_path);
    if (rc != 0) {
        t5_model_free(m);
        memset(m, 0, sizeof *m);
    }
    return rc;
}
