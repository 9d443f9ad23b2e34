/*
 * tests/unit/test_c4_seek.c: restarting a C4 reader at its seek points (c4_reader.h "Seek
 * points"). Shards made here: several MiB of random-word JSON lines (random enough that deflate
 * blocks are small), with bad records mixed in (not JSON, empty text, invalid UTF-8, a line
 * longer than max_line_bytes) and a line that spans a seek point; as gzip in 3 members split
 * inside lines, as zstd in several frames, and plain. A straight read records every document
 * (CRC32 of the text, line, member) with the reader's statistics after it, and every seek point;
 * a reader restarted at each point must then deliver exactly the same documents and statistics
 * to the end. Damage after a point (corrupt deflate data, a wrong CRC32 trailer, a cut) must be
 * reported the same way, and a point must be refused when the file is not the one it was taken
 * on.
 */
#include "data/c4_reader.h"

#include "common/util.h"
#include "tests/unit/test.h"

#include <errno.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

static char tmpdir_[256];

static const char *tpath_(const char *name) {
    static char buf[4][512];
    static int k = 0;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir_, name);
    return buf[k];
}

typedef struct { char *p; size_t len, cap; } Buf;
static void buf_add_(Buf *b, const void *p, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void write_file_(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) FATAL(NULL, "cannot write %s", path);
}

static const char *words_[] = { "the", "of", "corpus", "model", "42", "zebra", "quantum",
    "river", "blue", "x9", "tensor", "and", "a", "window", "deflate", "block", "seven", "café" };

/* About `bytes` of JSON lines. Every 97th line is bad (rotating reasons), one line of 40 KiB
 * (longer than the test's max_line_bytes of 32 KiB: too_long), blank lines now and then. */
static void make_text_(Buf *b, size_t bytes, uint64_t seed) {
    Rng rng = rng_make(seed, 11);
    char line[2048];
    long i = 0;
    while (b->len < bytes) {
        i++;
        if (i % 97 == 0) {
            static const char *bad[] = { "{\"text\": broken\n", "{\"text\":\"\"}\n",
                                         "{\"text\":\"bad \xC0\xAF utf8\"}\n", "[1,2]\n", "\n",
                                         "   \n" };
            const char *s = bad[(i / 97) % 6];
            buf_add_(b, s, strlen(s));
            continue;
        }
        if (i == 3000) {                     /* too long: 40 KiB of text */
            buf_add_(b, "{\"text\":\"", 9);
            for (int j = 0; j < 40 * 1024; j++) buf_add_(b, "q", 1);
            buf_add_(b, "\"}\n", 3);
            continue;
        }
        int m = snprintf(line, sizeof line, "{\"url\":\"https://e.example/%ld\",\"text\":\"%ld",
                         i, i);
        int t = 5 + (int)rng_next_below(&rng, 120);
        for (int j = 0; j < t; j++) {
            const char *w = words_[rng_next_below(&rng, sizeof words_ / sizeof *words_)];
            m += snprintf(line + m, sizeof line - (size_t)m, " %s%u", w,
                          (unsigned)rng_next_below(&rng, 1000));
            if (m > 1900) break;
        }
        m += snprintf(line + m, sizeof line - (size_t)m, "\",\"timestamp\":\"2019-04-%02d\"}\n",
                      (int)(i % 28) + 1);
        buf_add_(b, line, (size_t)m);
    }
}

/* gzip of data[0..len) as members split at the given offsets (inside lines, on purpose). */
static void gzip_members_(const char *data, size_t len, const size_t *cuts, int ncuts, Buf *out) {
    size_t start = 0;
    for (int k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        z_stream z;
        memset(&z, 0, sizeof z);
        if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            FATAL(NULL, "deflateInit2");
        size_t cap = deflateBound(&z, (uLong)(end - start)) + 64;
        char *o = xmalloc(cap);
        z.next_in = (Bytef *)(uintptr_t)(data + start);
        z.avail_in = (uInt)(end - start);
        z.next_out = (Bytef *)o;
        z.avail_out = (uInt)cap;
        if (deflate(&z, Z_FINISH) != Z_STREAM_END) FATAL(NULL, "deflate");
        buf_add_(out, o, cap - z.avail_out);
        deflateEnd(&z);
        free(o);
        start = end;
    }
}

