/*
 * data/loader.c: K deterministic span-corruption streams, cursor save/restore, a prefetch
 * thread and batch assembly. The order contract and the cursor format are in loader.h.
 *
 * Layering inside one stream (all state that matters for resuming lives in Cursor):
 *   next_document_  reader -> (share filter) -> tokenize -> drop empty -> select chunk -> carry
 *   next_piece_     carry -> pieces of T tokens; a 128-document group / epoch end flushes the rest
 *   stream_next_row_ pending piece -> corrupt (Rng(seed, k, example)) -> greedy packing
 * A row is handed out as soon as nothing else can fit, so after full-length examples nothing is
 * pending; a piece that does not fit stays "pending" and starts the next row.
 */
#include "loader.h"

#include <errno.h>
#include <glob.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <zlib.h>

#include "../common/util.h"
#include "c4_reader.h"
#include "span.h"
#include "spm.h"

#define TAG_CHUNK 0x43484E4BULL   /* "CHNK": select_random_chunk */
#define TAG_CORRUPT 0x53504E53ULL /* "SPNS": noise mask of one example */
#define TAG_ORDER 0x4F524452ULL   /* "ORDR": file order of an epoch */
/* Token buffers that grew for one huge document are given back (down to these many entries)
 * once it is processed, so memory stays flat over a shard with many streams per rank. */
#define KEEP_TOKENS ((size_t)1 << 16)   /* the shared tokenizer output */
#define KEEP_CARRY ((size_t)1 << 14)    /* each cursor's carry (live, saved, prefetch slots) */

static uint64_t key3_(uint64_t tag, uint64_t a, uint64_t b) {
    return rng_mix64(rng_mix64(tag ^ rng_mix64(a)) ^ b);
}

static uint64_t epoch_seed_(uint64_t seed, int epoch) {
    return epoch == 0 ? seed : rng_mix64(seed ^ rng_mix64((uint64_t)epoch));
}

/* ---------------------------------------------------------------------------------------- */
/* Cursor of one stream                                                                      */

/* A reader's seek point, shared (read-only) by the cursor copies that hold it: the live cursor,
 * the saved one and the prefetch slots, possibly on two threads. */
typedef struct {
    atomic_int refs;
    _Atomic(char *) window_b64;   /* the cursor's "window" text, made once on first save (the
                                     trainer saves a cursor every step) */
    uint32_t window_crc;          /* CRC32 of sp.window[0..window_len) */
    C4SeekPoint sp;
} SeekRef;

static SeekRef *seek_ref_(SeekRef *r) {
    if (r) atomic_fetch_add(&r->refs, 1);
    return r;
}

static void seek_unref_(SeekRef *r) {
    if (r && atomic_fetch_sub(&r->refs, 1) == 1) {
        free(atomic_load(&r->window_b64));
        free(r);
    }
}

static SeekRef *seek_new_(void) {
    SeekRef *r = xmalloc(sizeof *r);
    atomic_init(&r->refs, 1);
    atomic_init(&r->window_b64, NULL);
    return r;
}

typedef struct {
    int epoch;            /* current epoch (0-based) */
    int slot;             /* index into the epoch's file order */
    long doc;             /* documents already read from the file at slot */
    int group_docs;       /* documents in the current 128-document group */
    long epoch_docs;      /* documents used in the current epoch (detects empty streams) */
    long examples;        /* examples (pieces) taken so far = next example number */
    long rows;            /* rows produced so far */
    int exhausted;
    int32_t *carry;       /* group tokens not yet cut into pieces */
    long n_carry;
    size_t cap_carry;
    int has_pending;      /* a corrupted-to-be piece that did not fit the last row */
    long pending_index;
    int n_pending;
    int32_t *pending;     /* capacity: piece length */
    SeekRef *seek;        /* the reader's latest seek point in the file at slot (at or before
                             document `doc`), or NULL: restore then reads the file from its start */
} Cursor;

static void cursor_init_(Cursor *c, int P) {
    memset(c, 0, sizeof *c);
    c->pending = xcalloc((size_t)P, sizeof(int32_t));
}

static void cursor_free_(Cursor *c) {
    seek_unref_(c->seek);
    free(c->carry);
    free(c->pending);
    memset(c, 0, sizeof *c);
}

static void carry_reserve_(Cursor *c, size_t n) {
    if (n <= c->cap_carry) return;
    size_t cap = c->cap_carry ? c->cap_carry : 4096;
    while (cap < n) cap *= 2;
    c->carry = xrealloc(c->carry, cap * sizeof(int32_t));
    c->cap_carry = cap;
}

/* Give back the memory of a carry that grew for a huge document once most of it is cut. */
static void carry_trim_(Cursor *c) {
    if (c->cap_carry > KEEP_CARRY && (size_t)c->n_carry <= KEEP_CARRY) {
        c->carry = xrealloc(c->carry, KEEP_CARRY * sizeof(int32_t));
        c->cap_carry = KEEP_CARRY;
    }
}

/* Deep copy (dst already initialised with the same piece length). */
static void cursor_copy_(Cursor *dst, const Cursor *src, int P) {
    int32_t *carry = dst->carry, *pending = dst->pending;
    size_t cap = dst->cap_carry;
    if (dst->seek != src->seek) {
        seek_unref_(dst->seek);
        seek_ref_(src->seek);
    }
    *dst = *src;
    dst->carry = carry; dst->cap_carry = cap; dst->pending = pending;
    carry_reserve_(dst, (size_t)src->n_carry);
    carry_trim_(dst);
    if (src->n_carry) memcpy(dst->carry, src->carry, (size_t)src->n_carry * sizeof(int32_t));
    memcpy(dst->pending, src->pending, (size_t)P * sizeof(int32_t));
}

/* ---------------------------------------------------------------------------------------- */
/* Stream                                                                                    */

typedef struct {
    int k;
    int *files;            /* global file indices, sorted */
    int n_files;
    int share, share_idx;  /* take documents d with d % share == share_idx */
    int *order;            /* this epoch's order: indices into files */
    uint64_t seed_e;
    Cursor c;
    C4Reader *reader;      /* open on files[order[c.slot]], c.doc documents read */
    SeekRef *spare;        /* allocated, for the reader's next seek point */
    /* the pending piece corrupted (cache, recomputed after a restore) */
    int have_ex, ex_ni, ex_nt;
    int32_t *ex_in, *ex_tg;
    uint8_t *mask;
    int *mask_scratch;
    C4Stats closed;        /* stats of readers already closed */
    DataLoaderStats st;    /* stream-level counters (reader fields unused) */
} Stream;

typedef struct {
    T5Batch b;
    Cursor *cur;           /* one per touched stream */
    int status;
    DataLoaderStats st;
} Slot;

struct DataLoader {
    char **files;
    int n_files;
    uint64_t seed;
    uint64_t files_hash;
    int B, K, world, rank, lo, hi, Le, Ld, P, max_epochs;
    size_t max_line_bytes;
    SpmTokenizer *spm;
    int32_t *tok;          /* tokens of the document being read; one producer, so shared */
    size_t tok_cap;
    int vocab_rows, sentinel_top;
    int n_touch;
    Stream *streams;       /* touched streams, increasing k */
    Cursor *saved;         /* position after the last returned batch */
    Cursor *prev;          /* position before it (the previous `saved`: the arrays swap) */
    int have_prev;         /* prev holds a boundary: a batch was returned since open/restore */
    DataLoaderStats saved_st;
    DataLoaderStats end_st; /* when status != 0: everything read, the failed batch included */
    long returned;         /* batches returned */
    T5Batch discard;       /* one row for rows of other ranks */
    int status;            /* sticky: 1 exhausted, -1 error */
    char err[1024];
    /* prefetch */
    int depth;
    Slot *slots;
    int head, count, stop, running;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv_fill, cv_free;
};

