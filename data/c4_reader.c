/*
 * data/c4_reader.c: stream documents out of C4 files. See c4_reader.h.
 *
 * Layers, outermost first:
 *   file      opened by us (so a missing file gives the OS error), read in 64 KiB blocks
 *   odec      the file's own compression, by its magic bytes: gzip (zlib) and zstd (libzstd)
 *             decoded here, any other libarchive filter through libarchive, else plain (see
 *             "Decoders": nothing decoded before a failure is lost, and checksums are checked)
 *   outer     libarchive with the formats tar, raw and empty only (no filters) over odec's
 *             output: a plain .json/.json.gz/.json.zst is one "raw" member, a (compressed) tar
 *             yields its members in order
 *   mdec      the member's bytes: for a tar member, its own compression by its magic bytes (so
 *             .json.gz members of a tar are decompressed too); for a raw file, plain
 *   lines     split on '\n' straight out of the decoded blocks; only a line that straddles two
 *             blocks is copied, into a buffer that never grows past max_line_bytes (a longer
 *             line is skipped up to its newline without being stored); line buffers that grew
 *             past C4_KEEP_BUFFER for one long line are freed once it is done
 *   records   raw line -> UTF-8 check (ours) -> JSON -> "text" field checks
 *
 * JSON: jansson is slow on C4-sized strings (~25 MB/s here: it lexes byte by byte through a
 * callback), so a line that is an object whose values are all strings - every real C4 line - is
 * decoded by a small strict parser here (~10x faster); anything it does not take (other value
 * types, \u0000, lone surrogates, control characters, any syntax error) goes to jansson, which
 * then decides and classifies. The fast parser accepts a subset of what jansson accepts and
 * decodes it identically (last duplicate key wins in both); the unit test checks this by feeding
 * every line both ways.
 *
 * Classification of a line (first match wins):
 *   only spaces/tabs/CR, or empty   ignored: not counted in stats.lines, not a bad record (the
 *                                    final newline of a file never makes an empty line at all)
 *   longer than max_line_bytes      C4_TOO_LONG
 *   invalid UTF-8 (overlong forms, UTF-8-encoded surrogates, > U+10FFFF, stray or missing
 *   continuation bytes)             C4_BAD_UTF8
 *   jansson rejects it, and the line holds \u0000 or an unpaired surrogate escape
 *                                   C4_BAD_ESCAPE (jansson rejects exactly those escapes, so a
 *                                    line it accepts never holds one)
 *   jansson rejects it otherwise, or the value is not an object
 *                                   C4_BAD_JSON
 *   "text" missing or not a string  C4_NO_TEXT
 *   "text" is ""                    C4_EMPTY_TEXT
 * A compressed stream or tar that ends early counts one C4_TRUNCATED, one whose data is corrupt
 * or fails its check (gzip CRC32/ISIZE, zstd content checksum) one C4_CORRUPT; either way every
 * line that ended before the failure is delivered, the partial line it cuts is not, and the
 * file counts in stats.files_damaged. A tar member whose own compression fails is followed by
 * the next member; a failure of the tar or of the file's compression ends the file.
 *
 * Line numbers are 1-based within a member and count every line, blank ones included, so they
 * match `zcat file | sed -n Np`.
 */
#include "c4_reader.h"

#include "common/util.h"

#include <archive.h>          /* archive_read_*: decompression and tar */
#include <archive_entry.h>    /* member names and types */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>          /* json_loadb */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>             /* inflate: gzip */
#include <zstd.h>             /* ZSTD_decompressStream: zstd */

#define C4_DEFAULT_MAX_LINE ((size_t)8 << 20)
#define C4_DEFAULT_REPORT_FIRST 3
#define C4_READ_BLOCK ((size_t)1 << 16)   /* bytes per read() of the compressed file */
/* Line buffers that grew past this for one long line are released after it, so a reader holds
 * at most this much between calls however long the longest line of the file was (a loader keeps
 * one reader open per stream, up to the global batch size per rank). */
#define C4_KEEP_BUFFER ((size_t)1 << 18)


/* ---------------------------------------------------------------------------------------------
 * Decoders: compressed bytes in, decompressed bytes out, nothing lost before a failure.
 *
 * gzip and zstd are decoded here (zlib, libzstd) rather than by libarchive's filters, because
 * libarchive fills a 64 KiB output block and drops it when the stream ends early or is corrupt,
 * so up to 64 KiB of good lines before the damage were lost (a small damaged file gave nothing),
 * and its gzip filter does not check the CRC32 and ISIZE trailers. Contract of dec_read_: every
 * byte a streaming decompression of the input yields before the point of failure is returned
 * before the failure is (kind, message and compressed byte offset in d->err_*).
 *   gzip   zlib inflate (windowBits 15+16: gzip wrapper, header CRC, CRC32 and ISIZE checked);
 *          members concatenated back to back are one stream (RFC 1952 2.2); zero bytes after the
 *          last member are padding; any other trailing byte is C4_CORRUPT.
 *   zstd   ZSTD_decompressStream fed one unit at a time (frame header, block header + block,
 *          checksum, skippable frame; RFC 8878 3.1), so a call decodes at most one block and
 *          starts it with a block's worth of free output: a call that fails (corrupt block, bad
 *          content checksum) never takes output of earlier blocks with it.
 *   other  any other compression libarchive knows (bzip2, xz, lz4, ...), through its raw format;
 *          for these a failure may still drop the last block libarchive was filling.
 *   plain  passed through.
 * Input ends early: C4_TRUNCATED. Data that cannot be decoded, or fails a check: C4_CORRUPT. */

#define DEC_OUT_BLOCK ((size_t)1 << 16)           /* gzip/plain output per call */
#define DEC_ZSTD_OUT ((size_t)ZSTD_BLOCKSIZE_MAX)  /* room for one whole zstd block */

typedef enum { DEC_PLAIN = 0, DEC_GZIP, DEC_ZSTD, DEC_OTHER } DecKind;

/* Input of a decoder: 1 with a block in p[0..n) (valid until the next call), 0 at the end, -1
 * on an error (the callback fills msg). */
typedef int (*DecInput)(void *ud, const char **p, size_t *n, char *msg, size_t msglen);

typedef enum { ZP_MAGIC, ZP_FHD, ZP_FRAME_HDR, ZP_BLOCK_HDR, ZP_BODY, ZP_SKIP_HDR } ZstdPhase;

typedef struct {
    DecInput in;
    void *ud;
    int detect;                 /* look at the magic bytes (else plain) */
    int started;
    DecKind kind;
    /* input: the pending magic bytes first, then the rest of the block they came from */
    unsigned char pend[8];
    size_t pend_len, pend_pos;
    const char *rest;
    size_t rest_len;
    const char *ip;             /* current input slice */
    size_t in_len;
    int in_end;                 /* input returned 0 (or failed while detecting) */
    int in_err_set;             /* the input failed while detecting: report after pend/rest */
    char in_err[256];
    long long in_off;           /* input bytes consumed before ip */
    /* output */
    char *out;
    size_t out_cap;
    /* gzip */
    z_stream z;
    int z_init, z_between;      /* z_between: a member ended, the next has not started */
    long z_member;              /* 0-based number of the current gzip member / zstd frame */
    int z_raw;                  /* the member was resumed at a seek point: raw deflate, the CRC32
                                   and length counted here, the trailer read and checked here */
    uint32_t z_crc;             /* z_raw: CRC32 of the member's output so far */
    unsigned long long z_len;   /* z_raw: the member's output so far */
    int z_trailer;              /* z_raw: the deflate data ended; reading the 8-byte trailer */
    unsigned char z_trl[8];
    int z_trl_len;
    /* seek points: candidate restart points (see c4_reader.h "Seek points") */
    long long out_total;        /* bytes output before this call (absolute after a restart) */
    long long snap_every;       /* 0: record no candidates */
    long long snap_next;        /* the next candidate is at the first boundary at or after this */
    C4SeekPoint *cand;          /* the latest candidate (restart fields only), if cand_seq > 0 */
    long cand_seq;
    /* zstd */
    ZSTD_DStream *zs;
    ZstdPhase zp;
    unsigned char zh[18];       /* header bytes of the current unit */
    size_t zh_len, zh_need;
    size_t z_body;              /* bytes left in the current block / skippable frame / checksum */
    int z_last, z_checksum;
    long long z_unit_off;       /* compressed offset of the current unit */
    /* other */
    struct archive *ar;
    /* failure: set once; returned after every byte produced before it */
    int failed;                 /* 0, or 1 = the failure is ready to report */
    int input_failed;           /* the failure came from the input callback */
    C4BadKind err_kind;
    long long err_off;
    char err_msg[320];
} Dec;

