/*
 * data/c4_reader.c: stream documents out of C4 files. See c4_reader.h.
 *
 * Layers, outermost first:
 *   file      opened by us (so a missing file gives the OS error), handed to libarchive as an fd
 *   outer     libarchive with every compression filter and the formats tar, raw and empty: a
 *             plain .json/.json.gz/.json.zst is one "raw" member, a (compressed) tar yields its
 *             members in order
 *   inner     for a tar member only: a second libarchive reader (filters + raw) whose input
 *             callback pulls the member's bytes from the outer reader, so .json.gz members of a
 *             tar are decompressed too (a plain .json member goes through the "none" filter)
 *   lines     split on '\n' straight out of libarchive's blocks; only a line that straddles two
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
 * A compressed stream or tar that ends early or is corrupt counts one C4_TRUNCATED; the good
 * lines before it are delivered, the partial line it cuts is not.
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
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define C4_DEFAULT_MAX_LINE ((size_t)8 << 20)
#define C4_DEFAULT_REPORT_FIRST 3
#define C4_READ_BLOCK ((size_t)1 << 16)   /* bytes per read() of the compressed file */
/* Line buffers that grew past this for one long line are released after it, so a reader holds
 * at most this much between calls however long the longest line of the file was (a loader keeps
 * one reader open per stream, up to the global batch size per rank). */
#define C4_KEEP_BUFFER ((size_t)1 << 18)

struct C4Reader {
    char *path;
    size_t max_line;
    int report_first;
    FILE *report;

    int fd;
    struct archive *outer;
    struct archive *inner;      /* tar member reader, NULL for a raw file */
    struct archive *cur;        /* where the current member's bytes come from */
    int is_tar;
    int in_member;              /* a member is open and has data left */
    int done;                   /* no more members (end of file, or the container failed) */
    int outer_failed;           /* the outer reader returned an error inside the inner callback */
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
};