static void set_err_(DataLoader *dl, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dl->err, sizeof dl->err, fmt, ap);
    va_end(ap);
    fprintf(stderr, "data loader: error: %s\n", dl->err);
}

static void stream_set_epoch_(DataLoader *dl, Stream *s, int epoch) {
    s->seed_e = epoch_seed_(dl->seed, epoch);
    for (int i = 0; i < s->n_files; i++) s->order[i] = i;
    if (epoch > 0) {
        Rng r = rng_make(s->seed_e, key3_(TAG_ORDER, (uint64_t)s->k, 0));
        for (int i = s->n_files - 1; i > 0; i--) {
            int j = (int)rng_next_below(&r, (uint64_t)i + 1);
            int t = s->order[i]; s->order[i] = s->order[j]; s->order[j] = t;
        }
    }
}

static void stream_close_reader_(Stream *s) {
    if (!s->reader) return;
    c4_stats_add(&s->closed, c4_reader_stats(s->reader));
    c4_reader_close(s->reader);
    s->reader = NULL;
}

/* Open the file at c.slot and skip the c.doc documents already consumed (parse only): from the
 * cursor's seek point if it has one (only the documents after it are parsed), else from the start
 * of the file (also when the point does not fit the file any more: said on stderr). Either way
 * the reader's statistics and the skipped count are those of reading the c.doc documents. */
static int stream_open_reader_(DataLoader *dl, Stream *s) {
    int gi = s->files[s->order[s->c.slot]];
    /* bad records are reported once: in epoch 0, by the first stream sharing the file */
    C4ReaderOptions opt = { dl->max_line_bytes, (s->c.epoch == 0 && s->share_idx == 0) ? 3 : -1,
                            NULL };
    char err[512];
    long from = 0;
    SeekRef *sk = s->c.seek;
    if (sk && s->c.doc >= sk->sp.stats.documents) {
        s->reader = c4_reader_open_at(dl->files[gi], &opt, &sk->sp, err, sizeof err);
        if (s->reader) {
            from = sk->sp.stats.documents;
        } else {
            fprintf(stderr, "data loader: warning: stream %d: %s; reading the file from its start "
                    "to its document %ld instead (HINT: a data file was replaced or rewritten "
                    "since the cursor was saved; if its content changed too, the examples after "
                    "the resume differ from the original run's)\n", s->k, err, s->c.doc);
        }
    }
    if (!s->reader) {
        seek_unref_(s->c.seek);
        s->c.seek = NULL;
        s->reader = c4_reader_open(dl->files[gi], &opt, err, sizeof err);
    }
    if (!s->reader) {
        set_err_(dl, "stream %d, epoch %d: %s (HINT: every data file must stay readable for the "
                 "whole run)", s->k, s->c.epoch, err);
        return -1;
    }
    C4Document d;
    s->st.docs_skipped += from;
    for (long i = from; i < s->c.doc; i++) {
        if (c4_reader_next(s->reader, &d) != 1) {
            set_err_(dl, "stream %d: cursor says %ld documents were read from %s but it has only "
                     "%ld (HINT: the data files changed since the cursor was saved)",
                     s->k, s->c.doc, dl->files[gi], i);
            return -1;
        }
        s->st.docs_skipped++;
    }
    return 0;
}

/* Read the next document of this stream into the carry. 1 = appended, 0 = end of the epoch's
 * files (no state change, may be called again), -1 = error. */
static int next_document_(DataLoader *dl, Stream *s) {
    Cursor *c = &s->c;
    for (;;) {
        if (c->slot >= s->n_files) return 0;
        if (!s->reader && stream_open_reader_(dl, s) != 0) return -1;
        C4Document doc;
        if (c4_reader_next(s->reader, &doc) != 1) {
            stream_close_reader_(s);
            c->slot++;
            c->doc = 0;
            seek_unref_(c->seek);
            c->seek = NULL;
            continue;
        }
        long d = c->doc++;
        if (!s->spare) s->spare = seek_new_();
        if (c4_reader_take_seek_point(s->reader, &s->spare->sp)) {
            s->spare->window_crc = (uint32_t)crc32(0, s->spare->sp.window,
                                                   (uInt)s->spare->sp.window_len);
            seek_unref_(c->seek);
            c->seek = s->spare;           /* its reference moves to the cursor */
            s->spare = NULL;
        }
        s->st.docs_read++;
        if (s->share > 1 && d % s->share != s->share_idx) continue;
        long n = spm_encode(dl->spm, doc.text, doc.text_len, &dl->tok, &dl->tok_cap);
        if (n < 0) {
            set_err_(dl, "stream %d: tokenizer failed on %s line %ld", s->k, doc.member, doc.line);
            return -1;
        }
        s->st.text_bytes += (long long)doc.text_len;
        s->st.tokens_total += n;
        if (n == 0) { s->st.docs_empty++; continue; }
        int gi = s->files[s->order[c->slot]];
        Rng r = rng_make(s->seed_e, key3_(TAG_CHUNK, (uint64_t)gi, (uint64_t)d));
        long len, start = span_select_chunk(n, &r, &len);
        carry_reserve_(c, (size_t)(c->n_carry + len));
        for (long i = start; i < start + len; i++)      /* strip zeros (reduce_concat_tokens) */
            if (dl->tok[i] != 0) c->carry[c->n_carry++] = dl->tok[i];
        if (dl->tok_cap > KEEP_TOKENS) {       /* memory stays flat after a huge document */
            free(dl->tok);
            dl->tok = NULL;
            dl->tok_cap = 0;
        }
        s->st.docs_used++;
        s->st.tokens += len;
        c->group_docs++;
        c->epoch_docs++;
        return 1;
    }
}

/* Cut the next piece into c.pending. 1 = a piece, 0 = stream exhausted, -1 = error. */
static int next_piece_(DataLoader *dl, Stream *s) {
    Cursor *c = &s->c;
    const int P = dl->P;
    for (;;) {
        if (c->exhausted) return 0;
        int take = 0;
        if (c->n_carry >= P) {
            take = P;
        } else if (c->group_docs >= SPAN_GROUP_DOCS) {
            c->group_docs = 0;                  /* group complete: its last piece is the rest */
            take = (int)c->n_carry;
        } else {
            int r = next_document_(dl, s);
            if (r < 0) return -1;
            if (r == 1) continue;
            /* end of the epoch's files: flush the partial group, then move on */
            c->group_docs = 0;
            if (c->n_carry == 0) {
                if (c->epoch_docs == 0) {
                    set_err_(dl, "stream %d has no non-empty documents in its %d file(s) (first "
                             "%s) in epoch %d (so far: %ld good documents read, %ld of them in "
                             "its share of the file, %ld tokenize to nothing) (HINT: 't5data "
                             "stats' shows what the files hold; with fewer documents than "
                             "streams use fewer --streams or more files)", s->k, s->n_files,
                             dl->files[s->files[0]], c->epoch, s->st.docs_read,
                             s->st.docs_used + s->st.docs_empty, s->st.docs_empty);
                    return -1;
                }
                c->epoch++;
                c->slot = 0;
                c->doc = 0;
                c->epoch_docs = 0;
                stream_set_epoch_(dl, s, c->epoch);
                if (dl->max_epochs > 0 && c->epoch >= dl->max_epochs) c->exhausted = 1;
                continue;
            }
            take = (int)c->n_carry;
        }
        if (take == 0) continue;
        memcpy(c->pending, c->carry, (size_t)take * sizeof(int32_t));
        c->n_pending = take;
        c->n_carry -= take;
        if (c->n_carry) memmove(c->carry, c->carry + take, (size_t)c->n_carry * sizeof(int32_t));
        carry_trim_(c);
        s->st.pieces++;
        s->st.pieces_full += take == P;
        return 1;
    }
}