static void dec_init_(Dec *d, DecInput in, void *ud, int detect) {
    memset(d, 0, sizeof *d);
    d->in = in;
    d->ud = ud;
    d->detect = detect;
}

static void dec_free_(Dec *d) {
    if (d->z_init) inflateEnd(&d->z);
    free(d->cand);
    d->cand = NULL;
    if (d->zs) ZSTD_freeDStream(d->zs);
    if (d->ar) archive_read_free(d->ar);
    free(d->out);
    d->z_init = 0;
    d->zs = NULL;
    d->ar = NULL;
    d->out = NULL;
}

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static void dec_fail_(Dec *d, C4BadKind kind, long long off, const char *fmt, ...) {
    if (d->failed) return;
    d->failed = 1;
    d->err_kind = kind;
    d->err_off = off;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err_msg, sizeof d->err_msg, fmt, ap);
    va_end(ap);
}

/* Next input slice into d->ip/d->in_len (consumed bytes must have been counted into in_off by
 * the caller). Returns 1, 0 at the end, -1 after recording an input failure. */
static int dec_fill_(Dec *d) {
    if (d->in_len > 0) return 1;
    if (d->pend_pos < d->pend_len) {
        d->ip = (const char *)d->pend + d->pend_pos;
        d->in_len = d->pend_len - d->pend_pos;
        d->pend_pos = d->pend_len;
        return 1;
    }
    if (d->rest_len > 0) {
        d->ip = d->rest;
        d->in_len = d->rest_len;
        d->rest_len = 0;
        return 1;
    }
    if (d->in_err_set) {
        d->in_err_set = 0;
        d->input_failed = 1;
        dec_fail_(d, C4_TRUNCATED, d->in_off, "%s", d->in_err);
        return -1;
    }
    if (d->in_end) return 0;
    for (;;) {
        char msg[256] = "";
        const char *p;
        size_t n = 0;
        int rc = d->in(d->ud, &p, &n, msg, sizeof msg);
        if (rc == 0) { d->in_end = 1; return 0; }
        if (rc < 0) {
            d->input_failed = 1;
            dec_fail_(d, C4_TRUNCATED, d->in_off, "%s", msg);
            return -1;
        }
        if (n == 0) continue;
        d->ip = p;
        d->in_len = n;
        return 1;
    }
}

static void dec_consume_(Dec *d, size_t n) {
    d->ip += n;
    d->in_len -= n;
    d->in_off += (long long)n;
}

/* The other-compression path reads its input through libarchive. */
static la_ssize_t dec_archive_in_(struct archive *a, void *ud, const void **buf) {
    Dec *d = ud;
    int rc = dec_fill_(d);
    if (rc < 0) {
        archive_set_error(a, EIO, "%s", d->err_msg);
        return -1;
    }
    if (rc == 0) return 0;
    *buf = d->ip;
    size_t n = d->in_len;
    dec_consume_(d, n);
    return (la_ssize_t)n;
}

/* A zstd decoder at the start of a frame (of the file, or of a seek point). */
static void zstd_dec_start_(Dec *d) {
    d->zs = ZSTD_createDStream();
    if (!d->zs) FATAL(NULL, "ZSTD_createDStream failed (out of memory?)");
    ZSTD_initDStream(d->zs);
    d->out_cap = DEC_ZSTD_OUT;
    d->zp = ZP_MAGIC;
    d->zh_need = 4;
}

/* Look at the first bytes and set up the decoder. Returns 0, or -1 on failure (recorded). */
static int dec_start_(Dec *d) {
    d->started = 1;
    if (d->detect) {
        while (d->pend_len < 6) {
            char msg[256] = "";
            const char *p;
            size_t n = 0;
            int rc = d->in(d->ud, &p, &n, msg, sizeof msg);
            if (rc == 0) { d->in_end = 1; break; }
            if (rc < 0) {          /* reported once the bytes before it are decoded */
                snprintf(d->in_err, sizeof d->in_err, "%s", msg);
                d->in_err_set = 1;
                d->in_end = 1;
                break;
            }
            size_t take = n < 6 - d->pend_len ? n : 6 - d->pend_len;
            memcpy(d->pend + d->pend_len, p, take);
            d->pend_len += take;
            if (take < n) { d->rest = p + take; d->rest_len = n - take; break; }
        }
        const unsigned char *m = d->pend;
        size_t k = d->pend_len;
        /* a stream cut inside its magic bytes is that compression (reported as cut short) */
        if ((k >= 2 && m[0] == 0x1f && m[1] == 0x8b) || (k == 1 && m[0] == 0x1f && d->in_end))
            d->kind = DEC_GZIP;
        else if ((k >= 4 && ((m[0] == 0x28 && m[1] == 0xb5 && m[2] == 0x2f && m[3] == 0xfd) ||
                             ((m[0] & 0xf0) == 0x50 && m[1] == 0x2a && m[2] == 0x4d &&
                              m[3] == 0x18))) ||
                 (k < 4 && k > 0 && d->in_end && !memcmp(m, "\x28\xb5\x2f", k)))
            d->kind = DEC_ZSTD;
        else if ((k >= 3 && m[0] == 'B' && m[1] == 'Z' && m[2] == 'h') ||
                 (k >= 6 && !memcmp(m, "\xfd" "7zXZ\0", 6)) ||
                 (k >= 4 && m[0] == 0x04 && m[1] == 0x22 && m[2] == 0x4d && m[3] == 0x18) ||
                 (k >= 2 && m[0] == 0x1f && m[1] == 0x9d) || (k >= 3 && m[0] == 0x5d && !m[1] && !m[2]))
            d->kind = DEC_OTHER;
    }
    switch (d->kind) {
    case DEC_GZIP:
        if (inflateInit2(&d->z, 15 + 16) != Z_OK) FATAL(NULL, "inflateInit2 failed (out of memory?)");
        d->z_init = 1;
        d->out_cap = DEC_OUT_BLOCK;
        break;
    case DEC_ZSTD:
        zstd_dec_start_(d);
        break;
    case DEC_OTHER: {
        d->ar = archive_read_new();
        if (!d->ar) FATAL(NULL, "archive_read_new failed (out of memory?)");
        archive_read_support_filter_all(d->ar);
        archive_read_support_format_raw(d->ar);
        archive_read_support_format_empty(d->ar);
        struct archive_entry *e;
        if (archive_read_open(d->ar, d, NULL, dec_archive_in_, NULL) != ARCHIVE_OK ||
            archive_read_next_header(d->ar, &e) < ARCHIVE_WARN) {
            dec_fail_(d, C4_TRUNCATED, d->in_off, "%s", archive_error_string(d->ar) ?
                      archive_error_string(d->ar) : "cannot decompress");
            return -1;
        }
        break;
    }
    case DEC_PLAIN:
        break;
    }
    if (d->out_cap) d->out = xmalloc(d->out_cap);
    return 0;
}

/* A candidate seek point of kind k at the current input offset (the caller fills the gzip
 * fields). */
static C4SeekPoint *dec_candidate_(Dec *d, int kind, long long out) {
    if (!d->cand) d->cand = xmalloc(sizeof *d->cand);
    C4SeekPoint *c = d->cand;
    memset(c, 0, offsetof(C4SeekPoint, window));
    c->kind = kind;
    c->in_off = d->in_off;
    c->out_off = out;
    d->cand_seq++;
    d->snap_next = out + d->snap_every;
    return c;
}

/* inflate stopped (Z_BLOCK) with `produced` bytes of this call's output: at a deflate block
 * boundary that is not the end of the member, take it as a candidate. */
