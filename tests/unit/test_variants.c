/*
 * tests/unit/test_variants.c: the variant registry against tests/data/seed-variants.tsv (the
 * published variants and their model-card counts), the naming rules of docs/t5-recipe.md
 * section 2.2 and the count formula of 2.5.
 *
 * Expected parameter counts come from the tsv or from an independent tensor-by-tensor inventory
 * written in this file (inventory_params_), never from t5_config_num_params itself.
 */
#include "pretrain/t5_config.h"
#include "tests/unit/test.h"

#include <ctype.h>

/* Sum of the sizes of every tensor of the HF T5 v1.0 state dict (docs/t5-recipe.md section 2.5 list), written
 * tensor by tensor rather than with the closed formula. */
static size_t inventory_params_(int el, int dl, int d, int f, int h, int k, int tied, int gated) {
    size_t V = 32128, I = (size_t)h * k, n = 0;
    n += V * d;                                   /* shared.weight */
    if (!tied) n += V * d;                        /* lm_head.weight */
    size_t ffn = (size_t)f * d * (gated ? 2 : 1) + (size_t)d * f;   /* wi (wi_0, wi_1), wo */
    for (int i = 0; i < el; i++) {
        n += 3 * I * d + (size_t)d * I + d;       /* q, k, v, o, layer_norm */
        n += ffn + d;                             /* FFN + layer_norm */
        if (i == 0) n += 32 * (size_t)h;          /* relative_attention_bias */
    }
    n += d;                                       /* encoder.final_layer_norm */
    for (int i = 0; i < dl; i++) {
        n += 3 * I * d + (size_t)d * I + d;       /* self attention + norm */
        n += 3 * I * d + (size_t)d * I + d;       /* cross attention + norm */
        n += ffn + d;
        if (i == 0) n += 32 * (size_t)h;
    }
    n += d;                                       /* decoder.final_layer_norm */
    return n;
}

typedef struct {
    char name[128];
    int el, dl, dm, ff, nh, kv;
    size_t params;
} Row;

static int load_rows_(Row *rows, int max) {
    FILE *f = fopen("tests/data/seed-variants.tsv", "r");
    if (!f) {
        fprintf(stderr, "cannot open tests/data/seed-variants.tsv (tests run from the repo root)\n");
        return 0;
    }
    char line[1024];
    int n = 0, header = 0;
    while (fgets(line, sizeof(line), f) && n < max) {
        if (line[0] == '#') continue;
        if (!header) { header = 1; continue; }   /* name card_M el dl dm ff nh kv params */
        Row *r = &rows[n];
        double card;
        if (sscanf(line, "%127s %lf %d %d %d %d %d %d %zu", r->name, &card, &r->el, &r->dl,
                   &r->dm, &r->ff, &r->nh, &r->kv, &r->params) == 9)
            n++;
    }
    fclose(f);
    return n;
}

static void test_seed_rows(void) {
    Row rows[128];
    int n = load_rows_(rows, 128);
    CHECK_EQ_INT(n, 100);
    for (int i = 0; i < n; i++) {
        const Row *r = &rows[i];
        const char *shortname = r->name + strlen("t5-efficient-");
        char google[160], upper[160];
        snprintf(google, sizeof(google), "google/%.127s", r->name);
        snprintf(upper, sizeof(upper), "%s", shortname);
        for (char *p = upper; *p; p++) *p = (char)toupper((unsigned char)*p);
        const char *forms[4] = {r->name, shortname, google, upper};
        for (int k = 0; k < 4; k++) {
            T5Config c;
            char err[512];
            int rc = t5_config_from_variant(forms[k], &c, err, sizeof(err));
            CHECKF(rc == 0, "%s: %s", forms[k], err);
            if (rc != 0) continue;
            CHECK_STR(c.name, r->name);
            CHECKF(c.n_enc_layers == r->el && c.n_dec_layers == r->dl && c.d_model == r->dm &&
                   c.d_ff == r->ff && c.n_heads == r->nh && c.d_kv == r->kv,
                   "%s: got el%d dl%d dm%d ff%d nh%d kv%d", forms[k], c.n_enc_layers,
                   c.n_dec_layers, c.d_model, c.d_ff, c.n_heads, c.d_kv);
            CHECKF(t5_config_num_params(&c) == r->params, "%s: %zu vs %zu", forms[k],
                   t5_config_num_params(&c), r->params);
            CHECK(c.vocab_size == 32128 && c.num_buckets == 32 && c.max_distance == 128);
            CHECK(c.ffn == T5_FFN_RELU && c.tied_embedding == 1);
            CHECK_NEAR(c.layer_norm_eps, 1e-6, 1e-12);
        }
        /* The independent inventory agrees with the tsv too (checks the test's own oracle). */
        CHECK_EQ_INT(inventory_params_(r->el, r->dl, r->dm, r->ff, r->nh, r->kv, 1, 0), r->params);
    }
}