static void corrupt_pending_(DataLoader *dl, Stream *s) {
    Cursor *c = &s->c;
    Rng r = rng_make(dl->seed, key3_(TAG_CORRUPT, (uint64_t)s->k, (uint64_t)c->pending_index));
    span_noise_mask(c->n_pending, &r, s->mask, s->mask_scratch);
    span_corrupt(c->pending, c->n_pending, s->mask, dl->sentinel_top, s->ex_in, &s->ex_ni,
                 s->ex_tg, &s->ex_nt);
    s->have_ex = 1;
}

/* Pack the next row of stream s into row `row` of b. 1 = row produced, 0 = exhausted with
 * nothing left, -1 = error. */
static int stream_next_row_(DataLoader *dl, Stream *s, T5Batch *b, int row) {
    Cursor *c = &s->c;
    SpanRow R;
    span_row_begin(&R, b, row);
    for (;;) {
        if (!c->has_pending) {
            int r = next_piece_(dl, s);
            if (r < 0) return -1;
            if (r == 0) {
                if (R.segments == 0) return 0;
                break;
            }
            c->has_pending = 1;
            c->pending_index = c->examples++;
            s->have_ex = 0;
        }
        if (!s->have_ex) corrupt_pending_(dl, s);
        if (!span_row_fits(&R, s->ex_ni, s->ex_nt)) break;
        span_row_add(&R, s->ex_in, s->ex_ni, s->ex_tg, s->ex_nt);
        s->st.examples++;
        c->has_pending = 0;
        s->have_ex = 0;
        if (span_row_full(&R)) break;
    }
    c->rows++;
    s->st.rows++;
    return 1;
}

/* Produce this rank's rows of the next global batch into out. Streams with several rows per
 * batch (K < B) produce all of them; rows of other ranks go to a scratch row. */
static int produce_batch_(DataLoader *dl, T5Batch *out) {
    for (int t = 0; t < dl->n_touch; t++) {
        Stream *s = &dl->streams[t];
        for (int j = s->k; j < dl->B; j += dl->K) {
            int mine = j >= dl->lo && j < dl->hi;
            int r = stream_next_row_(dl, s, mine ? out : &dl->discard, mine ? j - dl->lo : 0);
            if (r < 0) return -1;
            if (r == 0) return 1;
        }
    }
    return 0;
}

static void collect_stats_(const DataLoader *dl, DataLoaderStats *st) {
    memset(st, 0, sizeof *st);
    for (int t = 0; t < dl->n_touch; t++) {
        const Stream *s = &dl->streams[t];
        C4Stats cs = s->closed;
        if (s->reader) c4_stats_add(&cs, c4_reader_stats(s->reader));
        st->docs_read += s->st.docs_read;
        st->docs_used += s->st.docs_used;
        st->docs_empty += s->st.docs_empty;
        st->docs_skipped += s->st.docs_skipped;
        st->tokens += s->st.tokens;
        st->tokens_total += s->st.tokens_total;
        st->text_bytes += s->st.text_bytes;
        st->input_bytes += cs.input_bytes;
        st->pieces += s->st.pieces;
        st->pieces_full += s->st.pieces_full;
        st->examples += s->st.examples;
        st->rows += s->st.rows;
        for (int k = 0; k < C4_NUM_BAD_KINDS; k++) st->bad[k] += cs.bad[k];
        st->files_damaged += cs.files_damaged;
    }
}

static void snapshot_(DataLoader *dl, Cursor *dst) {
    for (int t = 0; t < dl->n_touch; t++) cursor_copy_(&dst[t], &dl->streams[t].c, dl->P);
}

/* ---------------------------------------------------------------------------------------- */
/* Prefetch thread                                                                           */

static void *prefetch_main_(void *arg) {
    DataLoader *dl = arg;
    for (;;) {
        pthread_mutex_lock(&dl->mu);
        while (dl->count == dl->depth && !dl->stop) pthread_cond_wait(&dl->cv_free, &dl->mu);
        if (dl->stop) { pthread_mutex_unlock(&dl->mu); break; }
        Slot *sl = &dl->slots[(dl->head + dl->count) % dl->depth];
        pthread_mutex_unlock(&dl->mu);
        /* the slot is invisible to the consumer until count grows */
        sl->status = produce_batch_(dl, &sl->b);
        snapshot_(dl, sl->cur);
        collect_stats_(dl, &sl->st);
        pthread_mutex_lock(&dl->mu);
        dl->count++;
        pthread_cond_signal(&dl->cv_fill);
        pthread_mutex_unlock(&dl->mu);
        if (sl->status != 0) break;
    }
    return NULL;
}