static void gzip_candidate_(Dec *d, size_t produced) {
    z_stream *z = &d->z;
    if (!(z->data_type & 128) || (z->data_type & 64)) return;
    C4SeekPoint *c = dec_candidate_(d, C4_SEEK_GZIP, d->out_total + (long long)produced);
    c->bits = z->data_type & 7;
    c->member = d->z_member;
    c->crc = d->z_raw ? d->z_crc : (uint32_t)z->adler;
    c->member_len = d->z_raw ? d->z_len : (unsigned long long)z->total_out;
    uInt wl = 0;
    if (c->member_len > 0 && inflateGetDictionary(z, c->window, &wl) != Z_OK) wl = 0;
    c->window_len = wl;
    if ((unsigned long long)wl != (c->member_len < C4_SEEK_WINDOW ? c->member_len : C4_SEEK_WINDOW))
        c->kind = C4_SEEK_NONE;     /* cannot happen; a new number that is never completed */
}

/* The trailer of a member resumed at a seek point (raw deflate): CRC32 then ISIZE, checked
 * like zlib does (the error offset is after the field that fails, as zlib reports it). */
static int gzip_trailer_(Dec *d) {
    while (d->in_len > 0 && d->z_trailer) {
        d->z_trl[d->z_trl_len++] = (unsigned char)d->ip[0];
        dec_consume_(d, 1);
        if (d->z_trl_len != 4 && d->z_trl_len != 8) continue;
        const unsigned char *t = d->z_trl + d->z_trl_len - 4;
        uint32_t v = (uint32_t)t[0] | (uint32_t)t[1] << 8 | (uint32_t)t[2] << 16 |
                     (uint32_t)t[3] << 24;
        int is_crc = d->z_trl_len == 4;
        if (v != (is_crc ? d->z_crc : (uint32_t)d->z_len)) {
            dec_fail_(d, C4_CORRUPT, d->in_off, "gzip data corrupt at compressed byte %lld "
                      "(incorrect %s check)", d->in_off, is_crc ? "data" : "length");
            return -1;
        }
        if (!is_crc) { d->z_trailer = 0; d->z_between = 1; }
    }
    return 0;
}

static int dec_read_gzip_(Dec *d, const char **p, size_t *n) {
    z_stream *z = &d->z;
    /* Output blocks end at multiples of out_cap of the whole stream (every call of a reader that
     * started at the beginning fills the block), so a reader restarted at a seek point reads the
     * same blocks and its input_bytes agree. */
    size_t cap = d->out_cap - (size_t)(d->out_total % (long long)d->out_cap);
    size_t produced = 0;
    while (produced < cap) {
        int rc = dec_fill_(d);
        if (rc < 0) break;
        if (rc == 0) {
            if (!d->z_between)
                dec_fail_(d, C4_TRUNCATED, d->in_off, "gzip stream ends early (cut at compressed "
                          "byte %lld)", d->in_off);
            else if (produced == 0) return 0;
            break;
        }
        if (d->z_trailer) {
            if (gzip_trailer_(d) != 0) break;
            continue;
        }
        if (d->z_between) {                 /* after a member: another member, or padding */
            unsigned char c = (unsigned char)d->ip[0];
            if (c == 0) { dec_consume_(d, 1); continue; }
            if (c != 0x1f) {
                dec_fail_(d, C4_CORRUPT, d->in_off, "byte 0x%02X after the end of a gzip member "
                          "at compressed byte %lld (not another member)", c, d->in_off);
                break;
            }
            if (d->z_raw) {
                if (inflateReset2(z, 15 + 16) != Z_OK) FATAL(NULL, "inflateReset2 failed");
                d->z_raw = 0;
            } else {
                inflateReset(z);
            }
            d->z_between = 0;
            d->z_member++;
        }
        z->next_in = (Bytef *)(uintptr_t)d->ip;
        z->avail_in = (uInt)(d->in_len > (1u << 30) ? (1u << 30) : d->in_len);
        z->next_out = (Bytef *)d->out + produced;
        z->avail_out = (uInt)(cap - produced);
        size_t in0 = z->avail_in, out0 = z->avail_out;
        /* looking for a seek point: stop at every deflate block boundary */
        int flush = d->snap_every && d->out_total + (long long)produced >= d->snap_next ?
                    Z_BLOCK : Z_NO_FLUSH;
        int ret = inflate(z, flush);
        dec_consume_(d, in0 - z->avail_in);
        size_t got = out0 - z->avail_out;
        if (d->z_raw) {
            d->z_crc = (uint32_t)crc32(d->z_crc, (const Bytef *)d->out + produced, (uInt)got);
            d->z_len += got;
        }
        produced += got;
        if (ret == Z_STREAM_END) {
            if (d->z_raw) { d->z_trailer = 1; d->z_trl_len = 0; }
            else d->z_between = 1;
            continue;
        }
        if (ret == Z_OK || ret == Z_BUF_ERROR) {
            if (flush == Z_BLOCK) gzip_candidate_(d, produced);
            continue;
        }
        if (ret == Z_MEM_ERROR) FATAL(NULL, "inflate: out of memory");
        dec_fail_(d, C4_CORRUPT, d->in_off, "gzip data corrupt at compressed byte %lld (%s)",
                  d->in_off, z->msg ? z->msg : "inflate error");
        break;
    }
    d->out_total += (long long)produced;
    *p = d->out;
    *n = produced;
    if (produced > 0) return 1;
    return d->failed ? -1 : 0;
}

static uint32_t le_(const unsigned char *b, int n) {
    uint32_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | b[i];
    return v;
}

/* The zstd unit parser saw the header bytes zh[0..zh_len) complete: decide what comes next. */
static void zstd_header_done_(Dec *d) {
    const unsigned char *h = d->zh;
    switch (d->zp) {
    case ZP_MAGIC: {
        uint32_t magic = le_(h, 4);
        if ((magic & 0xFFFFFFF0u) == 0x184D2A50u) { d->zp = ZP_SKIP_HDR; d->zh_need = 8; }
        else { d->zp = ZP_FHD; d->zh_need = 5; }   /* not a frame: zstd itself says so */
        return;
    }
    case ZP_FHD: {
        unsigned fhd = h[4], fcs = fhd >> 6, single = (fhd >> 5) & 1, did = fhd & 3;
        static const size_t did_len[4] = { 0, 1, 2, 4 }, fcs_len[4] = { 0, 2, 4, 8 };
        d->z_checksum = (fhd >> 2) & 1;
        d->zh_need = 5 + (single ? 0 : 1) + did_len[did] + (fcs == 0 ? single : fcs_len[fcs]);
        d->zp = ZP_FRAME_HDR;
        if (d->zh_need > 5) return;
        d->z_last = 0;                          /* a 5-byte header is complete */
        d->zp = ZP_BLOCK_HDR;
        d->zh_len = 0;
        d->zh_need = 3;
        return;
    }
    case ZP_FRAME_HDR:
        d->z_last = 0;
        d->zp = ZP_BLOCK_HDR;
        d->zh_len = 0;
        d->zh_need = 3;
        return;
    case ZP_BLOCK_HDR: {
        uint32_t bh = le_(h, 3);
        unsigned type = (bh >> 1) & 3;
        d->z_last = bh & 1;
        d->z_body = type == 1 ? 1 : bh >> 3;      /* RLE: one byte; raw/compressed: the size */
        d->zp = ZP_BODY;
        return;
    }
    case ZP_SKIP_HDR:
        d->z_body = le_(h + 4, 4);
        d->z_last = 1;
        d->z_checksum = 0;
        d->zp = ZP_BODY;
        return;
    case ZP_BODY:
        return;
    }
}

/* After a unit's body: the next block header, the checksum (as a body of 4), or a new frame. */
static void zstd_body_done_(Dec *d) {
    d->zh_len = 0;
    if (!d->z_last) { d->zp = ZP_BLOCK_HDR; d->zh_need = 3; return; }
    if (d->z_checksum) { d->z_checksum = 0; d->z_body = 4; d->zp = ZP_BODY; return; }
    d->zp = ZP_MAGIC;
    d->zh_need = 4;
    d->z_member++;                  /* frames (skippable ones too) counted for reports */
}