static void test_registry_lists_all_seed_rows(void) {
    Row rows[128];
    int n = load_rows_(rows, 128);
    CHECK(t5_variant_count() >= 100);
    for (int i = 0; i < n; i++) {
        int found = 0;
        for (int j = 0; j < t5_variant_count(); j++)
            if (strcmp(t5_variant_name(j), rows[i].name) == 0) found++;
        CHECKF(found == 1, "%s listed %d times", rows[i].name, found);
    }
    CHECK(t5_variant_name(-1) == NULL);
    CHECK(t5_variant_name(t5_variant_count()) == NULL);
    /* Every registry entry parses and its canonical name is itself. */
    for (int j = 0; j < t5_variant_count(); j++) {
        T5Config c;
        char err[512];
        CHECKF(t5_config_from_variant(t5_variant_name(j), &c, err, sizeof(err)) == 0, "%s", err);
        CHECK_STR(c.name, t5_variant_name(j));
    }
}

static void test_print_tsv(void) {
    Row rows[128];
    int n = load_rows_(rows, 128);
    FILE *f = tmpfile();
    CHECK(f != NULL);
    if (!f) return;
    t5_variants_print_tsv(f);
    rewind(f);
    char line[1024];
    CHECK(fgets(line, sizeof(line), f) != NULL);
    CHECK_STR(line, "name\tel\tdl\tdm\tff\tkv\tnh\tparams\n");
    int lines = 0, matched = 0;
    while (fgets(line, sizeof(line), f)) {
        char name[128];
        int el, dl, dm, ff, kv, nh;
        size_t params;
        CHECKF(sscanf(line, "%127s %d %d %d %d %d %d %zu", name, &el, &dl, &dm, &ff, &kv, &nh,
                      &params) == 8, "bad line: %s", line);
        lines++;
        for (int i = 0; i < n; i++) {
            if (strcmp(rows[i].name, name) != 0) continue;
            CHECKF(el == rows[i].el && dl == rows[i].dl && dm == rows[i].dm && ff == rows[i].ff &&
                   kv == rows[i].kv && nh == rows[i].nh && params == rows[i].params, "%s", line);
            matched++;
        }
    }
    fclose(f);
    CHECK_EQ_INT(lines, t5_variant_count());
    CHECK_EQ_INT(matched, 100);
}

/* name -> expected (el, dl, dm, ff, nh, kv, canonical name). */
static void check_variant_(const char *name, int el, int dl, int dm, int ff, int nh, int kv,
                           const char *canonical) {
    T5Config c;
    char err[512];
    int rc = t5_config_from_variant(name, &c, err, sizeof(err));
    CHECKF(rc == 0, "%s: %s", name, err);
    if (rc) return;
    CHECKF(c.n_enc_layers == el && c.n_dec_layers == dl && c.d_model == dm && c.d_ff == ff &&
           c.n_heads == nh && c.d_kv == kv, "%s: el%d dl%d dm%d ff%d nh%d kv%d", name,
           c.n_enc_layers, c.n_dec_layers, c.d_model, c.d_ff, c.n_heads, c.d_kv);
    CHECK_STR(c.name, canonical);
    CHECK_EQ_INT(t5_config_num_params(&c), inventory_params_(el, dl, dm, ff, nh, kv, 1, 0));
}

