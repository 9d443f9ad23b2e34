/*
 * pretrain/t5_config.c: the variant registry (name -> T5Config), the parameter count and config
 * validation.
 *
 * A variant name is BASE[-SUFFIX]..., optionally prefixed by "google/" and/or "t5-efficient-",
 * case-insensitive. BASE is one of the sizes of docs/t5-recipe.md section 2.2; each SUFFIX is a two-letter
 * key and a positive decimal value:
 *
 *   nlN  el = dl = N            elN  encoder layers        dlN  decoder layers
 *   dmN  d_model (dm1000 -> 1024, dm2000 -> 2048)          ffN  d_ff (ff1000 -> 1024, ...)
 *   kvN  d_kv (heads kept)      nhN  heads (d_kv kept, so the inner width h*k changes)
 *
 * Tiny is special: its published elN / dlN variants have 12 layers in the stack that is not named
 * (docs/t5-recipe.md section 2.2), so "tiny-el2" is el=2, dl=12. Every other size keeps its base depth.
 *
 * The canonical name is "t5-efficient-" + base + the suffixes in the fixed order
 * nh, kv, nl, el, dl, dm, ff (this reproduces every published name, e.g. "large-nh8-nl32" and
 * "small-el16-dl8"), each suffix spelled with the value as written in the name.
 */
#include "pretrain/t5_config.h"

#include "common/util.h"

#include <ctype.h>     /* tolower, isdigit */
#include <math.h>      /* isfinite */
#include <stdarg.h>    /* va_list for the error formatter */
#include <stdint.h>    /* SIZE_MAX */
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Base sizes (docs/t5-recipe.md section 2.2) and the published variants (seed-variants.tsv order). */

typedef struct {
    const char *name;
    int layers, d_model, d_ff, n_heads, d_kv;
} BaseSize;

static const BaseSize base_sizes_[] = {
    {"tiny", 4, 256, 1024, 4, 64},       {"mini", 4, 384, 1536, 8, 64},
    {"small", 6, 512, 2048, 8, 64},      {"base", 12, 768, 3072, 12, 64},
    {"large", 24, 1024, 4096, 16, 64},   {"xl", 24, 1024, 16384, 32, 128},
    {"xxl", 24, 1024, 65536, 128, 128},
};
#define N_BASE_SIZES ((int)(sizeof(base_sizes_) / sizeof(base_sizes_[0])))

/* The 100 published checkpoints of seed-variants.tsv (same order), then the base sizes that are
 * published as plain T5 v1.0 shapes under the t5-efficient naming (base, xl, xxl). */