static int dec_read_zstd_(Dec *d, const char **p, size_t *n) {
    ZSTD_outBuffer out = { d->out, d->out_cap, 0 };
    for (;;) {
        if (d->zp != ZP_BODY && d->zh_len == d->zh_need) { zstd_header_done_(d); continue; }
        if (d->zp == ZP_BODY && d->z_body == 0) { zstd_body_done_(d); continue; }
        if (d->zp == ZP_MAGIC && d->zh_len == 0 && out.pos == 0 && d->snap_every &&
            d->out_total >= d->snap_next && d->in_off > 0) {
            dec_candidate_(d, C4_SEEK_ZSTD, d->out_total);   /* a frame starts here */
            d->cand->member = d->z_member;
        }
        int rc = dec_fill_(d);
        if (rc < 0) break;
        if (rc == 0) {
            if (d->zp == ZP_MAGIC && d->zh_len == 0) {
                if (out.pos == 0) return 0;
            } else {
                dec_fail_(d, C4_TRUNCATED, d->in_off, "zstd stream ends early (cut at compressed "
                          "byte %lld)", d->in_off);
            }
            break;
        }
        size_t lim = d->zp == ZP_BODY ? d->z_body : d->zh_need - d->zh_len;
        size_t take = d->in_len < lim ? d->in_len : lim;
        int completes = d->zp == ZP_BODY && take == lim;
        /* A call that may produce output starts with room for all of it (a whole block when it
         * completes one, the raw bytes otherwise), so zstd never holds output back to a later
         * call that could fail. */
        if (out.pos > 0 && (completes || (d->zp == ZP_BODY && take > d->out_cap - out.pos)))
            break;
        if ((d->zp == ZP_MAGIC || d->zp == ZP_BLOCK_HDR) && d->zh_len == 0)
            d->z_unit_off = d->in_off;
        if (d->zp != ZP_BODY) memcpy(d->zh + d->zh_len, d->ip, take);
        ZSTD_inBuffer in = { d->ip, take, 0 };
        size_t ret = ZSTD_decompressStream(d->zs, &out, &in);
        if (ZSTD_isError(ret)) {
            dec_fail_(d, C4_CORRUPT, d->z_unit_off, "zstd data corrupt in the part starting at "
                      "compressed byte %lld (%s)", d->z_unit_off, ZSTD_getErrorName(ret));
            break;
        }
        if (in.pos != take) {       /* only when out of output room: cannot happen per unit */
            dec_consume_(d, in.pos);
            if (d->zp != ZP_BODY) d->zh_len += in.pos;
            else d->z_body -= in.pos;
            if (out.pos > 0) break;
            continue;
        }
        dec_consume_(d, take);
        if (d->zp != ZP_BODY) d->zh_len += take;
        else d->z_body -= take;
        if (completes && out.pos > 0) break;
    }
    d->out_total += (long long)out.pos;
    *p = d->out;
    *n = out.pos;
    if (out.pos > 0) return 1;
    return d->failed ? -1 : 0;
}

/* Next decompressed block into p[0..n) (valid until the next call). Returns 1, 0 at a clean end,
 * -1 on failure (d->err_*; returned only once every byte decoded before it was handed out). */
static int dec_read_(Dec *d, const char **p, size_t *n) {
    if (!d->started && dec_start_(d) != 0) return -1;
    if (d->failed) return -1;
    switch (d->kind) {
    case DEC_GZIP: return dec_read_gzip_(d, p, n);
    case DEC_ZSTD: return dec_read_zstd_(d, p, n);
    case DEC_OTHER: {
        la_int64_t off;
        const void *b;
        for (;;) {
            int ret = archive_read_data_block(d->ar, &b, n, &off);
            if (ret == ARCHIVE_EOF) return 0;
            if (ret != ARCHIVE_OK) {
                const char *e = archive_error_string(d->ar);
                dec_fail_(d, C4_TRUNCATED, d->in_off, "%s stream ends early or is corrupt "
                          "(near compressed byte %lld): %s", archive_filter_name(d->ar, 0),
                          d->in_off, e ? e : "decompression failed");
                return -1;
            }
            if (*n == 0) continue;
            *p = b;
            return 1;
        }
    }
    case DEC_PLAIN: {
        int rc = dec_fill_(d);
        if (rc <= 0) return rc;
        if (d->snap_every && d->out_total >= d->snap_next)
            dec_candidate_(d, C4_SEEK_PLAIN, d->out_total);   /* restart = this file offset */
        *p = d->ip;
        *n = d->in_len;
        d->out_total += (long long)d->in_len;
        dec_consume_(d, d->in_len);
        return 1;
    }
    }
    return -1;
}


struct C4Reader {
    char *path;
    size_t max_line;
    int report_first;
    FILE *report;

    int fd;
    char *rbuf;                 /* C4_READ_BLOCK bytes read from the file */
    Dec odec;                   /* the file's own compression (or plain) */
    struct archive *outer;      /* libarchive tar/raw/empty over odec's output */
    Dec mdec;                   /* the current member: its compression if in a tar, else plain */
    int is_tar;
    int in_member;              /* a member is open and has data left */
    int done;                   /* no more members (end of file, or the container failed) */
    int odec_reported;          /* odec's failure has been counted */
    char *member;               /* current member name (the path for a raw file) */
    long line_no;               /* lines seen in the current member */

    const char *blk;            /* current decompressed block from libarchive */
    size_t blk_len, blk_pos;

    char *buf;                  /* a line that straddles blocks; buf_len <= max_line */
    size_t buf_len, buf_cap;
    int skipping;               /* inside a line already known to be too long */
    size_t skip_len;            /* its length so far */

    json_t *doc;                /* the object the last delivered document points into */
    char *dec;                  /* fast-path decoded strings of the last line (<= line + 16) */
    size_t dec_cap;
    C4Stats stats;

    /* seek points (c4_reader.h): odec proposes restart points, the line splitter completes them
     * at the first line end C4_SEEK_CHECK_MIN bytes or more after them */
    long long file_off;         /* bytes read from the file (reads end at 64 KiB multiples) */
    int direct;                 /* restarted at a seek point: odec's output is the member, no
                                   libarchive */
    long long blk_abs;          /* uncompressed offset of blk[0] (a raw member: the stream) */
    int pend;                   /* odec's candidate number pend_seq is being completed */
    long pend_seq;
    uint32_t pend_crc;          /* CRC32 of the output from the candidate up to pend_upto */
    long long pend_upto;
    C4SeekPoint *fin;           /* the last completed seek point */
    int fin_new;                /* not yet taken by c4_reader_take_seek_point */
};

const char *c4_bad_kind_name(C4BadKind k) {
    static const char *names[C4_NUM_BAD_KINDS] = {
        "json", "utf8", "no_text", "empty_text", "too_long", "escape", "truncated", "corrupt"
    };
    return (unsigned)k < C4_NUM_BAD_KINDS ? names[k] : "?";
}

/* ---------------------------------------------------------------------------------------------
 * Reports. */

/* Count one bad record of kind k at line `line` of the current member (line 0: a problem of the
 * file as a whole, reported without member and line), and print it if it is one of the first
 * report_first of its kind in this file (plus one note when reporting stops). */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static void bad_record_(C4Reader *r, C4BadKind k, long line, const char *fmt, ...) {
    long n = ++r->stats.bad[k];
    FILE *out = r->report ? r->report : stderr;
    const char *sep = r->is_tar ? ":" : "";
    const char *mem = r->is_tar ? r->member : "";
    if (n <= r->report_first) {
        char detail[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof detail, fmt, ap);
        va_end(ap);
        for (char *p = detail; *p; p++)       /* keep the report on one printable line */
            if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
        if (line > 0)
            fprintf(out, "c4: %s%s%s:%ld: skipped (%s): %s\n", r->path, sep, mem, line,
                    c4_bad_kind_name(k), detail);
        else
            fprintf(out, "c4: %s: skipped (%s): %s\n", r->path, c4_bad_kind_name(k), detail);
    } else if (n == (long)r->report_first + 1 && r->report_first > 0) {
        fprintf(out, "c4: %s: further '%s' records are counted but not reported\n", r->path,
                c4_bad_kind_name(k));
    }
}

/* ---------------------------------------------------------------------------------------------
 * Validation. */

/* Returns len if s[0..len) is valid UTF-8 (Unicode Table 3-7: no overlong forms, no encoded
 * surrogates, nothing above U+10FFFF), else the offset of the first byte of the bad sequence. */
