/*
 * tests/unit/test_c4_damage.c: damaged C4 files. Shards made here are cut at many byte offsets
 * (.json.gz, .json.zst, tar members, a .tar.gz) and corrupted in each way the reader must catch
 * (gzip CRC32 and ISIZE trailers, deflate data, bytes after the last member, zstd blocks and
 * content checksum). The expected number of documents is computed by the test independently of
 * the reader: a streaming decompression of the prefix with zlib (inflate) or libzstd fed one byte
 * per call, counting its complete lines; a sample of the cuts is checked once more against
 * python3's zlib.decompressobj and the zstd command-line tool, when present.
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

/* n documents "doc <i> <letters>" of 20..20+spread letters, one JSON line each. */
static void make_docs_(Buf *b, int n, int spread, uint64_t seed) {
    Rng rng = rng_make(seed, 5);
    char line[4200];
    for (int i = 0; i < n; i++) {
        int m = snprintf(line, sizeof line, "{\"text\":\"doc %d ", i);
        int t = 20 + (int)rng_next_below(&rng, (uint64_t)spread);
        for (int j = 0; j < t; j++) line[m++] = (char)('a' + rng_next_below(&rng, 26));
        m += snprintf(line + m, sizeof line - (size_t)m, "\",\"url\":\"https://x.example/%d\"}\n", i);
        buf_add_(b, line, (size_t)m);
    }
}

static long count_nl_(const char *p, size_t n) {
    long c = 0;
    for (size_t i = 0; i < n; i++) c += p[i] == '\n';
    return c;
}

/* gzip of data (one member, deflate level 6). */
static void gzip_(const char *data, size_t len, Buf *out) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) FATAL(NULL, "deflate");
    size_t cap = deflateBound(&z, (uLong)len) + 64;
    char *o = xmalloc(cap);
    z.next_in = (Bytef *)(uintptr_t)data;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)o;
    z.avail_out = (uInt)cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) FATAL(NULL, "deflate finish");
    buf_add_(out, o, cap - z.avail_out);
    deflateEnd(&z);
    free(o);
}

/* zstd frame of data (level 3; content checksum if asked; blocks of at most 128 KiB). */
static void zstd_(const char *data, size_t len, int checksum, Buf *out) {
    ZSTD_CCtx *c = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, 3);
    ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, checksum);
    size_t cap = ZSTD_compressBound(len);
    char *o = xmalloc(cap);
    size_t n = ZSTD_compress2(c, o, cap, data, len);
    if (ZSTD_isError(n)) FATAL(NULL, "zstd: %s", ZSTD_getErrorName(n));
    buf_add_(out, o, n);
    free(o);
    ZSTD_freeCCtx(c);
}

/* Oracle: complete lines of a streaming decompression of p[0..n), decoding until the input ends
 * or the decoder fails. kind 0 plain, 1 gzip (members back to back), 2 zstd (one byte per call,
 * so nothing decoded before an error is lost). */
static long oracle_lines_(int kind, const char *p, size_t n) {
    if (kind == 0) return count_nl_(p, n);
    long lines = 0;
    char out[1 << 15];
    if (kind == 1) {
        z_stream z;
        memset(&z, 0, sizeof z);
        inflateInit2(&z, 15 + 16);
        z.next_in = (Bytef *)(uintptr_t)p;
        z.avail_in = (uInt)n;
        for (;;) {
            z.next_out = (Bytef *)out;
            z.avail_out = sizeof out;
            int ret = inflate(&z, Z_NO_FLUSH);
            lines += count_nl_(out, sizeof out - z.avail_out);
            if (ret == Z_STREAM_END && z.avail_in > 0 && z.next_in[0] == 0x1f) {
                inflateReset(&z);
                continue;
            }
            if (ret != Z_OK) break;
            if (z.avail_in == 0 && z.avail_out > 0) break;
        }
        inflateEnd(&z);
        return lines;
    }
    /* zstd: the whole prefix at once; if the decoder fails, again one byte per call, so the
     * count stops exactly where the failure is */
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        ZSTD_DStream *d = ZSTD_createDStream();
        ZSTD_initDStream(d);
        int failed = 0;
        lines = 0;
        size_t step = bytewise ? 1 : n;
        for (size_t i = 0; i < n && !failed; i += step) {
            ZSTD_inBuffer in = { p + i, n - i < step ? n - i : step, 0 };
            for (;;) {
                ZSTD_outBuffer o = { out, sizeof out, 0 };
                size_t r = ZSTD_decompressStream(d, &o, &in);
                if (ZSTD_isError(r)) { failed = 1; break; }
                lines += count_nl_(out, o.pos);
                if (o.pos < o.size && in.pos == in.size) break;
            }
        }
        ZSTD_freeDStream(d);
        if (!failed) break;
    }
    return lines;
}