/* zstd frames of `frame` bytes each (with content checksums). */
static void zstd_frames_(const char *data, size_t len, size_t frame, Buf *out) {
    for (size_t s = 0; s < len; s += frame) {
        size_t n = len - s < frame ? len - s : frame;
        size_t cap = ZSTD_compressBound(n);
        char *o = xmalloc(cap);
        ZSTD_CCtx *c = ZSTD_createCCtx();
        ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
        size_t r = ZSTD_compress2(c, o, cap, data + s, n);
        if (ZSTD_isError(r)) FATAL(NULL, "zstd");
        buf_add_(out, o, r);
        ZSTD_freeCCtx(c);
        free(o);
    }
}

/* What a straight read yields: per document, the CRC32 of its text, its line, the statistics
 * after it; the seek points in the order taken. */
typedef struct {
    uint32_t crc;
    size_t len;
    long line;
    C4Stats st;
} Rec;
typedef struct {
    Rec *docs;
    long n;
    C4Stats end;
    C4SeekPoint *pts;
    int npts;
    char *report;                 /* the reports of the whole read */
} Straight;

static FILE *mem_report_(char **p, size_t *n) {
    FILE *f = open_memstream(p, n);
    if (!f) FATAL(NULL, "open_memstream");
    return f;
}

static int stats_equal_(const C4Stats *a, const C4Stats *b) {
    if (a->documents != b->documents || a->lines != b->lines || a->text_bytes != b->text_bytes ||
        a->input_bytes != b->input_bytes || a->files_damaged != b->files_damaged) return 0;
    for (int k = 0; k < C4_NUM_BAD_KINDS; k++) if (a->bad[k] != b->bad[k]) return 0;
    return 1;
}

static void straight_(const char *path, Straight *s) {
    memset(s, 0, sizeof *s);
    size_t rl = 0;
    FILE *rep = mem_report_(&s->report, &rl);
    C4ReaderOptions o = { 32 * 1024, 1, rep };
    char err[512];
    C4Reader *r = c4_reader_open(path, &o, err, sizeof err);
    if (!r) FATAL(NULL, "%s", err);
    C4Document d;
    long cap = 0;
    int pcap = 0;
    C4SeekPoint *sp = xmalloc(sizeof *sp);
    for (;;) {
        int got = c4_reader_next(r, &d);
        if (c4_reader_take_seek_point(r, sp)) {
            if (s->npts == pcap) {
                pcap = pcap ? 2 * pcap : 16;
                s->pts = xrealloc(s->pts, (size_t)pcap * sizeof *s->pts);
            }
            s->pts[s->npts++] = *sp;
        }
        if (!got) break;
        if (s->n == cap) { cap = cap ? 2 * cap : 4096; s->docs = xrealloc(s->docs, (size_t)cap * sizeof *s->docs); }
        Rec *e = &s->docs[s->n++];
        e->crc = (uint32_t)crc32(0, (const Bytef *)d.text, (uInt)d.text_len);
        e->len = d.text_len;
        e->line = d.line;
        e->st = *c4_reader_stats(r);
    }
    s->end = *c4_reader_stats(r);
    c4_reader_close(r);
    fclose(rep);
    free(sp);
}

static void straight_free_(Straight *s) {
    free(s->docs);
    free(s->pts);
    free(s->report);
}