static void test_combinations(void) {
    check_variant_("small-el16-dl8", 16, 8, 512, 2048, 8, 64, "t5-efficient-small-el16-dl8");
    check_variant_("small-dl8-el16", 16, 8, 512, 2048, 8, 64, "t5-efficient-small-el16-dl8");
    check_variant_("t5-efficient-large-nh8-nl32", 32, 32, 1024, 4096, 8, 64,
                   "t5-efficient-large-nh8-nl32");
    check_variant_("large-nl32-nh8", 32, 32, 1024, 4096, 8, 64, "t5-efficient-large-nh8-nl32");
    check_variant_("google/t5-efficient-mini", 4, 4, 384, 1536, 8, 64, "t5-efficient-mini");
    check_variant_("Google/T5-Efficient-Mini", 4, 4, 384, 1536, 8, 64, "t5-efficient-mini");
    check_variant_("tiny", 4, 4, 256, 1024, 4, 64, "t5-efficient-tiny");
    check_variant_("base", 12, 12, 768, 3072, 12, 64, "t5-efficient-base");
    check_variant_("xl", 24, 24, 1024, 16384, 32, 128, "t5-efficient-xl");
    check_variant_("xxl", 24, 24, 1024, 65536, 128, 128, "t5-efficient-xxl");
    /* Unpublished combinations. */
    check_variant_("base-nl36-kv128", 36, 36, 768, 3072, 12, 128, "t5-efficient-base-kv128-nl36");
    check_variant_("tiny-el6-dl2", 6, 2, 256, 1024, 4, 64, "t5-efficient-tiny-el6-dl2");
    check_variant_("tiny-nl6", 6, 6, 256, 1024, 4, 64, "t5-efficient-tiny-nl6");
    check_variant_("tiny-dl3-ff2000", 12, 3, 256, 2048, 4, 64, "t5-efficient-tiny-dl3-ff2000");
    check_variant_("large-el3", 3, 24, 1024, 4096, 16, 64, "t5-efficient-large-el3");
    check_variant_("small-dm640-ff1500-nh4-kv32", 6, 6, 640, 1500, 4, 32,
                   "t5-efficient-small-nh4-kv32-dm640-ff1500");
    check_variant_("mini-dm2000", 4, 4, 2048, 1536, 8, 64, "t5-efficient-mini-dm2000");

    /* Table 2.2 exact counts and the 2.5 alternatives (untied, gated). */
    T5Config c;
    char err[512];
    CHECK(t5_config_from_variant("small", &c, err, sizeof(err)) == 0);
    CHECK_EQ_INT(t5_config_num_params(&c), 60506624);
    c.tied_embedding = 0;
    CHECK_EQ_INT(t5_config_num_params(&c), 60506624 + 32128 * 512);
    CHECK_EQ_INT(t5_config_num_params(&c), inventory_params_(6, 6, 512, 2048, 8, 64, 0, 0));
    c.tied_embedding = 1;
    c.ffn = T5_FFN_GATED_GELU;
    CHECK_EQ_INT(t5_config_num_params(&c), inventory_params_(6, 6, 512, 2048, 8, 64, 1, 1));
    CHECK_EQ_INT(t5_config_num_params(&c), 73089536);   /* "Small -> 73.1 M" in 2.5 */
    const struct { const char *n; size_t p; } table[] = {
        {"tiny", 15570688}, {"mini", 31220480}, {"small", 60506624}, {"base", 222903552},
        {"large", 737668096}, {"xl", 2851598336u}, {"xxl", 11307321344ull},
    };
    for (int i = 0; i < 7; i++) {
        CHECK(t5_config_from_variant(table[i].n, &c, err, sizeof(err)) == 0);
        CHECKF(t5_config_num_params(&c) == table[i].p, "%s: %zu", table[i].n,
               t5_config_num_params(&c));
    }
}

/* name must be rejected with a message that contains every string of want[] (NULL-terminated). */
static void check_error_(const char *name, const char *const *want) {
    T5Config c;
    char err[1024];
    int rc = t5_config_from_variant(name, &c, err, sizeof(err));
    CHECKF(rc == -1, "'%s' was accepted as %s", name, c.name);
    if (rc != -1) return;
    CHECKF(strstr(err, "nearest published variants: t5-efficient-") != NULL,
           "'%s': no suggestion in: %s", name, err);
    for (int i = 0; want[i]; i++)
        CHECKF(strstr(err, want[i]) != NULL, "'%s': '%s' missing from: %s", name, want[i], err);
}