static const char *const published_[] = {
    "t5-efficient-large", "t5-efficient-large-dm256", "t5-efficient-large-dm512",
    "t5-efficient-large-dm768", "t5-efficient-large-el12", "t5-efficient-large-el2",
    "t5-efficient-large-el4", "t5-efficient-large-el6", "t5-efficient-large-el8",
    "t5-efficient-large-kv128", "t5-efficient-large-kv16", "t5-efficient-large-kv256",
    "t5-efficient-large-kv32", "t5-efficient-large-nh12", "t5-efficient-large-nh2",
    "t5-efficient-large-nh24", "t5-efficient-large-nh32", "t5-efficient-large-nh4",
    "t5-efficient-large-nh8", "t5-efficient-large-nh8-nl32", "t5-efficient-large-nl10",
    "t5-efficient-large-nl12", "t5-efficient-large-nl16", "t5-efficient-large-nl2",
    "t5-efficient-large-nl20", "t5-efficient-large-nl32", "t5-efficient-large-nl36",
    "t5-efficient-large-nl4", "t5-efficient-large-nl8", "t5-efficient-mini",
    "t5-efficient-mini-nl12", "t5-efficient-mini-nl24", "t5-efficient-mini-nl6",
    "t5-efficient-mini-nl8", "t5-efficient-small", "t5-efficient-small-dl12",
    "t5-efficient-small-dl16", "t5-efficient-small-dl2", "t5-efficient-small-dl4",
    "t5-efficient-small-dl8", "t5-efficient-small-dm1000", "t5-efficient-small-dm128",
    "t5-efficient-small-dm2000", "t5-efficient-small-dm256", "t5-efficient-small-dm768",
    "t5-efficient-small-el12", "t5-efficient-small-el16", "t5-efficient-small-el16-dl1",
    "t5-efficient-small-el16-dl2", "t5-efficient-small-el16-dl4", "t5-efficient-small-el16-dl8",
    "t5-efficient-small-el2", "t5-efficient-small-el32", "t5-efficient-small-el4",
    "t5-efficient-small-el48", "t5-efficient-small-el64", "t5-efficient-small-el8",
    "t5-efficient-small-el8-dl1", "t5-efficient-small-el8-dl2", "t5-efficient-small-el8-dl4",
    "t5-efficient-small-ff1000", "t5-efficient-small-ff12000", "t5-efficient-small-ff3000",
    "t5-efficient-small-ff6000", "t5-efficient-small-ff9000", "t5-efficient-small-kv128",
    "t5-efficient-small-kv16", "t5-efficient-small-kv256", "t5-efficient-small-kv32",
    "t5-efficient-small-nl16", "t5-efficient-small-nl2", "t5-efficient-small-nl20",
    "t5-efficient-small-nl22", "t5-efficient-small-nl24", "t5-efficient-small-nl32",
    "t5-efficient-small-nl36", "t5-efficient-small-nl4", "t5-efficient-small-nl40",
    "t5-efficient-small-nl48", "t5-efficient-small-nl8", "t5-efficient-tiny-dl2",
    "t5-efficient-tiny-dl6", "t5-efficient-tiny-dl8", "t5-efficient-tiny-el12",
    "t5-efficient-tiny-el2", "t5-efficient-tiny-el6", "t5-efficient-tiny-el8",
    "t5-efficient-tiny-ff12000", "t5-efficient-tiny-ff2000", "t5-efficient-tiny-ff3000",
    "t5-efficient-tiny-ff6000", "t5-efficient-tiny-ff9000", "t5-efficient-tiny-nh1",
    "t5-efficient-tiny-nh16", "t5-efficient-tiny-nh32", "t5-efficient-tiny-nh8",
    "t5-efficient-tiny-nl12", "t5-efficient-tiny-nl16", "t5-efficient-tiny-nl2",
    "t5-efficient-tiny-nl24", "t5-efficient-tiny",
    "t5-efficient-base", "t5-efficient-xl", "t5-efficient-xxl",
};
#define N_PUBLISHED ((int)(sizeof(published_) / sizeof(published_[0])))

/* Upper bounds that catch typos ("nl400", "dm5120000") while allowing every sane experiment. */
#define MAX_LAYERS 256
#define MAX_D_MODEL 65536
#define MAX_D_FF (1 << 20)
#define MAX_HEADS 1024
#define MAX_D_KV 4096
#define MAX_INNER (1 << 18)   /* h * k */

/* Suffix keys in canonical order; the index is also the slot in the parse table. */
enum { K_NH, K_KV, K_NL, K_EL, K_DL, K_DM, K_FF, N_KEYS };
static const char *const key_names_[N_KEYS] = {"nh", "kv", "nl", "el", "dl", "dm", "ff"};

/* ------------------------------------------------------------------------------------------ */
/* Helpers. */

/* Levenshtein distance of two short strings (names are < 128 chars; longer ones are cut). */
static int edit_distance_(const char *a, const char *b) {
    int n = (int)strlen(a), m = (int)strlen(b);
    if (n > 127) n = 127;
    if (m > 127) m = 127;
    int prev[128], cur[128];
    for (int j = 0; j <= m; j++) prev[j] = j;
    for (int i = 1; i <= n; i++) {
        cur[0] = i;
        for (int j = 1; j <= m; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof(int) * (size_t)(m + 1));
    }
    return prev[m];
}

/* Append "; nearest published variants: A, B, C" for the short (prefix-free) name s. Candidates
 * are ranked by edit distance between s and the published names without "t5-efficient-". */
static void append_suggestions_(char *err, size_t errlen, const char *s) {
    if (!err || errlen == 0) return;
    int best[3] = {-1, -1, -1}, bestd[3] = {1 << 30, 1 << 30, 1 << 30};
    const size_t plen = strlen("t5-efficient-");
    for (int i = 0; i < N_PUBLISHED; i++) {
        int d = edit_distance_(s, published_[i] + plen);
        for (int k = 0; k < 3; k++) {
            if (d < bestd[k]) {   /* strict: on ties the earlier (tsv) order wins */
                for (int q = 2; q > k; q--) { best[q] = best[q - 1]; bestd[q] = bestd[q - 1]; }
                best[k] = i;
                bestd[k] = d;
                break;
            }
        }
    }
    size_t used = strlen(err);
    for (int k = 0; k < 3 && best[k] >= 0 && used + 1 < errlen; k++) {
        int w = snprintf(err + used, errlen - used, "%s%s", k == 0 ? "; nearest published variants: "
                                                                   : ", ", published_[best[k]]);
        if (w < 0) break;
        used += (size_t)w;
        if (used >= errlen) break;
    }
    if (used + 1 < errlen)
        snprintf(err + used, errlen - used, " (see t5pretrain --list-variants)");
}