static void write_file_(const char *path, const char *p, size_t n) {
    FILE *f = xfopen(path, "wb");
    if (n && fwrite(p, 1, n, f) != n) FATAL(NULL, "write %s", path);
    fclose(f);
}

/* Read path: documents delivered (each checked against the original: document i of the file's
 * a member or frame is "doc i", in order), stats into *st, first report line into rep_line. */
static int check_order_ = 1;   /* 0 where damaged data may decode to other valid records */
static long read_count_(const char *path, C4Stats *st, char *rep_line, size_t rep_len) {
    FILE *rep = tmpfile();
    C4ReaderOptions o = { 0, 1, rep };
    char err[512];
    C4Reader *r = c4_reader_open(path, &o, err, sizeof err);
    if (!r) { fprintf(stderr, "  open failed: %s\n", err); fclose(rep); return -1; }
    C4Document doc;
    long n = 0, wrong = 0, prev = -1;
    while (c4_reader_next(r, &doc)) {      /* "doc k": k counts up, or starts again at 0 */
        long k = strncmp(doc.text, "doc ", 4) == 0 ? strtol(doc.text + 4, NULL, 10) : -9;
        if (k != prev + 1 && k != 0) wrong++;
        prev = k;
        n++;
    }
    CHECKF(wrong == 0 || !check_order_, "%s: %ld documents out of order", path, wrong);
    *st = *c4_reader_stats(r);
    c4_reader_close(r);
    rewind(rep);
    if (rep_line) {
        rep_line[0] = '\0';
        if (!fgets(rep_line, (int)rep_len, rep)) rep_line[0] = '\0';
    }
    fclose(rep);
    return n;
}

static long total_bad_(const C4Stats *s) {
    long t = 0;
    for (int k = 0; k < C4_NUM_BAD_KINDS; k++) t += s->bad[k];
    return t;
}

/* One cut file: the delivered count equals the oracle's; a cut short of the whole file is one
 * C4_TRUNCATED and a damaged file; the whole file is clean. Returns 1 if it matched. */
static int check_cut_(const char *path, long want, int whole, const char *what, long off) {
    C4Stats st;
    char rep[600];
    long got = read_count_(path, &st, rep, sizeof rep);
    int ok = got == want && (whole ? total_bad_(&st) == 0 && st.files_damaged == 0
                                   : st.bad[C4_TRUNCATED] == 1 && total_bad_(&st) == 1 &&
                                     st.files_damaged == 1 && strstr(rep, path) != NULL);
    CHECKF(ok, "%s cut at %ld: %ld documents delivered, %ld complete lines; bad %ld "
           "truncated %ld damaged %ld; report '%s'", what, off, got, want, total_bad_(&st),
           st.bad[C4_TRUNCATED], st.files_damaged, rep);
    return ok;
}

/* Cross-check of the oracle with tools outside this process, where installed. */
static long tool_lines_(int kind, const char *path) {
    char cmd[1200];
    if (kind == 1)
        snprintf(cmd, sizeof cmd, "python3 -c \"import sys,zlib; d=zlib.decompressobj(31); "
                 "b=open(sys.argv[1],'rb').read(); o=d.decompress(b)\nwhile d.eof and "
                 "d.unused_data[:1]==b'\\x1f':\n b=d.unused_data; d=zlib.decompressobj(31); "
                 "o+=d.decompress(b)\nprint(o.count(b'\\n'))\" '%s' 2>/dev/null", path);
    else
        snprintf(cmd, sizeof cmd, "zstd -dcq '%s' 2>/dev/null | wc -l", path);
    FILE *f = popen(cmd, "r");
    if (!f) return -2;
    long v = -2;
    if (fscanf(f, "%ld", &v) != 1) v = -2;
    pclose(f);
    return v;
}

