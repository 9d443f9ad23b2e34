/*
 * tests/unit/test_spm.c: the SentencePiece C API (data/spm.cc) against independent references:
 * the sentencepiece command-line tools (spm_encode / spm_decode, run through popen on the same
 * text), the spiece.vocab file spm_train wrote next to the model, and hand-written expectations.
 * Runs with cwd = repo root and uses the bundled data/sample/ corpus and tokenizer.
 */
#include <errno.h>
#include <jansson.h>   /* json_loads: the "text" of each sample-corpus line */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/spm.h"
#include "tests/unit/test.h"

#define MODEL "data/sample/spiece.model"
#define VOCAB "data/sample/spiece.vocab"
#define VALIDATION "data/sample/c4-validation.00000-of-00001.json.gz"
#define TRAIN0 "data/sample/c4-train.00000-of-00004.json.gz"

static SpmTokenizer *open_sample_(void) {
    char err[512] = "";
    SpmTokenizer *t = spm_open(MODEL, err, sizeof err);
    CHECKF(t != NULL, "%s", err);
    return t;
}

static double now_(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- a growable list of strings --------------------------------------------------------- */

typedef struct {
    char **s;
    size_t n, cap;
} StrList;

static void strlist_push_(StrList *l, const char *s, size_t len) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->s = realloc(l->s, l->cap * sizeof *l->s);
        if (!l->s) { perror("realloc"); exit(2); }
    }
    char *c = malloc(len + 1);
    if (!c) { perror("malloc"); exit(2); }
    memcpy(c, s, len);
    c[len] = '\0';
    l->s[l->n++] = c;
}

static void strlist_free_(StrList *l) {
    for (size_t i = 0; i < l->n; i++) free(l->s[i]);
    free(l->s);
    memset(l, 0, sizeof *l);
}

/* The "text" of the first max_docs documents of a sample .json.gz (zcat + jansson). */
static StrList read_docs_(const char *path, size_t max_docs) {
    StrList docs = {0};
    char cmd[512];
    snprintf(cmd, sizeof cmd, "zcat '%s'", path);
    FILE *p = popen(cmd, "r");
    CHECKF(p != NULL, "popen %s: %s", cmd, strerror(errno));
    if (!p) return docs;
    char *line = NULL;
    size_t cap = 0;
    while (docs.n < max_docs && getline(&line, &cap, p) > 0) {
        json_error_t jerr;
        json_t *o = json_loads(line, 0, &jerr);
        CHECKF(o != NULL, "%s: bad JSON line: %s", path, jerr.text);
        if (!o) continue;
        json_t *text = json_object_get(o, "text");
        CHECK(json_is_string(text));
        if (json_is_string(text))
            strlist_push_(&docs, json_string_value(text), json_string_length(text));
        json_decref(o);
    }
    free(line);
    CHECK(pclose(p) == 0 || docs.n == max_docs);
    return docs;
}

/* Paragraphs ("\n"-separated lines) of docs: the unit the spm_encode CLI sees as one line. */
static StrList paragraphs_(const StrList *docs) {
    StrList out = {0};
    for (size_t i = 0; i < docs->n; i++) {
        const char *s = docs->s[i];
        while (*s) {
            const char *e = strchr(s, '\n');
            size_t len = e ? (size_t)(e - s) : strlen(s);
            strlist_push_(&out, s, len);
            s += len + (e ? 1 : 0);
        }
    }
    return out;
}

/* ---- the reference: the spm_encode command-line tool ------------------------------------ */

typedef struct {
    int32_t *ids;
    long n;
} IdSeq;

/* Run `spm_encode --output_format=id` on lines (none may contain '\n') and return one id
 * sequence per line, or NULL if the tool could not be run. */