/* The report lines about damage ("(corrupt)" / "(truncated)") of a report text. */
static void damage_lines_(const char *rep, char *out, size_t cap) {
    out[0] = '\0';
    size_t used = 0;
    for (const char *p = rep; p && *p;) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if ((memmem(p, n, "(corrupt)", 9) || memmem(p, n, "(truncated)", 11)) && used + n + 2 < cap) {
            memcpy(out + used, p, n);
            used += n;
            out[used++] = '\n';
            out[used] = '\0';
        }
        p = e ? e + 1 : NULL;
    }
}

/* Restart at point sp; every following document and statistic must equal the straight read,
 * and the damage reports too. Returns the number of mismatches (reported once). */
static int compare_from_(const char *path, const Straight *s, const C4SeekPoint *sp, int pi) {
    char *rep = NULL;
    size_t rl = 0;
    FILE *rf = mem_report_(&rep, &rl);
    C4ReaderOptions o = { 32 * 1024, 1, rf };
    char err[512];
    C4Reader *r = c4_reader_open_at(path, &o, sp, err, sizeof err);
    int bad = 0;
    if (!r) {
        fclose(rf);
        free(rep);
        CHECKF(0, "point %d: %s", pi, err);
        return 1;
    }
    long i = sp->stats.documents;
    CHECKF(i >= 1 && i <= s->n, "point %d: documents %ld of %ld", pi, i, s->n);
    C4Document d;
    while (!bad && c4_reader_next(r, &d) == 1) {
        if (i >= s->n) { CHECKF(0, "point %d: more documents than the straight read", pi); bad = 1; break; }
        const Rec *e = &s->docs[i];
        uint32_t crc = (uint32_t)crc32(0, (const Bytef *)d.text, (uInt)d.text_len);
        if (crc != e->crc || d.text_len != e->len || d.line != e->line ||
            !stats_equal_(c4_reader_stats(r), &e->st) || strcmp(d.member, path) != 0) {
            const C4Stats *g = c4_reader_stats(r);
            CHECKF(0, "point %d (out %lld, member %ld): document %ld differs: line %ld vs %ld, "
                   "len %zu vs %zu, crc %s, input_bytes %lld vs %lld, lines %ld vs %ld", pi,
                   sp->out_off, sp->member, i, d.line, e->line, d.text_len, e->len,
                   crc == e->crc ? "same" : "differs", g->input_bytes, e->st.input_bytes,
                   g->lines, e->st.lines);
            bad = 1;
        }
        i++;
    }
    if (!bad) {
        CHECKF(i == s->n, "point %d: %ld documents vs %ld", pi, i, s->n);
        CHECKF(stats_equal_(c4_reader_stats(r), &s->end), "point %d: final statistics differ", pi);
        bad = i != s->n || !stats_equal_(c4_reader_stats(r), &s->end);
    }
    c4_reader_close(r);
    fclose(rf);
    char a[2048], b[2048];
    damage_lines_(s->report, a, sizeof a);
    damage_lines_(rep, b, sizeof b);
    if (!bad && strcmp(a, b) != 0) {
        CHECKF(0, "point %d: damage reports differ:\n straight: %s restarted: %s", pi, a, b);
        bad = 1;
    }
    free(rep);
    return bad;
}

/* Restart at every point (every 3rd under T5_TEST_QUICK, the last always). */
static int compare_all_(const char *path, const Straight *s) {
    int bad = 0, step = test_quick() ? 3 : 1;
    for (int p = 0; p < s->npts && bad < 3; p++)
        if (p % step == 0 || p == s->npts - 1) bad += compare_from_(path, s, &s->pts[p], p);
    return bad;
}

static Buf text_;
/* 6 MiB with points every 192 KiB (deflate blocks of this text hold ~190-300 KB); 3 MiB, 512 KiB
 * under T5_TEST_QUICK */
static int min_points_(void) { return test_quick() ? 4 : 10; }