static void prefetch_stop_(DataLoader *dl) {
    if (!dl->running) return;
    pthread_mutex_lock(&dl->mu);
    dl->stop = 1;
    pthread_cond_broadcast(&dl->cv_free);
    pthread_mutex_unlock(&dl->mu);
    pthread_join(dl->th, NULL);
    dl->running = 0;
    dl->stop = 0;
    dl->head = 0;
    dl->count = 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Public API                                                                                */

void data_loader_config_default(DataLoaderConfig *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->global_batch = 128;
    cfg->world = 1;
    cfg->enc_len = 512;
    cfg->dec_len = 128;
    cfg->prefetch = DATA_LOADER_DEFAULT_PREFETCH;
}

static int cmp_str_(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void data_free_files(char **files, int n_files) {
    if (!files) return;
    for (int i = 0; i < n_files; i++) free(files[i]);
    free(files);
}

/* Expand globs: every comma-separated pattern must match at least one path (a plain path
 * matches itself only if it exists). The result is sorted by strcmp and de-duplicated. */
int data_expand_globs(const char *globs, char ***files, int *n_files, char *err, size_t errlen) {
    char **out = NULL;
    int n = 0, cap = 0;
    char *copy = xstrdup(globs ? globs : ""), *save = NULL;
    int any = 0;
    for (char *pat = strtok_r(copy, ",", &save); pat; pat = strtok_r(NULL, ",", &save)) {
        while (*pat == ' ') pat++;
        if (!*pat) continue;
        any = 1;
        glob_t g;
        int rc = glob(pat, 0, NULL, &g);
        if (rc != 0) {
            snprintf(err, errlen, "no data file matches '%s' (HINT: check the path; quote the "
                     "glob so the shell does not expand it)", pat);
            if (rc != GLOB_NOMATCH) globfree(&g);
            data_free_files(out, n);
            free(copy);
            return -1;
        }
        for (size_t i = 0; i < g.gl_pathc; i++) {
            if (n == cap) { cap = cap ? 2 * cap : 16; out = xrealloc(out, (size_t)cap * sizeof *out); }
            out[n++] = xstrdup(g.gl_pathv[i]);
        }
        globfree(&g);
    }
    free(copy);
    if (!any) {
        snprintf(err, errlen, "empty data file list (HINT: --data takes comma-separated globs)");
        return -1;
    }
    qsort(out, (size_t)n, sizeof *out, cmp_str_);
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (m > 0 && strcmp(out[m - 1], out[i]) == 0) { free(out[i]); continue; }
        out[m++] = out[i];
    }
    *files = out;
    *n_files = m;
    return 0;
}

static uint64_t files_hash_(char **files, int n) {
    uint64_t h = 1469598103934665603ULL;            /* FNV-1a over basenames, '\n' separated */
    for (int i = 0; i < n; i++) {
        const char *b = strrchr(files[i], '/');
        b = b ? b + 1 : files[i];
        for (; *b; b++) { h ^= (unsigned char)*b; h *= 1099511628211ULL; }
        h ^= '\n'; h *= 1099511628211ULL;
    }
    return h;
}

/* See loader.h. Each file is read until its first good document (at most DATA_CHECK_MAX_LINES
 * records or DATA_CHECK_MAX_BYTES decompressed bytes without one), with the reader's reports
 * captured so the reason can be quoted. */
#define DATA_CHECK_MAX_LINES 100000L
#define DATA_CHECK_MAX_BYTES ((long long)256 << 20)

int data_files_check(const char *const *files, int n, size_t max_line_bytes, char *err,
                     size_t errlen) {
    char dummy[8];
    if (!err || errlen == 0) { err = dummy; errlen = sizeof dummy; }
    err[0] = '\0';
    size_t used = 0;
    int bad = 0;
#define DF_ADD_(...) do { if (used < errlen) { int w_ = snprintf(err + used, errlen - used, \
        __VA_ARGS__); if (w_ > 0) used += (size_t)w_; if (used >= errlen) used = errlen; } } while (0)
    for (int i = 0; i < n; i++) {
        char why[700] = "";
        char *rep = NULL;
        size_t rep_len = 0;
        FILE *rf = open_memstream(&rep, &rep_len);
        C4ReaderOptions o = { max_line_bytes, 1, rf };
        char oerr[512];
        C4Reader *r = c4_reader_open(files[i], &o, oerr, sizeof oerr);
        if (!r) {
            snprintf(why, sizeof why, "%s", oerr);
        } else {
            C4Document d;
            int got = 0;
            const C4Stats *st = c4_reader_stats(r);
            while (!got && st->lines < DATA_CHECK_MAX_LINES && st->input_bytes < DATA_CHECK_MAX_BYTES &&
                   c4_reader_next(r, &d) == 1)
                got = 1;
            if (!got) {
                long nbad = 0;
                for (int k = 0; k < C4_NUM_BAD_KINDS; k++) nbad += st->bad[k];
                if (rf) fflush(rf);
                const char *first = rep && rep_len ? rep : "";
                size_t fl = strcspn(first, "\n");
                if (st->files_damaged && st->lines == 0)
                    snprintf(why, sizeof why, "damaged before its first record: %.*s", (int)fl,
                             first);
                else if (st->lines == 0)
                    snprintf(why, sizeof why, "empty (no non-blank line after decompression)");
                else
                    snprintf(why, sizeof why, "not C4 JSON Lines: %s%ld lines, %ld bad records, "
                             "none a JSON object with a non-empty \"text\" (first: %.*s)",
                             st->lines >= DATA_CHECK_MAX_LINES ||
                             st->input_bytes >= DATA_CHECK_MAX_BYTES ? "the first " : "",
                             st->lines, nbad, (int)fl, first);
            }
            c4_reader_close(r);
        }
        if (rf) fclose(rf);
        free(rep);
        if (why[0]) {
            if (bad == 0) DF_ADD_("these data files hold no valid C4 record:");
            DF_ADD_("\n  %s: %s", files[i], why);
            bad++;
        }
    }
    if (bad)
        DF_ADD_("\n(%d of %d files) HINT: --data must name only C4 shards (JSON Lines with a "
                "\"text\" field, .json/.json.gz/.json.zst or tars of them): narrow the glob, "
                "e.g. 'DIR/c4-train.*.json.gz' rather than 'DIR/*'; re-download or remove a "
                "damaged or empty shard ('t5data stats --data FILE' shows what a file holds)",
                bad, n);
#undef DF_ADD_
    return bad;
}

/* See loader.h. Files are the same if stat() gives the same device and inode (so different
 * spellings of one path, and hard links, match). */
int data_files_overlap(const char *const *a, int na, const char *const *b, int nb, char *msg,
                       size_t msglen) {
    char dummy[8];
    if (!msg || msglen == 0) { msg = dummy; msglen = sizeof dummy; }
    msg[0] = '\0';
    size_t used = 0;
    int both = 0;
    for (int i = 0; i < na; i++) {
        struct stat sa;
        if (stat(a[i], &sa) != 0) continue;
        for (int j = 0; j < nb; j++) {
            struct stat sb;
            if (stat(b[j], &sb) != 0 || sa.st_dev != sb.st_dev || sa.st_ino != sb.st_ino) continue;
            if (used < msglen) {
                int w = snprintf(msg + used, msglen - used, "%s%s", both ? ", " : "", a[i]);
                if (w > 0) used += (size_t)w;
                if (used >= msglen) used = msglen;
            }
            both++;
            break;
        }
    }
    return both;
}

DataLoader *data_loader_open(const DataLoaderConfig *cfg, char *err, size_t errlen) {
    int B = cfg->global_batch, K = cfg->n_streams ? cfg->n_streams : cfg->global_batch;
    int world = cfg->world ? cfg->world : 1;
    int Le = cfg->enc_len ? cfg->enc_len : 512, Ld = cfg->dec_len ? cfg->dec_len : 128;
    if (B < 1) { snprintf(err, errlen, "global batch %d must be >= 1", B); return NULL; }
    if (K < 1 || B % K != 0) {
        snprintf(err, errlen, "n_streams %d must divide the global batch %d (HINT: the default "
                 "is one stream per row)", K, B);
        return NULL;
    }
    if (world < 1 || cfg->rank < 0 || cfg->rank >= world || B % world != 0) {
        snprintf(err, errlen, "rank %d of world %d: the world size must divide the global batch "
                 "%d and 0 <= rank < world", cfg->rank, world, B);
        return NULL;
    }
    if (Le < 8 || Ld < 4) {
        snprintf(err, errlen, "sequence lengths %d/%d too short (HINT: 512/128 for T5)", Le, Ld);
        return NULL;
    }
    int tlen, P = span_random_spans_helper(Le, &tlen);
    int spans = span_num_spans(span_num_noise(P));
    if (spans > SPM_NUM_SENTINELS) {
        snprintf(err, errlen, "encoder length %d gives pieces of %d tokens with %d noise spans, "
                 "more than the %d sentinels (HINT: enc_len <= 1809)", Le, P, spans,
                 SPM_NUM_SENTINELS);
        return NULL;
    }
    if (tlen > Ld) {
        snprintf(err, errlen, "decoder length %d is shorter than the %d targets of a full example "
                 "for encoder length %d (HINT: use dec_len >= %d)", Ld, tlen, Le, tlen);
        return NULL;
    }
    if (cfg->prefetch < 0 || cfg->max_epochs < 0) {
        snprintf(err, errlen, "prefetch %d and max_epochs %d must be >= 0", cfg->prefetch,
                 cfg->max_epochs);
        return NULL;
    }
    if (cfg->n_files < 1 || !cfg->files) {
        snprintf(err, errlen, "no data files given (HINT: --data GLOB)");
        return NULL;
    }
    for (int i = 0; i < cfg->n_files; i++) {
        struct stat st;
        if (access(cfg->files[i], R_OK) != 0 || stat(cfg->files[i], &st) != 0) {
            snprintf(err, errlen, "cannot read data file %s: %s", cfg->files[i], strerror(errno));
            return NULL;
        }
        if (S_ISDIR(st.st_mode)) {
            snprintf(err, errlen, "data file %s is a directory (HINT: --data takes files or "
                     "globs of files, e.g. 'dir/c4-train.*.json.gz')", cfg->files[i]);
            return NULL;
        }
    }
    if (!cfg->spm_model) { snprintf(err, errlen, "no SentencePiece model given (--spm)"); return NULL; }
    char serr[512];
    SpmTokenizer *spm = spm_open(cfg->spm_model, serr, sizeof serr);
    if (!spm) { snprintf(err, errlen, "%s", serr); return NULL; }

    DataLoader *dl = xcalloc(1, sizeof *dl);
    dl->spm = spm;
    dl->vocab_rows = spm_model_vocab_size(spm);
    dl->sentinel_top = spm_vocab_size(spm) - 1;
    dl->n_files = cfg->n_files;
    dl->files = xcalloc((size_t)cfg->n_files, sizeof(char *));
    for (int i = 0; i < cfg->n_files; i++) dl->files[i] = xstrdup(cfg->files[i]);
    dl->files_hash = files_hash_(dl->files, dl->n_files);
    dl->seed = cfg->seed;
    dl->B = B; dl->K = K; dl->world = world; dl->rank = cfg->rank;
    dl->lo = (int)((long)cfg->rank * B / world);
    dl->hi = (int)((long)(cfg->rank + 1) * B / world);
    dl->Le = Le; dl->Ld = Ld; dl->P = P;
    dl->max_epochs = cfg->max_epochs;
    dl->max_line_bytes = cfg->max_line_bytes;
    dl->depth = cfg->prefetch;

    /* streams used by rows [lo, hi) */
    int *use = xcalloc((size_t)K, sizeof(int));
    for (int j = dl->lo; j < dl->hi; j++) use[j % K] = 1;
    for (int k = 0; k < K; k++) dl->n_touch += use[k];
    dl->streams = xcalloc((size_t)dl->n_touch, sizeof(Stream));
    dl->saved = xcalloc((size_t)dl->n_touch, sizeof(Cursor));
    dl->prev = xcalloc((size_t)dl->n_touch, sizeof(Cursor));
    int F = dl->n_files, t = 0;
    for (int k = 0; k < K; k++) {
        if (!use[k]) continue;
        Stream *s = &dl->streams[t];
        s->k = k;
        if (F >= K) {
            s->n_files = (F - 1 - k) / K + 1;
            s->files = xcalloc((size_t)s->n_files, sizeof(int));
            for (int i = 0; i < s->n_files; i++) s->files[i] = k + i * K;
            s->share = 1; s->share_idx = 0;
        } else {
            int f = k % F;
            s->n_files = 1;
            s->files = xcalloc(1, sizeof(int));
            s->files[0] = f;
            s->share = (K - 1 - f) / F + 1;
            s->share_idx = k / F;
        }
        s->order = xcalloc((size_t)s->n_files, sizeof(int));
        cursor_init_(&s->c, P);
        cursor_init_(&dl->saved[t], P);
        cursor_init_(&dl->prev[t], P);
        stream_set_epoch_(dl, s, 0);
        s->ex_in = xcalloc((size_t)P + 1, sizeof(int32_t));
        s->ex_tg = xcalloc((size_t)P + 1, sizeof(int32_t));
        s->mask = xcalloc((size_t)P + 1, 1);
        s->mask_scratch = xcalloc(2 * (size_t)P + 8, sizeof(int));
        t++;
    }
    free(use);
    t5_batch_alloc(&dl->discard, 1, Le, Ld);
    if (dl->depth > 0) {
        dl->slots = xcalloc((size_t)dl->depth, sizeof(Slot));
        for (int i = 0; i < dl->depth; i++) {
            t5_batch_alloc(&dl->slots[i].b, dl->hi - dl->lo, Le, Ld);
            dl->slots[i].cur = xcalloc((size_t)dl->n_touch, sizeof(Cursor));
            for (int j = 0; j < dl->n_touch; j++) cursor_init_(&dl->slots[i].cur[j], P);
        }
        pthread_mutex_init(&dl->mu, NULL);
        pthread_cond_init(&dl->cv_fill, NULL);
        pthread_cond_init(&dl->cv_free, NULL);
    }
    return dl;
}

