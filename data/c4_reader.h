/*
 * data/c4_reader.h: stream documents out of C4 files.
 *
 * Accepts the files users download (c4-train.00000-of-01024.json.gz), the same JSON Lines as
 * .json.zst, plain .json, or a .tar (optionally compressed) holding such files. gzip and zstd are
 * decoded here (zlib, libzstd: exact about damage, checksums checked), tar and any other
 * compression by libarchive; everything streams, so memory stays bounded whatever the file size.
 *
 * Each line is one JSON object; its string field "text" is the document ("url" and "timestamp"
 * are kept for reports). Bad records are skipped deterministically and counted by reason; the
 * first few of each reason are reported with file and line. Good documents before and after a bad
 * one are always delivered.
 *
 * Damaged files. A compressed stream that ends early (C4_TRUNCATED) or whose data is corrupt or
 * fails its check (C4_CORRUPT: gzip CRC32 or ISIZE trailer, deflate data, zstd block or content
 * checksum) is reported once with the file, the member and the compressed byte offset. Every
 * record whose line ended before that point is delivered (for gzip and zstd exactly the complete
 * lines a streaming decompression of the good part yields; other libarchive compressions may lose
 * their last block); the cut line is not. Concatenated gzip members are one valid stream.
 */
#ifndef C4_READER_H
#define C4_READER_H

#include <stddef.h>
#include <stdio.h>

typedef enum {
    C4_BAD_JSON = 0,       /* line is not a JSON object */
    C4_BAD_UTF8,           /* invalid UTF-8 in the line */
    C4_NO_TEXT,            /* "text" missing or not a string */
    C4_EMPTY_TEXT,         /* "text" is empty */
    C4_TOO_LONG,           /* line longer than max_line_bytes */
    C4_BAD_ESCAPE,         /* \u0000 or an unpaired surrogate escape in "text" */
    C4_TRUNCATED,          /* compressed stream or archive ends early */
    C4_CORRUPT,            /* compressed data corrupt or failing its check (gzip CRC32/ISIZE,
                              zstd content checksum), or bytes after the end of a gzip stream */
    C4_NUM_BAD_KINDS
} C4BadKind;

const char *c4_bad_kind_name(C4BadKind k);

typedef struct {
    long documents;             /* good documents delivered */
    long lines;                 /* lines read (good + bad) */
    long long text_bytes;       /* bytes of delivered text */
    long long input_bytes;      /* decompressed bytes read */
    long bad[C4_NUM_BAD_KINDS];
    long files_damaged;         /* files with a C4_TRUNCATED or C4_CORRUPT (0 or 1 per reader) */
} C4Stats;

typedef struct {
    size_t max_line_bytes;      /* lines longer than this are C4_TOO_LONG; 0 = default 8 MiB */
    int report_first;           /* report the first N bad records of each kind; default 3
                                   (0 also means 3; a negative value reports none) */
    FILE *report;               /* where reports go; NULL = stderr */
} C4ReaderOptions;

typedef struct {
    const char *text;           /* UTF-8, NUL-terminated, valid until the next call */
    size_t text_len;
    const char *url;            /* "" if absent */
    const char *timestamp;      /* "" if absent */
    long line;                  /* 1-based line number within the member */
    const char *member;         /* archive member name, or the file name */
} C4Document;

typedef struct C4Reader C4Reader;

/* Open path (opts may be NULL for defaults). Returns NULL if the file cannot be opened or is a
 * directory, with a message naming the file in err. (Any byte stream is recognised, plain JSON
 * Lines at worst, so a file damaged from its very start opens, counts one C4_TRUNCATED or
 * C4_CORRUPT and delivers nothing.) */
C4Reader *c4_reader_open(const char *path, const C4ReaderOptions *opts, char *err, size_t errlen);

/* Deliver the next good document into *doc. Returns 1 if one was delivered, 0 at the end of the
 * file (including an early end of a truncated stream, which is counted as C4_TRUNCATED).
 * Never fails otherwise: bad records (and damage, C4_TRUNCATED / C4_CORRUPT) are counted and
 * skipped. */
int c4_reader_next(C4Reader *r, C4Document *doc);

/* Statistics so far. */
const C4Stats *c4_reader_stats(const C4Reader *r);
/* Bytes the reader's own line buffers hold between calls: at most 512 KiB plus the current
 * document, however long earlier lines were (the decoders' fixed buffers, 64 KiB read + 64 KiB
 * output + zlib's ~45 KiB for gzip, 128 KiB output + the stream's window for zstd, and
 * libarchive's tar/raw buffers come on top). */
size_t c4_reader_buffered_bytes(const C4Reader *r);
void c4_stats_add(C4Stats *into, const C4Stats *from);
/* One-line summary "documents=... bad: json=... utf8=..." to out. */
void c4_stats_print(const C4Stats *s, FILE *out);

void c4_reader_close(C4Reader *r);

#endif