static IdSeq *cli_encode_(const char *const *lines, size_t n) {
    char tmp[] = "/tmp/test_spm_inXXXXXX";
    int fd = mkstemp(tmp);
    CHECKF(fd >= 0, "mkstemp: %s", strerror(errno));
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, "w");
    for (size_t i = 0; i < n; i++) fprintf(f, "%s\n", lines[i]);
    fclose(f);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "spm_encode --model '%s' --output_format=id < '%s'", MODEL, tmp);
    FILE *p = popen(cmd, "r");
    CHECKF(p != NULL, "popen %s: %s", cmd, strerror(errno));
    if (!p) { unlink(tmp); return NULL; }
    IdSeq *out = calloc(n ? n : 1, sizeof *out);
    char *line = NULL;
    size_t cap = 0, got = 0;
    while (got < n && getline(&line, &cap, p) > 0) {
        size_t idcap = 16;
        out[got].ids = malloc(idcap * sizeof(int32_t));
        char *s = line, *end;
        for (;;) {
            long v = strtol(s, &end, 10);
            if (end == s) break;
            if ((size_t)out[got].n == idcap) {
                idcap *= 2;
                out[got].ids = realloc(out[got].ids, idcap * sizeof(int32_t));
            }
            out[got].ids[out[got].n++] = (int32_t)v;
            s = end;
        }
        got++;
    }
    free(line);
    int rc = pclose(p);
    unlink(tmp);
    CHECKF(rc == 0 && got == n, "%s: exit %d, %zu of %zu lines", cmd, rc, got, n);
    return out;
}

static void idseqs_free_(IdSeq *s, size_t n) {
    if (!s) return;
    for (size_t i = 0; i < n; i++) free(s[i].ids);
    free(s);
}

/* Encode each line with spm_encode() and compare with the CLI; returns mismatches. */
static size_t compare_with_cli_(SpmTokenizer *t, const char *const *lines, size_t n) {
    IdSeq *ref = cli_encode_(lines, n);
    if (!ref) return n;
    size_t bad = 0;
    int32_t *ids = NULL;
    size_t cap = 0;
    for (size_t i = 0; i < n; i++) {
        long m = spm_encode(t, lines[i], strlen(lines[i]), &ids, &cap);
        int same = m == ref[i].n && (m == 0 || memcmp(ids, ref[i].ids, (size_t)m * 4) == 0);
        if (!same && bad++ < 3)
            fprintf(stderr, "  mismatch on line %zu '%.80s': %ld ids vs CLI %ld\n", i, lines[i],
                    m, ref[i].n);
    }
    free(ids);
    idseqs_free_(ref, n);
    return bad;
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_open_errors(void) {
    char err[512] = "";
    SpmTokenizer *t = spm_open("/nonexistent/dir/spiece.model", err, sizeof err);
    CHECK(t == NULL);
    CHECKF(strstr(err, "/nonexistent/dir/spiece.model") != NULL, "err='%s'", err);

    /* Not a model at all (a gzip file). */
    err[0] = '\0';
    t = spm_open(VALIDATION, err, sizeof err);
    CHECK(t == NULL);
    CHECKF(strstr(err, VALIDATION) != NULL, "err='%s'", err);

    /* A real model with SentencePiece's default ids (unk 0, bos 1, eos 2, no pad): must be
     * refused with the ids named, not silently shifted. */
    const char *dir = "/tmp/test_spm_layout";
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s && zcat %s | head -c 200000 > %s/in.txt && cd %s && "
             "spm_train --input=in.txt --model_prefix=m --vocab_size=200 --model_type=unigram "
             "--minloglevel=2 --num_threads=1 > log.txt 2>&1",
             dir, VALIDATION, dir, dir);
    int rc = system(cmd);
    CHECKF(rc == 0, "spm_train for the default-layout model failed: see %s/log.txt", dir);
    char path[256];
    snprintf(path, sizeof path, "%s/m.model", dir);
    err[0] = '\0';
    t = spm_open(path, err, sizeof err);
    CHECK(t == NULL);
    CHECKF(strstr(err, path) != NULL && strstr(err, "pad=0 eos=1 unk=2") != NULL, "err='%s'", err);
    spm_close(t);
    spm_close(NULL);   /* allowed */
}

