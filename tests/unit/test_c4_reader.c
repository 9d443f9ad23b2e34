/*
 * tests/unit/test_c4_reader.c: the C4 shard reader on fixtures generated here at run time with
 * libarchive's write API (gzip/zstd raw streams, plain files, tars of compressed members,
 * compressed tars), including every bad-record kind, truncated streams and an over-long line.
 * Expected documents are written by the test itself, never computed by the reader.
 */
#include "data/c4_reader.h"

#include "common/util.h"
#include "tests/unit/test.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir_[256];

static const char *tpath_(const char *name) {
    static char buf[8][512];
    static int k = 0;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir_, name);
    return buf[k];
}

/* ---------------------------------------------------------------------------------------------
 * Fixture writers. filter: "none", "gzip" or "zstd". */

static void add_filter_(struct archive *a, const char *filter) {
    int ret = ARCHIVE_OK;
    if (strcmp(filter, "gzip") == 0) ret = archive_write_add_filter_gzip(a);
    else if (strcmp(filter, "zstd") == 0) ret = archive_write_add_filter_zstd(a);
    else ret = archive_write_add_filter_none(a);
    if (ret != ARCHIVE_OK) FATAL(NULL, "add filter %s: %s", filter, archive_error_string(a));
}

/* A single compressed stream (libarchive "raw" format) holding data, or the plain bytes. */
static void write_stream_(const char *path, const char *filter, const void *data, size_t len) {
    if (strcmp(filter, "none") == 0) {
        FILE *f = xfopen(path, "wb");
        if (len && fwrite(data, 1, len, f) != len) FATAL(NULL, "write %s", path);
        fclose(f);
        return;
    }
    struct archive *a = archive_write_new();
    add_filter_(a, filter);
    archive_write_set_format_raw(a);
    if (archive_write_open_filename(a, path) != ARCHIVE_OK)
        FATAL(NULL, "open %s: %s", path, archive_error_string(a));
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, "data");
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_size(e, (la_int64_t)len);
    if (archive_write_header(a, e) != ARCHIVE_OK) FATAL(NULL, "%s", archive_error_string(a));
    for (size_t off = 0; off < len;) {           /* in pieces, like a real writer */
        size_t n = len - off < 65536 ? len - off : 65536;
        if (archive_write_data(a, (const char *)data + off, n) != (la_ssize_t)n)
            FATAL(NULL, "%s", archive_error_string(a));
        off += n;
    }
    archive_entry_free(e);
    archive_write_close(a);
    archive_write_free(a);
}

/* The same, into a malloc'ed buffer (for tar members that are themselves compressed). */
static char *stream_to_memory_(const char *filter, const char *data, size_t len, size_t *out_len) {
    const char *p = tpath_("member.tmp");
    write_stream_(p, filter, data, len);
    char *buf = read_file_all(p, out_len);
    if (!buf) FATAL(NULL, "read back %s", p);
    unlink(p);
    return buf;
}

typedef struct { const char *name; const char *data; size_t len; int is_dir; } Member;

static void write_tar_(const char *path, const char *filter, const Member *m, int n) {
    struct archive *a = archive_write_new();
    add_filter_(a, filter);
    archive_write_set_format_pax_restricted(a);
    if (archive_write_open_filename(a, path) != ARCHIVE_OK)
        FATAL(NULL, "open %s: %s", path, archive_error_string(a));
    for (int i = 0; i < n; i++) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, m[i].name);
        archive_entry_set_filetype(e, m[i].is_dir ? AE_IFDIR : AE_IFREG);
        archive_entry_set_perm(e, m[i].is_dir ? 0755 : 0644);
        archive_entry_set_size(e, m[i].is_dir ? 0 : (la_int64_t)m[i].len);
        if (archive_write_header(a, e) != ARCHIVE_OK) FATAL(NULL, "%s", archive_error_string(a));
        if (!m[i].is_dir && m[i].len &&
            archive_write_data(a, m[i].data, m[i].len) != (la_ssize_t)m[i].len)
            FATAL(NULL, "%s", archive_error_string(a));
        archive_entry_free(e);
    }
    archive_write_close(a);
    archive_write_free(a);
}

