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
 *
 * Seek points (resuming deep in a file without decoding it from its start, zran-style). While it
 * reads a plain (not tar) .json.gz, .json.zst or .json file, a reader records a C4SeekPoint
 * about every C4_SEEK_INTERVAL bytes (1 MiB) of decompressed output:
 *   gzip   at the first deflate block boundary after the interval: the compressed byte offset and
 *          the bits of the byte before it still unread, the last 32 KiB of the member's output
 *          (the window), the member's running CRC32 and length (so its trailer is still checked),
 *          the member number; decoding restarts there as raw deflate (inflatePrime for the bits,
 *          inflateSetDictionary for the window) and the following members decode normally.
 *   zstd   at the first frame start after the interval: decoding restarts at that frame. A file
 *          of a single frame (what `zstd FILE` writes) has no seek point after its start, so it is
 *          still decoded from its beginning; files written with several frames (zstd --long
 *          does not do this; e.g. `pzstd`, `zstd --block-size` or concatenated frames) seek.
 *   plain  at the start of a 64 KiB read: the uncompressed byte offset is the file offset.
 * Then, at the first line that ends at least C4_SEEK_CHECK_MIN bytes later, the point is
 * completed with the byte count from the restart offset to that line's end (skip), the CRC32 of
 * those bytes (check), the member's line number and the reader's statistics there.
 * c4_reader_open_at decodes from the restart offset, drops `skip` bytes after comparing their
 * CRC32 with `check` (so a file changed since the point was taken is refused, with the file and
 * the compressed offset, rather than read wrongly) and continues exactly like a reader that read
 * the file from its start: same documents, line numbers, statistics (input_bytes included, once
 * the dropped bytes are read) and damage reports (bad records before the point are counted in
 * the statistics but not reported again).
 */
#ifndef C4_READER_H
#define C4_READER_H

#include <stddef.h>
#include <stdint.h>
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

/* Readers opened afterwards record a seek point every `bytes` decompressed bytes (0: the default
 * C4_SEEK_INTERVAL; negative: none). Process-wide, for measurements and tests: call it before
 * opening readers, not while other threads open them. Returns the previous setting. */
long long c4_seek_interval_set(long long bytes);

#define C4_SEEK_INTERVAL ((long long)1 << 20)
#define C4_SEEK_WINDOW 32768        /* deflate's window: the dictionary a restart needs */
#define C4_SEEK_CHECK_MIN 64        /* bytes at least covered by a seek point's check */

typedef enum { C4_SEEK_NONE = 0, C4_SEEK_GZIP, C4_SEEK_ZSTD, C4_SEEK_PLAIN } C4SeekKind;

/* A point where a reader can restart (see "Seek points" above). Plain data: the loader stores it
 * in its cursor (data/loader.h documents the JSON). */
typedef struct {
    int kind;                   /* C4SeekKind */
    long long in_off;           /* compressed byte where decoding restarts */
    int bits;                   /* gzip: bits of byte in_off - 1 not yet decoded (0..7) */
    uint32_t crc;               /* gzip: CRC32 of the member's output before out_off */
    unsigned long long member_len; /* gzip: bytes of the member's output before out_off */
    long member;                /* 0-based gzip member or zstd frame holding out_off */
    long long out_off;          /* uncompressed offset of the restart in the whole stream */
    long long skip;             /* bytes from out_off to the end of the line where the point is */
    uint32_t check;             /* CRC32 of those bytes */
    long line_no;               /* line number (within the member) of that line */
    C4Stats stats;              /* the reader's statistics right after that line (input_bytes:
                                   decompressed bytes read, a whole 64 KiB block or more) */
    size_t window_len;          /* gzip: min(32 KiB, member_len) */
    unsigned char window[C4_SEEK_WINDOW]; /* gzip: the last window_len bytes before out_off */
} C4SeekPoint;

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

/* Open path and continue from seek point sp (taken by a reader of the same file with the same
 * max_line_bytes): the reader is then in the state of a reader that read the file from its start
 * up to the end of the line sp was completed at (its statistics are sp's; bad records before it
 * are not reported again). Returns NULL with a message naming the file and the compressed byte
 * offset if the file cannot be opened, is shorter, does not decode from there, or its bytes
 * there differ from sp->check (the file changed since sp was taken): the caller may then read
 * the file from its start instead. */
C4Reader *c4_reader_open_at(const char *path, const C4ReaderOptions *opts, const C4SeekPoint *sp,
                            char *err, size_t errlen);

/* If the reader completed a seek point since the last call (or since it was opened), copy it to
 * *out and return 1; else 0. The point describes a position at or before the last document
 * delivered (sp->stats.documents <= documents delivered). */
int c4_reader_take_seek_point(C4Reader *r, C4SeekPoint *out);

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
 * libarchive's tar/raw buffers come on top, and for a file with seek points two of them, 33 KiB
 * each: the candidate being completed and the last completed one). */
size_t c4_reader_buffered_bytes(const C4Reader *r);
void c4_stats_add(C4Stats *into, const C4Stats *from);
/* One-line summary "documents=... bad: json=... utf8=..." to out. */
void c4_stats_print(const C4Stats *s, FILE *out);

void c4_reader_close(C4Reader *r);

#endif