static size_t utf8_check_(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        /* fast path: 8 ASCII bytes at a time */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= len) break;
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t n;
        unsigned lo = 0x80, hi = 0xBF;        /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) n = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            if (c == 0xE0) lo = 0xA0;         /* overlong */
            if (c == 0xED) hi = 0x9F;         /* surrogates D800..DFFF */
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            if (c == 0xF0) lo = 0x90;         /* overlong */
            if (c == 0xF4) hi = 0x8F;         /* above U+10FFFF */
        } else return i;                      /* 80..C1 (stray continuation, overlong), F5..FF */
        if (i + n > len) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t j = 2; j < n; j++)
            if ((s[i + j] & 0xC0) != 0x80) return i;
        i += n;
    }
    return len;
}

static int hex4_(const char *p, const char *end, unsigned *v) {
    if (end - p < 4) return 0;
    unsigned x = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        x <<= 4;
        if (c >= '0' && c <= '9') x |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') x |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') x |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *v = x;
    return 1;
}

/* Looks for the escapes jansson refuses: \u0000 and surrogate escapes that are not a high one
 * directly followed by a low one. Returns 1 and describes the first in msg, else 0. An escaped
 * backslash ("\\u0000" in the JSON source) is skipped as a pair, so it never matches. */
static int find_bad_escape_(const char *s, size_t len, char *msg, size_t msglen) {
    const char *p = s, *end = s + len;
    while ((p = memchr(p, '\\', (size_t)(end - p))) != NULL) {
        if (end - p < 2) return 0;
        if (p[1] != 'u') { p += 2; continue; }
        unsigned v, w;
        if (!hex4_(p + 2, end, &v)) { p += 2; continue; }
        if (v == 0) {
            snprintf(msg, msglen, "\\u0000 escape at byte %zu", (size_t)(p - s));
            return 1;
        }
        if (v >= 0xD800 && v <= 0xDBFF) {
            if (end - p >= 12 && p[6] == '\\' && p[7] == 'u' && hex4_(p + 8, end, &w) &&
                w >= 0xDC00 && w <= 0xDFFF) { p += 12; continue; }
            snprintf(msg, msglen, "unpaired high surrogate escape \\u%04X at byte %zu", v,
                     (size_t)(p - s));
            return 1;
        }
        if (v >= 0xDC00 && v <= 0xDFFF) {
            snprintf(msg, msglen, "unpaired low surrogate escape \\u%04X at byte %zu", v,
                     (size_t)(p - s));
            return 1;
        }
        p += 6;
    }
    return 0;
}

/* SWAR tests on 8 bytes: does any byte equal zero / is any byte < 0x20. */
#define ONES_ 0x0101010101010101ULL
#define HIGHS_ 0x8080808080808080ULL
static inline uint64_t has_zero_(uint64_t w) { return (w - ONES_) & ~w & HIGHS_; }
static inline uint64_t has_ctrl_(uint64_t w) { return (w - 0x20 * ONES_) & ~w & HIGHS_; }

static char *put_utf8_(char *o, unsigned cp) {
    if (cp < 0x80) { *o++ = (char)cp; }
    else if (cp < 0x800) { *o++ = (char)(0xC0 | (cp >> 6)); *o++ = (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (cp >> 18));
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    return o;
}

/* Decode the JSON string whose opening quote is just before p into *outp (NUL-terminated,
 * *outp advanced past the NUL). Returns the position after the closing quote, or NULL for
 * anything the fast path leaves to jansson: a control character, an unknown escape, \u0000, an
 * unpaired surrogate escape, or no closing quote. The output is never longer than the input
 * (quotes included), so a buffer of the line's length always suffices. */
static const char *fast_string_(const char *p, const char *end, char **outp) {
    char *o = *outp;
    for (;;) {
        while (end - p >= 8) {                 /* plain bytes, 8 at a time */
            uint64_t w;
            memcpy(&w, p, 8);
            if (has_zero_(w ^ (0x22 * ONES_)) | has_zero_(w ^ (0x5C * ONES_)) | has_ctrl_(w))
                break;
            memcpy(o, p, 8);
            o += 8;
            p += 8;
        }
        if (p >= end) return NULL;
        unsigned char c = (unsigned char)*p;
        if (c == '"') break;
        if (c < 0x20) return NULL;
        if (c != '\\') { *o++ = (char)c; p++; continue; }
        if (end - p < 2) return NULL;
        unsigned v, w;
        switch (p[1]) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u':
            if (!hex4_(p + 2, end, &v) || v == 0 || (v >= 0xDC00 && v <= 0xDFFF)) return NULL;
            if (v >= 0xD800 && v <= 0xDBFF) {
                if (end - p < 12 || p[6] != '\\' || p[7] != 'u' || !hex4_(p + 8, end, &w) ||
                    w < 0xDC00 || w > 0xDFFF) return NULL;
                o = put_utf8_(o, 0x10000 + ((v - 0xD800) << 10) + (w - 0xDC00));
                p += 12;
            } else {
                o = put_utf8_(o, v);
                p += 6;
            }
            continue;
        default: return NULL;
        }
        p += 2;
    }
    *o++ = '\0';
    *outp = o;
    return p + 1;
}

static const char *skip_ws_(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    return p;
}

/* The fast path: s[0..len) is one object whose values are all strings. Decodes them into r->dec
 * and sets off[0..2] / n[0..2] to the decoded text, url and timestamp (off -1 if absent; the last
 * duplicate wins, as in jansson). Returns 1 if taken, 0 to leave the line to jansson. */
static int fast_object_(C4Reader *r, const char *s, size_t len, long off[3], size_t n[3]) {
    static const char *keys[3] = { "text", "url", "timestamp" };
    static const size_t klen[3] = { 4, 3, 9 };
    if (len + 16 > r->dec_cap) {
        size_t cap = r->dec_cap ? r->dec_cap : 4096;
        while (cap < len + 16) cap *= 2;
        r->dec = xrealloc(r->dec, cap);
        r->dec_cap = cap;
    }
    off[0] = off[1] = off[2] = -1;
    const char *p = skip_ws_(s, s + len), *end = s + len;
    if (p == end || *p != '{') return 0;
    p = skip_ws_(p + 1, end);
    char *o = r->dec;
    for (;;) {
        if (p == end || *p != '"') return 0;  /* also "{}": jansson's */
        char *key = o;
        if (!(p = fast_string_(p + 1, end, &o))) return 0;
        size_t kl = (size_t)(o - key) - 1;
        int which = -1;
        for (int i = 0; i < 3; i++)
            if (kl == klen[i] && memcmp(key, keys[i], kl) == 0) which = i;
        o = key;                                /* keys are not kept */
        p = skip_ws_(p, end);
        if (p == end || *p != ':') return 0;
        p = skip_ws_(p + 1, end);
        if (p == end || *p != '"') return 0;
        char *val = o;
        if (!(p = fast_string_(p + 1, end, &o))) return 0;
        if (which >= 0) {
            off[which] = (long)(val - r->dec);
            n[which] = (size_t)(o - val) - 1;
        } else {
            o = val;
        }
        p = skip_ws_(p, end);
        if (p == end) return 0;
        if (*p == '}') break;
        if (*p != ',') return 0;
        p = skip_ws_(p + 1, end);
    }
    return skip_ws_(p + 1, end) == end;
}