int data_loader_vocab_size(const DataLoader *dl) { return dl->vocab_rows; }
int data_loader_sentinel_top(const DataLoader *dl) { return dl->sentinel_top; }
int data_loader_rows(const DataLoader *dl) { return dl->hi - dl->lo; }
long data_loader_batches(const DataLoader *dl) { return dl->returned; }
int data_loader_piece_len(const DataLoader *dl) { return dl->P; }
const char *data_loader_error(const DataLoader *dl) { return dl->err; }

static void copy_batch_(T5Batch *dst, const T5Batch *src) {
    size_t ne = (size_t)src->B * src->Le * sizeof(int32_t);
    size_t nd = (size_t)src->B * src->Ld * sizeof(int32_t);
    memcpy(dst->enc_ids, src->enc_ids, ne);
    memcpy(dst->enc_seg, src->enc_seg, ne);
    if (dst->enc_pos) memcpy(dst->enc_pos, src->enc_pos, ne);
    memcpy(dst->dec_in_ids, src->dec_in_ids, nd);
    memcpy(dst->labels, src->labels, nd);
    memcpy(dst->dec_seg, src->dec_seg, nd);
    if (dst->dec_pos) memcpy(dst->dec_pos, src->dec_pos, nd);
}

/* Before `saved` moves to the next boundary: the current one becomes `prev` by swapping the
 * arrays (no copy; the new `saved` is then overwritten in place, reusing prev's buffers). */
static void keep_previous_(DataLoader *dl) {
    Cursor *c = dl->prev;
    dl->prev = dl->saved;
    dl->saved = c;
    dl->have_prev = 1;
}

int data_loader_next(DataLoader *dl, T5Batch *out, double *wait_seconds) {
    if (wait_seconds) *wait_seconds = 0;
    if (dl->status != 0) return dl->status;
    if (out->B != dl->hi - dl->lo || out->Le != dl->Le || out->Ld != dl->Ld) {
        set_err_(dl, "batch buffer is %dx%d/%d, the loader needs %dx%d/%d", out->B, out->Le,
                 out->Ld, dl->hi - dl->lo, dl->Le, dl->Ld);
        return -1;      /* a caller bug, not sticky */
    }
    double t0 = now_seconds();
    if (dl->depth == 0) {
        int st = produce_batch_(dl, out);
        if (wait_seconds) *wait_seconds = now_seconds() - t0;
        if (st != 0) {
            collect_stats_(dl, &dl->end_st);
            dl->status = st;
            return st;
        }
        keep_previous_(dl);
        snapshot_(dl, dl->saved);
        collect_stats_(dl, &dl->saved_st);
        dl->returned++;
        return 0;
    }
    if (!dl->running) {
        if (pthread_create(&dl->th, NULL, prefetch_main_, dl) != 0) {
            set_err_(dl, "cannot start the prefetch thread: %s", strerror(errno));
            dl->status = -1;
            return -1;
        }
        dl->running = 1;
    }
    pthread_mutex_lock(&dl->mu);
    while (dl->count == 0) pthread_cond_wait(&dl->cv_fill, &dl->mu);
    Slot *sl = &dl->slots[dl->head];
    pthread_mutex_unlock(&dl->mu);
    if (wait_seconds) *wait_seconds = now_seconds() - t0;
    int st = sl->status;
    if (st == 0) {
        copy_batch_(out, &sl->b);
        keep_previous_(dl);
        for (int t = 0; t < dl->n_touch; t++) cursor_copy_(&dl->saved[t], &sl->cur[t], dl->P);
        dl->saved_st = sl->st;
        dl->returned++;
    } else {
        dl->end_st = sl->st;
        dl->status = st;
    }
    pthread_mutex_lock(&dl->mu);
    dl->head = (dl->head + 1) % dl->depth;
    dl->count--;
    pthread_cond_signal(&dl->cv_free);
    pthread_mutex_unlock(&dl->mu);
    return st;
}