static int have_tool_(int kind) {
    const char *cmd = kind == 1 ? "python3 -c 'import zlib' >/dev/null 2>&1"
                                : "zstd --version >/dev/null 2>&1";
    return system(cmd) == 0;
}

/* Every offset of a small shard (or every k-th under T5_TEST_QUICK), and `random` random offsets
 * of a large one, for gzip and zstd. */
static long tool_checked_[2];   /* cuts cross-checked with python3 zlib / the zstd CLI */
static int tool_missing_[2];

static void test_cuts_single(void) {
    int quick = test_quick();
    const char *names[2] = { "cut.json.gz", "cut.json.zst" };
    long tested[2][2] = { { 0 } }, *tool_checked = tool_checked_;
    for (int size = 0; size < 2; size++) {
        Buf plain = { 0 };
        /* small: a few KB compressed; large: many deflate blocks and zstd blocks */
        if (size == 0) make_docs_(&plain, 60, 60, 1);
        else make_docs_(&plain, quick ? 500 : 3000, 1500, 2);
        for (int f = 0; f < 2; f++) {
            Buf z = { 0 };
            long frame1 = -1;     /* a cut right after the first zstd frame is a whole stream */
            if (f == 0) gzip_(plain.p, plain.len, &z);
            else {   /* two frames, the first with a checksum: frame boundaries are cut too */
                size_t half = plain.len / 2;
                while (plain.p[half - 1] != '\n') half++;
                zstd_(plain.p, half, 1, &z);
                frame1 = (long)z.len;
                zstd_(plain.p + half, plain.len - half, 0, &z);
            }
            const char *p = tpath_(names[f]);
            Rng rng = rng_make(77, (uint64_t)(size * 2 + f));
            long n_off = size == 0 ? (long)z.len + 1 : (quick ? 20 : 300);
            int step = size == 0 && quick ? 7 : 1;
            int tool = size == 0 && have_tool_(f + 1);
            if (size == 0 && !tool) tool_missing_[f] = 1;
            for (long i = 0; i < n_off; i += step) {
                long off = size == 0 ? i : (long)rng_next_below(&rng, z.len + 1);
                if (size == 1 && i == 0) off = (long)z.len;     /* the whole file too */
                long want = oracle_lines_(f + 1, z.p, (size_t)off);
                write_file_(p, z.p, (size_t)off);
                if (off == 0) {        /* an empty file: no documents, nothing bad */
                    C4Stats st;
                    CHECK_EQ_INT(read_count_(p, &st, NULL, 0), 0);
                    CHECK_EQ_INT(total_bad_(&st), 0);
                } else if (!check_cut_(p, want, off == (long)z.len || off == frame1, names[f],
                                       off)) {
                    break;   /* one failure is enough to show */
                }
                if (off == (long)z.len) CHECK_EQ_INT(want, count_nl_(plain.p, plain.len));
                if (tool && i % 97 == 0) {
                    long t = tool_lines_(f + 1, p);
                    CHECKF(t == want, "%s cut at %ld: tool says %ld lines, oracle %ld", names[f],
                           off, t, want);
                    tool_checked[f]++;
                }
                tested[size][f]++;
            }
            unlink(p);
            free(z.p);
        }
        free(plain.p);
    }
    printf("  cuts tested: small gzip %ld, small zstd %ld (every %s offset), large gzip %ld, "
           "large zstd %ld (random); cross-checked with python3 zlib %ld, zstd CLI %ld\n",
           tested[0][0], tested[0][1], quick ? "7th" : "single", tested[1][0], tested[1][1],
           tool_checked[0], tool_checked[1]);
    CHECK(tested[0][0] > 100 && tested[0][1] > 100);
}

/* The oracle agreed with tools outside this process (run inside test_cuts_single). */
static void test_cuts_tools_agree(void) {
    if (tool_missing_[0] || tool_missing_[1]) {
        TEST_SKIP("%s%s not installed (apt-get install python3 zstd)",
                  tool_missing_[0] ? "python3 (zlib)" : "",
                  tool_missing_[1] ? (tool_missing_[0] ? " and zstd" : "zstd") : "");
        return;
    }
    CHECK(tool_checked_[0] > 0 && tool_checked_[1] > 0);
}