static const char *json_type_name_(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* Classify one complete line (without its '\n'). Returns 1 and fills *doc for a good document
 * (r->doc then owns the strings), 0 if the line was skipped. */
static int process_line_(C4Reader *r, const char *s, size_t len, C4Document *doc) {
    long line = r->line_no;
    size_t i = 0;
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r')) i++;
    if (i == len) return 0;                   /* blank: ignored, see the top of the file */
    r->stats.lines++;
    if (len > r->max_line) {
        bad_record_(r, C4_TOO_LONG, line, "line of %zu bytes > max_line_bytes %zu", len,
                    r->max_line);
        return 0;
    }
    size_t bad = utf8_check_((const unsigned char *)s, len);
    if (bad < len) {
        bad_record_(r, C4_BAD_UTF8, line, "invalid UTF-8 byte 0x%02X at byte %zu",
                    (unsigned char)s[bad], bad);
        return 0;
    }
    long off[3];
    size_t n[3];
    if (fast_object_(r, s, len, off, n)) {
        if (off[0] < 0) {
            bad_record_(r, C4_NO_TEXT, line, "no \"text\" field");
            return 0;
        }
        const char *url_s = off[1] >= 0 ? r->dec + off[1] : "";
        if (n[0] == 0) {
            bad_record_(r, C4_EMPTY_TEXT, line, "empty \"text\" (url '%.120s')", url_s);
            return 0;
        }
        doc->text = r->dec + off[0];
        doc->text_len = n[0];
        doc->url = url_s;
        doc->timestamp = off[2] >= 0 ? r->dec + off[2] : "";
        doc->line = line;
        doc->member = r->member;
        r->stats.documents++;
        r->stats.text_bytes += (long long)n[0];
        return 1;
    }
    json_error_t err;
    json_t *root = json_loadb(s, len, 0, &err);
    if (!root) {
        char msg[160];
        if (find_bad_escape_(s, len, msg, sizeof msg))
            bad_record_(r, C4_BAD_ESCAPE, line, "%s", msg);
        else
            bad_record_(r, C4_BAD_JSON, line, "column %d: %s", err.column, err.text);
        return 0;
    }
    if (!json_is_object(root)) {
        bad_record_(r, C4_BAD_JSON, line, "the line is %s, not an object", json_type_name_(root));
        json_decref(root);
        return 0;
    }
    json_t *text = json_object_get(root, "text");
    if (!text || !json_is_string(text)) {
        if (!text) bad_record_(r, C4_NO_TEXT, line, "no \"text\" field");
        else bad_record_(r, C4_NO_TEXT, line, "\"text\" is %s, not a string",
                         json_type_name_(text));
        json_decref(root);
        return 0;
    }
    size_t tlen = json_string_length(text);
    json_t *url = json_object_get(root, "url");
    json_t *ts = json_object_get(root, "timestamp");
    const char *url_s = json_is_string(url) ? json_string_value(url) : "";
    if (tlen == 0) {
        bad_record_(r, C4_EMPTY_TEXT, line, "empty \"text\" (url '%.120s')", url_s);
        json_decref(root);
        return 0;
    }
    r->doc = root;
    doc->text = json_string_value(text);
    doc->text_len = tlen;
    doc->url = url_s;
    doc->timestamp = json_is_string(ts) ? json_string_value(ts) : "";
    doc->line = line;
    doc->member = r->member;
    r->stats.documents++;
    r->stats.text_bytes += (long long)tlen;
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * Members. */

/* Input of the outer decoder: the file. */
static int file_in_(void *ud, const char **p, size_t *n, char *msg, size_t msglen) {
    C4Reader *r = ud;
    for (;;) {
        /* reads end at multiples of C4_READ_BLOCK, also after a restart at a seek point */
        size_t want = C4_READ_BLOCK - (size_t)(r->file_off % (long long)C4_READ_BLOCK);
        ssize_t got = read(r->fd, r->rbuf, want);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            snprintf(msg, msglen, "read error: %s", strerror(errno));
            return -1;
        }
        r->file_off += got;
        *p = r->rbuf;
        *n = (size_t)got;
        return got > 0;
    }
}

/* Input callback of libarchive's tar/raw reader: the outer decoder's output. A failure of the
 * decoder ends the stream here (libarchive then sees an early end); it is reported from
 * r->odec, after every byte decoded before it has been read. */
static la_ssize_t outer_read_(struct archive *a, void *ud, const void **buf) {
    (void)a;
    C4Reader *r = ud;
    const char *p;
    size_t n;
    if (dec_read_(&r->odec, &p, &n) != 1) return 0;
    *buf = p;
    return (la_ssize_t)n;
}

/* Input of the member decoder: the member's bytes from libarchive (or, restarted at a seek point,
 * straight from odec; a failure of odec then ends the member as libarchive would, and is
 * reported from r->odec). */
static int member_in_(void *ud, const char **p, size_t *n, char *msg, size_t msglen) {
    C4Reader *r = ud;
    if (r->direct) return dec_read_(&r->odec, p, n) == 1;
    const void *b;
    size_t size = 0;
    la_int64_t off;
    int ret = archive_read_data_block(r->outer, &b, &size, &off);
    if (ret == ARCHIVE_EOF) return 0;
    if (ret != ARCHIVE_OK) {
        const char *e = archive_error_string(r->outer);
        snprintf(msg, msglen, "%s", e ? e : "tar read error");
        return -1;
    }
    *p = b;
    *n = size;
    return 1;
}

static const char *archive_err_(struct archive *a) {
    const char *e = archive_error_string(a);
    return e ? e : "unknown archive error";
}

/* The current member failed. The cause is the outer decoder if it failed (the file's own
 * compression: the file ends there), else the member decoder: its own stream (the tar goes on
 * with the next member) or its input (the tar itself ends early: the file ends). Counts one
 * C4_TRUNCATED or C4_CORRUPT with the compressed byte offset, drops the partial line. */
static void member_failed_(C4Reader *r) {
    const Dec *d = r->odec.failed ? &r->odec : &r->mdec;
    int file_ends = r->odec.failed || r->mdec.input_failed || !r->is_tar;
    char where[64] = "";
    if (r->is_tar && d == &r->odec) snprintf(where, sizeof where, " (of the whole file)");
    if (d->err_kind == C4_CORRUPT)
        bad_record_(r, C4_CORRUPT, r->line_no + 1, "damaged%s after %ld complete lines: %s; "
                    "the records before it are kept", where, r->line_no, d->err_msg);
    else
        bad_record_(r, C4_TRUNCATED, r->line_no + 1, "ends early%s after %ld complete lines: %s",
                    where, r->line_no, d->err_msg);
    r->stats.files_damaged = 1;
    if (d == &r->odec) r->odec_reported = 1;
    r->in_member = 0;
    if (file_ends) r->done = 1;
}

/* Move to the next member with data. Sets r->done when there is none. Returns 0, or -1 if the
 * outer reader failed on a header (then errstr holds the reason). */
static int next_member_(C4Reader *r, const char **errstr) {
    r->in_member = 0;
    r->blk = NULL;
    r->blk_len = r->blk_pos = 0;
    r->buf_len = 0;
    r->skipping = 0;
    r->line_no = 0;
    dec_free_(&r->mdec);
    if (r->direct) r->done = 1;               /* one member, already read */
    while (!r->done) {
        struct archive_entry *e;
        int ret = archive_read_next_header(r->outer, &e);
        if (ret == ARCHIVE_EOF) { r->done = 1; break; }
        if (ret < ARCHIVE_WARN) {
            *errstr = archive_err_(r->outer);
            r->done = 1;
            return -1;
        }
        int fmt = archive_format(r->outer);
        free(r->member);
        if (fmt == ARCHIVE_FORMAT_RAW || fmt == ARCHIVE_FORMAT_EMPTY) {
            r->is_tar = 0;
            r->member = xstrdup(r->path);
            dec_init_(&r->mdec, member_in_, r, 0);    /* already decompressed by odec */
            r->in_member = 1;
            return 0;
        }
        r->is_tar = 1;
        const char *name = archive_entry_pathname(e);
        r->member = xstrdup(name ? name : "?");
        if (archive_entry_filetype(e) != AE_IFREG) continue;   /* directories, links */
        dec_init_(&r->mdec, member_in_, r, 1);
        r->in_member = 1;
        return 0;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Public API. */

/* Open a C4 file: .json, .json.gz, .json.zst (or another compression libarchive knows), or a
 * tar of those, itself optionally compressed. opts may be NULL; in opts, max_line_bytes 0 means
 * 8 MiB and report_first 0 means 3 (a negative report_first reports nothing).
 * Returns NULL if the OS cannot open the file (or it is a directory), with a message naming the
 * file and the OS error in err (if err is not NULL). Any byte stream is a recognised format
 * (plain JSON Lines at worst), so a file whose compressed stream is corrupt or cut right at its
 * start still opens: it reports one C4_TRUNCATED or C4_CORRUPT and delivers no documents. */
static long long seek_interval_ = 0;

long long c4_seek_interval_set(long long bytes) {
    long long old = seek_interval_;
    seek_interval_ = bytes;
    return old;
}

static C4Reader *reader_new_(const char *path, const C4ReaderOptions *opts, char *err,
                             size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "c4: cannot open '%s': %s (check the path and permissions)", path,
                 strerror(errno));
        return NULL;
    }
    struct stat st;
    int st_ok = fstat(fd, &st) == 0;
    if (!st_ok || S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "c4: cannot read '%s': %s", path,
                 st_ok ? "it is a directory, not a C4 file" : strerror(errno));
        close(fd);
        return NULL;
    }
    C4Reader *r = xcalloc(1, sizeof *r);
    r->path = xstrdup(path);
    r->fd = fd;
    r->rbuf = xmalloc(C4_READ_BLOCK);
    r->max_line = opts && opts->max_line_bytes ? opts->max_line_bytes : C4_DEFAULT_MAX_LINE;
    r->report_first = opts && opts->report_first ? opts->report_first : C4_DEFAULT_REPORT_FIRST;
    if (r->report_first < 0) r->report_first = 0;
    r->report = opts ? opts->report : NULL;
    r->odec.snap_every = seek_interval_ ? (seek_interval_ > 0 ? seek_interval_ : 0)
                                         : C4_SEEK_INTERVAL;
    return r;
}

