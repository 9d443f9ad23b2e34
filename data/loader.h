/*
 * data/loader.h: deterministic, resumable span-corruption example streams and batches.
 *
 * Order contract. A run has K canonical streams (K = n_streams, default the global batch B;
 * K must divide B). Global row r = g*B + j of batch g (steps from 0) is row r / K of stream
 * r mod K, so row j of every batch comes from stream j mod K. Everything below is a pure function
 * of (sorted file list, seed, K, B, enc_len, dec_len) and the global row index, never of the
 * number of ranks: rank `rank` of `world` builds rows [rank*B/world, (rank+1)*B/world) and
 * opens only the files of the streams those rows use.
 *
 * Files of a stream (F files, sorted by path):
 *   F >= K: stream k reads files i with i mod K == k, all their documents.
 *   F <  K: stream k reads file f = k mod F and only its documents d (0-based count of the good
 *           documents the reader delivers) with d mod m == k / F, where m = number of streams
 *           sharing file f = (K - 1 - f) / F + 1. Every stream then differs; each of them still
 *           reads and parses the whole file (only its share is tokenized).
 * Epochs: epoch 0 reads the stream's files in sorted order with the run seed. When a stream has
 * read all its files it starts epoch e+1 with seed_e = rng_mix64(seed ^ rng_mix64(e)) (seed_0 =
 * seed) and its files in a random order drawn from Rng(seed_e, stream). With max_epochs > 0 a
 * stream stops after that many epochs; data_loader_next then returns 1 once a batch can no
 * longer be completed (the partial batch is dropped). Ranks hold different streams, so under MPI
 * the trainer must agree on exhaustion (e.g. MPI_Allreduce MAX of the status).
 *
 * Per stream (docs/t5-recipe.md section 4.2-4.8): tokenize, drop empty documents, select_random_chunk(65536)
 * with Rng(seed_e, hash(file index, document index)), strip zeros, concatenate 128 documents
 * without separators, cut into pieces of T = random_spans_helper(enc_len) tokens (568 for 512;
 * the last piece of a 128-document group and of an epoch keeps the remainder), corrupt piece
 * number x of stream k with Rng(seed, hash(k, x)), pack greedily into rows (a new row starts
 * when either feature would overflow). There is no example shuffle buffer (seqio's 1000-example
 * shuffle is not reproduced): examples follow document order within a stream.
 *
 * Cursor format (data_loader_cursor_save): one JSON object
 *   {"format":"t5data-cursor","version":2,"seed":"<hex>","n_streams":K,"global_batch":B,
 *    "enc_len":512,"dec_len":128,"n_files":F,"files_hash":"<hex FNV-1a of the basenames>",
 *    "batches":g,
 *    "streams":[{"k":k,"epoch":e,"slot":i,"doc":d,"group_docs":n,"epoch_docs":n,"examples":x,
 *                "rows":r,"exhausted":0,"carry":[ids...],"pending":[ids...],"has_pending":0,
 *                "pending_index":x, "seek":{...}}, ...]}
 * "slot" indexes the epoch's file order, "doc" counts documents already read from that file,
 * "carry" holds the tokens of the current 128-document group not yet cut into pieces,
 * "pending" the raw piece that did not fit the last row (example number "pending_index").
 * "seek" (version 2, absent before the stream's reader took its first seek point in the file, or
 * for a tar or a compression other than gzip/zstd) is that reader's latest seek point
 * (c4_reader.h "Seek points") at or before document "doc":
 *   {"kind":"gzip"|"zstd"|"plain","in":B,"bits":b,"crc":c,"mlen":n,"member":m,"out":U,
 *    "skip":s,"check":c,"line":l,"docs":D,"lines":n,"text_bytes":n,"bad":[8 counts],
 *    "wlen":w,"wcrc":c,"window":"<base64 of the zlib-compressed (level 9) window>"}
 * in/bits: compressed byte offset and unread bits of the byte before it; crc/mlen: the gzip
 * member's CRC32 and length so far; member: gzip member / zstd frame number; out: uncompressed
 * offset of the restart; skip/check: bytes from there to the next line end and their CRC32;
 * line: that line's number; docs/lines/text_bytes/bad: the reader's counts there ("doc" - "docs"
 * documents are parsed after the restart); wlen/wcrc/window (gzip only): the 32 KiB dictionary
 * and its CRC32. About 15.5 KB of JSON per stream for C4 text (the window is ~11.5 KB after zlib).
 * A cursor holds the streams of one rank; data_cursor_merge joins the cursors of all ranks so a
 * run can resume with a different world size (all cursors merged must have the same version).
 * Restoring reads and parses only (no tokenization) the documents of the current file after its
 * seek point, or, without one, from the start of the file: version 1 cursors (still accepted),
 * and seek points that do not fit the file (it changed since the cursor was saved: checked with
 * the CRC32 of the bytes up to the next line end); that fallback is said on stderr, naming the
 * file and the compressed offset. Either way the statistics (skipped_on_restore counts every
 * document of the file before "doc", input_bytes, bad records) are those of reading the file from
 * its start; bad records before the seek point are not reported again.
 */