static void test_errors(void) {
    check_error_("smal", (const char *[]){"unknown base size 'smal'", "t5-efficient-small", NULL});
    check_error_("small-xx3", (const char *[]){"unknown suffix 'xx3'", "t5-efficient-small", NULL});
    check_error_("small-nl0", (const char *[]){"out of range", "t5-efficient-small-nl", NULL});
    check_error_("small-nl4-el2", (const char *[]){"conflicts", "t5-efficient-small-", NULL});
    check_error_("small-el2-nl4", (const char *[]){"conflicts", NULL});
    check_error_("small-nl4-nl8", (const char *[]){"twice", NULL});
    check_error_("small-nl1000", (const char *[]){"out of range", NULL});
    check_error_("small-dm99999999", (const char *[]){"out of range", NULL});
    check_error_("small-ff99999999999", (const char *[]){"malformed", NULL});
    check_error_("small-nl", (const char *[]){"malformed", NULL});
    check_error_("small-nl-4", (const char *[]){"malformed", NULL});
    check_error_("small-nl04", (const char *[]){"malformed", NULL});
    check_error_("small-", (const char *[]){"unknown suffix", NULL});
    check_error_("", (const char *[]){"unknown base size", NULL});
    check_error_("google/", (const char *[]){"unknown base size", NULL});
    check_error_("t5-efficient-larg-nl8", (const char *[]){"t5-efficient-large-nl8", NULL});
    check_error_("xxl-nh1024-kv4096", (const char *[]){"inner attention width", NULL});
    check_error_("small-nl2-nl2-nl2-nl2-nl2-nl2-nl2-nl2-nl2-nl2-nl2-nl2-nl2-nl2-nl2-nl2-nl2",
                 (const char *[]){"too many", NULL});
    T5Config c;
    char err[64];   /* a short buffer truncates but never overflows */
    CHECK(t5_config_from_variant("smal", &c, err, sizeof(err)) == -1);
    CHECK(strlen(err) < sizeof(err));
    CHECK(t5_config_from_variant(NULL, &c, err, sizeof(err)) == -1);
    CHECK(t5_config_from_variant("smal", &c, NULL, 0) == -1);
}

static void test_validate(void) {
    T5Config c;
    char err[512];
    CHECK(t5_config_from_variant("tiny", &c, err, sizeof(err)) == 0);
    CHECK(t5_config_validate(&c, err, sizeof(err)) == 0);
    T5Config b = c;
    b.d_model = 0;
    CHECK(t5_config_validate(&b, err, sizeof(err)) == -1 && strstr(err, "d_model"));
    b = c; b.n_dec_layers = -3;
    CHECK(t5_config_validate(&b, err, sizeof(err)) == -1 && strstr(err, "decoder layers"));
    b = c; b.num_buckets = 31;
    CHECK(t5_config_validate(&b, err, sizeof(err)) == -1 && strstr(err, "num_buckets"));
    b = c; b.max_distance = 16;
    CHECK(t5_config_validate(&b, err, sizeof(err)) == -1 && strstr(err, "max_distance"));
    b = c; b.layer_norm_eps = 0.0f;
    CHECK(t5_config_validate(&b, err, sizeof(err)) == -1 && strstr(err, "layer_norm_eps"));
    b = c; b.ffn = (T5FfnKind)7;
    CHECK(t5_config_validate(&b, err, sizeof(err)) == -1 && strstr(err, "ffn"));
    b = c; b.vocab_size = 0;
    CHECK(t5_config_validate(&b, err, sizeof(err)) == -1 && strstr(err, "vocab_size"));
    b = c; b.ffn = T5_FFN_GATED_GELU; b.tied_embedding = 0;   /* v1.1 is valid */
    CHECK(t5_config_validate(&b, err, sizeof(err)) == 0);
}

int main(void) {
    RUN(test_seed_rows);
    RUN(test_registry_lists_all_seed_rows);
    RUN(test_print_tsv);
    RUN(test_combinations);
    RUN(test_errors);
    RUN(test_validate);
    return TEST_EXIT();
}