int data_loader_skip(DataLoader *dl, long n) {
    T5Batch b;
    t5_batch_alloc(&b, dl->hi - dl->lo, dl->Le, dl->Ld);
    int st = 0;
    for (long i = 0; i < n && st == 0; i++) st = data_loader_next(dl, &b, NULL);
    t5_batch_free(&b);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Cursor serialisation                                                                      */

static json_t *ids_json_(const int32_t *ids, long n) {
    json_t *a = json_array();
    for (long i = 0; i < n; i++) json_array_append_new(a, json_integer(ids[i]));
    return a;
}

#define CURSOR_VERSION 2       /* 2: "seek" per stream; 1 (no seek points) is still read */

static const char b64_[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode_(const unsigned char *p, size_t n) {
    char *o = xmalloc(4 * ((n + 2) / 3) + 1), *q = o;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        *q++ = b64_[v >> 18];
        *q++ = b64_[(v >> 12) & 63];
        *q++ = i + 1 < n ? b64_[(v >> 6) & 63] : '=';
        *q++ = i + 2 < n ? b64_[v & 63] : '=';
    }
    *q = '\0';
    return o;
}

/* Decode into out (cap bytes); returns the length or -1 (bad character, length or too long). */
static long b64_decode_(const char *s, unsigned char *out, size_t cap) {
    size_t n = strlen(s), k = 0;
    if (n % 4) return -1;
    signed char val[256];
    memset(val, -1, sizeof val);
    for (int i = 0; i < 64; i++) val[(unsigned char)b64_[i]] = (signed char)i;
    for (size_t i = 0; i < n; i += 4) {
        uint32_t v = 0;
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            unsigned char ch = (unsigned char)s[i + j];
            if (ch == '=' && i + 4 == n && j >= 2) { pad++; v <<= 6; continue; }
            if (val[ch] < 0 || pad) return -1;
            v = v << 6 | (uint32_t)val[ch];
        }
        for (int j = 0; j < 3 - pad; j++) {
            if (k >= cap) return -1;
            out[k++] = (unsigned char)(v >> (16 - 8 * j));
        }
    }
    return (long)k;
}

static const char *const seek_kinds_[] = { "none", "gzip", "zstd", "plain" };

/* The base64 text of a point's compressed window, made once. */
static const char *seek_window_b64_(SeekRef *ref) {
    const C4SeekPoint *sp = &ref->sp;
    char *b = atomic_load(&ref->window_b64);
    if (b) return b;
    uLongf zl = compressBound((uLong)sp->window_len);
    unsigned char *z = xmalloc(zl);
    if (compress2(z, &zl, sp->window, (uLong)sp->window_len, 9) != Z_OK)
        FATAL("out of memory?", "cannot compress a seek point's window");
    b = b64_encode_(z, zl);
    free(z);
    char *expect = NULL;
    if (!atomic_compare_exchange_strong(&ref->window_b64, &expect, b)) {
        free(b);
        b = expect;
    }
    return b;
}

/* Placeholder of stream t's window in the JSON jansson writes: the base64 text (~15 KB a stream)
 * is spliced in afterwards, as jansson's writer would take ~0.2 ms per stream to copy it
 * character by character, and the trainer saves a cursor every step. */
#define WINDOW_MARK "@@window:"

/* The "seek" object of a stream entry (loader.h documents the fields); its "window" is
 * WINDOW_MARK t until splice_windows_ replaces it. */
static json_t *seek_json_(SeekRef *ref, int t) {
    const C4SeekPoint *sp = &ref->sp;
    json_t *bad = json_array();
    for (int k = 0; k < C4_NUM_BAD_KINDS; k++) json_array_append_new(bad, json_integer(sp->stats.bad[k]));
    json_t *o = json_pack("{s:s, s:I, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}",
                          "kind", seek_kinds_[sp->kind], "in", (json_int_t)sp->in_off,
                          "bits", sp->bits, "crc", (json_int_t)sp->crc,
                          "mlen", (json_int_t)sp->member_len, "member", (json_int_t)sp->member,
                          "out", (json_int_t)sp->out_off, "skip", (json_int_t)sp->skip,
                          "check", (json_int_t)sp->check, "line", (json_int_t)sp->line_no,
                          "docs", (json_int_t)sp->stats.documents,
                          "lines", (json_int_t)sp->stats.lines,
                          "text_bytes", (json_int_t)sp->stats.text_bytes, "bad", bad);
    if (sp->window_len) {
        char mark[32];
        snprintf(mark, sizeof mark, WINDOW_MARK "%d", t);
        json_object_set_new(o, "wlen", json_integer((json_int_t)sp->window_len));
        json_object_set_new(o, "wcrc", json_integer((json_int_t)ref->window_crc));
        json_object_set_new(o, "window", json_string(mark));
    }
    return o;
}

/* Parse a "seek" object into a new SeekRef; NULL with a message in err. */
static SeekRef *seek_from_json_(json_t *o, char *err, size_t errlen) {
    json_int_t in, crc, mlen, member, out, skip, check, line, docs, lines, tb;
    int bits;
    const char *kind;
    json_t *bad;
    json_error_t je;
    if (json_unpack_ex(o, &je, 0, "{s:s, s:I, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
                       "s:I, s:o}", "kind", &kind, "in", &in, "bits", &bits, "crc", &crc,
                       "mlen", &mlen, "member", &member, "out", &out, "skip", &skip,
                       "check", &check, "line", &line, "docs", &docs, "lines", &lines,
                       "text_bytes", &tb, "bad", &bad) != 0) {
        snprintf(err, errlen, "bad \"seek\" in data cursor: %s", je.text);
        return NULL;
    }
    SeekRef *r = seek_new_();
    C4SeekPoint *sp = &r->sp;
    memset(sp, 0, offsetof(C4SeekPoint, window));
    for (int k = 1; k < 4; k++) if (!strcmp(kind, seek_kinds_[k])) sp->kind = k;
    sp->in_off = in; sp->bits = bits; sp->crc = (uint32_t)crc;
    sp->member_len = (unsigned long long)mlen; sp->member = (long)member;
    sp->out_off = out; sp->skip = skip; sp->check = (uint32_t)check; sp->line_no = (long)line;
    sp->stats.documents = (long)docs; sp->stats.lines = (long)lines; sp->stats.text_bytes = tb;
    const char *why = NULL;
    if (!sp->kind) why = "unknown kind";
    else if (!json_is_array(bad) || json_array_size(bad) != C4_NUM_BAD_KINDS) why = "bad \"bad\"";
    else {
        for (int k = 0; k < C4_NUM_BAD_KINDS; k++) {
            json_t *v = json_array_get(bad, (size_t)k);
            if (!json_is_integer(v) || json_integer_value(v) < 0) why = "bad \"bad\"";
            else sp->stats.bad[k] = (long)json_integer_value(v);
        }
    }
    json_t *w = json_object_get(o, "window");
    if (!why && w) {
        json_t *wl = json_object_get(o, "wlen"), *wc = json_object_get(o, "wcrc");
        const char *ws = json_string_value(w);
        size_t zcap = 2 * C4_SEEK_WINDOW + 1024;
        unsigned char *z = xmalloc(zcap);
        long zn = ws ? b64_decode_(ws, z, zcap) : -1;
        uLongf n = C4_SEEK_WINDOW;
        if (zn < 0 || !json_is_integer(wl) || !json_is_integer(wc) ||
            uncompress(sp->window, &n, z, (uLong)zn) != Z_OK ||
            (json_int_t)n != json_integer_value(wl) ||
            (json_int_t)crc32(0, sp->window, (uInt)n) != json_integer_value(wc))
            why = "its window does not decode or fails its CRC32";
        sp->window_len = n;
        r->window_crc = (uint32_t)crc32(0, sp->window, (uInt)n);
        free(z);
    }
    if (!why && (in < 0 || out < 0 || docs < 0 || skip < C4_SEEK_CHECK_MIN || bits < 0 || bits > 7))
        why = "a field out of range";
    if (why) {
        snprintf(err, errlen, "bad \"seek\" in data cursor: %s", why);
        seek_unref_(r);
        return NULL;
    }
    return r;
}