/* ustar header for a regular file of size n (name < 100 bytes). */
static void tar_header_(Buf *t, const char *name, size_t n) {
    char h[512];
    memset(h, 0, sizeof h);
    snprintf(h, 100, "%s", name);
    snprintf(h + 100, 8, "%07o", 0644);
    snprintf(h + 108, 8, "%07o", 0);
    snprintf(h + 116, 8, "%07o", 0);
    snprintf(h + 124, 12, "%011zo", n);
    snprintf(h + 136, 12, "%011o", 0);
    h[156] = '0';
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++) sum += (unsigned char)h[i];
    snprintf(h + 148, 8, "%06o", sum);
    buf_add_(t, h, 512);
}

typedef struct { int kind; size_t data_off, len; long lines; } TarPart;

/* A tar of members .json.gz, .json.zst, .json, .json.gz: cut at every offset (every 5th under
 * T5_TEST_QUICK); expected = the lines of members whose data is whole + the oracle of the cut
 * member's prefix. Then the same tar gzip-compressed as a whole, cut at random offsets: the
 * decompressed prefix is a tar prefix, expected the same way. */
static void test_cuts_tar(void) {
    int quick = test_quick();
    const char *names[4] = { "a.json.gz", "b.json.zst", "c.json", "d.json.gz" };
    int kinds[4] = { 1, 2, 0, 1 };
    TarPart part[4];
    Buf tar = { 0 };
    for (int m = 0; m < 4; m++) {
        Buf plain = { 0 }, z = { 0 };
        make_docs_(&plain, 12 + 5 * m, 40, (uint64_t)(10 + m));
        if (kinds[m] == 1) gzip_(plain.p, plain.len, &z);
        else if (kinds[m] == 2) zstd_(plain.p, plain.len, 1, &z);
        else buf_add_(&z, plain.p, plain.len);
        tar_header_(&tar, names[m], z.len);
        part[m].kind = kinds[m];
        part[m].data_off = tar.len;
        part[m].len = z.len;
        part[m].lines = count_nl_(plain.p, plain.len);
        buf_add_(&tar, z.p, z.len);
        static const char zeros[512] = { 0 };
        if (z.len % 512) buf_add_(&tar, zeros, 512 - z.len % 512);
        free(plain.p);
        free(z.p);
    }
    static const char zeros[1024] = { 0 };
    buf_add_(&tar, zeros, 1024);
    long total = 0;
    for (int m = 0; m < 4; m++) total += part[m].lines;

    /* expected documents of the tar prefix of length off */
    #define TAR_WANT(off, want) do { want = 0; for (int m_ = 0; m_ < 4; m_++) { \
        if ((size_t)(off) >= part[m_].data_off + part[m_].len) want += part[m_].lines; \
        else if ((size_t)(off) > part[m_].data_off) want += oracle_lines_(part[m_].kind, \
            tar.p + part[m_].data_off, (size_t)(off) - part[m_].data_off); } } while (0)

    const char *p = tpath_("cut.tar");
    long tested = 0, tested_gz = 0;
    for (size_t off = 1; off <= tar.len; off += quick ? 5 : 1) {
        long want;
        TAR_WANT(off, want);
        write_file_(p, tar.p, off);
        C4Stats st;
        char rep[600];
        long got = read_count_(p, &st, rep, sizeof rep);
        /* a cut after the last member's data (in its padding or the end blocks) may look like a
         * whole tar; a cut inside a member counts it damaged, and so does one in a header */
        int after_data = off >= part[3].data_off + part[3].len;
        for (int m = 1; m < 4; m++)      /* cut right before a header: reads as a whole tar */
            if (off == part[m].data_off - 512) after_data = 1;
        /* shorter than one tar header: not recognisable as a tar, read as (bad) JSON lines */
        int ok = got == want && (after_data || off < 512 || (st.files_damaged == 1 && total_bad_(&st) >= 1 &&
                                                total_bad_(&st) == st.bad[C4_TRUNCATED]));
        CHECKF(ok, "cut.tar cut at %zu: %ld documents, want %ld (bad %ld, damaged %ld): '%s'",
               off, got, want, total_bad_(&st), st.files_damaged, rep);
        if (!ok) break;
        tested++;
    }
    write_file_(p, tar.p, tar.len);
    C4Stats st;
    CHECK_EQ_INT(read_count_(p, &st, NULL, 0), total);
    CHECK_EQ_INT(total_bad_(&st), 0);

    Buf tgz = { 0 };
    gzip_(tar.p, tar.len, &tgz);
    const char *pg = tpath_("cut.tar.gz");
    Rng rng = rng_make(5, 5);
    int n_off = quick ? 30 : 300;
    for (int i = 0; i < n_off; i++) {
        size_t off = 1 + (size_t)rng_next_below(&rng, tgz.len);
        /* the decompressed prefix: everything inflate yields from the cut stream */
        z_stream z;
        memset(&z, 0, sizeof z);
        inflateInit2(&z, 15 + 16);
        char *out = xmalloc(tar.len + 1);
        z.next_in = (Bytef *)tgz.p;
        z.avail_in = (uInt)off;
        z.next_out = (Bytef *)out;
        z.avail_out = (uInt)tar.len + 1;
        inflate(&z, Z_NO_FLUSH);
        size_t dec = tar.len + 1 - z.avail_out;
        inflateEnd(&z);
        CHECK(dec <= tar.len && memcmp(out, tar.p, dec) == 0);
        free(out);
        long want;
        TAR_WANT(dec, want);
        write_file_(pg, tgz.p, off);
        long got = read_count_(pg, &st, NULL, 0);
        int ok = got == want && (off == tgz.len ? total_bad_(&st) == 0 : st.files_damaged == 1);
        CHECKF(ok, "cut.tar.gz cut at %zu (%zu bytes of tar): %ld documents, want %ld", off, dec,
               got, want);
        if (!ok) break;
        tested_gz++;
    }
    #undef TAR_WANT
    printf("  tar cuts tested: %ld (%s offset of a %zu-byte tar of .json.gz/.json.zst/.json "
           "members), .tar.gz %ld (random)\n", tested, quick ? "every 5th" : "every", tar.len,
           tested_gz);
    unlink(p);
    unlink(pg);
    free(tar.p);
    free(tgz.p);
}