static void test_sizes_and_pieces(void) {
    SpmTokenizer *t = open_sample_();
    if (!t) return;
    /* P from spiece.vocab (written by spm_train, one "piece<TAB>score" line per id). */
    FILE *f = fopen(VOCAB, "r");
    CHECKF(f != NULL, "%s: %s", VOCAB, strerror(errno));
    if (!f) { spm_close(t); return; }
    char *line = NULL;
    size_t cap = 0;
    int P = 0, piece_mismatch = 0;
    char buf[256];
    while (getline(&line, &cap, f) > 0) {
        char *tab = strchr(line, '\t');
        if (tab) *tab = '\0';
        spm_id_to_piece(t, P, buf, sizeof buf);
        if (strcmp(buf, line) != 0 && piece_mismatch++ < 3)
            fprintf(stderr, "  id %d: '%s' vs vocab file '%s'\n", P, buf, line);
        P++;
    }
    free(line);
    fclose(f);
    CHECK_EQ_INT(piece_mismatch, 0);
    CHECK(P > 1000);
    CHECK_EQ_INT(spm_piece_count(t), P);
    CHECK_EQ_INT(spm_vocab_size(t), P + 100);
    int mv = spm_model_vocab_size(t);
    CHECK(mv % 128 == 0 && mv >= P + 100 && mv < P + 100 + 128);

    spm_id_to_piece(t, 0, buf, sizeof buf);
    CHECK_STR(buf, "<pad>");
    spm_id_to_piece(t, 1, buf, sizeof buf);
    CHECK_STR(buf, "</s>");
    spm_id_to_piece(t, 2, buf, sizeof buf);
    CHECK_STR(buf, "<unk>");

    CHECK_EQ_INT(spm_sentinel(t, 0), P + 99);
    CHECK_EQ_INT(spm_sentinel(t, 99), P);
    spm_id_to_piece(t, P + 99, buf, sizeof buf);
    CHECK_STR(buf, "<extra_id_0>");
    spm_id_to_piece(t, P + 98, buf, sizeof buf);
    CHECK_STR(buf, "<extra_id_1>");
    spm_id_to_piece(t, P, buf, sizeof buf);
    CHECK_STR(buf, "<extra_id_99>");
    spm_id_to_piece(t, P + 100, buf, sizeof buf);
    CHECK_STR(buf, "<unused_0>");
    spm_id_to_piece(t, mv - 1, buf, sizeof buf);
    char want[64];
    snprintf(want, sizeof want, "<unused_%d>", mv - 1 - (P + 100));
    CHECK_STR(buf, want);
    /* Truncation keeps the buffer NUL-terminated. */
    char small[5];
    spm_id_to_piece(t, P + 99, small, sizeof small);
    CHECK_STR(small, "<ext");
    spm_close(t);
}

static void test_encode_matches_cli_fixed(void) {
    SpmTokenizer *t = open_sample_();
    if (!t) return;
    static const char *const lines[] = {
        "Hello world.",
        "The quick brown fox jumps over the lazy dog.",
        "",
        "   ",
        "leading and trailing spaces   ",
        "   runs    of     spaces\tand\ttabs",
        "Café crème brûlée, naïve Über Gödel",
        "\xef\xac\x81nd the \xef\xac\x82ow",                      /* fi / fl ligatures (NFKC) */
        "full\xef\xbc\xa1width \xef\xbc\x91\xef\xbc\x92\xef\xbc\x93 and x\xc2\xb2",   /* Ａ１２３ ² */
        "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe6\x96\x87 \xf0\x9f\x98\x80 emoji",
        "\xe2\x80\x9cquoted\xe2\x80\x9d \xe2\x80\x94 dash \xe2\x80\xa6 ellipsis",
        "def f(x): return {\"a\": [1, 2, 3]}  # code-ish 0x1F 3.14159 1e-9",
        "A sentence with <extra_id_0> written literally and </s> too.",
        "\xe2\x96\x81 the word-mark character itself",
        "zero\xe2\x80\x8bwidth\xc2\xa0nbsp",
    };
    size_t n = sizeof lines / sizeof lines[0];
    CHECK_EQ_INT(compare_with_cli_(t, lines, n), 0);

    /* Hand-checked facts that do not depend on the CLI. */
    int32_t *ids = NULL;
    size_t cap = 0;
    CHECK_EQ_INT(spm_encode(t, "", 0, &ids, &cap), 0);
    long m = spm_encode(t, "\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80", 11, &ids, &cap);
    int has_unk = 0;
    for (long i = 0; i < m; i++) has_unk |= ids[i] == 2;
    CHECK(m > 0 && has_unk);   /* CJK and emoji are not in an English docs vocabulary */
    /* len, not NUL, ends the text. */
    long a = spm_encode(t, "Hello world.", 5, &ids, &cap);
    int32_t first[64];
    CHECK(a > 0 && a < 64);
    if (a > 0 && a < 64) memcpy(first, ids, (size_t)a * 4);
    long b = spm_encode(t, "Hello", 5, &ids, &cap);
    CHECK(a == b && a > 0 && a < 64 && memcmp(first, ids, (size_t)a * 4) == 0);
    /* The buffer grows from NULL/0 and keeps its capacity. */
    CHECK(cap >= (size_t)a && ids != NULL);
    free(ids);
    spm_close(t);
}