static void test_gzip_members(void) {
    const char *path = tpath_("members.json.gz");
    size_t cuts[2] = { text_.len * 2 / 5 + 17, text_.len * 3 / 4 + 5 };
    Buf gz = { 0 };
    gzip_members_(text_.p, text_.len, cuts, 2, &gz);
    write_file_(path, gz.p, gz.len);
    Straight s;
    straight_(path, &s);
    CHECKF(s.npts >= min_points_(), "only %d seek points in %zu bytes", s.npts, text_.len);
    long members[3] = { 0, 0, 0 };
    int with_bits = 0;
    for (int p = 0; p < s.npts; p++) {
        const C4SeekPoint *sp = &s.pts[p];
        CHECK(sp->kind == C4_SEEK_GZIP);
        if (sp->member >= 0 && sp->member < 3) members[sp->member]++;
        with_bits += sp->bits != 0;
        CHECK(sp->skip >= C4_SEEK_CHECK_MIN);
        CHECK(sp->window_len == (sp->member_len < C4_SEEK_WINDOW ? sp->member_len : C4_SEEK_WINDOW));
        CHECK(p == 0 || sp->out_off > s.pts[p - 1].out_off);
    }
    CHECKF(members[0] && members[1] && members[2], "points per member %ld %ld %ld", members[0],
           members[1], members[2]);
    CHECKF(with_bits > 0, "no point inside a byte (bits) among %d", s.npts);
    CHECK(s.end.bad[C4_BAD_JSON] > 0 && s.end.bad[C4_EMPTY_TEXT] > 0 &&
          s.end.bad[C4_BAD_UTF8] > 0 && s.end.bad[C4_TOO_LONG] == 1 && s.end.files_damaged == 0);
    CHECK_EQ_INT(s.end.input_bytes, (long long)text_.len);
    CHECK_EQ_INT(compare_all_(path, &s), 0);
    printf("  gzip: %zu bytes in 3 members, %zu compressed, %ld documents, %d seek points\n",
           text_.len, gz.len, s.n, s.npts);
    straight_free_(&s);
    free(gz.p);
}

static void test_zstd_frames_and_plain(void) {
    const char *zp = tpath_("frames.json.zst"), *pp = tpath_("plain.json");
    Buf zs = { 0 };
    zstd_frames_(text_.p, text_.len, 300 * 1000, &zs);
    write_file_(zp, zs.p, zs.len);
    write_file_(pp, text_.p, text_.len);
    Straight s;
    straight_(zp, &s);
    CHECKF(s.npts >= min_points_() / 2, "zstd: %d seek points", s.npts);
    for (int p = 0; p < s.npts; p++) CHECK(s.pts[p].kind == C4_SEEK_ZSTD);
    CHECK_EQ_INT(compare_all_(zp, &s), 0);
    straight_free_(&s);
    straight_(pp, &s);
    CHECKF(s.npts >= min_points_(), "plain: %d seek points", s.npts);
    for (int p = 0; p < s.npts; p++)
        CHECK(s.pts[p].kind == C4_SEEK_PLAIN && s.pts[p].in_off == s.pts[p].out_off);
    CHECK_EQ_INT(compare_all_(pp, &s), 0);
    straight_free_(&s);
    /* one frame: no seek point after the start (it is decoded from the beginning) */
    Buf one = { 0 };
    zstd_frames_(text_.p, text_.len, text_.len, &one);
    write_file_(zp, one.p, one.len);
    straight_(zp, &s);
    CHECK_EQ_INT(s.npts, 0);
    straight_free_(&s);
    free(zs.p);
    free(one.p);
}