#ifndef DATA_LOADER_H
#define DATA_LOADER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../pretrain/t5_batch.h"
#include "c4_reader.h"

#define DATA_LOADER_DEFAULT_PREFETCH 2

typedef struct {
    const char **files;     /* sorted (data_expand_globs) list of C4 files */
    int n_files;
    const char *spm_model;  /* SentencePiece model path */
    uint64_t seed;
    int global_batch;       /* B */
    int n_streams;          /* K; 0 = B. Must divide B. */
    int rank, world;        /* data-parallel position; world 0 = 1 */
    int enc_len, dec_len;   /* 0 = 512 / 128 */
    int prefetch;           /* batches queued by the prefetch thread; 0 = synchronous */
    int max_epochs;         /* 0 = unlimited */
    size_t max_line_bytes;  /* 0 = reader default */
} DataLoaderConfig;

typedef struct DataLoader DataLoader;

/* Defaults: B 128, K 0 (=B), world 1, rank 0, 512/128, prefetch 2, unlimited epochs. */
void data_loader_config_default(DataLoaderConfig *cfg);

/* Expand comma-separated globs or paths into a sorted, de-duplicated, malloc'ed list (free
 * with data_free_files). Returns 0, or -1 with a message naming the pattern that matched
 * nothing (nothing allocated). */
int data_expand_globs(const char *globs, char ***files, int *n_files, char *err, size_t errlen);
void data_free_files(char **files, int n_files);

/* Check, before any work, that each of the n files holds at least one valid record (a good C4
 * document, as c4_reader delivers it; max_line_bytes as in DataLoaderConfig, 0 = default). Each
 * file is read only up to its first good document, so this is cheap on real shards; a file with
 * none is read to its end, or for at most 100000 records / 256 MiB decompressed. Nothing is
 * printed. Returns 0 when every file is fine, else the number of files that are not, with err
 * (truncated to errlen) naming every one of them and why, then a HINT:
 *   "these data files hold no valid C4 record:\n  FILE: empty (no non-blank line after decompression)
 *    \n  FILE: not C4 JSON Lines: 42 lines, 42 bad records, none ... (first: <report>)
 *    \n  FILE: damaged before its first record: <report with the compressed byte offset>
 *    \n  FILE: c4: cannot open ...\n(3 of 7 files) HINT: ..."
 * A file damaged after its first record passes (the reader keeps its good records and reports
 * the damage when training reaches it). The trainer calls this in --dry-run and before step 0. */
int data_files_check(const char *const *files, int n, size_t max_line_bytes, char *err,
                     size_t errlen);

/* How many of the files a[0..na) are also among b[0..nb) (same device and inode, so another
 * spelling of a path matches too); their names, comma-separated, in msg (truncated to msglen;
 * msg may be NULL). Files that cannot be stat()ed are not counted. For the trainer's warning
 * "training files that are also validation files". */
int data_files_overlap(const char *const *a, int na, const char *const *b, int nb, char *msg,
                       size_t msglen);

/* Validate the configuration, open the tokenizer and check the files are readable. Files are
 * opened lazily by the streams. NULL with a message in err on any error (nothing leaks). */
DataLoader *data_loader_open(const DataLoaderConfig *cfg, char *err, size_t errlen);