static json_t *cursor_header_(const DataLoader *dl, long batches) {
    char seed[32], fh[32];
    snprintf(seed, sizeof seed, "%016llx", (unsigned long long)dl->seed);
    snprintf(fh, sizeof fh, "%016llx", (unsigned long long)dl->files_hash);
    return json_pack("{s:s, s:i, s:s, s:i, s:i, s:i, s:i, s:i, s:s, s:I}",
                     "format", "t5data-cursor", "version", CURSOR_VERSION, "seed", seed, "n_streams", dl->K,
                     "global_batch", dl->B, "enc_len", dl->Le, "dec_len", dl->Ld,
                     "n_files", dl->n_files, "files_hash", fh, "batches",
                     (json_int_t)batches);
}

/* The JSON of the boundary cur[0..n_touch) after `batches` batches. */
static char *cursor_json_(DataLoader *dl, const Cursor *cur, long batches, size_t *len) {
    json_t *root = cursor_header_(dl, batches), *arr = json_array();
    for (int t = 0; t < dl->n_touch; t++) {
        const Cursor *c = &cur[t];
        json_t *o = json_pack("{s:i, s:i, s:i, s:I, s:i, s:I, s:I, s:I, s:i, s:I}",
                              "k", dl->streams[t].k, "epoch", c->epoch, "slot", c->slot,
                              "doc", (json_int_t)c->doc, "group_docs", c->group_docs,
                              "epoch_docs", (json_int_t)c->epoch_docs,
                              "examples", (json_int_t)c->examples, "rows", (json_int_t)c->rows,
                              "exhausted", c->exhausted,
                              "pending_index", (json_int_t)c->pending_index);
        json_object_set_new(o, "carry", ids_json_(c->carry, c->n_carry));
        json_object_set_new(o, "pending", ids_json_(c->pending, c->has_pending ? c->n_pending : 0));
        json_object_set_new(o, "has_pending", json_integer(c->has_pending));
        if (c->seek) json_object_set_new(o, "seek", seek_json_(c->seek, t));
        json_array_append_new(arr, o);
    }
    json_object_set_new(root, "streams", arr);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!s) FATAL("out of memory?", "cannot serialise the data cursor");
    /* splice the windows in (no other string of a cursor can hold the mark: hex, names) */
    size_t n = strlen(s), extra = 0;
    for (int t = 0; t < dl->n_touch; t++)
        if (cur[t].seek && cur[t].seek->sp.window_len)
            extra += strlen(seek_window_b64_(cur[t].seek));
    if (extra) {
        char *out = xmalloc(n + extra + 1), *o = out;
        const char *p = s, *m;
        while ((m = strstr(p, WINDOW_MARK))) {
            memcpy(o, p, (size_t)(m - p));
            o += m - p;
            char *end;
            long t = strtol(m + strlen(WINDOW_MARK), &end, 10);
            if (t < 0 || t >= dl->n_touch || !cur[t].seek)
                FATAL(NULL, "data cursor: bad window mark");
            const char *b = seek_window_b64_(cur[t].seek);
            size_t bl = strlen(b);
            memcpy(o, b, bl);
            o += bl;
            p = end;
        }
        size_t rest = strlen(p);
        memcpy(o, p, rest + 1);
        o += rest;
        free(s);
        s = out;
        n = (size_t)(o - out);
    }
    if (len) *len = n;
    return s;
}

char *data_loader_cursor_save(DataLoader *dl, size_t *len) {
    return cursor_json_(dl, dl->saved, dl->returned, len);
}

char *data_loader_cursor_save_previous(DataLoader *dl, size_t *len) {
    if (!dl->have_prev) {
        if (len) *len = (size_t)-1;
        return NULL;
    }
    return cursor_json_(dl, dl->prev, dl->returned - 1, len);
}

/* Header fields that must match between a cursor and a loader (or two cursors). */
static const char *const header_keys_[] = {
    "format", "version", "seed", "n_streams", "global_batch", "enc_len", "dec_len", "n_files",
    "files_hash", "batches", NULL
};

static int check_header_(json_t *a, json_t *b, char *err, size_t errlen) {
    for (int i = 0; header_keys_[i]; i++) {
        json_t *x = json_object_get(a, header_keys_[i]), *y = json_object_get(b, header_keys_[i]);
        if (!x || !y || !json_equal(x, y)) {
            char *sx = x ? json_dumps(x, JSON_ENCODE_ANY) : NULL;
            char *sy = y ? json_dumps(y, JSON_ENCODE_ANY) : NULL;
            snprintf(err, errlen, "data cursor mismatch in \"%s\": %s vs %s (HINT: resume with the "
                     "same --data files, --seed, batch, streams and lengths)", header_keys_[i],
                     sx ? sx : "missing", sy ? sy : "missing");
            free(sx); free(sy);
            return -1;
        }
    }
    return 0;
}

static int ids_from_json_(json_t *a, int32_t *dst, long cap, long *n) {
    if (!json_is_array(a) || (long)json_array_size(a) > cap) return -1;
    size_t i; json_t *v;
    json_array_foreach(a, i, v) {
        if (!json_is_integer(v)) return -1;
        dst[i] = (int32_t)json_integer_value(v);
    }
    *n = (long)json_array_size(a);
    return 0;
}

static int cursor_from_json_(json_t *o, Cursor *c, int P, char *err, size_t errlen) {
    json_int_t doc, epoch_docs, examples, rows, pidx;
    int epoch, slot, group_docs, exhausted, has_pending;
    json_t *carry, *pending;
    json_error_t je;
    if (json_unpack_ex(o, &je, 0, "{s:i, s:i, s:I, s:i, s:I, s:I, s:I, s:i, s:I, s:i, s:o, s:o}",
                       "epoch", &epoch, "slot", &slot, "doc", &doc, "group_docs", &group_docs,
                       "epoch_docs", &epoch_docs, "examples", &examples, "rows", &rows,
                       "exhausted", &exhausted, "pending_index", &pidx, "has_pending",
                       &has_pending, "carry", &carry, "pending", &pending) != 0) {
        snprintf(err, errlen, "bad stream entry in data cursor: %s", je.text);
        return -1;
    }
    c->epoch = epoch; c->slot = slot; c->doc = (long)doc; c->group_docs = group_docs;
    c->epoch_docs = (long)epoch_docs; c->examples = (long)examples; c->rows = (long)rows;
    c->exhausted = exhausted; c->pending_index = (long)pidx; c->has_pending = has_pending;
    carry_reserve_(c, json_array_size(carry) + 1);
    long n;
    if (ids_from_json_(carry, c->carry, (long)c->cap_carry, &n) != 0) goto bad;
    c->n_carry = n;
    if (ids_from_json_(pending, c->pending, P, &n) != 0) goto bad;
    c->n_pending = (int)n;
    if (epoch < 0 || slot < 0 || doc < 0 || (has_pending && n == 0)) goto bad;
    json_t *seek = json_object_get(o, "seek");
    if (seek) {
        c->seek = seek_from_json_(seek, err, errlen);
        if (!c->seek) return -1;
        if (c->seek->sp.stats.documents > c->doc) {
            snprintf(err, errlen, "bad \"seek\" in data cursor: its %ld documents are more "
                     "than the %ld read", c->seek->sp.stats.documents, c->doc);
            return -1;
        }
    }
    return 0;
bad:
    snprintf(err, errlen, "bad token list or counter in data cursor stream entry");
    return -1;
}