/* Damage after a seek point: restarted readers report it like the straight read. */
static void test_damage_after_point(void) {
    const char *path = tpath_("damaged.json.gz");
    size_t cuts[1] = { text_.len / 2 + 3 };
    Buf gz = { 0 };
    gzip_members_(text_.p, text_.len, cuts, 1, &gz);
    /* where the points are in the intact file */
    write_file_(path, gz.p, gz.len);
    Straight s0;
    straight_(path, &s0);
    if (s0.npts < 4) { CHECKF(0, "%d points", s0.npts); straight_free_(&s0); free(gz.p); return; }
    long long at = s0.pts[s0.npts / 2].in_off + 20000;   /* inside the deflate data after it */
    struct { const char *what; long long off; int cut; } cases[] = {
        { "deflate byte", at, 0 },
        { "CRC32 of the last member", (long long)gz.len - 6, 0 },
        { "ISIZE of the last member", (long long)gz.len - 2, 0 },
        { "cut in the deflate data", at, 1 },
        { "cut in the trailer", (long long)gz.len - 3, 1 },
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        Buf d = { 0 };
        buf_add_(&d, gz.p, gz.len);
        if (cases[c].cut) d.len = (size_t)cases[c].off;
        else d.p[cases[c].off] ^= 0x55;
        write_file_(path, d.p, d.len);
        Straight s;
        straight_(path, &s);
        CHECKF(s.end.files_damaged == 1 && s.end.bad[cases[c].cut ? C4_TRUNCATED : C4_CORRUPT] == 1,
               "%s: not reported as damage", cases[c].what);
        int restarted = 0, bad = 0;
        for (int p = 0; p < s.npts && bad < 2; p++) {
            if (s.pts[p].in_off >= cases[c].off) continue;
            bad += compare_from_(path, &s, &s.pts[p], p);
            restarted++;
        }
        CHECKF(restarted >= 2 && bad == 0, "%s: %d restarts, %d differ", cases[c].what, restarted,
               bad);
        straight_free_(&s);
        free(d.p);
    }
    straight_free_(&s0);
    free(gz.p);
}

/* A point used on another file: refused with the file and the offset named. */
static void test_wrong_file(void) {
    const char *path = tpath_("replaced.json.gz");
    Buf gz = { 0 };
    gzip_members_(text_.p, text_.len, NULL, 0, &gz);
    write_file_(path, gz.p, gz.len);
    Straight s;
    straight_(path, &s);
    CHECK(s.npts >= 4);
    /* the same text compressed at another level; then other text; then a shorter file */
    Buf other = { 0 }, text2 = { 0 };
    z_stream z;
    memset(&z, 0, sizeof z);
    deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    size_t cap = deflateBound(&z, (uLong)text_.len);
    other.p = xmalloc(cap);
    z.next_in = (Bytef *)text_.p;
    z.avail_in = (uInt)text_.len;
    z.next_out = (Bytef *)other.p;
    z.avail_out = (uInt)cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) FATAL(NULL, "deflate");
    other.len = cap - z.avail_out;
    deflateEnd(&z);
    make_text_(&text2, text_.len, 999);
    Buf gz2 = { 0 };
    gzip_members_(text2.p, text2.len, NULL, 0, &gz2);
    const Buf *repl[3] = { &other, &gz2, NULL };
    for (int k = 0; k < 3; k++) {
        if (repl[k]) write_file_(path, repl[k]->p, repl[k]->len);
        else write_file_(path, gz.p, (size_t)s.pts[1].in_off - 10);
        int refused = 0;
        for (int p = 1; p < s.npts; p++) {
            char err[512] = "";
            C4ReaderOptions o = { 32 * 1024, 1, NULL };
            C4Reader *r = c4_reader_open_at(path, &o, &s.pts[p], err, sizeof err);
            if (!r) {
                char off[32];
                snprintf(off, sizeof off, "compressed byte %lld", s.pts[p].in_off);
                CHECKF(strstr(err, path) && strstr(err, off), "message '%s'", err);
                refused++;
                continue;
            }
            /* accepted: it must then deliver what the straight read did (the bytes matched) */
            C4Document d;
            long i = s.pts[p].stats.documents;
            int same = 1;
            while (c4_reader_next(r, &d) == 1 && i < s.n)
                if ((uint32_t)crc32(0, (const Bytef *)d.text, (uInt)d.text_len) != s.docs[i++].crc) same = 0;
            CHECKF(same, "replacement %d: point %d accepted and delivered other documents", k, p);
            c4_reader_close(r);
        }
        CHECKF(refused == s.npts - 1, "replacement %d: %d of %d points refused", k, refused,
               s.npts - 1);
    }
    /* the right file still restarts */
    write_file_(path, gz.p, gz.len);
    CHECK_EQ_INT(compare_from_(path, &s, &s.pts[s.npts - 1], s.npts - 1), 0);
    straight_free_(&s);
    free(gz.p); free(gz2.p); free(other.p); free(text2.p);
}