/* Reads `path`, which must deliver `want` documents, exactly one bad record of kind `kind`
 * (counted as a damaged file), reported naming the file (and member) and `also`. */
static void check_damaged_(const char *path, long want_min, long want_max, C4BadKind kind,
                           const char *also, const char *what) {
    C4Stats st;
    char rep[800];
    long got = read_count_(path, &st, rep, sizeof rep);
    CHECKF(got >= want_min && got <= want_max, "%s: %ld documents, want %ld..%ld", what, got,
           want_min, want_max);
    CHECKF(st.bad[kind] == 1 && total_bad_(&st) == 1 && st.files_damaged == 1,
           "%s: %s=%ld total bad %ld damaged %ld", what, c4_bad_kind_name(kind), st.bad[kind],
           total_bad_(&st), st.files_damaged);
    char head[600];
    snprintf(head, sizeof head, "c4: %s", path);
    CHECKF(strncmp(rep, head, strlen(head)) == 0 && strstr(rep, c4_bad_kind_name(kind)) &&
           strstr(rep, "byte") && (!also || strstr(rep, also)), "%s: report '%s' (want '%s' "
           "and '%s')", what, rep, head, also ? also : "");
}

static void test_corrupt_gzip(void) {
    Buf plain = { 0 }, gz = { 0 };
    make_docs_(&plain, 400, 800, 3);
    long n = count_nl_(plain.p, plain.len);
    gzip_(plain.p, plain.len, &gz);
    const char *p = tpath_("bad.json.gz");
    Buf b = { 0 };

    /* CRC32 (last 8 bytes) and ISIZE (last 4) trailers: all records delivered, file corrupt */
    buf_add_(&b, gz.p, gz.len);
    b.p[b.len - 8] ^= 0x01;
    write_file_(p, b.p, b.len);
    check_damaged_(p, n, n, C4_CORRUPT, "incorrect data check", "crc");
    b.p[b.len - 8] ^= 0x01;
    b.p[b.len - 1] ^= 0x40;
    write_file_(p, b.p, b.len);
    check_damaged_(p, n, n, C4_CORRUPT, "incorrect length check", "isize");

    /* deflate data flipped at several places: every line that ended before the flipped byte
     * (the oracle of the prefix up to it) is delivered unchanged; one C4_CORRUPT */
    for (int k = 1; k <= 4; k++) {
        b.len = 0;
        buf_add_(&b, gz.p, gz.len);
        size_t at = gz.len * (size_t)k / 5;
        b.p[at] ^= 0x55;
        long before = oracle_lines_(1, gz.p, at);
        write_file_(p, b.p, b.len);
        C4Stats st;
        char rep[800];
        FILE *rep_f = tmpfile();
        C4ReaderOptions o = { 0, 1, rep_f };
        C4Reader *r = c4_reader_open(p, &o, NULL, 0);
        C4Document d;
        long got = 0, exact = 0;
        const char *q = plain.p;
        while (r && c4_reader_next(r, &d)) {
            const char *t = q + 9, *te = strstr(t, "\",\"url\"");
            if (got == exact && d.line == got + 1 && (size_t)(te - t) == d.text_len &&
                memcmp(t, d.text, d.text_len) == 0) exact++;
            got++;
            q = strchr(q, '\n') + 1;
        }
        st = *c4_reader_stats(r);
        c4_reader_close(r);
        rewind(rep_f);
        if (!fgets(rep, sizeof rep, rep_f)) rep[0] = '\0';
        fclose(rep_f);
        CHECKF(exact >= before, "flip at %zu: %ld records intact, %ld lines ended before it", at,
               exact, before);
        CHECKF(st.bad[C4_CORRUPT] == 1 && st.files_damaged == 1, "flip at %zu: corrupt %ld", at,
               st.bad[C4_CORRUPT]);
    }

    /* a second member that is not deflate (block type 3): the first member's records, one
     * C4_CORRUPT naming the byte where the second member's data starts */
    b.len = 0;
    buf_add_(&b, gz.p, gz.len);
    static const unsigned char bad_member[] = { 0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff,
                                                0xff, 0xff };
    buf_add_(&b, bad_member, sizeof bad_member);
    write_file_(p, b.p, b.len);
    check_damaged_(p, n, n, C4_CORRUPT, "invalid block type", "bad deflate member");

    /* bytes after the end of the last member that are not a member */
    b.len = 0;
    buf_add_(&b, gz.p, gz.len);
    buf_add_(&b, "garbage", 7);
    write_file_(p, b.p, b.len);
    check_damaged_(p, n, n, C4_CORRUPT, "after the end of a gzip member", "trailing garbage");

    /* valid: two members back to back, then zero padding: everything, nothing bad */
    b.len = 0;
    buf_add_(&b, gz.p, gz.len);
    buf_add_(&b, gz.p, gz.len);
    static const char pad[100] = { 0 };
    buf_add_(&b, pad, sizeof pad);
    write_file_(p, b.p, b.len);
    C4Stats st;
    C4ReaderOptions o = { 0, 1, NULL };
    C4Reader *r = c4_reader_open(p, &o, NULL, 0);
    C4Document d;
    long got = 0;
    while (c4_reader_next(r, &d)) got++;
    st = *c4_reader_stats(r);
    c4_reader_close(r);
    CHECK_EQ_INT(got, 2 * n);
    CHECK_EQ_INT(total_bad_(&st), 0);
    CHECK_EQ_INT(st.files_damaged, 0);

    /* a tar: a member with a bad CRC, then a good one: both members' records, the bad one
     * reported with its member name, the tar goes on */
    Buf t = { 0 };
    b.len = 0;
    buf_add_(&b, gz.p, gz.len);
    b.p[b.len - 6] ^= 0x10;
    tar_header_(&t, "crc.json.gz", b.len);
    buf_add_(&t, b.p, b.len);
    static const char zeros[1536] = { 0 };
    if (b.len % 512) buf_add_(&t, zeros, 512 - b.len % 512);
    tar_header_(&t, "good.json.gz", gz.len);
    buf_add_(&t, gz.p, gz.len);
    buf_add_(&t, zeros, (512 - gz.len % 512) % 512 + 1024);
    const char *pt = tpath_("crc.tar");
    write_file_(pt, t.p, t.len);
    FILE *rep_f = tmpfile();
    C4ReaderOptions o2 = { 0, 1, rep_f };
    r = c4_reader_open(pt, &o2, NULL, 0);
    long first = 0, second = 0;
    while (c4_reader_next(r, &d)) {
        if (!strcmp(d.member, "crc.json.gz")) first++;
        else if (!strcmp(d.member, "good.json.gz")) second++;
    }
    st = *c4_reader_stats(r);
    c4_reader_close(r);
    char rep[800] = "";
    rewind(rep_f);
    if (!fgets(rep, sizeof rep, rep_f)) rep[0] = '\0';
    fclose(rep_f);
    CHECK_EQ_INT(first, n);
    CHECK_EQ_INT(second, n);
    CHECK_EQ_INT(st.bad[C4_CORRUPT], 1);
    CHECK_EQ_INT(st.files_damaged, 1);
    char want[600];
    snprintf(want, sizeof want, "c4: %s:crc.json.gz:", pt);
    CHECKF(strncmp(rep, want, strlen(want)) == 0 && strstr(rep, "(corrupt)"), "report '%s'", rep);
    unlink(pt);
    unlink(p);
    free(t.p);
    free(b.p);
    free(gz.p);
    free(plain.p);
}