/* Parse an unsigned decimal without sign or leading zero; -1 if malformed or > 9 digits. */
static long parse_value_(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 9) return -1;
    if (s[0] == '0' && n > 1) return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i])) return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* The "round" names of the T5-Efficient paper stand for powers-of-two multiples. */
static int map_ff_(long v) {
    switch (v) {
    case 1000: return 1024;
    case 2000: return 2048;
    case 3000: return 3072;
    case 6000: return 6144;
    case 9000: return 9216;
    case 12000: return 12288;
    default: return (int)v;
    }
}
static int map_dm_(long v) {
    if (v == 1000) return 1024;
    if (v == 2000) return 2048;
    return (int)v;
}

/* ------------------------------------------------------------------------------------------ */
/* Public API. */

/*
 * Parse a variant name into *cfg (contract in t5_config.h). The error message names the first
 * problem found (unknown size, unknown or malformed suffix, duplicate or conflicting suffixes,
 * out-of-range value) and ends with up to three nearest published variants. Cannot crash on any
 * input string; NULL name is an error.
 */
int t5_config_from_variant(const char *name, T5Config *cfg, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!name || !cfg) {
        set_error(err, errlen, "variant name is NULL");
        return -1;
    }
    /* Lower-case copy, then strip the optional prefixes. */
    char buf[256];
    size_t n = strlen(name);
    if (n >= sizeof(buf)) {
        set_error(err, errlen, "variant name too long (%zu chars): '%.40s...'", n, name);
        return -1;
    }
    for (size_t i = 0; i <= n; i++) buf[i] = (char)tolower((unsigned char)name[i]);
    char *s = buf;
    if (strncmp(s, "google/", 7) == 0) s += 7;
    if (strncmp(s, "t5-efficient-", 13) == 0) s += 13;
    char shortname[256];
    snprintf(shortname, sizeof(shortname), "%s", s);

    /* Split on '-'. */
    char *tokens[16];
    int nt = 0;
    for (char *p = s;; ) {
        char *dash = strchr(p, '-');
        if (nt == 16) {
            set_error(err, errlen, "variant '%s': too many '-' separated parts", name);
            append_suggestions_(err, errlen, shortname);
            return -1;
        }
        tokens[nt++] = p;
        if (!dash) break;
        *dash = '\0';
        p = dash + 1;
    }

    const BaseSize *bs = NULL;
    for (int i = 0; i < N_BASE_SIZES; i++)
        if (strcmp(tokens[0], base_sizes_[i].name) == 0) bs = &base_sizes_[i];
    if (!bs) {
        set_error(err, errlen,
                 "variant '%s': unknown base size '%s' (expected tiny, mini, small, base, large, "
                 "xl or xxl, optionally followed by -nlN -elN -dlN -dmN -ffN -kvN -nhN)",
                 name, tokens[0]);
        append_suggestions_(err, errlen, shortname);
        return -1;
    }

    long val[N_KEYS];
    const char *spelled[N_KEYS] = {0};
    for (int k = 0; k < N_KEYS; k++) val[k] = -1;
    for (int t = 1; t < nt; t++) {
        const char *tok = tokens[t];
        int key = -1;
        for (int k = 0; k < N_KEYS; k++)
            if (strncmp(tok, key_names_[k], 2) == 0) key = k;
        if (key < 0) {
            set_error(err, errlen,
                     "variant '%s': unknown suffix '%s' (expected nlN, elN, dlN, dmN, ffN, kvN or "
                     "nhN)", name, tok);
            append_suggestions_(err, errlen, shortname);
            return -1;
        }
        long v = parse_value_(tok + 2);
        if (v < 0) {
            set_error(err, errlen, "variant '%s': malformed number in suffix '%s' (want %sN with N a "
                     "positive decimal)", name, tok, key_names_[key]);
            append_suggestions_(err, errlen, shortname);
            return -1;
        }
        if (val[key] >= 0) {
            set_error(err, errlen, "variant '%s': suffix '%s' given twice ('%s' and '%s')", name,
                     key_names_[key], spelled[key], tok);
            append_suggestions_(err, errlen, shortname);
            return -1;
        }
        long lim = key == K_NL || key == K_EL || key == K_DL ? MAX_LAYERS
                 : key == K_DM ? MAX_D_MODEL : key == K_FF ? MAX_D_FF
                 : key == K_NH ? MAX_HEADS : MAX_D_KV;
        if (v == 0 || v > lim) {
            set_error(err, errlen, "variant '%s': value %ld in '%s' is out of range (1..%ld)", name,
                     v, tok, lim);
            append_suggestions_(err, errlen, shortname);
            return -1;
        }
        val[key] = v;
        spelled[key] = tok;
    }
    if (val[K_NL] >= 0 && (val[K_EL] >= 0 || val[K_DL] >= 0)) {
        set_error(err, errlen, "variant '%s': '%s' conflicts with '%s' (nlN already sets both "
                 "stacks; use elA-dlB instead)", name, spelled[K_NL],
                 val[K_EL] >= 0 ? spelled[K_EL] : spelled[K_DL]);
        append_suggestions_(err, errlen, shortname);
        return -1;
    }

    memset(cfg, 0, sizeof(*cfg));
    cfg->n_enc_layers = bs->layers;
    cfg->n_dec_layers = bs->layers;
    cfg->d_model = bs->d_model;
    cfg->d_ff = bs->d_ff;
    cfg->n_heads = bs->n_heads;
    cfg->d_kv = bs->d_kv;
    cfg->vocab_size = T5_VOCAB_SIZE;
    cfg->num_buckets = T5_NUM_BUCKETS;
    cfg->max_distance = T5_MAX_DISTANCE;
    cfg->ffn = T5_FFN_RELU;
    cfg->tied_embedding = 1;
    cfg->layer_norm_eps = 1e-6f;

    if (val[K_NL] >= 0) cfg->n_enc_layers = cfg->n_dec_layers = (int)val[K_NL];
    if (strcmp(bs->name, "tiny") == 0 && (val[K_EL] >= 0) != (val[K_DL] >= 0)) {
        /* Tiny el/dl variants: the unnamed stack has 12 layers (docs/t5-recipe.md section 2.2). */
        cfg->n_enc_layers = cfg->n_dec_layers = 12;
    }
    if (val[K_EL] >= 0) cfg->n_enc_layers = (int)val[K_EL];
    if (val[K_DL] >= 0) cfg->n_dec_layers = (int)val[K_DL];
    if (val[K_DM] >= 0) cfg->d_model = map_dm_(val[K_DM]);
    if (val[K_FF] >= 0) cfg->d_ff = map_ff_(val[K_FF]);
    if (val[K_NH] >= 0) cfg->n_heads = (int)val[K_NH];
    if (val[K_KV] >= 0) cfg->d_kv = (int)val[K_KV];
    if ((long)cfg->n_heads * cfg->d_kv > MAX_INNER) {
        set_error(err, errlen, "variant '%s': inner attention width h*k = %d*%d is out of range "
                 "(max %d)", name, cfg->n_heads, cfg->d_kv, MAX_INNER);
        append_suggestions_(err, errlen, shortname);
        return -1;
    }

    /* Canonical name. */
    size_t used = (size_t)snprintf(cfg->name, sizeof(cfg->name), "t5-efficient-%s", bs->name);
    for (int k = 0; k < N_KEYS; k++) {
        if (val[k] < 0) continue;
        int w = snprintf(cfg->name + used, sizeof(cfg->name) - used, "-%s", spelled[k]);
        if (w < 0 || used + (size_t)w >= sizeof(cfg->name)) break;   /* cannot happen: <= 9 digits */
        used += (size_t)w;
    }
    return t5_config_validate(cfg, err, errlen);
}