C4Reader *c4_reader_open(const char *path, const C4ReaderOptions *opts, char *err, size_t errlen) {
    char dummy[8];
    if (!err) { err = dummy; errlen = sizeof dummy; }
    if (errlen) err[0] = '\0';
    C4Reader *r = reader_new_(path, opts, err, errlen);
    if (!r) return NULL;
    long long every = r->odec.snap_every;
    dec_init_(&r->odec, file_in_, r, 1);
    r->odec.snap_every = every;
    r->odec.snap_next = every;
    r->outer = archive_read_new();
    if (!r->outer) FATAL(NULL, "archive_read_new failed (out of memory?)");
    archive_read_support_format_tar(r->outer);
    archive_read_support_format_raw(r->outer);
    archive_read_support_format_empty(r->outer);
    const char *why = NULL;
    if (archive_read_open(r->outer, r, NULL, outer_read_, NULL) != ARCHIVE_OK) {
        why = archive_err_(r->outer);
        r->done = 1;
    } else {
        next_member_(r, &why);
    }
    if (r->odec.failed && (why || r->done)) {
        member_failed_(r);
    } else if (why) {
        bad_record_(r, C4_TRUNCATED, 0, "corrupt or truncated from the start: %s", why);
        r->stats.files_damaged = 1;
    }
    return r;
}

/* Append n bytes of a line that continues in the next block, or switch to skipping it once it
 * passes max_line (the buffer never holds more than max_line bytes). */
static void line_append_(C4Reader *r, const char *p, size_t n) {
    if (r->skipping) { r->skip_len += n; return; }
    if (r->buf_len + n > r->max_line) {
        r->skipping = 1;
        r->skip_len = r->buf_len + n;
        r->buf_len = 0;
        return;
    }
    if (r->buf_len + n > r->buf_cap) {
        size_t cap = r->buf_cap ? r->buf_cap : 4096;
        while (cap < r->buf_len + n) cap *= 2;
        if (cap > r->max_line) cap = r->max_line;
        r->buf = xrealloc(r->buf, cap);
        r->buf_cap = cap;
    }
    memcpy(r->buf + r->buf_len, p, n);
    r->buf_len += n;
}

/* A complete line has ended (its last piece is p[0..n)). Returns 1 for a good document. */
static int line_end_(C4Reader *r, const char *p, size_t n, C4Document *doc) {
    r->line_no++;
    if (!r->skipping && r->buf_len == 0) return process_line_(r, p, n, doc);
    line_append_(r, p, n);                    /* may switch to skipping: the last piece */
    if (r->skipping) {
        size_t total = r->skip_len;
        r->skipping = 0;
        r->skip_len = 0;
        r->stats.lines++;
        bad_record_(r, C4_TOO_LONG, r->line_no, "line of %zu bytes > max_line_bytes %zu", total,
                    r->max_line);
        return 0;
    }
    int good = process_line_(r, r->buf, r->buf_len, doc);
    r->buf_len = 0;
    if (r->buf_cap > C4_KEEP_BUFFER) {        /* the document never points into buf */
        free(r->buf);
        r->buf = NULL;
        r->buf_cap = 0;
    }
    return good;
}

/* ---------------------------------------------------------------------------------------------
 * Seek points: odec records candidates (restart state at an output offset X); the reader takes the
 * newest when it fetches a block, sums the CRC32 of the output from X on, and completes the point
 * at the first line end at or after X + C4_SEEK_CHECK_MIN. */

/* Add the current block's bytes in [pend_upto, upto) to pend_crc. */
static void seek_crc_block_(C4Reader *r, long long upto) {
    long long lo = r->pend_upto > r->blk_abs ? r->pend_upto : r->blk_abs;
    long long hi = upto < r->blk_abs + (long long)r->blk_len ? upto : r->blk_abs + (long long)r->blk_len;
    if (hi <= lo) return;
    r->pend_crc = (uint32_t)crc32(r->pend_crc, (const Bytef *)r->blk + (lo - r->blk_abs),
                                  (uInt)(hi - lo));
    r->pend_upto = hi;
}

/* odec has a new candidate: complete that one from now on (a raw member only: in a tar the
 * member's bytes are not odec's output). */
static void seek_adopt_(C4Reader *r) {
    r->pend_seq = r->odec.cand_seq;
    r->pend = 0;
    const C4SeekPoint *c = r->odec.cand;
    if (r->is_tar || !c || c->kind == C4_SEEK_NONE || c->out_off < r->blk_abs) return;
    r->pend = 1;
    r->pend_crc = 0;
    r->pend_upto = c->out_off;
}

/* A line ended at blk_pos: complete the pending point if it is far enough behind (odec's
 * candidate is still the pending one: candidates change only inside dec_read_, and every block
 * fetch adopts the newest). */
static void seek_line_end_(C4Reader *r) {
    const C4SeekPoint *c = r->odec.cand;
    long long pos = r->blk_abs + (long long)r->blk_pos;
    if (pos < c->out_off + C4_SEEK_CHECK_MIN) return;
    seek_crc_block_(r, pos);
    if (r->pend_upto != pos) { r->pend = 0; return; }   /* a gap: cannot happen */
    if (!r->fin) r->fin = xmalloc(sizeof *r->fin);
    memcpy(r->fin, c, offsetof(C4SeekPoint, window) + c->window_len);
    r->fin->skip = pos - c->out_off;
    r->fin->check = r->pend_crc;
    r->fin->line_no = r->line_no;
    r->fin->stats = r->stats;
    r->fin_new = 1;
    r->pend = 0;
}

int c4_reader_take_seek_point(C4Reader *r, C4SeekPoint *out) {
    if (!r->fin_new) return 0;
    memcpy(out, r->fin, offsetof(C4SeekPoint, window) + r->fin->window_len);
    if (r->fin->window_len < C4_SEEK_WINDOW)
        memset(out->window + r->fin->window_len, 0, C4_SEEK_WINDOW - r->fin->window_len);
    r->fin_new = 0;
    return 1;
}

/* See c4_reader.h. The decoder is set up in the state odec had at sp->out_off (raw deflate with
 * the window and the pending bits for gzip, a fresh frame for zstd, the file offset for plain),
 * its output goes straight to the line splitter (one raw member), and the sp->skip bytes up to
 * the line end are read, compared with sp->check and dropped. */