const char *c4_bad_kind_name(C4BadKind k) {
    static const char *names[C4_NUM_BAD_KINDS] = {
        "json", "utf8", "no_text", "empty_text", "too_long", "escape", "truncated"
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

/* Input callback of the inner (tar member) reader: the member's bytes from the outer reader. */
static la_ssize_t inner_read_(struct archive *a, void *ud, const void **buf) {
    C4Reader *r = ud;
    size_t size = 0;
    la_int64_t off;
    int ret = archive_read_data_block(r->outer, buf, &size, &off);
    if (ret == ARCHIVE_EOF) return 0;
    if (ret != ARCHIVE_OK) {
        r->outer_failed = 1;
        const char *e = archive_error_string(r->outer);
        archive_set_error(a, EIO, "%s", e ? e : "tar read error");
        return -1;
    }
    return (la_ssize_t)size;
}

static const char *archive_err_(struct archive *a) {
    const char *e = archive_error_string(a);
    return e ? e : "unknown archive error";
}

/* The current member failed (its stream or the container ended early or is corrupt): count one
 * C4_TRUNCATED, drop the partial line, and stop the file unless only a tar member's own
 * compressed stream failed. */
static void member_failed_(C4Reader *r, struct archive *from) {
    long kept = r->line_no;
    bad_record_(r, C4_TRUNCATED, r->line_no + 1,
                "stream ends early or is corrupt after %ld complete lines: %s", kept,
                archive_err_(r->outer_failed ? r->outer : from));
    r->in_member = 0;
    if (!r->is_tar || r->outer_failed) r->done = 1;
}

static void close_inner_(C4Reader *r) {
    if (r->inner) {
        archive_read_free(r->inner);
        r->inner = NULL;
    }
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
    close_inner_(r);
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
            r->cur = r->outer;
            r->in_member = 1;
            return 0;
        }
        r->is_tar = 1;
        const char *name = archive_entry_pathname(e);
        r->member = xstrdup(name ? name : "?");
        if (archive_entry_filetype(e) != AE_IFREG) continue;   /* directories, links */
        r->inner = archive_read_new();
        if (!r->inner) FATAL(NULL, "archive_read_new failed (out of memory?)");
        archive_read_support_filter_all(r->inner);
        archive_read_support_format_raw(r->inner);
        archive_read_support_format_empty(r->inner);
        r->outer_failed = 0;
        struct archive_entry *ie;
        if (archive_read_open(r->inner, r, NULL, inner_read_, NULL) != ARCHIVE_OK ||
            (ret = archive_read_next_header(r->inner, &ie)) < ARCHIVE_WARN) {
            member_failed_(r, r->inner);
            close_inner_(r);
            continue;
        }
        if (ret == ARCHIVE_EOF) { close_inner_(r); continue; }   /* empty member */
        r->cur = r->inner;
        r->in_member = 1;
        return 0;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Public API. */

/* Open a C4 file: .json, .json.gz, .json.zst (any compression libarchive knows), or a tar of
 * those, itself optionally compressed. opts may be NULL; in opts, max_line_bytes 0 means 8 MiB
 * and report_first 0 means 3 (a negative report_first reports nothing).
 * Returns NULL if the OS cannot open the file (or it is a directory), with a message naming the
 * file and the OS error in err (if err is not NULL). Any byte stream is a recognised format
 * (libarchive "raw"), so a file whose compressed stream is corrupt or cut right at its start
 * still opens: it reports and counts one C4_TRUNCATED and delivers no documents. */
C4Reader *c4_reader_open(const char *path, const C4ReaderOptions *opts, char *err, size_t errlen) {
    char dummy[8];
    if (!err) { err = dummy; errlen = sizeof dummy; }
    if (errlen) err[0] = '\0';
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
    r->max_line = opts && opts->max_line_bytes ? opts->max_line_bytes : C4_DEFAULT_MAX_LINE;
    r->report_first = opts && opts->report_first ? opts->report_first : C4_DEFAULT_REPORT_FIRST;
    if (r->report_first < 0) r->report_first = 0;
    r->report = opts ? opts->report : NULL;
    r->outer = archive_read_new();
    if (!r->outer) FATAL(NULL, "archive_read_new failed (out of memory?)");
    archive_read_support_filter_all(r->outer);
    archive_read_support_format_tar(r->outer);
    archive_read_support_format_raw(r->outer);
    archive_read_support_format_empty(r->outer);
    const char *why = NULL;
    if (archive_read_open_fd(r->outer, fd, C4_READ_BLOCK) != ARCHIVE_OK) {
        why = archive_err_(r->outer);
        r->done = 1;
    } else {
        next_member_(r, &why);
    }
    if (why)
        bad_record_(r, C4_TRUNCATED, 0, "corrupt or truncated from the start: %s", why);
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
            if (r->done) return 0;
            const char *why = NULL;
            char *prev = r->member ? xstrdup(r->member) : NULL;
            if (next_member_(r, &why) != 0)
                bad_record_(r, C4_TRUNCATED, 0, "archive is corrupt or ends early after member "
                            "'%s': %s", prev ? prev : "", why);
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
            if (line_end_(r, start, n, doc)) return 1;
            continue;
        }
        const void *b;
        size_t size = 0;
        la_int64_t off;
        int ret = archive_read_data_block(r->cur, &b, &size, &off);
        if (ret == ARCHIVE_OK) {
            r->blk = b;
            r->blk_len = size;
            r->blk_pos = 0;
            r->stats.input_bytes += (long long)size;
            continue;
        }
        if (ret == ARCHIVE_EOF) {
            r->in_member = 0;
            if (r->buf_len > 0 || r->skipping) {   /* a last line without '\n' */
                if (line_end_(r, "", 0, doc)) return 1;
            }
            continue;
        }
        member_failed_(r, r->cur);
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
    close_inner_(r);
    if (r->outer) archive_read_free(r->outer);
    if (r->fd >= 0) close(r->fd);
    free(r->buf);
    free(r->dec);
    free(r->member);
    free(r->path);
    free(r);
}