/*
 * Exact parameter count (docs/t5-recipe.md section 2.5), I = h*k:
 *   enc = el*(4*d*I + F*d*f + 2*d) + B*h + d
 *   dec = dl*(8*d*I + F*d*f + 3*d) + B*h + d
 *   params = V*d (+ V*d if untied) + enc + dec,  F = 2 (ReLU) or 3 (gated GELU), B = buckets.
 * Cannot fail for a validated config (no overflow below the registry's limits).
 */
size_t t5_config_num_params(const T5Config *c) {
    size_t d = (size_t)c->d_model, f = (size_t)c->d_ff, h = (size_t)c->n_heads;
    size_t I = h * (size_t)c->d_kv, V = (size_t)c->vocab_size, B = (size_t)c->num_buckets;
    size_t F = c->ffn == T5_FFN_GATED_GELU ? 3 : 2;
    size_t enc = (size_t)c->n_enc_layers * (4 * d * I + F * d * f + 2 * d) + B * h + d;
    size_t dec = (size_t)c->n_dec_layers * (8 * d * I + F * d * f + 3 * d) + B * h + d;
    size_t emb = V * d * (c->tied_embedding ? 1 : 2);
    return emb + enc + dec;
}

/* Returns 0 if the model can run with cfg, else -1 with the first problem named in err. */
int t5_config_validate(const T5Config *c, char *err, size_t errlen) {
#define BAD_(...) do { set_error(err, errlen, __VA_ARGS__); return -1; } while (0)
    if (!c) BAD_("config is NULL");
    const char *nm = c->name[0] ? c->name : "(unnamed config)";
    if (c->n_enc_layers < 1 || c->n_enc_layers > MAX_LAYERS)
        BAD_("%s: encoder layers %d out of range 1..%d", nm, c->n_enc_layers, MAX_LAYERS);
    if (c->n_dec_layers < 1 || c->n_dec_layers > MAX_LAYERS)
        BAD_("%s: decoder layers %d out of range 1..%d", nm, c->n_dec_layers, MAX_LAYERS);
    if (c->d_model < 1 || c->d_model > MAX_D_MODEL)
        BAD_("%s: d_model %d out of range 1..%d", nm, c->d_model, MAX_D_MODEL);
    if (c->d_ff < 1 || c->d_ff > MAX_D_FF)
        BAD_("%s: d_ff %d out of range 1..%d", nm, c->d_ff, MAX_D_FF);
    if (c->n_heads < 1 || c->n_heads > MAX_HEADS)
        BAD_("%s: n_heads %d out of range 1..%d", nm, c->n_heads, MAX_HEADS);
    if (c->d_kv < 1 || c->d_kv > MAX_D_KV)
        BAD_("%s: d_kv %d out of range 1..%d", nm, c->d_kv, MAX_D_KV);
    if ((long)c->n_heads * c->d_kv > MAX_INNER)
        BAD_("%s: inner width n_heads*d_kv = %ld exceeds %d", nm, (long)c->n_heads * c->d_kv,
             MAX_INNER);
    if (c->vocab_size < 2 || c->vocab_size > (1 << 22))
        BAD_("%s: vocab_size %d out of range 2..%d", nm, c->vocab_size, 1 << 22);
    if (c->num_buckets < 2 || c->num_buckets % 2 != 0 || c->num_buckets > 1024)
        BAD_("%s: num_buckets %d must be even and in 2..1024 (the bidirectional encoder splits "
             "them in halves)", nm, c->num_buckets);
    if (c->max_distance <= c->num_buckets / 2 || c->max_distance > (1 << 20))
        BAD_("%s: max_distance %d must exceed num_buckets/2 = %d (the log-spaced buckets start "
             "there) and be <= %d", nm, c->max_distance, c->num_buckets / 2, 1 << 20);
    if (c->ffn != T5_FFN_RELU && c->ffn != T5_FFN_GATED_GELU)
        BAD_("%s: unknown ffn kind %d (0 = relu, 1 = gated-gelu)", nm, (int)c->ffn);
    if (c->tied_embedding != 0 && c->tied_embedding != 1)
        BAD_("%s: tied_embedding must be 0 or 1, not %d", nm, c->tied_embedding);
    if (!isfinite(c->layer_norm_eps) || c->layer_norm_eps <= 0.0f || c->layer_norm_eps > 1.0f)
        BAD_("%s: layer_norm_eps %g must be in (0, 1]", nm, (double)c->layer_norm_eps);
#undef BAD_
    if (err && errlen) err[0] = '\0';
    return 0;
}

/* Number of registry entries: the 100 published checkpoints, then t5-efficient-base/xl/xxl. */
int t5_variant_count(void) { return N_PUBLISHED; }

/* Canonical name of entry i (static storage), or NULL if i is out of range. */
const char *t5_variant_name(int i) {
    return i >= 0 && i < N_PUBLISHED ? published_[i] : NULL;
}

/* Header "name el dl dm ff kv nh params" (tab separated) and one row per registry entry. */
void t5_variants_print_tsv(FILE *out) {
    fprintf(out, "name\tel\tdl\tdm\tff\tkv\tnh\tparams\n");
    for (int i = 0; i < N_PUBLISHED; i++) {
        T5Config c;
        char err[512];
        if (t5_config_from_variant(published_[i], &c, err, sizeof(err)) != 0) {
            fprintf(out, "# %s: %s\n", published_[i], err);   /* cannot happen; tests check */
            continue;
        }
        fprintf(out, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%zu\n", c.name, c.n_enc_layers, c.n_dec_layers,
                c.d_model, c.d_ff, c.d_kv, c.n_heads, t5_config_num_params(&c));
    }
}