C4Reader *c4_reader_open_at(const char *path, const C4ReaderOptions *opts, const C4SeekPoint *sp,
                            char *err, size_t errlen) {
    char dummy[8];
    if (!err) { err = dummy; errlen = sizeof dummy; }
    if (errlen) err[0] = '\0';
    if (!sp || sp->kind < C4_SEEK_GZIP || sp->kind > C4_SEEK_PLAIN || sp->in_off < 0 ||
        sp->out_off < 0 || sp->skip < C4_SEEK_CHECK_MIN || sp->bits < 0 || sp->bits > 7 ||
        sp->window_len > C4_SEEK_WINDOW || (sp->bits && sp->in_off == 0) || sp->line_no < 0) {
        snprintf(err, errlen, "c4: '%s': invalid seek point", path);
        return NULL;
    }
    C4Reader *r = reader_new_(path, opts, err, errlen);
    if (!r) return NULL;
    char why[400] = "";
    struct stat st;
    memset(&st, 0, sizeof st);
    Dec *d = &r->odec;
    long long every = d->snap_every;
    dec_init_(d, file_in_, r, 0);
    d->snap_every = every;
    d->snap_next = sp->out_off + every;
    d->started = 1;
    d->out_total = sp->out_off;
    d->in_off = sp->in_off;
    d->z_member = sp->member;
    if (fstat(r->fd, &st) != 0 || st.st_size < sp->in_off) {
        snprintf(why, sizeof why, "the file has only %lld bytes", (long long)st.st_size);
        goto fail;
    }
    if (sp->kind == C4_SEEK_GZIP) {
        d->kind = DEC_GZIP;
        if (inflateInit2(&d->z, -15) != Z_OK) FATAL(NULL, "inflateInit2 failed (out of memory?)");
        d->z_init = 1;
        d->out_cap = DEC_OUT_BLOCK;
        if (sp->bits) {
            unsigned char byte;
            if (pread(r->fd, &byte, 1, sp->in_off - 1) != 1) {
                snprintf(why, sizeof why, "cannot read byte %lld: %s", sp->in_off - 1,
                         strerror(errno));
                goto fail;
            }
            inflatePrime(&d->z, sp->bits, byte >> (8 - sp->bits));
        }
        if (sp->window_len &&
            inflateSetDictionary(&d->z, sp->window, (uInt)sp->window_len) != Z_OK) {
            snprintf(why, sizeof why, "zlib refuses the window");
            goto fail;
        }
        d->z_raw = 1;
        d->z_crc = sp->crc;
        d->z_len = sp->member_len;
    } else if (sp->kind == C4_SEEK_ZSTD) {
        d->kind = DEC_ZSTD;
        zstd_dec_start_(d);
    } else {
        d->kind = DEC_PLAIN;
    }
    if (d->out_cap) d->out = xmalloc(d->out_cap);
    if (lseek(r->fd, sp->in_off, SEEK_SET) != sp->in_off) {
        snprintf(why, sizeof why, "cannot seek: %s", strerror(errno));
        goto fail;
    }
    r->file_off = sp->in_off;
    r->direct = 1;
    r->member = xstrdup(path);
    dec_init_(&r->mdec, member_in_, r, 0);
    r->in_member = 1;
    r->stats = sp->stats;
    r->stats.input_bytes = sp->out_off;
    r->line_no = sp->line_no;
    long long need = sp->skip;
    uint32_t crc = 0;
    while (need > 0) {
        const char *b;
        size_t size = 0;
        if (dec_read_(&r->mdec, &b, &size) != 1) {
            if (d->failed) snprintf(why, sizeof why, "%s", d->err_msg);
            else snprintf(why, sizeof why, "the data ends %lld bytes before the seek point's "
                          "line end", need);
            goto fail;
        }
        size_t take = (long long)size < need ? size : (size_t)need;
        crc = (uint32_t)crc32(crc, (const Bytef *)b, (uInt)take);
        need -= (long long)take;
        r->blk = b;
        r->blk_len = size;
        r->blk_pos = take;
        r->blk_abs = r->stats.input_bytes;
        r->stats.input_bytes += (long long)size;
    }
    if (crc != sp->check) {
        snprintf(why, sizeof why, "its %lld bytes there differ from those the seek point was "
                 "taken on (CRC32 %08x, expected %08x): the file changed", sp->skip, crc,
                 sp->check);
        goto fail;
    }
    r->pend_seq = d->cand_seq;
    r->fin = xmalloc(sizeof *r->fin);
    *r->fin = *sp;
    return r;
fail:
    snprintf(err, errlen, "c4: cannot resume '%s' at compressed byte %lld (uncompressed byte "
             "%lld, member %ld, line %ld): %s", path, sp->in_off, sp->out_off, sp->member,
             sp->line_no, why);
    c4_reader_close(r);
    return NULL;
}

/* Deliver the next good document. Returns 1 with *doc filled (its strings valid until the next
 * call or c4_reader_close), 0 at the end of the file, including after a truncated stream (counted
 * as C4_TRUNCATED). Never fails otherwise: bad records are counted, reported and skipped. */
int c4_reader_next(C4Reader *r, C4Document *doc) {
    if (r->doc) { json_decref(r->doc); r->doc = NULL; }
    if (r->dec_cap > C4_KEEP_BUFFER) {         /* the last document's strings are no longer used */
        free(r->dec);
        r->dec = NULL;
        r->dec_cap = 0;
    }
    for (;;) {
        if (!r->in_member) {
            if (r->done) {
                if (r->odec.failed && !r->odec_reported) {   /* failed between members */
                    const char *prev = r->member ? r->member : "";
                    bad_record_(r, r->odec.err_kind, 0, "%s after member '%s': %s",
                                r->odec.err_kind == C4_CORRUPT ? "damaged" : "ends early", prev,
                                r->odec.err_msg);
                    r->odec_reported = 1;
                    r->stats.files_damaged = 1;
                }
                return 0;
            }
            const char *why = NULL;
            char *prev = r->member ? xstrdup(r->member) : NULL;
            if (next_member_(r, &why) != 0 && !r->odec.failed) {
                bad_record_(r, C4_TRUNCATED, 0, "archive is corrupt or ends early after member "
                            "'%s': %s", prev ? prev : "", why);
                r->stats.files_damaged = 1;
            }
            if (r->done && r->odec.failed && !r->odec_reported) {
                free(r->member);
                r->member = prev;
                prev = NULL;
            }
            free(prev);
            continue;
        }
        if (r->blk_pos < r->blk_len) {
            const char *start = r->blk + r->blk_pos;
            size_t avail = r->blk_len - r->blk_pos;
            const char *nl = memchr(start, '\n', avail);
            if (!nl) {
                line_append_(r, start, avail);
                r->blk_pos = r->blk_len;
                continue;
            }
            size_t n = (size_t)(nl - start);
            r->blk_pos += n + 1;
            int good = line_end_(r, start, n, doc);
            if (r->pend) seek_line_end_(r);
            if (good) return 1;
            continue;
        }
        if (r->pend) seek_crc_block_(r, r->blk_abs + (long long)r->blk_len);
        const char *b;
        size_t size = 0;
        int ret = dec_read_(&r->mdec, &b, &size);
        if (ret == 1) {
            r->blk = b;
            r->blk_len = size;
            r->blk_pos = 0;
            r->blk_abs = r->stats.input_bytes;
            r->stats.input_bytes += (long long)size;
            if (r->odec.cand_seq != r->pend_seq) seek_adopt_(r);
            continue;
        }
        if (ret == 0 && !(r->odec.failed && !r->is_tar)) {
            r->in_member = 0;
            if (r->buf_len > 0 || r->skipping) {   /* a last line without '\n' */
                if (line_end_(r, "", 0, doc)) return 1;
            }
            continue;
        }
        member_failed_(r);
    }
}

const C4Stats *c4_reader_stats(const C4Reader *r) { return &r->stats; }

/* Bytes held by the line buffers (not libarchive's own fixed-size buffers). */
size_t c4_reader_buffered_bytes(const C4Reader *r) { return r->buf_cap + r->dec_cap; }

void c4_stats_add(C4Stats *into, const C4Stats *from) {
    into->documents += from->documents;
    into->lines += from->lines;
    into->text_bytes += from->text_bytes;
    into->input_bytes += from->input_bytes;
    for (int k = 0; k < C4_NUM_BAD_KINDS; k++) into->bad[k] += from->bad[k];
    into->files_damaged += from->files_damaged;
}

/* One line: "documents=N lines=N text_bytes=N input_bytes=N bad: json=N utf8=N ...". */
void c4_stats_print(const C4Stats *s, FILE *out) {
    fprintf(out, "documents=%ld lines=%ld text_bytes=%lld input_bytes=%lld bad:", s->documents,
            s->lines, s->text_bytes, s->input_bytes);
    for (int k = 0; k < C4_NUM_BAD_KINDS; k++)
        fprintf(out, " %s=%ld", c4_bad_kind_name((C4BadKind)k), s->bad[k]);
    fputc('\n', out);
}

/* Free everything, including the strings of the last delivered document. NULL is a no-op. */
void c4_reader_close(C4Reader *r) {
    if (!r) return;
    if (r->doc) json_decref(r->doc);
    dec_free_(&r->mdec);
    if (r->outer) archive_read_free(r->outer);
    dec_free_(&r->odec);
    free(r->rbuf);
    if (r->fd >= 0) close(r->fd);
    free(r->buf);
    free(r->dec);
    free(r->member);
    free(r->fin);
    free(r->path);
    free(r);
}