int data_loader_cursor_restore(DataLoader *dl, const char *buf, size_t len, char *err,
                               size_t errlen) {
    json_error_t je;
    json_t *root = json_loadb(buf, len, 0, &je);
    if (!root) {
        snprintf(err, errlen, "data cursor is not valid JSON (line %d: %s)", je.line, je.text);
        return -1;
    }
    long saved_returned = dl->returned;
    json_t *mine = cursor_header_(dl, dl->returned);
    json_object_set(mine, "batches", json_object_get(root, "batches"));
    json_t *ver = json_object_get(root, "version");
    if (json_is_integer(ver) && json_integer_value(ver) >= 1 &&
        json_integer_value(ver) <= CURSOR_VERSION)
        json_object_set(mine, "version", ver);     /* version 1: no seek points */
    int rc = check_header_(root, mine, err, errlen);
    json_decref(mine);
    json_t *arr = json_object_get(root, "streams");
    json_t *batches = json_object_get(root, "batches");
    if (rc == 0 && (!json_is_array(arr) || !json_is_integer(batches))) {
        snprintf(err, errlen, "data cursor has no \"streams\" array or \"batches\" count");
        rc = -1;
    }
    Cursor *tmp = xcalloc((size_t)dl->n_touch, sizeof(Cursor));
    for (int t = 0; t < dl->n_touch; t++) cursor_init_(&tmp[t], dl->P);
    for (int t = 0; rc == 0 && t < dl->n_touch; t++) {
        json_t *found = NULL, *o;
        size_t i;
        json_array_foreach(arr, i, o) {
            json_t *k = json_object_get(o, "k");
            if (json_is_integer(k) && json_integer_value(k) == dl->streams[t].k) { found = o; break; }
        }
        if (!found) {
            snprintf(err, errlen, "data cursor has no state for stream %d (HINT: merge the cursors "
                     "of all ranks with data_cursor_merge)", dl->streams[t].k);
            rc = -1;
            break;
        }
        rc = cursor_from_json_(found, &tmp[t], dl->P, err, errlen);
        if (rc == 0 && tmp[t].slot > dl->streams[t].n_files) {
            snprintf(err, errlen, "data cursor stream %d: file slot %d out of range",
                     dl->streams[t].k, tmp[t].slot);
            rc = -1;
        }
    }
    if (rc == 0) {
        prefetch_stop_(dl);
        for (int t = 0; t < dl->n_touch; t++) {
            Stream *s = &dl->streams[t];
            stream_close_reader_(s);
            cursor_copy_(&s->c, &tmp[t], dl->P);
            cursor_copy_(&dl->saved[t], &tmp[t], dl->P);
            stream_set_epoch_(dl, s, s->c.epoch);
            s->have_ex = 0;
        }
        dl->returned = (long)json_integer_value(batches);
        dl->have_prev = 0;
        dl->status = 0;
        dl->err[0] = 0;
    } else {
        dl->returned = saved_returned;
    }
    for (int t = 0; t < dl->n_touch; t++) cursor_free_(&tmp[t]);
    free(tmp);
    json_decref(root);
    return rc;
}

static int cmp_stream_k_(const void *a, const void *b) {
    json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "k"));
    json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "k"));
    return (x > y) - (x < y);
}

char *data_cursor_merge(const char *const *bufs, const size_t *lens, int n, size_t *len,
                        char *err, size_t errlen) {
    json_t *first = NULL, *all = json_array();
    char *out = NULL;
    for (int i = 0; i < n; i++) {
        json_error_t je;
        json_t *r = json_loadb(bufs[i], lens[i], 0, &je);
        if (!r) { snprintf(err, errlen, "cursor %d is not valid JSON: %s", i, je.text); goto done; }
        if (!first) first = json_incref(r);
        else if (check_header_(first, r, err, errlen) != 0) { json_decref(r); goto done; }
        json_t *arr = json_object_get(r, "streams"), *o;
        size_t j;
        json_array_foreach(arr, j, o) {
            json_t *k = json_object_get(o, "k");
            int dup = 0;
            size_t m; json_t *p;
            json_array_foreach(all, m, p) if (json_equal(json_object_get(p, "k"), k)) dup = 1;
            if (!dup) json_array_append(all, o);
        }
        json_decref(r);
    }
    if (!first) { snprintf(err, errlen, "no cursors to merge"); goto done; }
    size_t na = json_array_size(all);
    json_t **items = xmalloc((na ? na : 1) * sizeof(json_t *));
    for (size_t i = 0; i < na; i++) items[i] = json_incref(json_array_get(all, i));
    qsort(items, na, sizeof *items, cmp_stream_k_);
    json_t *sorted = json_array();
    for (size_t i = 0; i < na; i++) json_array_append_new(sorted, items[i]);
    free(items);
    json_object_set_new(first, "streams", sorted);
    out = json_dumps(first, JSON_COMPACT);
    if (out && len) *len = strlen(out);
done:
    json_decref(all);
    if (first) json_decref(first);
    return out;
}

/* ---------------------------------------------------------------------------------------- */

void data_loader_get_stats(const DataLoader *dl, DataLoaderStats *st) {
    *st = dl->status != 0 ? dl->end_st : dl->saved_st;
}

void data_loader_print_stats(const DataLoader *dl, FILE *out) {
    /* After an error or the end of the data, the counts include what was read for the batch
     * that could not be completed, so they agree with the error message printed before. */
    const DataLoaderStats *s = dl->status != 0 ? &dl->end_st : &dl->saved_st;
    if (dl->status < 0)
        fprintf(out, "(the loader stopped with an error after %ld batches: the counts below "
                "include what was read for the batch it could not complete)\n", dl->returned);
    else if (dl->status > 0)
        fprintf(out, "(the data ended after %ld batches (max_epochs): a partial last batch, if "
                "any, was dropped; the counts below include everything read)\n", dl->returned);
    fprintf(out, "documents=%ld used=%ld empty=%ld other_streams=%ld skipped_on_restore=%ld\n",
            s->docs_read, s->docs_used, s->docs_empty,
            s->docs_read - s->docs_used - s->docs_empty, s->docs_skipped);
    fprintf(out, "tokens=%lld tokens_before_chunking=%lld text_bytes=%lld input_bytes=%lld\n",
            s->tokens, s->tokens_total, s->text_bytes, s->input_bytes);
    fprintf(out, "pieces=%ld full=%ld short=%ld examples=%ld rows=%ld batches=%ld\n", s->pieces,
            s->pieces_full, s->pieces - s->pieces_full, s->examples, s->rows, dl->returned);
    fprintf(out, "bad records:");
    long total = 0;
    for (int k = 0; k < C4_NUM_BAD_KINDS; k++) {
        fprintf(out, " %s=%ld", c4_bad_kind_name((C4BadKind)k), s->bad[k]);
        total += s->bad[k];
    }
    fprintf(out, " total=%ld\n", total);
    fprintf(out, "damaged_files=%ld\n", s->files_damaged);
}

void data_loader_close(DataLoader *dl) {
    if (!dl) return;
    prefetch_stop_(dl);
    if (dl->depth > 0) {
        for (int i = 0; i < dl->depth; i++) {
            t5_batch_free(&dl->slots[i].b);
            for (int j = 0; j < dl->n_touch; j++) cursor_free_(&dl->slots[i].cur[j]);
            free(dl->slots[i].cur);
        }
        free(dl->slots);
        pthread_mutex_destroy(&dl->mu);
        pthread_cond_destroy(&dl->cv_fill);
        pthread_cond_destroy(&dl->cv_free);
    }
    for (int t = 0; t < dl->n_touch; t++) {
        Stream *s = &dl->streams[t];
        if (s->reader) c4_reader_close(s->reader);
        cursor_free_(&s->c);
        cursor_free_(&dl->saved[t]);
        cursor_free_(&dl->prev[t]);
        seek_unref_(s->spare);
        free(s->files); free(s->order); free(s->ex_in); free(s->ex_tg); free(s->mask);
        free(s->mask_scratch);
    }
    free(dl->tok);
    free(dl->streams);
    free(dl->saved);
    free(dl->prev);
    t5_batch_free(&dl->discard);
    if (dl->spm) spm_close(dl->spm);
    data_free_files(dl->files, dl->n_files);
    free(dl);
}