int data_loader_vocab_size(const DataLoader *dl);   /* model vocab rows (rounded to 128) */
int data_loader_sentinel_top(const DataLoader *dl); /* id of <extra_id_0> = P + 99 */
int data_loader_rows(const DataLoader *dl);         /* local rows = B / world */
long data_loader_batches(const DataLoader *dl);     /* batches returned so far (next step) */
int data_loader_piece_len(const DataLoader *dl);    /* raw piece length T (568 for 512) */

/* Fill out (preallocated by the caller with t5_batch_alloc(out, B/world, enc_len, dec_len))
 * with this rank's rows of the next global batch. *wait_seconds (may be NULL) gets how long the
 * call waited for the prefetch thread (or the production time when synchronous).
 * Returns 0 ok, 1 exhausted (max_epochs reached; out is unchanged), -1 error (message in
 * data_loader_error and on stderr; further calls keep returning -1). */
int data_loader_next(DataLoader *dl, T5Batch *out, double *wait_seconds);

/* Generate and discard n batches (dump-batch --step). Same return values as next. */
int data_loader_skip(DataLoader *dl, long n);

/* The last error message ("" if none). */
const char *data_loader_error(const DataLoader *dl);

/* Serialise the position AFTER the last batch returned by data_loader_next. Malloc'ed text
 * (not NUL-counted in *len, but NUL-terminated); caller frees. */
char *data_loader_cursor_save(DataLoader *dl, size_t *len);

/* The cursor of the batch boundary BEFORE the last batch returned by data_loader_next: byte for
 * byte what data_loader_cursor_save returned just before that call (so "batches" is one less).
 * Cheap to keep: the loader swaps its saved-position copies, nothing is serialised until this
 * is called (the trainer calls it only to checkpoint a step that failed after its batch came).
 * NULL (and *len = (size_t)-1) when no batch was returned since open or the last restore.
 * Malloc'ed, NUL-terminated; caller frees. */
char *data_loader_cursor_save_previous(DataLoader *dl, size_t *len);

/* Continue from a saved cursor (any time; a running prefetch thread is stopped and queued
 * batches discarded). The cursor must come from the same files (basenames), seed, B, K and
 * lengths and contain every stream this rank uses. Returns 0, or -1 with a message in err and
 * the loader unchanged. */
int data_loader_cursor_restore(DataLoader *dl, const char *buf, size_t len, char *err,
                               size_t errlen);

/* Join the cursors of several ranks (same run) into one holding every stream once. Malloc'ed;
 * NULL with a message in err if they do not belong to the same run. */
char *data_cursor_merge(const char *const *bufs, const size_t *lens, int n, size_t *len,
                        char *err, size_t errlen);

/* Documents, tokens, pieces, examples, rows and bad records by reason, as of the last batch
 * returned; after data_loader_next returned -1 or 1, as of the failure (what was read for the
 * batch that could not be completed included, so the counts agree with the error message), with
 * a first line in parentheses saying so. Lines (data/README.md explains each field):
 *   documents=N used=N empty=N other_streams=N skipped_on_restore=N
 *   tokens=N tokens_before_chunking=N text_bytes=N input_bytes=N
 *   pieces=N full=N short=N examples=N rows=N batches=N
 *   bad records: json=N ... truncated=N corrupt=N total=N
 *   damaged_files=N */
void data_loader_print_stats(const DataLoader *dl, FILE *out);

typedef struct {
    long docs_read;          /* good documents delivered by the readers */
    long docs_used;          /* tokenized and non-empty, in this stream's share */
    long docs_empty;         /* dropped: no tokens */
    long docs_skipped;       /* read without tokenizing: cursor restore */
    long long tokens;        /* tokens after select_random_chunk */
    long long tokens_total;  /* tokens before select_random_chunk */
    long long text_bytes;    /* UTF-8 bytes tokenized */
    long long input_bytes;   /* decompressed bytes read */
    long pieces, pieces_full, examples, rows;
    long bad[C4_NUM_BAD_KINDS];
    long files_damaged;      /* file readers that hit C4_TRUNCATED / C4_CORRUPT */
} DataLoaderStats;
/* The numbers data_loader_print_stats prints (as of the last batch, or of the failure). */
void data_loader_get_stats(const DataLoader *dl, DataLoaderStats *st);

/* Stop the prefetch thread, close readers and the tokenizer, free everything. NULL is fine. */
void data_loader_close(DataLoader *dl);

#endif