static long file_size_(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void truncate_to_(const char *path, long size) {
    if (truncate(path, size) != 0) FATAL(NULL, "truncate %s: %s", path, strerror(errno));
}

/* Growable string for building fixtures. */
typedef struct { char *p; size_t len, cap; } Str;
static void str_addn_(Str *s, const char *p, size_t n) {
    if (s->len + n + 1 > s->cap) {
        s->cap = (s->len + n + 1) * 2;
        s->p = xrealloc(s->p, s->cap);
    }
    memcpy(s->p + s->len, p, n);
    s->len += n;
    s->p[s->len] = '\0';
}
static void str_add_(Str *s, const char *p) { str_addn_(s, p, strlen(p)); }
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void str_addf_(Str *s, const char *fmt, ...) {
    char tmp[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    str_addn_(s, tmp, (size_t)n);
}

/* Read a whole file through the reader; docs are copied out as "line<TAB>text" entries. */
typedef struct { long line; char *text; char *url; char *ts; char *member; size_t len; } Got;
typedef struct { Got *d; int n; C4Stats st; } GotAll;

static int read_all_(const char *path, const C4ReaderOptions *opt, GotAll *g) {
    char err[512];
    memset(g, 0, sizeof *g);
    C4Reader *r = c4_reader_open(path, opt, err, sizeof err);
    if (!r) { fprintf(stderr, "  open failed: %s\n", err); return -1; }
    C4Document doc;
    int cap = 0;
    while (c4_reader_next(r, &doc)) {
        if (g->n == cap) { cap = cap ? cap * 2 : 16; g->d = xrealloc(g->d, (size_t)cap * sizeof(Got)); }
        Got *x = &g->d[g->n++];
        x->line = doc.line;
        x->len = doc.text_len;
        x->text = xmalloc(doc.text_len + 1);
        memcpy(x->text, doc.text, doc.text_len + 1);
        x->url = xstrdup(doc.url);
        x->ts = xstrdup(doc.timestamp);
        x->member = xstrdup(doc.member);
    }
    CHECK(c4_reader_next(r, &doc) == 0);     /* stays at the end */
    g->st = *c4_reader_stats(r);
    c4_reader_close(r);
    return 0;
}

static void got_free_(GotAll *g) {
    for (int i = 0; i < g->n; i++) {
        free(g->d[i].text); free(g->d[i].url); free(g->d[i].ts); free(g->d[i].member);
    }
    free(g->d);
    memset(g, 0, sizeof *g);
}

/* The first line reported to rep starts with `want` (and holds `also` unless NULL); closes rep. */
static void check_first_report_(FILE *rep, const char *want, const char *also) {
    char buf[1024] = "";
    rewind(rep);
    CHECK(fgets(buf, sizeof buf, rep) != NULL);
    CHECKF(strncmp(buf, want, strlen(want)) == 0 && (!also || strstr(buf, also)),
           "report '%s', want '%s'...%s", buf, want, also ? also : "");
    fclose(rep);
}

static long total_bad_(const C4Stats *s) {
    long t = 0;
    for (int k = 0; k < C4_NUM_BAD_KINDS; k++) t += s->bad[k];
    return t;
}

/* ---------------------------------------------------------------------------------------------
 * Good documents in every container. */

static const char *GOOD_JSONL =
    "{\"text\":\"Hello world.\\nSecond line.\",\"timestamp\":\"2019-04-25T12:57:54Z\","
    "\"url\":\"https://a.example/1\"}\n"
    "{\"url\":\"https://b.example/2\",\"text\":\"h\\u00e9llo w\\u00f6rld \\u2713 \xe2\x9c\x93 "
    "\xf0\x9f\x98\x80\",\"timestamp\":\"2019-04-26T00:00:00Z\"}\n"
    "{\"text\":\"pair \\ud83d\\ude00 and literal \\\\u0000 end\"}\n";
static const char *GOOD_TEXT[3] = {
    "Hello world.\nSecond line.",
    "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \xe2\x9c\x93 \xf0\x9f\x98\x80",
    "pair \xf0\x9f\x98\x80 and literal \\u0000 end",
};
static const char *GOOD_URL[3] = { "https://a.example/1", "https://b.example/2", "" };
static const char *GOOD_TS[3] = { "2019-04-25T12:57:54Z", "2019-04-26T00:00:00Z", "" };

static void check_good_(const GotAll *g, int first, const char *member, long line0) {
    for (int i = 0; i < 3 && first + i < g->n; i++) {
        const Got *x = &g->d[first + i];
        CHECK_STR(x->text, GOOD_TEXT[i]);
        CHECK_EQ_INT(x->len, strlen(GOOD_TEXT[i]));
        CHECK_STR(x->url, GOOD_URL[i]);
        CHECK_STR(x->ts, GOOD_TS[i]);
        CHECK_EQ_INT(x->line, line0 + i);
        CHECK_STR(x->member, member);
    }
}

static void test_single_streams(void) {
    const char *filters[3] = { "none", "gzip", "zstd" };
    const char *names[3] = { "good.json", "good.json.gz", "good.json.zst" };
    size_t len = strlen(GOOD_JSONL);
    long long text_bytes = 0;
    for (int i = 0; i < 3; i++) text_bytes += (long long)strlen(GOOD_TEXT[i]);
    for (int f = 0; f < 3; f++) {
        const char *p = tpath_(names[f]);
        write_stream_(p, filters[f], GOOD_JSONL, len);
        GotAll g;
        CHECK(read_all_(p, NULL, &g) == 0);
        CHECKF(g.n == 3, "%s: %d documents", names[f], g.n);
        check_good_(&g, 0, p, 1);
        CHECK_EQ_INT(g.st.documents, 3);
        CHECK_EQ_INT(g.st.lines, 3);
        CHECK_EQ_INT(g.st.input_bytes, len);
        CHECK_EQ_INT(g.st.text_bytes, text_bytes);
        CHECK_EQ_INT(total_bad_(&g.st), 0);
        got_free_(&g);
        unlink(p);
    }
    /* empty inputs: a 0-byte file and a gzip of nothing give no documents and no complaints */
    const char *e0 = tpath_("empty.json"), *e1 = tpath_("empty.json.gz");
    write_stream_(e0, "none", "", 0);
    write_stream_(e1, "gzip", "", 0);
    GotAll g;
    CHECK(read_all_(e0, NULL, &g) == 0);
    CHECK_EQ_INT(g.n, 0);
    CHECK_EQ_INT(total_bad_(&g.st), 0);
    got_free_(&g);
    CHECK(read_all_(e1, NULL, &g) == 0);
    CHECK_EQ_INT(g.n, 0);
    CHECK_EQ_INT(total_bad_(&g.st), 0);
    got_free_(&g);
    unlink(e0);
    unlink(e1);
}

static void test_tars(void) {
    const char *gl = GOOD_JSONL;
    size_t len = strlen(gl);
    /* second member: the first good line only, without a final newline */
    size_t one = (size_t)(strchr(gl, '\n') - gl);
    size_t gz_len, gz1_len, zst_len;
    char *gz = stream_to_memory_("gzip", gl, len, &gz_len);
    char *gz1 = stream_to_memory_("gzip", gl, one, &gz1_len);
    char *zst = stream_to_memory_("zstd", gl, len, &zst_len);

    /* plain tar: a directory, two .json.gz members and a .json.zst */
    Member m1[4] = {
        { "shards/", NULL, 0, 1 },
        { "shards/c4-train.00000-of-01024.json.gz", gz, gz_len, 0 },
        { "shards/c4-train.00001-of-01024.json.gz", gz1, gz1_len, 0 },
        { "shards/c4-train.00002-of-01024.json.zst", zst, zst_len, 0 },
    };
    const char *p1 = tpath_("two.tar");
    write_tar_(p1, "none", m1, 4);
    GotAll g;
    CHECK(read_all_(p1, NULL, &g) == 0);
    CHECK_EQ_INT(g.n, 7);
    check_good_(&g, 0, m1[1].name, 1);
    if (g.n >= 4) {
        CHECK_STR(g.d[3].text, GOOD_TEXT[0]);
        CHECK_STR(g.d[3].member, m1[2].name);
        CHECK_EQ_INT(g.d[3].line, 1);
    }
    check_good_(&g, 4, m1[3].name, 1);
    CHECK_EQ_INT(g.st.documents, 7);
    CHECK_EQ_INT(g.st.input_bytes, 2 * len + one);
    CHECK_EQ_INT(total_bad_(&g.st), 0);
    got_free_(&g);

    /* tar.gz of plain json files, one of them empty */
    Member m2[3] = {
        { "a.json", gl, len, 0 },
        { "empty.json", "", 0, 0 },
        { "b.json", gl, len, 0 },
    };
    const char *p2 = tpath_("plain.tar.gz");
    write_tar_(p2, "gzip", m2, 3);
    CHECK(read_all_(p2, NULL, &g) == 0);
    CHECK_EQ_INT(g.n, 6);
    check_good_(&g, 0, "a.json", 1);
    check_good_(&g, 3, "b.json", 1);
    CHECK_EQ_INT(total_bad_(&g.st), 0);
    got_free_(&g);

    /* a member whose own gzip stream is cut short inside an intact tar: that member's complete
     * lines, one C4_TRUNCATED, and the next member still read */
    Member m3[2] = {
        { "cut.json.gz", gz, gz_len - 12, 0 },
        { "whole.json.gz", gz, gz_len, 0 },
    };
    const char *p3 = tpath_("cutmember.tar");
    FILE *rep = tmpfile();
    C4ReaderOptions o = { 0, 0, rep };
    write_tar_(p3, "none", m3, 2);
    CHECK(read_all_(p3, &o, &g) == 0);
    CHECK(g.n >= 3 && g.n <= 5);
    CHECK_EQ_INT(g.st.bad[C4_TRUNCATED], 1);
    CHECK_EQ_INT(total_bad_(&g.st), 1);
    if (g.n >= 3) check_good_(&g, g.n - 3, "whole.json.gz", 1);
    for (int i = 0; i + 3 < g.n; i++) {
        CHECK_STR(g.d[i].member, "cut.json.gz");
        CHECK_STR(g.d[i].text, GOOD_TEXT[i]);
    }
    char want[600];
    snprintf(want, sizeof want, "c4: %s:cut.json.gz:", p3);
    check_first_report_(rep, want, "skipped (truncated)");
    got_free_(&g);

    unlink(p1); unlink(p2); unlink(p3);
    free(gz); free(gz1); free(zst);
}

/* ---------------------------------------------------------------------------------------------
 * Bad records: each kind between good ones. */

typedef struct { const char *line; int kind; } Case;   /* kind -1: good, -2: blank (ignored) */

static const Case BAD_CASES[] = {
    { "{\"text\":\"x\"", C4_BAD_JSON },                                   /* unterminated */
    { "{\"text\":\"a\xc0\xaf\"}", C4_BAD_UTF8 },                          /* overlong 2-byte */
    { "{\"text\":\"a\xe0\x80\xaf\"}", C4_BAD_UTF8 },                      /* overlong 3-byte */
    { "{\"text\":\"a\xf0\x80\x80\xaf\"}", C4_BAD_UTF8 },                  /* overlong 4-byte */
    { "{\"text\":\"a\xed\xa0\x80\"}", C4_BAD_UTF8 },                      /* encoded surrogate */
    { "{\"text\":\"a\xf4\x90\x80\x80\"}", C4_BAD_UTF8 },                  /* > U+10FFFF */
    { "{\"text\":\"a\x80z\"}", C4_BAD_UTF8 },                             /* stray continuation */
    { "{\"text\":\"a\xe2\x82\"}", C4_BAD_UTF8 },                          /* cut sequence */
    { "{\"text\":\"a\xf8\x88\x80\x80\x80\"}", C4_BAD_UTF8 },              /* 5-byte form */
    { "{\"url\":\"https://x.example/\xff\",\"text\":\"ok\"}", C4_BAD_UTF8 }, /* in another field */
    { "{\"url\":\"https://x.example/\"}", C4_NO_TEXT },
    { "{\"text\":123}", C4_NO_TEXT },
    { "{\"text\":null}", C4_NO_TEXT },
    { "{\"text\":[\"x\"]}", C4_NO_TEXT },
    { "{\"Text\":\"wrong case\"}", C4_NO_TEXT },
    { "{\"text\":\"\",\"url\":\"https://e.example/\"}", C4_EMPTY_TEXT },
    { "{\"text\":\"a\\u0000b\"}", C4_BAD_ESCAPE },
    { "{\"text\":\"a\\ud800b\"}", C4_BAD_ESCAPE },                         /* lone high */
    { "{\"text\":\"a\\udc00b\"}", C4_BAD_ESCAPE },                         /* lone low */
    { "{\"text\":\"a\\ud800\\u0041\"}", C4_BAD_ESCAPE },                   /* high + non-low */
    { "{\"text\":\"a\\ude00\\ud83d\"}", C4_BAD_ESCAPE },                   /* pair reversed */
    { "{\"text\":\"a\\ud83d\"}", C4_BAD_ESCAPE },                          /* high at the end */
    { "", -2 },
    { "   \t", -2 },
    { "[1,2]", C4_BAD_JSON },
    { "\"just a string\"", C4_BAD_JSON },
    { "42", C4_BAD_JSON },
    { "{\"text\":\"a\"} trailing", C4_BAD_JSON },
    { "{\"text\":\"a\"}{\"text\":\"b\"}", C4_BAD_JSON },
    { "{\"text\":\"bad \\x escape\"}", C4_BAD_JSON },
    { "{text:\"unquoted key\"}", C4_BAD_JSON },
};
#define NUM_BAD_CASES ((int)(sizeof BAD_CASES / sizeof BAD_CASES[0]))

static void test_bad_records(void) {
    /* good, bad, good, bad, ..., good; plus special good lines checking decoding */
    Str s = { 0 };
    long line = 0;
    int ngood = 0;
    long want_lines[256];
    char want_text[256][64];
    long counts[C4_NUM_BAD_KINDS] = { 0 };
    long bad_line[256];
    int bad_kind[256], nbad = 0;
    for (int i = 0; i <= NUM_BAD_CASES; i++) {
        line++;
        snprintf(want_text[ngood], sizeof want_text[ngood], "good %ld", line);
        str_addf_(&s, "{\"text\":\"good %ld\",\"url\":\"u%ld\"}\n", line, line);
        want_lines[ngood++] = line;
        if (i == NUM_BAD_CASES) break;
        line++;
        str_add_(&s, BAD_CASES[i].line);
        str_add_(&s, "\n");
        if (BAD_CASES[i].kind >= 0) {
            counts[BAD_CASES[i].kind]++;
            bad_line[nbad] = line;
            bad_kind[nbad++] = BAD_CASES[i].kind;
        }
    }
    /* accepted specials: a valid surrogate pair (upper-case hex) decoded to 4-byte UTF-8, the
     * largest code point, a CRLF line ending, and a final line without '\n' */
    str_add_(&s, "{\"text\":\"\\uD83D\\uDE00 \xf4\x8f\xbf\xbf\"}\r\n");
    line++;
    want_lines[ngood] = line;
    strcpy(want_text[ngood++], "\xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf");
    str_add_(&s, "{\"text\":\"last\"}");
    line++;
    want_lines[ngood] = line;
    strcpy(want_text[ngood++], "last");

    const char *filters[2] = { "none", "gzip" };
    for (int f = 0; f < 2; f++) {
        const char *p = tpath_(f ? "bad.json.gz" : "bad.json");
        write_stream_(p, filters[f], s.p, s.len);
        FILE *rep = tmpfile();
        C4ReaderOptions o = { 0, 1000, rep };
        GotAll g;
        CHECK(read_all_(p, &o, &g) == 0);
        CHECK_EQ_INT(g.n, ngood);
        for (int i = 0; i < ngood && i < g.n; i++) {
            CHECK_EQ_INT(g.d[i].line, want_lines[i]);
            CHECK_STR(g.d[i].text, want_text[i]);
        }
        for (int k = 0; k < C4_NUM_BAD_KINDS; k++) {
            CHECKF(g.st.bad[k] == counts[k], "kind %s: %ld counted, %ld expected",
                   c4_bad_kind_name((C4BadKind)k), g.st.bad[k], counts[k]);
        }
        CHECK_EQ_INT(g.st.documents, ngood);
        CHECK_EQ_INT(g.st.lines, ngood + nbad);      /* the two blank lines are not counted */
        /* one report per bad line, in order, "c4: <file>:<line>: skipped (<kind>): ..." */
        rewind(rep);
        char buf[1024];
        int nrep = 0;
        while (fgets(buf, sizeof buf, rep)) {
            if (nrep < nbad) {
                char want[700];
                snprintf(want, sizeof want, "c4: %s:%ld: skipped (%s): ", p, bad_line[nrep],
                         c4_bad_kind_name((C4BadKind)bad_kind[nrep]));
                CHECKF(strncmp(buf, want, strlen(want)) == 0, "report %d: '%s' want '%s'",
                       nrep, buf, want);
            }
            nrep++;
        }
        CHECK_EQ_INT(nrep, nbad);
        fclose(rep);
        got_free_(&g);
        unlink(p);
    }
    free(s.p);
}

/* ---------------------------------------------------------------------------------------------
 * The fast string-object parser must agree with jansson. Each line L is also written as
 * L' = L with a numeric field "n":1 inserted first, which the fast path never takes, so L' is
 * decided by jansson alone; both files must give the same documents and the same counts. */

static void fuzz_piece_(Str *s, Rng *g) {
    static const char *pieces[] = {
        "abc", " ", "Hello", "x", "\xc3\xa9", "\xe2\x9c\x93", "\xf0\x9f\x98\x80", "\\n", "\\t",
        "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\r", "\\u0041", "\\u00e9", "\\u2713",
        "\\ud83d\\ude00", "\\uD83D\\uDE00", "\\u0000", "\\ud800", "\\udc00", "\\ud83d\\u0041",
        "\\x", "\\", "\x01", "\t", "\"", "\x7f", "\\u12", "\\uZZZZ", "\\\\u0000", "{", "}", ",", ":",
    };
    int np = (int)(sizeof pieces / sizeof pieces[0]);
    uint64_t k = rng_next_below(g, 100);
    if (k < 70) str_add_(s, pieces[rng_next_below(g, 4)]);            /* mostly plain */
    else str_add_(s, pieces[rng_next_below(g, (uint64_t)np)]);
}

static void fuzz_line_(Str *s, Rng *g) {
    static const char *keys[] = { "text", "url", "timestamp", "other", "te\\u0078t", "Text", "" };
    static const char *ws[] = { "", "", "", " ", "\t", " \r " };
    str_add_(s, ws[rng_next_below(g, 6)]);
    str_add_(s, "{");
    int pairs = (int)rng_next_below(g, 5);
    for (int i = 0; i < pairs; i++) {
        if (i) { str_add_(s, ws[rng_next_below(g, 6)]); str_add_(s, ","); }
        str_add_(s, ws[rng_next_below(g, 6)]);
        str_add_(s, "\"");
        str_add_(s, keys[rng_next_below(g, 7)]);
        str_add_(s, "\"");
        str_add_(s, ws[rng_next_below(g, 6)]);
        str_add_(s, ":");
        str_add_(s, ws[rng_next_below(g, 6)]);
        uint64_t vk = rng_next_below(g, 20);
        if (vk == 0) { str_add_(s, "12"); continue; }            /* non-string values */
        if (vk == 1) { str_add_(s, "null"); continue; }
        str_add_(s, "\"");
        int n = (int)rng_next_below(g, 12);
        for (int j = 0; j < n; j++) fuzz_piece_(s, g);
        str_add_(s, "\"");
    }
    str_add_(s, ws[rng_next_below(g, 6)]);
    if (rng_next_below(g, 30)) str_add_(s, "}");
    if (rng_next_below(g, 30) == 0) str_add_(s, " x");
    str_add_(s, ws[rng_next_below(g, 6)]);
}

/* L' from L: "n":1 inserted after the first '{' (plus a comma unless the object is empty). */
static void slow_variant_(Str *out, const char *line, size_t len) {
    const char *b = memchr(line, '{', len);
    if (!b) { str_addn_(out, line, len); return; }
    str_addn_(out, line, (size_t)(b - line) + 1);
    const char *q = b + 1;
    while (q < line + len && (*q == ' ' || *q == '\t' || *q == '\r')) q++;
    str_add_(out, (q < line + len && *q == '}') ? "\"n\":1" : "\"n\":1,");
    str_addn_(out, b + 1, len - (size_t)(b + 1 - line));
}

static void test_fast_path_matches_jansson(void) {
    Str a = { 0 }, b = { 0 }, one = { 0 };
    for (int i = 0; i < NUM_BAD_CASES; i++) {              /* the hand-written cases */
        str_add_(&a, BAD_CASES[i].line); str_add_(&a, "\n");
        slow_variant_(&b, BAD_CASES[i].line, strlen(BAD_CASES[i].line)); str_add_(&b, "\n");
    }
    const char *gl = GOOD_JSONL;                           /* the good documents */
    for (const char *q = gl; *q;) {
        const char *nl = strchr(q, '\n');
        str_addn_(&a, q, (size_t)(nl - q) + 1);
        slow_variant_(&b, q, (size_t)(nl - q)); str_add_(&b, "\n");
        q = nl + 1;
    }
    Rng g = rng_make(99, 3);
    int n = test_quick() ? 4000 : 30000;
    for (int i = 0; i < n; i++) {                          /* random objects */
        one.len = 0;
        fuzz_line_(&one, &g);
        str_addn_(&a, one.p, one.len); str_add_(&a, "\n");
        slow_variant_(&b, one.p, one.len); str_add_(&b, "\n");
    }
    const char *pa = tpath_("fast.json"), *pb = tpath_("slow.json");
    write_stream_(pa, "none", a.p, a.len);
    write_stream_(pb, "none", b.p, b.len);
    FILE *rep = tmpfile();
    C4ReaderOptions o = { 0, -1, rep };
    GotAll ga, gb;
    CHECK(read_all_(pa, &o, &ga) == 0);
    CHECK(read_all_(pb, &o, &gb) == 0);
    CHECK_EQ_INT(ga.n, gb.n);
    CHECK(ga.n > 100);                 /* the fuzz must produce good documents too */
    int diff = 0;
    for (int i = 0; i < ga.n && i < gb.n; i++) {
        if (ga.d[i].line != gb.d[i].line || ga.d[i].len != gb.d[i].len ||
            memcmp(ga.d[i].text, gb.d[i].text, ga.d[i].len + 1) != 0 ||
            strcmp(ga.d[i].url, gb.d[i].url) != 0 || strcmp(ga.d[i].ts, gb.d[i].ts) != 0) {
            if (diff++ < 5) fprintf(stderr, "  line %ld: fast '%s' vs jansson '%s'\n",
                                    ga.d[i].line, ga.d[i].text, gb.d[i].text);
        }
    }
    CHECK_EQ_INT(diff, 0);
    for (int k = 0; k < C4_NUM_BAD_KINDS; k++)
        CHECKF(ga.st.bad[k] == gb.st.bad[k], "kind %s: fast %ld vs jansson %ld",
               c4_bad_kind_name((C4BadKind)k), ga.st.bad[k], gb.st.bad[k]);
    CHECK(ga.st.bad[C4_BAD_ESCAPE] > 0 && ga.st.bad[C4_BAD_JSON] > 0 && ga.st.bad[C4_NO_TEXT] > 0);
    printf("  fuzz: %d documents, bad json=%ld escape=%ld no_text=%ld empty=%ld\n", ga.n,
           ga.st.bad[C4_BAD_JSON], ga.st.bad[C4_BAD_ESCAPE], ga.st.bad[C4_NO_TEXT],
           ga.st.bad[C4_EMPTY_TEXT]);
    fclose(rep);
    got_free_(&ga);
    got_free_(&gb);
    unlink(pa);
    unlink(pb);
    free(a.p); free(b.p); free(one.p);
}

static void test_report_limit(void) {
    Str s = { 0 };
    for (int i = 0; i < 5; i++) str_add_(&s, "not json\n");
    str_add_(&s, "{\"text\":\"fine\"}\n");
    const char *p = tpath_("limit.json");
    write_stream_(p, "none", s.p, s.len);
    int firsts[3] = { 2, -1, 0 };        /* 0 means the default, 3 */
    int want_lines[3] = { 3, 0, 4 };
    for (int t = 0; t < 3; t++) {
        FILE *rep = tmpfile();
        C4ReaderOptions o = { 0, firsts[t], rep };
        GotAll g;
        CHECK(read_all_(p, &o, &g) == 0);
        CHECK_EQ_INT(g.n, 1);
        CHECK_EQ_INT(g.st.bad[C4_BAD_JSON], 5);
        rewind(rep);
        char buf[1024];
        int n = 0, further = 0;
        while (fgets(buf, sizeof buf, rep)) {
            n++;
            if (strstr(buf, "not reported")) further++;
        }
        CHECKF(n == want_lines[t], "report_first %d: %d report lines", firsts[t], n);
        CHECK_EQ_INT(further, want_lines[t] ? 1 : 0);
        fclose(rep);
        got_free_(&g);
    }
    unlink(p);
    free(s.p);
}

/* ---------------------------------------------------------------------------------------------
 * Line lengths around max_line_bytes, across decompression block boundaries. */

static void test_line_lengths(void) {
    const size_t maxb = 200;
    int n = test_quick() ? 3000 : 20000;
    Str s = { 0 };
    int *good = xmalloc((size_t)n * sizeof(int));
    long too_long = 0;
    Rng rng = rng_make(7, 1);
    char text[512];
    for (int i = 0; i < n; i++) {
        /* total line length L = 12 + tlen + 2 ({"text":"...."}); spread around maxb */
        size_t L = 150 + (size_t)rng_next_below(&rng, 101);     /* 150..250 */
        if (i % 97 == 0) L = maxb;
        if (i % 97 == 1) L = maxb + 1;
        size_t tlen = L - 11;
        for (size_t j = 0; j < tlen; j++) text[j] = (char)('a' + rng_next_below(&rng, 26));
        text[tlen] = '\0';
        str_addf_(&s, "{\"text\":\"%s\"}\n", text);
        good[i] = L <= maxb;
        too_long += !good[i];
    }
    const char *filters[2] = { "none", "gzip" };
    for (int f = 0; f < 2; f++) {
        const char *p = tpath_(f ? "len.json.gz" : "len.json");
        write_stream_(p, filters[f], s.p, s.len);
        FILE *rep = tmpfile();
        C4ReaderOptions o = { maxb, 0, rep };
        GotAll g;
        CHECK(read_all_(p, &o, &g) == 0);
        CHECK_EQ_INT(g.st.bad[C4_TOO_LONG], too_long);
        CHECK_EQ_INT(total_bad_(&g.st), too_long);
        int k = 0, mism = 0;
        const char *q = s.p;
        for (int i = 0; i < n; i++) {
            const char *nl = strchr(q, '\n');
            if (good[i]) {
                if (k >= g.n || g.d[k].line != i + 1 ||
                    g.d[k].len != (size_t)(nl - q) - 11 ||
                    memcmp(g.d[k].text, q + 9, g.d[k].len) != 0) mism++;
                k++;
            }
            q = nl + 1;
        }
        CHECK_EQ_INT(g.n, k);
        CHECK_EQ_INT(mism, 0);
        fclose(rep);
        got_free_(&g);
        unlink(p);
    }
    free(good);
    free(s.p);
}

/* A 20 MB line with max_line_bytes 1 MB is skipped without being held in memory. */
static void test_huge_line_memory(void) {
    const char *p = tpath_("huge.json.gz");
    size_t big = (size_t)20 << 20;
    struct archive *a = archive_write_new();
    add_filter_(a, "gzip");
    archive_write_set_format_raw(a);
    if (archive_write_open_filename(a, p) != ARCHIVE_OK) FATAL(NULL, "open %s", p);
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, "data");
    archive_entry_set_filetype(e, AE_IFREG);
    archive_write_header(a, e);
    char chunk[65536];
    memset(chunk, 'a', sizeof chunk);
    const char *head = "{\"text\":\"";
    archive_write_data(a, head, strlen(head));
    for (size_t done = 0; done < big; done += sizeof chunk) archive_write_data(a, chunk, sizeof chunk);
    const char *tail = "\"}\n{\"text\":\"after the long one\"}\n";
    archive_write_data(a, tail, strlen(tail));
    archive_entry_free(e);
    archive_write_close(a);
    archive_write_free(a);

    /* reset the peak-RSS watermark so the measurement covers only the read */
    FILE *cr = fopen("/proc/self/clear_refs", "w");
    int reset = cr && fputs("5", cr) >= 0;
    if (cr) reset = (fclose(cr) == 0) && reset;
    size_t before = peak_rss_bytes();

    FILE *rep = tmpfile();
    C4ReaderOptions o = { (size_t)1 << 20, 0, rep };
    GotAll g;
    CHECK(read_all_(p, &o, &g) == 0);
    size_t after = peak_rss_bytes();
    CHECK_EQ_INT(g.n, 1);
    if (g.n == 1) {
        CHECK_STR(g.d[0].text, "after the long one");
        CHECK_EQ_INT(g.d[0].line, 2);
    }
    CHECK_EQ_INT(g.st.bad[C4_TOO_LONG], 1);
    CHECK_EQ_INT(g.st.lines, 2);
    CHECK_EQ_INT(g.st.input_bytes, (long long)(strlen(head) + big + strlen(tail)));
    rewind(rep);
    char buf[512] = "";
    CHECK(fgets(buf, sizeof buf, rep) != NULL);
    char want[128];
    snprintf(want, sizeof want, "line of %zu bytes", strlen(head) + big + 2);
    CHECKF(strstr(buf, want) != NULL, "report '%s'", buf);
    fclose(rep);
    if (reset && before && after) {
        double grow_mb = ((double)after - (double)before) / 1048576.0;
        printf("  huge line: peak RSS grew by %.1f MB while skipping a %zu MB line\n", grow_mb,
               big >> 20);
        CHECKF(after < before + ((size_t)8 << 20), "peak RSS grew by %.1f MB", grow_mb);
    } else {
        printf("  huge line: peak RSS reset unavailable, memory bound not measured\n");
    }
    got_free_(&g);
    unlink(p);
}

/* A long line within max_line_bytes grows the line buffers only while it is the current
 * document: the next call gives the memory back, so a reader holds at most 512 KiB of line
 * buffers between documents however long the longest line of its file was. */
static void test_buffers_released(void) {
    const size_t big = (size_t)3 << 20;
    Str s = { 0 };
    str_add_(&s, "{\"text\":\"");
    char *chunk = xmalloc(big);
    memset(chunk, 'b', big);
    str_addn_(&s, chunk, big);
    free(chunk);
    str_add_(&s, "\"}\n{\"text\":\"small\"}\n");
    const char *filters[2] = { "none", "gzip" };
    for (int f = 0; f < 2; f++) {
        const char *p = tpath_(f ? "buf.json.gz" : "buf.json");
        write_stream_(p, filters[f], s.p, s.len);
        char err[512];
        C4Reader *r = c4_reader_open(p, NULL, err, sizeof err);
        CHECKF(r != NULL, "%s", err);
        if (!r) continue;
        C4Document d;
        CHECK(c4_reader_next(r, &d) == 1 && d.text_len == big && d.text[big - 1] == 'b');
        CHECKF(c4_reader_buffered_bytes(r) >= big, "%zu bytes buffered while the document is "
               "current", c4_reader_buffered_bytes(r));
        CHECK(c4_reader_next(r, &d) == 1 && strcmp(d.text, "small") == 0);
        CHECKF(c4_reader_buffered_bytes(r) <= ((size_t)512 << 10), "%s: %zu bytes still "
               "buffered after the long line", filters[f], c4_reader_buffered_bytes(r));
        CHECK(c4_reader_next(r, &d) == 0);
        c4_reader_close(r);
        unlink(p);
    }
    free(s.p);
}

/* ---------------------------------------------------------------------------------------------
 * Truncated and corrupt inputs. */

/* n documents "doc <i> <random letters>" of varied length, not very compressible. */
static void make_docs_(Str *s, int n, uint64_t seed) {
    Rng rng = rng_make(seed, 2);
    char text[1200];
    for (int i = 0; i < n; i++) {
        int m = snprintf(text, sizeof text, "doc %d ", i);
        size_t tlen = 50 + (size_t)rng_next_below(&rng, 1000);
        for (size_t j = 0; j < tlen; j++) text[m + j] = (char)('a' + rng_next_below(&rng, 26));
        text[m + tlen] = '\0';
        str_addf_(s, "{\"text\":\"%s\",\"url\":\"https://d.example/%d\"}\n", text, i);
    }
}

/* g must hold exactly a prefix of the documents of s (full lines, exact text). Returns how many. */
static int check_prefix_(const GotAll *g, const Str *s, const char *member) {
    const char *q = s->p;
    int bad = 0;
    for (int i = 0; i < g->n; i++) {
        const char *nl = strchr(q, '\n');
        const char *t = q + 9;                       /* after {"text":" */
        const char *te = strstr(t, "\",\"url\"");
        if (!nl || !te || g->d[i].line != i + 1 ||
            g->d[i].len != (size_t)(te - t) || memcmp(g->d[i].text, t, g->d[i].len) != 0 ||
            (member && strcmp(g->d[i].member, member) != 0)) bad++;
        q = nl ? nl + 1 : q;
    }
    CHECK_EQ_INT(bad, 0);
    return g->n;
}

static int count_lines_(const Str *s) {
    int n = 0;
    for (size_t i = 0; i < s->len; i++) n += s->p[i] == '\n';
    return n;
}

/* Read p: exactly one bad record, a C4_TRUNCATED whose report starts "c4: <p>:<after>" and
 * says "(truncated)". */
static void read_truncated_(const char *p, const char *after, GotAll *g) {
    FILE *rep = tmpfile();
    C4ReaderOptions o = { 0, 0, rep };
    CHECK(read_all_(p, &o, g) == 0);
    CHECK_EQ_INT(g->st.bad[C4_TRUNCATED], 1);
    CHECK_EQ_INT(total_bad_(&g->st), 1);
    char want[600];
    snprintf(want, sizeof want, "c4: %s:%s", p, after);
    check_first_report_(rep, want, "(truncated)");
}

static void test_truncated(void) {
    int n = test_quick() ? 1500 : 4000;
    Str s = { 0 };
    make_docs_(&s, n, 11);
    CHECK_EQ_INT(count_lines_(&s), n);
    const char *filters[2] = { "gzip", "zstd" };
    const char *names[2] = { "cut.json.gz", "cut.json.zst" };
    for (int f = 0; f < 2; f++) {
        const char *p = tpath_(names[f]);
        /* cut to 60% of the compressed size, and (separately) just 5 bytes off the end */
        for (int mode = 0; mode < 2; mode++) {
            write_stream_(p, filters[f], s.p, s.len);
            long sz = file_size_(p);
            truncate_to_(p, mode == 0 ? sz * 6 / 10 : sz - 5);
            GotAll g;
            read_truncated_(p, "", &g);
            /* exact counts against a streaming decompression: tests/unit/test_c4_damage.c */
            if (mode == 0) CHECKF(g.n > n / 4 && g.n < n, "%s: %d of %d delivered", names[f], g.n, n);
            else CHECKF(g.n > n * 9 / 10 && g.n <= n, "%s: %d of %d delivered", names[f], g.n, n);
            check_prefix_(&g, &s, p);
            got_free_(&g);
        }
        unlink(p);
    }

    /* a tar (plain and gzip-compressed) cut inside its second member: the first member whole,
     * a prefix of the second, one C4_TRUNCATED */
    Str s2 = { 0 };
    make_docs_(&s2, n, 12);
    Member m[2] = { { "first.json", s.p, s.len, 0 }, { "second.json", s2.p, s2.len, 0 } };
    const char *tf[2] = { "none", "gzip" };
    const char *tn[2] = { "cut.tar", "cut.tar.gz" };
    for (int f = 0; f < 2; f++) {
        const char *p = tpath_(tn[f]);
        write_tar_(p, tf[f], m, 2);
        long sz = file_size_(p);
        truncate_to_(p, sz * 3 / 4);
        GotAll g;
        read_truncated_(p, "", &g);
        CHECKF(g.n > n && g.n < 2 * n, "%s: %d delivered", tn[f], g.n);
        if (g.n > n) {
            GotAll a = g, b = g;
            a.n = n;
            check_prefix_(&a, &s, "first.json");
            b.d = g.d + n;
            b.n = g.n - n;
            check_prefix_(&b, &s2, "second.json");
        }
        got_free_(&g);
        unlink(p);
    }

    /* a tar cut inside the header of its second member: the first member whole, then one
     * C4_TRUNCATED reported for the file as a whole */
    {
        const char *p = tpath_("cuthdr.tar");
        write_tar_(p, "none", m, 2);
        long first_end = 512 + (long)((s.len + 511) / 512 * 512);   /* ustar header + data */
        truncate_to_(p, first_end + 100);
        GotAll g;
        read_truncated_(p, " skipped (truncated): ", &g);
        CHECK_EQ_INT(g.n, n);
        check_prefix_(&g, &s, "first.json");
        got_free_(&g);
        unlink(p);
    }

    /* a gzip cut inside its first block: opens, no documents, one C4_TRUNCATED at line 1 */
    {
        const char *p = tpath_("stub.json.gz");
        write_stream_(p, "gzip", s.p, s.len);
        truncate_to_(p, 15);
        GotAll g;
        read_truncated_(p, "1: skipped (truncated): ", &g);
        CHECK_EQ_INT(g.n, 0);
        got_free_(&g);
        unlink(p);
    }
    free(s.p);
    free(s2.p);
}

static void test_open_errors(void) {
    char err[512];
    const char *p = tpath_("does-not-exist.json.gz");
    C4Reader *r = c4_reader_open(p, NULL, err, sizeof err);
    CHECK(r == NULL);
    CHECKF(strstr(err, p) != NULL && strstr(err, strerror(ENOENT)) != NULL, "err '%s'", err);
    r = c4_reader_open(tmpdir_, NULL, err, sizeof err);
    CHECK(r == NULL);
    CHECKF(strstr(err, tmpdir_) != NULL && strstr(err, "directory"), "err '%s'", err);
    CHECK(c4_reader_open(p, NULL, NULL, 0) == NULL);   /* err may be NULL */
    c4_reader_close(NULL);
}

static void test_stats(void) {
    C4Stats a = { 0 }, b = { 0 };
    a.documents = 3; a.lines = 5; a.text_bytes = 100; a.input_bytes = 200;
    b.documents = 4; b.lines = 9; b.text_bytes = 1; b.input_bytes = 2;
    for (int k = 0; k < C4_NUM_BAD_KINDS; k++) { a.bad[k] = k; b.bad[k] = 10 * k; }
    c4_stats_add(&a, &b);
    CHECK_EQ_INT(a.documents, 7);
    CHECK_EQ_INT(a.lines, 14);
    CHECK_EQ_INT(a.text_bytes, 101);
    CHECK_EQ_INT(a.input_bytes, 202);
    for (int k = 0; k < C4_NUM_BAD_KINDS; k++) CHECK_EQ_INT(a.bad[k], 11 * k);
    CHECK_EQ_INT(a.files_damaged, 0);
    FILE *f = tmpfile();
    c4_stats_print(&a, f);
    rewind(f);
    char buf[512] = "";
    CHECK(fgets(buf, sizeof buf, f) != NULL);
    fclose(f);
    const char *head = "documents=7 lines=14 text_bytes=101 input_bytes=202 bad: json=0 utf8=11 ";
    CHECKF(strncmp(buf, head, strlen(head)) == 0, "'%s'", buf);
    CHECKF(strstr(buf, " truncated=66 corrupt=77\n") != NULL, "'%s'", buf);
    for (int k = 0; k < C4_NUM_BAD_KINDS; k++)
        for (int j = 0; j < k; j++)
            CHECK(strcmp(c4_bad_kind_name((C4BadKind)k), c4_bad_kind_name((C4BadKind)j)) != 0);
}

int main(void) {
    snprintf(tmpdir_, sizeof tmpdir_, "/tmp/test_c4_reader.XXXXXX");
    if (!mkdtemp(tmpdir_)) FATAL(NULL, "mkdtemp: %s", strerror(errno));
    RUN(test_huge_line_memory);     /* first: nothing else has raised the heap yet */
    RUN(test_single_streams);
    RUN(test_tars);
    RUN(test_bad_records);
    RUN(test_fast_path_matches_jansson);
    RUN(test_report_limit);
    RUN(test_line_lengths);
    RUN(test_buffers_released);
    RUN(test_truncated);
    RUN(test_open_errors);
    RUN(test_stats);
    rmdir(tmpdir_);
    return TEST_EXIT();
}