static void test_encode_matches_cli_corpus(void) {
    SpmTokenizer *t = open_sample_();
    if (!t) return;
    StrList docs = read_docs_(VALIDATION, test_quick() ? 20 : 200);
    CHECK(docs.n >= 20);
    StrList paras = paragraphs_(&docs);
    CHECK(paras.n > docs.n);
    CHECK_EQ_INT(compare_with_cli_(t, (const char *const *)paras.s, paras.n), 0);
    /* A newline in a document is whitespace to the nmt_nfkc normalizer: encoding a whole
     * document equals encoding it with spaces instead (what the training pipeline relies on
     * when it encodes documents, not lines). */
    int32_t *ids = NULL, *ids2 = NULL;
    size_t cap = 0, cap2 = 0, bad = 0;
    for (size_t i = 0; i < docs.n; i++) {
        size_t len = strlen(docs.s[i]);
        long m = spm_encode(t, docs.s[i], len, &ids, &cap);
        for (char *c = docs.s[i]; *c; c++)
            if (*c == '\n') *c = ' ';
        long m2 = spm_encode(t, docs.s[i], len, &ids2, &cap2);
        if (m < 0 || m != m2 || memcmp(ids, ids2, (size_t)m * 4) != 0) bad++;
    }
    CHECK_EQ_INT(bad, 0);
    free(ids);
    free(ids2);
    strlist_free_(&paras);
    strlist_free_(&docs);
    spm_close(t);
}

/* decode(encode(x)): against hand-written normal forms and against the spm_decode CLI. */
static void test_decode(void) {
    SpmTokenizer *t = open_sample_();
    if (!t) return;
    int32_t *ids = NULL;
    size_t cap = 0;
    static const char *const cases[][2] = {
        {"The quick brown fox jumps over the lazy dog.", "The quick brown fox jumps over the lazy dog."},
        {"  runs   of    spaces  ", "runs of spaces"},
        {"\xef\xac\x81nd the \xef\xac\x82ow", "find the flow"},
        {"\xef\xbc\xa1\xef\xbc\x91", "A1"},
        {"", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        long m = spm_encode(t, cases[i][0], strlen(cases[i][0]), &ids, &cap);
        CHECK(m >= 0);
        char *s = spm_decode(t, ids, m < 0 ? 0 : (size_t)m);
        CHECK_STR(s, cases[i][1]);
        free(s);
    }

    /* Sentinels, EOS and PAD print as their pieces; words keep their spaces around them. */
    int32_t seq[64];
    size_t n = 0;
    long m = spm_encode(t, "The cat", 7, &ids, &cap);
    CHECK(m > 0 && m < 20);
    for (long i = 0; i < m && i < 20; i++) seq[n++] = ids[i];
    seq[n++] = spm_sentinel(t, 0);
    m = spm_encode(t, "sat on", 6, &ids, &cap);
    CHECK(m > 0 && m < 20);
    for (long i = 0; i < m && i < 20; i++) seq[n++] = ids[i];
    seq[n++] = spm_sentinel(t, 1);
    seq[n++] = 1;
    seq[n++] = 0;
    seq[n++] = spm_vocab_size(t);
    char *s = spm_decode(t, seq, n);
    CHECK_STR(s, "The cat<extra_id_0> sat on<extra_id_1></s><pad><unused_0>");
    free(s);
    seq[0] = spm_sentinel(t, 0);
    seq[1] = spm_sentinel(t, 99);
    s = spm_decode(t, seq, 2);
    CHECK_STR(s, "<extra_id_0><extra_id_99>");
    free(s);

    /* Real paragraphs: spm_decode() must agree with `spm_encode | spm_decode`. */
    StrList docs = read_docs_(VALIDATION, test_quick() ? 5 : 40);
    StrList paras = paragraphs_(&docs);
    char tmp[] = "/tmp/test_spm_decXXXXXX";
    int fd = mkstemp(tmp);
    CHECK(fd >= 0);
    FILE *f = fdopen(fd, "w");
    for (size_t i = 0; i < paras.n; i++) fprintf(f, "%s\n", paras.s[i]);
    fclose(f);
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "spm_encode --model '%s' --output_format=id < '%s' | "
             "spm_decode --model '%s' --input_format=id", MODEL, tmp, MODEL);
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL);
    char *line = NULL;
    size_t lcap = 0, bad = 0, got = 0;
    while (p && got < paras.n && getline(&line, &lcap, p) > 0) {
        line[strcspn(line, "\n")] = '\0';
        long k = spm_encode(t, paras.s[got], strlen(paras.s[got]), &ids, &cap);
        char *d = spm_decode(t, ids, k < 0 ? 0 : (size_t)k);
        if (strcmp(d, line) != 0 && bad++ < 3)
            fprintf(stderr, "  decode mismatch: '%.80s' vs CLI '%.80s'\n", d, line);
        free(d);
        got++;
    }
    free(line);
    if (p) CHECK(pclose(p) == 0);
    unlink(tmp);
    CHECK_EQ_INT(got, paras.n);
    CHECK_EQ_INT(bad, 0);
    strlist_free_(&paras);
    strlist_free_(&docs);
    free(ids);
    spm_close(t);
}