/* Decoding cost of recording seek points, and the restart time near the end against reading
 * from the start (printed; the restart must be faster). */
static void test_restart_cost(void) {
    const char *path = tpath_("cost.json.gz");
    Buf gz = { 0 };
    gzip_members_(text_.p, text_.len, NULL, 0, &gz);
    write_file_(path, gz.p, gz.len);
    long long intervals[] = { -1, 256 << 10, 1 << 20, 4 << 20 };
    double secs[4];
    C4SeekPoint *last = xmalloc(sizeof *last);
    int have = 0;
    for (int k = 0; k < 4; k++) {
        long long old = c4_seek_interval_set(intervals[k]);
        double best = 1e9;
        for (int rep = 0; rep < (test_quick() ? 1 : 3); rep++) {
            double t0 = now_seconds();
            C4Reader *r = c4_reader_open(path, NULL, NULL, 0);
            C4Document d;
            while (c4_reader_next(r, &d) == 1)
                if (intervals[k] == (1 << 20) && c4_reader_take_seek_point(r, last)) have = 1;
            c4_reader_close(r);
            double t = now_seconds() - t0;
            if (t < best) best = t;
        }
        secs[k] = best;
        c4_seek_interval_set(old);
    }
    printf("  read %.1f MiB: no seek points %.3f s, every 256 KiB %.3f s, 1 MiB %.3f s, 4 MiB "
           "%.3f s\n", text_.len / 1048576.0, secs[0], secs[1], secs[2], secs[3]);
    CHECK(have);
    if (have) {
        C4Document d;
        double t0 = now_seconds();
        C4Reader *r = c4_reader_open_at(path, NULL, last, NULL, 0);
        CHECK(r != NULL);
        long n = 0;
        if (r) { while (n < 1 && c4_reader_next(r, &d) == 1) n++; c4_reader_close(r); }
        double t_seek = now_seconds() - t0;
        t0 = now_seconds();
        r = c4_reader_open(path, NULL, NULL, 0);
        for (long i = 0; i <= last->stats.documents && c4_reader_next(r, &d) == 1; i++) {}
        c4_reader_close(r);
        double t_slow = now_seconds() - t0;
        printf("  to document %ld (byte %lld of %zu): from the start %.4f s, from the seek point "
               "%.4f s\n", last->stats.documents, last->out_off, text_.len, t_slow, t_seek);
        CHECK(t_seek < t_slow);
    }
    free(last);
    free(gz.p);
}

int main(void) {
    snprintf(tmpdir_, sizeof tmpdir_, "/tmp/test_c4_seek.XXXXXX");
    if (!mkdtemp(tmpdir_)) FATAL(NULL, "mkdtemp: %s", strerror(errno));
    /* small seek intervals, so that a few MiB hold many points */
    c4_seek_interval_set(test_quick() ? 512 << 10 : 192 << 10);
    make_text_(&text_, test_quick() ? ((size_t)3 << 20) : ((size_t)6 << 20), 7);
    RUN(test_gzip_members);
    RUN(test_zstd_frames_and_plain);
    RUN(test_damage_after_point);
    RUN(test_wrong_file);
    RUN(test_restart_cost);
    free(text_.p);
    const char *names[] = { "members.json.gz", "frames.json.zst", "plain.json", "damaged.json.gz",
                            "replaced.json.gz", "cost.json.gz" };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) unlink(tpath_(names[i]));
    rmdir(tmpdir_);
    return TEST_EXIT();
}