static void test_corrupt_zstd(void) {
    Buf plain = { 0 }, zs = { 0 }, b = { 0 };
    make_docs_(&plain, 600, 1500, 4);      /* several 128 KiB blocks */
    long n = count_nl_(plain.p, plain.len);
    zstd_(plain.p, plain.len, 1, &zs);
    const char *p = tpath_("bad.json.zst");

    /* content checksum (last 4 bytes): all records decoded, file corrupt */
    buf_add_(&b, zs.p, zs.len);
    b.p[b.len - 2] ^= 0x01;
    write_file_(p, b.p, b.len);
    check_damaged_(p, n, n, C4_CORRUPT, "checksum", "zstd checksum");

    /* a flipped byte inside the frame: records of the blocks before it are intact */
    for (int k = 1; k <= 3; k++) {
        b.len = 0;
        buf_add_(&b, zs.p, zs.len);
        size_t at = zs.len * (size_t)k / 4;
        b.p[at] ^= 0x5a;
        long before = oracle_lines_(2, zs.p, at);
        write_file_(p, b.p, b.len);
        C4Stats st;
        check_order_ = 0;
        long got = read_count_(p, &st, NULL, 0);
        check_order_ = 1;
        CHECKF(got >= before && st.bad[C4_CORRUPT] == 1 && st.files_damaged == 1,
               "zstd flip at %zu: %ld delivered, %ld lines ended before it, corrupt %ld", at,
               got, before, st.bad[C4_CORRUPT]);
    }

    /* valid: two frames and a skippable frame between them */
    b.len = 0;
    buf_add_(&b, zs.p, zs.len);
    static const unsigned char skip[12] = { 0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4 };
    buf_add_(&b, skip, sizeof skip);
    buf_add_(&b, zs.p, zs.len);
    write_file_(p, b.p, b.len);
    C4Stats st;
    long got = read_count_(p, &st, NULL, 0);
    CHECK_EQ_INT(got, 2 * n);
    CHECK_EQ_INT(total_bad_(&st), 0);
    unlink(p);
    free(b.p);
    free(zs.p);
    free(plain.p);
}

int main(void) {
    snprintf(tmpdir_, sizeof tmpdir_, "/tmp/test_c4_damage.XXXXXX");
    if (!mkdtemp(tmpdir_)) FATAL(NULL, "mkdtemp: %s", strerror(errno));
    RUN(test_cuts_single);
    RUN(test_cuts_tools_agree);
    RUN(test_cuts_tar);
    RUN(test_corrupt_gzip);
    RUN(test_corrupt_zstd);
    rmdir(tmpdir_);
    return TEST_EXIT();
}