/* Many threads, one tokenizer, distinct buffers: same ids as a serial pass. Also measures the
 * single-thread encode speed on sample-corpus documents. */
static void test_encode_threads_and_speed(void) {
    SpmTokenizer *t = open_sample_();
    if (!t) return;
    StrList docs = read_docs_(test_quick() ? VALIDATION : TRAIN0, test_quick() ? 40 : 100000);
    CHECK(docs.n >= 40);
    size_t n = docs.n;
    long *count = calloc(n, sizeof *count);
    uint64_t *hash = calloc(n, sizeof *hash);
    int32_t *ids = NULL;
    size_t cap = 0;
    long long tokens = 0, bytes = 0;
    double t0 = now_();
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(docs.s[i]);
        count[i] = spm_encode(t, docs.s[i], len, &ids, &cap);
        uint64_t hv = 1469598103934665603ull;
        for (long j = 0; j < count[i]; j++) hv = (hv ^ (uint32_t)ids[j]) * 1099511628211ull;
        hash[i] = hv;
        tokens += count[i];
        bytes += (long long)len;
    }
    double dt = now_() - t0;
    free(ids);
    fprintf(stderr, "  encode speed (1 thread, %zu documents, %.2f MB): %.0f tokens/s, "
            "%.2f MB/s, %.3f tokens/byte\n", n, bytes / 1e6, tokens / dt, bytes / 1e6 / dt,
            (double)tokens / (double)bytes);
    CHECK(tokens > 0);

    long bad = 0;
    #pragma omp parallel num_threads(4) reduction(+ : bad)
    {
        int32_t *my = NULL;
        size_t mycap = 0;
        #pragma omp for schedule(dynamic, 4)
        for (size_t i = 0; i < n; i++) {
            long c = spm_encode(t, docs.s[i], strlen(docs.s[i]), &my, &mycap);
            uint64_t hv = 1469598103934665603ull;
            for (long j = 0; j < c; j++) hv = (hv ^ (uint32_t)my[j]) * 1099511628211ull;
            if (c != count[i] || hv != hash[i]) bad++;
        }
        free(my);
    }
    CHECK_EQ_INT(bad, 0);
    free(count);
    free(hash);
    strlist_free_(&docs);
    spm_close(t);
}

int main(void) {
    RUN(test_open_errors);
    RUN(test_sizes_and_pieces);
    RUN(test_encode_matches_cli_fixed);
    RUN(test_encode_matches_cli_corpus);
    RUN(test_decode);
    RUN(test_encode_threads_and_speed);
    return TEST_EXIT();
}
