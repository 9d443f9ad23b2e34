/*
 * ckpt/ckpt.c: sharded checkpoints; the directory layout and the contracts are in ckpt.h.
 *
 * ==== Format, version 1 (all integers little-endian) ====
 *
 * Shard file step_N/shard-RRRRR-of-WWWWW.zst, written by writer (rank) R of W:
 *
 *   offset  size  field
 *   0       8     magic "T5CKSHRD"
 *   8       4     u32 format version = 1
 *   12      4     u32 writer index R
 *   16      4     u32 writers W
 *   20      4     u32 header size = 48
 *   24      8     i64 step
 *   32      8     u64 save id (the manifest's "save_id": ties shards and manifest of one save)
 *   40      8     u64 XXH64 (seed 0) of bytes 0..39
 *   48      ...   the pieces' frames, back to back, no padding: frame i is one complete zstd frame
 *                 (content size recorded in the frame header) of piece i's stored bytes. The
 *                 frames tile [48, file size) exactly; the manifest gives each one's offset/length.
 *
 * Stored bytes of a piece of numel elements: U8 as is; F32 (IEEE-754 binary32) byte-plane
 * shuffled: stored[b * numel + i] = byte b (0 = least significant) of element i, which lets zstd
 * see the sign/exponent bytes together (x1.19 instead of x1.08 on normal floats, and faster).
 * A writer cuts each of its CkptPieces into chunks of at most CKPT_CHUNK_BYTES raw bytes; each
 * chunk is one manifest piece and one frame, so a reader decompresses only what it needs.
 *
 * manifest.json (UTF-8 JSON, written by rank 0 last; keys in this order):
 *   {
 *     "format": "t5eff-checkpoint",
 *     "version": 1,
 *     "step": N,                                    integer >= 0
 *     "save_id": "16 lowercase hex digits",
 *     "writers": W,                                 integer >= 1
 *     "compression": {"codec": "zstd", "level": L, "f32_filter": "byteplane4"},
 *     "shards": [{"file": "shard-00000-of-0000W.zst", "bytes": size of the file}, ...]  W entries
 *     "meta": { the caller's object },
 *     "tensors": [                                  sorted by name, names unique
 *       {"name": "param/shared.weight", "dtype": "f32" | "u8", "shape": [d0] | [d0, d1],
 *        "pieces": [                                sorted by elem_offset; they tile
 *                                                   [0, d0*d1) with no gap and no overlap
 *          {"shard": R, "offset": byte offset of the frame in shard R, "length": frame bytes,
 *           "elem_offset": first element (of the flattened tensor), "numel": elements,
 *           "xxh64": hex XXH64 of the piece's raw little-endian bytes (unshuffled), seeded with
 *                    XXH64 (seed 0) of the text "<name>\n<dtype>\n<d0>\n<d1>\n<elem_offset>"
 *                    (d1 = 0 for 1-D; decimal integers), so a piece moved to another tensor,
 *                    position or shape fails its check,
 *           "zxxh64": hex XXH64 (seed 0) of the frame bytes as stored in the shard}, ...]}, ...],
 *     "manifest_xxh64": "16 lowercase hex digits"
 *   }
 * The file's last 43 bytes are exactly  ,\n  "manifest_xxh64": "<16 hex>"\n}\n  and the checksum
 * is XXH64 (seed 0) of every byte before them (the file minus those 43 bytes). Writers produce
 * the rest with 2-space indentation, but readers only require valid JSON.
 *
 * Readers check, before trusting a byte: the manifest's size (<= 256 MiB), its checksum, every
 * field's presence and type and range; the shard file names; shard sizes against "bytes"; that
 * the frames of each shard tile it; each tensor's coverage; each shard's header (magic, version,
 * writer, writers, step, save id, header checksum); each frame's zxxh64, its zstd content size,
 * its decompressed size and the raw xxh64. Piece sizes are bounded (raw <= 64 MiB) so a bad
 * manifest cannot make a reader allocate without limit.
 */
#include "ckpt/ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>
#include <xxhash.h>
#include <zstd.h>

#include "common/util.h"
#include "parallel/mpi_check.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ckpt.c writes the host's bytes as little-endian: port the byte order first"
#endif

#define CKPT_FORMAT "t5eff-checkpoint"
#define CKPT_VERSION 1
#define SHARD_MAGIC "T5CKSHRD"
#define SHARD_HDR 48
#define CKPT_CHUNK_BYTES ((size_t)4 << 20)
#define CKPT_MAX_PIECE_BYTES ((uint64_t)64 << 20)
#define CKPT_MAX_MANIFEST ((size_t)256 << 20)
#define CKPT_MAX_NAME 512
#define CKPT_MAX_WRITERS (1 << 20)
#define CKPT_MAX_DIM ((int64_t)1 << 40)
#define CKPT_MAX_NUMEL ((uint64_t)1 << 48)
#define ERRMAX 2048
#define SUFFIX_PRE ",\n  \"manifest_xxh64\": \""
#define SUFFIX_LEN 43   /* strlen(SUFFIX_PRE) + 16 + strlen("\"\n}\n") */

int ckpt_test_crash_point = 0;

/* ---- small helpers ---- */

static size_t dtype_size_(CkptDtype d) { return d == CKPT_F32 ? 4 : 1; }
static const char *dtype_name_(CkptDtype d) { return d == CKPT_F32 ? "f32" : "u8"; }

static char *path_join_(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", a, b);
    return p;
}

static void hex16_(uint64_t v, char out[17]) { snprintf(out, 17, "%016llx", (unsigned long long)v); }

static int parse_hex16_(const char *s, uint64_t *out) {
    if (!s || strlen(s) != 16) return -1;
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return 0;
}

static uint64_t piece_seed_(const char *name, CkptDtype dt, int ndim, const int64_t shape[2],
                            uint64_t elem_offset) {
    char buf[CKPT_MAX_NAME + 128];
    int n = snprintf(buf, sizeof buf, "%s\n%s\n%lld\n%lld\n%llu", name, dtype_name_(dt),
                     (long long)shape[0], (long long)(ndim > 1 ? shape[1] : 0),
                     (unsigned long long)elem_offset);
    return XXH64(buf, (size_t)n, 0);
}

static void put_u32_(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static void put_u64_(unsigned char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static uint32_t get_u32_(const unsigned char *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = v << 8 | p[i]; return v; }
static uint64_t get_u64_(const unsigned char *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }

static void shard_name_(char *out, size_t n, int r, int w) {
    snprintf(out, n, "shard-%05d-of-%05d.zst", r, w);
}

static void shard_header_(unsigned char h[SHARD_HDR], int r, int w, long step, uint64_t save_id) {
    memcpy(h, SHARD_MAGIC, 8);
    put_u32_(h + 8, CKPT_VERSION);
    put_u32_(h + 12, (uint32_t)r);
    put_u32_(h + 16, (uint32_t)w);
    put_u32_(h + 20, SHARD_HDR);
    put_u64_(h + 24, (uint64_t)(int64_t)step);
    put_u64_(h + 32, save_id);
    put_u64_(h + 40, XXH64(h, 40, 0));
}

/* byte-plane shuffle of n f32 values (4n bytes) and its inverse */
static void shuffle4_(unsigned char *dst, const unsigned char *src, size_t n) {
    for (size_t i = 0; i < n; i++)
        for (int b = 0; b < 4; b++) dst[(size_t)b * n + i] = src[4 * i + (size_t)b];
}
static void unshuffle4_(unsigned char *dst, const unsigned char *src, size_t n) {
    for (size_t i = 0; i < n; i++)
        for (int b = 0; b < 4; b++) dst[4 * i + (size_t)b] = src[(size_t)b * n + i];
}

static int write_all_(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int pread_all_(int fd, void *buf, size_t n, off_t off) {
    char *p = buf;
    while (n > 0) {
        ssize_t r = pread(fd, p, n, off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) { errno = 0; return -1; }   /* end of file */
        p += r;
        n -= (size_t)r;
        off += r;
    }
    return 0;
}

static int fsync_path_(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}


/* Is name "step_" followed by 8 or more digits, then exactly `suffix`? Sets *step. */
static int parse_step_name_(const char *name, const char *suffix, long *step) {
    if (strncmp(name, "step_", 5) != 0) return 0;
    const char *p = name + 5;
    size_t nd = 0;
    long v = 0;
    while (p[nd] >= '0' && p[nd] <= '9') {
        if (nd >= 18) return 0;
        v = v * 10 + (p[nd] - '0');
        nd++;
    }
    if (nd < 8 || strcmp(p + nd, suffix) != 0) return 0;
    *step = v;
    return 1;
}

/* ---- tensor records (shared by the writer's merge and the reader) ---- */

typedef struct {
    int shard;
    uint64_t offset, length, elem_offset, numel, xxh, zxxh;
} PieceRec;

typedef struct {
    char *name;
    CkptDtype dtype;
    int ndim;
    int64_t shape[2];
    uint64_t numel;
    PieceRec *p;
    int np;
} TensorRec;

static int piece_cmp_(const void *a, const void *b) {
    const PieceRec *x = a, *y = b;
    return x->elem_offset < y->elem_offset ? -1 : x->elem_offset > y->elem_offset;
}
static int tensor_cmp_(const void *a, const void *b) {
    return strcmp(((const TensorRec *)a)->name, ((const TensorRec *)b)->name);
}

/* Pieces of t sorted, then checked to tile [0, numel). where names the file for the message. */
static int tensor_coverage_(TensorRec *t, const char *where, char *err, size_t errlen) {
    qsort(t->p, (size_t)t->np, sizeof *t->p, piece_cmp_);
    uint64_t at = 0;
    for (int i = 0; i < t->np; i++) {
        const PieceRec *p = &t->p[i];
        if (p->elem_offset > at) {
            set_error(err, errlen, "%s: tensor '%s': elements [%llu, %llu) are in no piece", where,
                      t->name, (unsigned long long)at, (unsigned long long)p->elem_offset);
            return -1;
        }
        if (p->elem_offset < at) {
            set_error(err, errlen, "%s: tensor '%s': pieces overlap at element %llu", where, t->name,
                      (unsigned long long)p->elem_offset);
            return -1;
        }
        at = p->elem_offset + p->numel;
    }
    if (at != t->numel) {
        set_error(err, errlen, "%s: tensor '%s': elements [%llu, %llu) are in no piece", where,
                  t->name, (unsigned long long)at, (unsigned long long)t->numel);
        return -1;
    }
    return 0;
}

static void tensors_free_(TensorRec *t, int n) {
    for (int i = 0; i < n; i++) { free(t[i].name); free(t[i].p); }
    free(t);
}

/* ================================ writing ================================ */

/* All ranks learn whether every rank succeeded. On failure err holds, on every rank, the lowest
 * failing rank's message prefixed with "rank R: ". */
static int agree_(MPI_Comm comm, int ok, char *err) {
    int rank, size, mine, first;
    MPI_CHECK(MPI_Comm_rank(comm, &rank));
    MPI_CHECK(MPI_Comm_size(comm, &size));
    mine = ok ? size : rank;
    MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm));
    if (first == size) return 0;
    char msg[ERRMAX];
    if (rank == first) snprintf(msg, sizeof msg, "%s", err);
    MPI_CHECK(MPI_Bcast(msg, ERRMAX, MPI_CHAR, first, comm));
    msg[ERRMAX - 1] = 0;
    if (size > 1) set_error(err, ERRMAX, "rank %d: %s", first, msg);
    else set_error(err, ERRMAX, "%s", msg);
    return -1;
}

static int check_pieces_(const CkptPiece *pc, int n, char *err) {
    for (int i = 0; i < n; i++) {
        const CkptPiece *p = &pc[i];
        const char *nm = p->name ? p->name : "(null)";
        if (!p->name || !*p->name || strlen(p->name) > CKPT_MAX_NAME) {
            set_error(err, ERRMAX, "piece %d: name '%s' is empty or longer than %d bytes", i, nm, CKPT_MAX_NAME);
            return -1;
        }
        if ((p->dtype != CKPT_F32 && p->dtype != CKPT_U8) || p->ndim < 1 || p->ndim > 2 ||
            p->shape[0] <= 0 || p->shape[0] > CKPT_MAX_DIM ||
            (p->ndim == 2 && (p->shape[1] <= 0 || p->shape[1] > CKPT_MAX_DIM))) {
            set_error(err, ERRMAX, "piece '%s': bad dtype, ndim or shape", nm);
            return -1;
        }
        uint64_t total = (uint64_t)p->shape[0] * (uint64_t)(p->ndim == 2 ? p->shape[1] : 1);
        if (total > CKPT_MAX_NUMEL || p->elem_offset > total || p->numel > total - p->elem_offset ||
            (p->numel > 0 && !p->data)) {
            set_error(err, ERRMAX, "piece '%s': elements [%zu, +%zu) outside the tensor (%llu elements) "
                     "or no data", nm, p->elem_offset, p->numel, (unsigned long long)total);
            return -1;
        }
    }
    return 0;
}

/* Write this rank's shard; append its piece table (JSON) to *table. 0 or -1 with err. */
static int write_shard_(const char *path, int rank, int writers, long step, uint64_t save_id,
                        int level, const CkptPiece *pc, int n, json_t *table, char *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0) {
        set_error(err, ERRMAX, "%s: cannot create: %s (HINT: check permissions and free space of the "
                 "run directory)", path, strerror(errno));
        return -1;
    }
    unsigned char hdr[SHARD_HDR];
    shard_header_(hdr, rank, writers, step, save_id);
    uint64_t pos = 0;
    int rc = -1;
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    unsigned char *shuf = NULL, *zbuf = NULL;
    size_t zcap = ZSTD_compressBound(CKPT_CHUNK_BYTES);
    if (!cc) FATAL("out of memory?", "ZSTD_createCCtx failed");
    shuf = xmalloc(CKPT_CHUNK_BYTES);
    zbuf = xmalloc(zcap);
    json_t *pieces = json_array();
    if (write_all_(fd, hdr, SHARD_HDR) != 0) goto io_fail;
    pos = SHARD_HDR;
    for (int i = 0; i < n; i++) {
        const CkptPiece *p = &pc[i];
        size_t es = dtype_size_(p->dtype), per = CKPT_CHUNK_BYTES / es;
        for (size_t done = 0; done < p->numel; done += per) {
            size_t k = p->numel - done < per ? p->numel - done : per;
            const unsigned char *raw = (const unsigned char *)p->data + done * es;
            uint64_t eo = p->elem_offset + done;
            uint64_t h = XXH64(raw, k * es, piece_seed_(p->name, p->dtype, p->ndim, p->shape, eo));
            const unsigned char *src = raw;
            if (p->dtype == CKPT_F32) { shuffle4_(shuf, raw, k); src = shuf; }
            size_t z = ZSTD_compressCCtx(cc, zbuf, zcap, src, k * es, level);
            if (ZSTD_isError(z)) {
                set_error(err, ERRMAX, "%s: zstd: %s (tensor '%s')", path, ZSTD_getErrorName(z), p->name);
                goto fail;
            }
            if (write_all_(fd, zbuf, z) != 0) goto io_fail;
            char hx[17], zx[17];
            hex16_(h, hx);
            hex16_(XXH64(zbuf, z, 0), zx);
            json_t *o = json_pack("{s:s, s:s, s:[I]}", "name", p->name, "dtype", dtype_name_(p->dtype),
                                  "shape", (json_int_t)p->shape[0]);
            if (p->ndim == 2) json_array_append_new(json_object_get(o, "shape"), json_integer(p->shape[1]));
            json_object_set_new(o, "offset", json_integer((json_int_t)pos));
            json_object_set_new(o, "length", json_integer((json_int_t)z));
            json_object_set_new(o, "elem_offset", json_integer((json_int_t)eo));
            json_object_set_new(o, "numel", json_integer((json_int_t)k));
            json_object_set_new(o, "xxh64", json_string(hx));
            json_object_set_new(o, "zxxh64", json_string(zx));
            json_array_append_new(pieces, o);
            pos += z;
        }
    }
    if (fsync(fd) != 0) goto io_fail;
    int cfd = fd;
    fd = -1;
    if (close(cfd) != 0) goto io_fail;
    json_object_set_new(table, "bytes", json_integer((json_int_t)pos));
    json_object_set_new(table, "pieces", pieces);
    pieces = NULL;
    rc = 0;
    goto done;
io_fail:;
    int e = errno ? errno : EIO;
    set_error(err, ERRMAX, "%s: write failed at byte %llu: %s (HINT: %s)", path, (unsigned long long)pos,
              strerror(e), e == EFBIG ? "a file-size limit is in force (ulimit -f); lift it"
              : "free space on this file system, e.g. a smaller --keep-last, or another --run-dir");
fail:
    if (fd >= 0) close(fd);
done:
    if (pieces) json_decref(pieces);
    ZSTD_freeCCtx(cc);
    free(shuf);
    free(zbuf);
    return rc;
}

static int get_int_(json_t *o, const char *key, uint64_t max, uint64_t *out);

/* Rank 0: parse the gathered piece tables into sorted, coverage-checked tensor records. */
static int merge_tables_(char **texts, int writers, const char *where, uint64_t *shard_bytes,
                         TensorRec **out, int *nout, char *err) {
    TensorRec *t = NULL;
    int nt = 0, cap = 0, rc = -1;
    for (int r = 0; r < writers; r++) {
        json_error_t je;
        json_t *tab = json_loads(texts[r], 0, &je);
        json_t *ps = tab ? json_object_get(tab, "pieces") : NULL;
        if (!tab || !json_is_array(ps) || get_int_(tab, "bytes", UINT64_MAX >> 1, &shard_bytes[r])) {
            set_error(err, ERRMAX, "%s: piece table of rank %d unreadable (internal error)", where, r);
            if (tab) json_decref(tab);
            goto done;
        }
        size_t i;
        json_t *o;
        json_array_foreach(ps, i, o) {
            const char *name = json_string_value(json_object_get(o, "name"));
            const char *dt = json_string_value(json_object_get(o, "dtype"));
            json_t *sh = json_object_get(o, "shape");
            CkptDtype d = strcmp(dt, "f32") == 0 ? CKPT_F32 : CKPT_U8;
            int ndim = (int)json_array_size(sh);
            int64_t shape[2] = {json_integer_value(json_array_get(sh, 0)),
                                ndim > 1 ? json_integer_value(json_array_get(sh, 1)) : 0};
            TensorRec *cur = NULL;
            for (int k = nt - 1; k >= 0 && !cur; k--)   /* a rank's chunks of one tensor are adjacent */
                if (strcmp(t[k].name, name) == 0) cur = &t[k];
            if (!cur) {
                if (nt == cap) { cap = cap ? 2 * cap : 64; t = xrealloc(t, (size_t)cap * sizeof *t); }
                cur = &t[nt++];
                memset(cur, 0, sizeof *cur);
                cur->name = xstrdup(name);
                cur->dtype = d;
                cur->ndim = ndim;
                cur->shape[0] = shape[0];
                cur->shape[1] = shape[1];
                cur->numel = (uint64_t)shape[0] * (uint64_t)(ndim > 1 ? shape[1] : 1);
            } else if (cur->dtype != d || cur->ndim != ndim || cur->shape[0] != shape[0] ||
                       cur->shape[1] != shape[1]) {
                set_error(err, ERRMAX, "%s: tensor '%s': rank %d gives another dtype or shape than an "
                         "earlier rank", where, name, r);
                json_decref(tab);
                goto done;
            }
            PieceRec p = {.shard = r};
            get_int_(o, "offset", UINT64_MAX >> 1, &p.offset);
            get_int_(o, "length", UINT64_MAX >> 1, &p.length);
            get_int_(o, "elem_offset", UINT64_MAX >> 1, &p.elem_offset);
            get_int_(o, "numel", UINT64_MAX >> 1, &p.numel);
            parse_hex16_(json_string_value(json_object_get(o, "xxh64")), &p.xxh);
            parse_hex16_(json_string_value(json_object_get(o, "zxxh64")), &p.zxxh);
            cur->p = xrealloc(cur->p, (size_t)(cur->np + 1) * sizeof *cur->p);
            cur->p[cur->np++] = p;
        }
        json_decref(tab);
    }
    if (nt) qsort(t, (size_t)nt, sizeof *t, tensor_cmp_);
    for (int i = 0; i < nt; i++) {
        if (i > 0 && strcmp(t[i].name, t[i - 1].name) == 0) {
            set_error(err, ERRMAX, "%s: tensor '%s' given with different dtypes/shapes", where, t[i].name);
            goto done;
        }
        if (tensor_coverage_(&t[i], where, err, ERRMAX) != 0) goto done;
    }
    rc = 0;
done:
    if (rc != 0) { tensors_free_(t, nt); t = NULL; nt = 0; }
    *out = t;
    *nout = nt;
    return rc;
}

/* Rank 0: the manifest text (with its checksum suffix) for the merged records. */
static char *manifest_text_(long step, uint64_t save_id, int writers, int level, const uint64_t *shard_bytes,
                            json_t *meta, const TensorRec *t, int nt, size_t *len) {
    char hx[17];
    hex16_(save_id, hx);
    json_t *root = json_object();
    json_object_set_new(root, "format", json_string(CKPT_FORMAT));
    json_object_set_new(root, "version", json_integer(CKPT_VERSION));
    json_object_set_new(root, "step", json_integer(step));
    json_object_set_new(root, "save_id", json_string(hx));
    json_object_set_new(root, "writers", json_integer(writers));
    json_object_set_new(root, "compression", json_pack("{s:s, s:i, s:s}", "codec", "zstd", "level", level,
                                                       "f32_filter", "byteplane4"));
    json_t *shards = json_array();
    for (int r = 0; r < writers; r++) {
        char nm[64];
        shard_name_(nm, sizeof nm, r, writers);
        json_array_append_new(shards, json_pack("{s:s, s:I}", "file", nm, "bytes", (json_int_t)shard_bytes[r]));
    }
    json_object_set_new(root, "shards", shards);
    json_object_set(root, "meta", meta);
    json_t *ts = json_array();
    for (int i = 0; i < nt; i++) {
        json_t *sh = json_array();
        for (int d = 0; d < t[i].ndim; d++) json_array_append_new(sh, json_integer(t[i].shape[d]));
        json_t *ps = json_array();
        for (int k = 0; k < t[i].np; k++) {
            const PieceRec *p = &t[i].p[k];
            char a[17], b[17];
            hex16_(p->xxh, a);
            hex16_(p->zxxh, b);
            json_array_append_new(ps, json_pack("{s:i, s:I, s:I, s:I, s:I, s:s, s:s}", "shard", p->shard,
                                                "offset", (json_int_t)p->offset, "length", (json_int_t)p->length,
                                                "elem_offset", (json_int_t)p->elem_offset,
                                                "numel", (json_int_t)p->numel, "xxh64", a, "zxxh64", b));
        }
        json_array_append_new(ts, json_pack("{s:s, s:s, s:o, s:o}", "name", t[i].name, "dtype",
                                            dtype_name_(t[i].dtype), "shape", sh, "pieces", ps));
    }
    json_object_set_new(root, "tensors", ts);
    char *body = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    if (!body) FATAL("out of memory?", "json_dumps of the manifest failed");
    size_t n = strlen(body);
    if (n < 2 || strcmp(body + n - 2, "\n}") != 0) FATAL("jansson output changed", "manifest does not end in \"\\n}\"");
    n -= 2;
    char *out = xmalloc(n + SUFFIX_LEN + 1);
    memcpy(out, body, n);
    free(body);
    hex16_(XXH64(out, n, 0), hx);
    snprintf(out + n, SUFFIX_LEN + 1, "%s%s\"\n}\n", SUFFIX_PRE, hx);
    *len = n + SUFFIX_LEN;
    return out;
}

static uint64_t new_save_id_(long step, const char *run_dir) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    x ^= (uint64_t)getpid() << 32;
    return XXH64(run_dir, strlen(run_dir), x ^ rng_mix64((uint64_t)step));
}

/* Rank 0 before a save: create RUN/ckpt, remove every leftover step_*.tmp. */
static int prepare_dir_(const char *ckdir, const char *tmpdir, char *err) {
    if (mkdir_p(ckdir) != 0) {
        set_error(err, ERRMAX, "%s: cannot create directory: %s", ckdir, strerror(errno));
        return -1;
    }
    DIR *d = opendir(ckdir);
    if (!d) {
        set_error(err, ERRMAX, "%s: cannot list: %s", ckdir, strerror(errno));
        return -1;
    }
    struct dirent *e;
    long s;
    while ((e = readdir(d))) {
        if (!parse_step_name_(e->d_name, ".tmp", &s)) continue;
        char *p = path_join_(ckdir, e->d_name);
        int r = rm_rf(p);
        if (r != 0) set_error(err, ERRMAX, "%s: cannot remove a leftover temporary checkpoint: %s", p, strerror(errno));
        free(p);
        if (r != 0) { closedir(d); return -1; }
    }
    closedir(d);
    if (mkdir(tmpdir, 0755) != 0) {
        set_error(err, ERRMAX, "%s: cannot create: %s (HINT: check free space and permissions)", tmpdir, strerror(errno));
        return -1;
    }
    return 0;
}

/* Rank 0: move the finished tmp dir onto final (atomically replacing an existing step_N). */
static int commit_dir_(const char *tmpdir, const char *final, char *err) {
    if (rename(tmpdir, final) == 0) return 0;
    if (errno != EEXIST && errno != ENOTEMPTY) {
        set_error(err, ERRMAX, "rename %s -> %s: %s", tmpdir, final, strerror(errno));
        return -1;
    }
    /* step_N exists (the same step saved again, e.g. after a resume): swap, then drop the old */
    if (renameat2(AT_FDCWD, tmpdir, AT_FDCWD, final, RENAME_EXCHANGE) != 0) {
        set_error(err, ERRMAX, "%s already exists and cannot be replaced atomically (%s); HINT: move it "
                 "away", final, strerror(errno));
        return -1;
    }
    if (rm_rf(tmpdir) != 0)
        fprintf(stderr, "warning: %s: cannot remove the replaced checkpoint: %s\n", tmpdir, strerror(errno));
    return 0;
}

int ckpt_save(MPI_Comm comm, const CkptSaveArgs *args, const CkptPiece *pieces, int n_pieces,
              char *err_out, size_t errlen) {
    int rank, size;
    MPI_CHECK(MPI_Comm_rank(comm, &rank));
    MPI_CHECK(MPI_Comm_size(comm, &size));
    char err[ERRMAX] = "";
    int level = args->zstd_level ? args->zstd_level : CKPT_DEFAULT_ZSTD_LEVEL;
    char stepname[64], shardname[64];
    snprintf(stepname, sizeof stepname, "step_%08ld", args->step);
    shard_name_(shardname, sizeof shardname, rank, size);
    char *ckdir = path_join_(args->run_dir, "ckpt");
    char tmpname[80];
    snprintf(tmpname, sizeof tmpname, "%s.tmp", stepname);
    char *tmpdir = path_join_(ckdir, tmpname), *final = path_join_(ckdir, stepname);
    char *shard = path_join_(tmpdir, shardname);
    json_t *meta = NULL, *table = json_object();
    TensorRec *t = NULL;
    int nt = 0, rc = -1, crashed = 0;
    uint64_t *shard_bytes = NULL;
    char *text = NULL, **texts = NULL;

    /* 1. arguments; rank 0 prepares step_N.tmp and the save id */
    int ok = 1;
    if (args->step < 0 || level < 1 || level > ZSTD_maxCLevel()) {
        set_error(err, ERRMAX, "%s: bad step %ld or zstd level %d", ckdir, args->step, level);
        ok = 0;
    } else if (check_pieces_(pieces, n_pieces, err) != 0) {
        ok = 0;
    }
    uint64_t save_id = 0;
    if (ok && rank == 0) {
        json_error_t je;
        meta = json_loads(args->meta_json ? args->meta_json : "{}", JSON_REJECT_DUPLICATES, &je);
        if (!meta || !json_is_object(meta)) {
            set_error(err, ERRMAX, "%s: meta_json is not a JSON object: %s", final, meta ? "another type" : je.text);
            ok = 0;
        } else if (prepare_dir_(ckdir, tmpdir, err) != 0) {
            ok = 0;
        }
        save_id = new_save_id_(args->step, args->run_dir);
    }
    int made_tmp = ok && rank == 0;
    if (agree_(comm, ok, err) != 0) goto cleanup;
    MPI_CHECK(MPI_Bcast(&save_id, 1, MPI_UINT64_T, 0, comm));

    /* 2. every rank writes and fsyncs its shard (into the directory rank 0 made: RUN must be on
     * a file system every rank shares) */
    struct stat tst;
    if (stat(tmpdir, &tst) != 0) {
        set_error(err, ERRMAX, "%s (made by rank 0) is not visible here: %s (HINT: --run-dir must be on a "
                  "file system shared by every rank)", tmpdir, strerror(errno));
        ok = 0;
    } else {
        ok = write_shard_(shard, rank, size, args->step, save_id, level, pieces, n_pieces, table, err) == 0;
    }
    if (agree_(comm, ok, err) != 0) goto cleanup;
    if (ckpt_test_crash_point == 1) { crashed = 1; set_error(err, ERRMAX, "simulated crash after the shards"); goto cleanup; }

    /* 3. piece tables to rank 0 */
    text = json_dumps(table, JSON_COMPACT);
    int len = (int)strlen(text) + 1, *lens = NULL, *displs = NULL;
    char *all = NULL;
    if (rank == 0) {
        lens = xcalloc((size_t)size, sizeof *lens);
        displs = xcalloc((size_t)size, sizeof *displs);
    }
    MPI_CHECK(MPI_Gather(&len, 1, MPI_INT, lens, 1, MPI_INT, 0, comm));
    if (rank == 0) {
        long tot = 0;
        for (int r = 0; r < size; r++) { displs[r] = (int)tot; tot += lens[r]; }
        if (tot > (long)1 << 30) FATAL("fewer, larger pieces", "piece tables of %ld bytes", tot);
        all = xmalloc((size_t)tot);
    }
    MPI_CHECK(MPI_Gatherv(text, len, MPI_CHAR, all, lens, displs, MPI_CHAR, 0, comm));

    /* 4. rank 0 commits: manifest, rename, latest */
    ok = 1;
    if (rank == 0) {
        texts = xcalloc((size_t)size, sizeof *texts);
        for (int r = 0; r < size; r++) texts[r] = all + displs[r];
        shard_bytes = xcalloc((size_t)size, sizeof *shard_bytes);
        ok = merge_tables_(texts, size, final, shard_bytes, &t, &nt, err) == 0;
        if (ok) {
            size_t mlen;
            char *m = manifest_text_(args->step, save_id, size, level, shard_bytes, meta, t, nt, &mlen);
            char *mpath = path_join_(tmpdir, "manifest.json");
            if (write_file_atomic(mpath, m, mlen) != 0) {
                set_error(err, ERRMAX, "%s: write failed: %s (HINT: free space on this file system)", mpath,
                         strerror(errno));
                ok = 0;
            }
            free(mpath);
            free(m);
        }
        if (ok && ckpt_test_crash_point == 2) { crashed = 1; ok = 0; set_error(err, ERRMAX, "simulated crash after the manifest"); }
        if (ok && commit_dir_(tmpdir, final, err) != 0) ok = 0;
        if (ok && fsync_path_(ckdir) != 0) {
            set_error(err, ERRMAX, "%s: fsync failed: %s", ckdir, strerror(errno));
            ok = 0;
        }
        if (ok) made_tmp = 0;   /* committed: nothing to clean up any more */
        if (ok && ckpt_test_crash_point == 3) { crashed = 1; ok = 0; set_error(err, ERRMAX, "simulated crash before latest"); }
        if (ok) {
            char *lpath = path_join_(ckdir, "latest");
            char line[80];
            int n = snprintf(line, sizeof line, "%s\n", stepname);
            if (write_file_atomic(lpath, line, (size_t)n) != 0) {
                set_error(err, ERRMAX, "%s: cannot replace (the checkpoint %s is committed but not named "
                         "latest): %s", lpath, final, strerror(errno));
                ok = 0;
            }
            free(lpath);
        }
    }
    free(lens);
    free(displs);
    free(all);
    if (agree_(comm, ok, err) != 0) goto cleanup;
    rc = 0;

cleanup:
    /* every rank gets here together (each failure above is agreed on first); the others wait
     * until rank 0 has removed step_N.tmp, so "failed" means "nothing left" on every rank */
    if (rc != 0 && rank == 0 && made_tmp && !crashed && rm_rf(tmpdir) != 0)
        fprintf(stderr, "warning: %s: cannot remove after a failed save: %s\n", tmpdir, strerror(errno));
    if (rc != 0) MPI_CHECK(MPI_Barrier(comm));
    if (rc != 0) set_error(err_out, errlen, "checkpoint step %ld: %s", args->step, err);
    if (meta) json_decref(meta);
    json_decref(table);
    free(text);
    free(texts);
    free(shard_bytes);
    tensors_free_(t, nt);
    free(ckdir); free(tmpdir); free(final); free(shard);
    return rc;
}

/* ---- background save ---- */

struct CkptAsync {
    pthread_t th;
    MPI_Comm comm;
    CkptSaveArgs args;
    char *run_dir, *meta;
    CkptPiece *pieces;
    int n;
    int rc;
    char err[ERRMAX];
};

static int async_inflight_ = 0;   /* only the calling (training) thread touches this */

static void *async_main_(void *arg) {
    CkptAsync *j = arg;
    j->rc = ckpt_save(j->comm, &j->args, j->pieces, j->n, j->err, sizeof j->err);
    return NULL;
}

CkptAsync *ckpt_save_begin(MPI_Comm comm, const CkptSaveArgs *args, const CkptPiece *pieces,
                           int n_pieces, char *err, size_t errlen) {
    (void)err; (void)errlen;
    if (async_inflight_)
        FATAL("call ckpt_save_end before the next ckpt_save_begin", "a background checkpoint save is "
              "already in flight (step %ld requested)", args->step);
    int provided;
    MPI_CHECK(MPI_Query_thread(&provided));
    if (provided < MPI_THREAD_MULTIPLE)
        FATAL("initialise MPI with MPI_Init_thread(..., MPI_THREAD_MULTIPLE, ...)",
              "background checkpoint saves need MPI_THREAD_MULTIPLE (have level %d)", provided);
    CkptAsync *j = xcalloc(1, sizeof *j);
    MPI_CHECK(MPI_Comm_dup(comm, &j->comm));
    j->run_dir = xstrdup(args->run_dir);
    j->meta = args->meta_json ? xstrdup(args->meta_json) : NULL;
    j->args = *args;
    j->args.run_dir = j->run_dir;
    j->args.meta_json = j->meta;
    j->n = n_pieces;
    j->pieces = xcalloc((size_t)(n_pieces ? n_pieces : 1), sizeof *j->pieces);
    char cerr[ERRMAX];
    int valid = check_pieces_(pieces, n_pieces, cerr) == 0;   /* else the save fails, collectively */
    for (int i = 0; i < n_pieces; i++) {
        CkptPiece p = pieces[i];
        p.name = pieces[i].name ? xstrdup(pieces[i].name) : NULL;
        p.data = NULL;
        size_t bytes = p.numel * dtype_size_(p.dtype);
        if (valid && bytes) {
            void *d = xmalloc(bytes);
            memcpy(d, pieces[i].data, bytes);
            p.data = d;
        }
        j->pieces[i] = p;
    }
    async_inflight_ = 1;
    if (pthread_create(&j->th, NULL, async_main_, j) != 0)
        FATAL("the process may be out of threads", "pthread_create for the checkpoint writer failed");
    return j;
}

int ckpt_save_end(CkptAsync *j, char *err, size_t errlen) {
    if (!j) return 0;
    pthread_join(j->th, NULL);
    async_inflight_ = 0;
    int rc = j->rc;
    if (rc != 0) set_error(err, errlen, "%s", j->err);
    MPI_CHECK(MPI_Comm_free(&j->comm));
    for (int i = 0; i < j->n; i++) { free((void *)j->pieces[i].name); free((void *)j->pieces[i].data); }
    free(j->pieces);
    free(j->run_dir);
    free(j->meta);
    free(j);
    return rc;
}

/* ================================ reading ================================ */

struct Ckpt {
    char *dir, *mpath;
    long step;
    uint64_t save_id;
    int writers;
    char *meta;
    TensorRec *t;
    int nt;
    char **shard_path;
    uint64_t *shard_bytes;
    int *fd;          /* -1 until opened and its header checked */
    ZSTD_DCtx *dctx;
};

/* JSON integer in [0, max]. 0 or -1. */
static int get_int_(json_t *o, const char *key, uint64_t max, uint64_t *out) {
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max) return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int shard_off_cmp_(const void *a, const void *b) {
    const PieceRec *x = a, *y = b;
    if (x->shard != y->shard) return x->shard < y->shard ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* The frames of each shard must tile [SHARD_HDR, bytes): every byte of a shard is then covered by
 * the header checksum or by one frame's zxxh64. */
static int check_tiling_(const Ckpt *ck, char *err) {
    size_t total = 0;
    for (int i = 0; i < ck->nt; i++) total += (size_t)ck->t[i].np;
    PieceRec *all = xmalloc((total ? total : 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < ck->nt; i++)
        for (int j = 0; j < ck->t[i].np; j++) all[k++] = ck->t[i].p[j];
    qsort(all, total, sizeof *all, shard_off_cmp_);
    int rc = 0;
    k = 0;
    for (int r = 0; r < ck->writers && rc == 0; r++) {
        uint64_t at = SHARD_HDR;
        for (; k < total && all[k].shard == r; k++) {
            if (all[k].offset != at) {
                set_error(err, ERRMAX, "%s: shard %d: frames do not tile the file (byte %llu expected, a "
                         "piece starts at %llu)", ck->mpath, r, (unsigned long long)at,
                         (unsigned long long)all[k].offset);
                rc = -1;
                break;
            }
            at += all[k].length;
        }
        if (rc == 0 && at != ck->shard_bytes[r]) {
            set_error(err, ERRMAX, "%s: shard %d: frames end at byte %llu but \"bytes\" is %llu", ck->mpath,
                     r, (unsigned long long)at, (unsigned long long)ck->shard_bytes[r]);
            rc = -1;
        }
    }
    free(all);
    return rc;
}

#define BAD(...) do { set_error(err, ERRMAX, __VA_ARGS__); goto fail; } while (0)

/* Parse and check the manifest text of ck (checksum already verified). */
static int parse_manifest_(Ckpt *ck, const char *text, size_t len, char *err) {
    const char *mp = ck->mpath;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    uint64_t v;
    if (!root) BAD("%s: not valid JSON: %s (line %d)", mp, je.text, je.line);
    if (!json_is_object(root)) BAD("%s: not a JSON object", mp);
    json_t *f = json_object_get(root, "format");
    if (!json_is_string(f) || strcmp(json_string_value(f), CKPT_FORMAT) != 0)
        BAD("%s: \"format\" is not \"%s\": not a checkpoint manifest", mp, CKPT_FORMAT);
    if (get_int_(root, "version", 1u << 30, &v)) BAD("%s: \"version\" must be an integer", mp);
    if (v != CKPT_VERSION) BAD("%s: format version %llu; this build reads version %d (HINT: use the "
                               "t5ckpt that wrote it)", mp, (unsigned long long)v, CKPT_VERSION);
    if (get_int_(root, "step", (uint64_t)1 << 62, &v)) BAD("%s: \"step\" must be a non-negative integer", mp);
    ck->step = (long)v;
    if (parse_hex16_(json_string_value(json_object_get(root, "save_id")), &ck->save_id))
        BAD("%s: \"save_id\" must be 16 hex digits", mp);
    if (get_int_(root, "writers", CKPT_MAX_WRITERS, &v) || v < 1) BAD("%s: \"writers\" must be an integer >= 1", mp);
    ck->writers = (int)v;
    const char *mx = json_string_value(json_object_get(root, "manifest_xxh64"));
    char want[17];
    hex16_(XXH64(text, len - SUFFIX_LEN, 0), want);
    if (!mx || strcmp(mx, want) != 0) BAD("%s: \"manifest_xxh64\" does not match the file's checksum", mp);
    json_t *meta = json_object_get(root, "meta");
    if (!json_is_object(meta)) BAD("%s: \"meta\" must be an object", mp);
    ck->meta = json_dumps(meta, JSON_COMPACT);
    if (!ck->meta) FATAL("out of memory?", "json_dumps failed");

    json_t *sh = json_object_get(root, "shards");
    if (!json_is_array(sh) || json_array_size(sh) != (size_t)ck->writers)
        BAD("%s: \"shards\" must be an array of %d entries", mp, ck->writers);
    ck->shard_path = xcalloc((size_t)ck->writers, sizeof *ck->shard_path);
    ck->shard_bytes = xcalloc((size_t)ck->writers, sizeof *ck->shard_bytes);
    ck->fd = xmalloc((size_t)ck->writers * sizeof *ck->fd);
    for (int r = 0; r < ck->writers; r++) ck->fd[r] = -1;
    for (int r = 0; r < ck->writers; r++) {
        json_t *s = json_array_get(sh, (size_t)r);
        char nm[64];
        shard_name_(nm, sizeof nm, r, ck->writers);
        const char *fn = json_string_value(json_object_get(s, "file"));
        if (!json_is_object(s) || !fn || strcmp(fn, nm) != 0) BAD("%s: shards[%d].file must be \"%s\"", mp, r, nm);
        if (get_int_(s, "bytes", (uint64_t)1 << 50, &ck->shard_bytes[r]) || ck->shard_bytes[r] < SHARD_HDR)
            BAD("%s: shards[%d].bytes must be an integer >= %d", mp, r, SHARD_HDR);
        ck->shard_path[r] = path_join_(ck->dir, nm);
    }

    json_t *ts = json_object_get(root, "tensors");
    if (!json_is_array(ts)) BAD("%s: \"tensors\" must be an array", mp);
    size_t nt = json_array_size(ts);
    if (nt > (1u << 24)) BAD("%s: too many tensors (%zu)", mp, nt);
    ck->t = xcalloc(nt ? nt : 1, sizeof *ck->t);
    for (size_t i = 0; i < nt; i++) {
        json_t *o = json_array_get(ts, i);
        TensorRec *t = &ck->t[i];
        ck->nt = (int)i + 1;
        const char *name = json_string_value(json_object_get(o, "name"));
        if (!json_is_object(o) || !name || !*name || strlen(name) > CKPT_MAX_NAME)
            BAD("%s: tensors[%zu]: \"name\" must be a non-empty string of at most %d bytes", mp, i, CKPT_MAX_NAME);
        t->name = xstrdup(name);
        const char *dt = json_string_value(json_object_get(o, "dtype"));
        if (!dt || (strcmp(dt, "f32") != 0 && strcmp(dt, "u8") != 0))
            BAD("%s: tensor '%s': \"dtype\" must be \"f32\" or \"u8\"", mp, name);
        t->dtype = strcmp(dt, "f32") == 0 ? CKPT_F32 : CKPT_U8;
        json_t *shp = json_object_get(o, "shape");
        size_t nd = json_is_array(shp) ? json_array_size(shp) : 0;
        if (nd < 1 || nd > 2) BAD("%s: tensor '%s': \"shape\" must be an array of 1 or 2 integers", mp, name);
        t->ndim = (int)nd;
        t->numel = 1;
        for (size_t d = 0; d < nd; d++) {
            json_t *x = json_array_get(shp, d);
            if (!json_is_integer(x) || json_integer_value(x) < 1 || json_integer_value(x) > CKPT_MAX_DIM)
                BAD("%s: tensor '%s': shape[%zu] must be an integer in [1, 2^40]", mp, name, d);
            t->shape[d] = json_integer_value(x);
            t->numel *= (uint64_t)t->shape[d];
            if (t->numel > CKPT_MAX_NUMEL) BAD("%s: tensor '%s': more than 2^48 elements", mp, name);
        }
        json_t *ps = json_object_get(o, "pieces");
        size_t np = json_is_array(ps) ? json_array_size(ps) : 0;
        if (np < 1 || np > (1u << 24)) BAD("%s: tensor '%s': \"pieces\" must be a non-empty array", mp, name);
        t->p = xcalloc(np, sizeof *t->p);
        t->np = (int)np;
        uint64_t es = dtype_size_(t->dtype);
        for (size_t k = 0; k < np; k++) {
            json_t *q = json_array_get(ps, k);
            PieceRec *p = &t->p[k];
            uint64_t s;
            if (!json_is_object(q)) BAD("%s: tensor '%s': pieces[%zu] must be an object", mp, name, k);
            if (get_int_(q, "shard", (uint64_t)ck->writers - 1, &s))
                BAD("%s: tensor '%s': pieces[%zu].shard must be an integer in [0, %d)", mp, name, k, ck->writers);
            p->shard = (int)s;
            uint64_t sb = ck->shard_bytes[p->shard];
            if (get_int_(q, "offset", sb, &p->offset) || p->offset < SHARD_HDR ||
                get_int_(q, "length", sb - p->offset, &p->length) || p->length < 1)
                BAD("%s: tensor '%s': pieces[%zu]: offset/length outside shard %d (%llu bytes)", mp, name,
                    k, p->shard, (unsigned long long)sb);
            if (get_int_(q, "elem_offset", t->numel - 1, &p->elem_offset) ||
                get_int_(q, "numel", t->numel - p->elem_offset, &p->numel) || p->numel < 1)
                BAD("%s: tensor '%s': pieces[%zu]: elem_offset/numel outside the tensor (%llu elements)",
                    mp, name, k, (unsigned long long)t->numel);
            if (p->numel * es > CKPT_MAX_PIECE_BYTES || p->length > ZSTD_compressBound(p->numel * es))
                BAD("%s: tensor '%s': pieces[%zu]: %llu raw / %llu stored bytes is too large for a piece",
                    mp, name, k, (unsigned long long)(p->numel * es), (unsigned long long)p->length);
            if (parse_hex16_(json_string_value(json_object_get(q, "xxh64")), &p->xxh) ||
                parse_hex16_(json_string_value(json_object_get(q, "zxxh64")), &p->zxxh))
                BAD("%s: tensor '%s': pieces[%zu]: xxh64/zxxh64 must be 16 hex digits", mp, name, k);
        }
        if (tensor_coverage_(t, mp, err, ERRMAX) != 0) goto fail;
    }
    if (ck->nt > 0) qsort(ck->t, (size_t)ck->nt, sizeof *ck->t, tensor_cmp_);
    for (int i = 1; i < ck->nt; i++)
        if (strcmp(ck->t[i].name, ck->t[i - 1].name) == 0) BAD("%s: tensor '%s' listed twice", mp, ck->t[i].name);

    if (check_tiling_(ck, err) != 0) goto fail;
    json_decref(root);
    return 0;
fail:
    if (root) json_decref(root);
    return -1;
}

void ckpt_close(Ckpt *ck) {
    if (!ck) return;
    for (int r = 0; r < ck->writers; r++) {
        if (ck->fd && ck->fd[r] >= 0) close(ck->fd[r]);
        if (ck->shard_path) free(ck->shard_path[r]);
    }
    free(ck->fd);
    free(ck->shard_path);
    free(ck->shard_bytes);
    tensors_free_(ck->t, ck->nt);
    free(ck->meta);
    free(ck->dir);
    free(ck->mpath);
    if (ck->dctx) ZSTD_freeDCtx(ck->dctx);
    free(ck);
}

Ckpt *ckpt_open(const char *step_dir, char *err_out, size_t errlen) {
    char err[ERRMAX];
    Ckpt *ck = xcalloc(1, sizeof *ck);
    ck->dir = xstrdup(step_dir);
    ck->mpath = path_join_(step_dir, "manifest.json");
    char *text = NULL;
    struct stat st;
    if (stat(ck->mpath, &st) != 0) {
        long s;
        const char *base = strrchr(step_dir, '/') ? strrchr(step_dir, '/') + 1 : step_dir;
        set_error(err, ERRMAX, "%s: %s%s", ck->mpath, strerror(errno),
                 parse_step_name_(base, ".tmp", &s) ? " (a checkpoint that was never committed)"
                 : " (HINT: name a committed checkpoint directory RUN/ckpt/step_NNNNNNNN)");
        goto fail;
    }
    if (!S_ISREG(st.st_mode) || (size_t)st.st_size > CKPT_MAX_MANIFEST) {
        set_error(err, ERRMAX, "%s: not a regular file of at most 256 MiB", ck->mpath);
        goto fail;
    }
    size_t len;
    text = read_file_all(ck->mpath, &len);
    if (!text) { set_error(err, ERRMAX, "%s: cannot read: %s", ck->mpath, strerror(errno)); goto fail; }
    /* checksum: the file is BODY + ,\n  "manifest_xxh64": "<hex>"\n}\n  with hex = XXH64(BODY) */
    uint64_t want;
    char hx[17];
    if (len < SUFFIX_LEN + 2 || memcmp(text + len - SUFFIX_LEN, SUFFIX_PRE, strlen(SUFFIX_PRE)) != 0 ||
        memcmp(text + len - 4, "\"\n}\n", 4) != 0) {
        set_error(err, ERRMAX, "%s: truncated or damaged (it does not end with its \"manifest_xxh64\" line)",
                 ck->mpath);
        goto fail;
    }
    memcpy(hx, text + len - 20, 16);
    hx[16] = 0;
    if (parse_hex16_(hx, &want) != 0 || XXH64(text, len - SUFFIX_LEN, 0) != want) {
        set_error(err, ERRMAX, "%s: checksum mismatch (the file is damaged; HINT: resume from an older "
                 "checkpoint, see t5ckpt verify)", ck->mpath);
        goto fail;
    }
    if (parse_manifest_(ck, text, len, err) != 0) goto fail;
    free(text);
    return ck;
fail:
    set_error(err_out, errlen, "%s", err);
    free(text);
    ckpt_close(ck);
    return NULL;
}

long ckpt_step(const Ckpt *ck) { return ck->step; }
const char *ckpt_meta_json(const Ckpt *ck) { return ck->meta; }
int ckpt_writers(const Ckpt *ck) { return ck->writers; }
int ckpt_tensor_count(const Ckpt *ck) { return ck->nt; }
const char *ckpt_tensor_name(const Ckpt *ck, int i) { return i >= 0 && i < ck->nt ? ck->t[i].name : NULL; }

void ckpt_sizes(const Ckpt *ck, uint64_t *stored, uint64_t *raw) {
    uint64_t s = 0, r = 0;
    for (int i = 0; i < ck->nt; i++)
        for (int k = 0; k < ck->t[i].np; k++) {
            s += ck->t[i].p[k].length;
            r += ck->t[i].p[k].numel * dtype_size_(ck->t[i].dtype);
        }
    if (stored) *stored = s;
    if (raw) *raw = r;
}

static TensorRec *find_(const Ckpt *ck, const char *name) {
    TensorRec key = {.name = (char *)name};
    return ck->nt ? bsearch(&key, ck->t, (size_t)ck->nt, sizeof *ck->t, tensor_cmp_) : NULL;
}

int ckpt_tensor_info(const Ckpt *ck, const char *name, CkptDtype *dtype, int *ndim, int64_t shape[2]) {
    const TensorRec *t = find_(ck, name);
    if (!t) return -1;
    if (dtype) *dtype = t->dtype;
    if (ndim) *ndim = t->ndim;
    if (shape) { shape[0] = t->shape[0]; shape[1] = t->ndim > 1 ? t->shape[1] : 0; }
    return 0;
}

/* Open shard r and check its size and header against the manifest. */
static int open_shard_(Ckpt *ck, int r, char *err) {
    if (ck->fd[r] >= 0) return 0;
    const char *path = ck->shard_path[r];
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        set_error(err, ERRMAX, "%s: %s (shard %d of %d listed in %s is missing)", path, strerror(errno), r,
                 ck->writers, ck->mpath);
        return -1;
    }
    struct stat st;
    unsigned char h[SHARD_HDR], want[SHARD_HDR];
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size != ck->shard_bytes[r]) {
        set_error(err, ERRMAX, "%s: %lld bytes but the manifest says %llu (%s)", path, (long long)st.st_size,
                 (unsigned long long)ck->shard_bytes[r],
                 (uint64_t)st.st_size < ck->shard_bytes[r] ? "truncated" : "extra bytes");
        close(fd);
        return -1;
    }
    if (pread_all_(fd, h, SHARD_HDR, 0) != 0) {
        set_error(err, ERRMAX, "%s: cannot read the header: %s", path, errno ? strerror(errno) : "end of file");
        close(fd);
        return -1;
    }
    shard_header_(want, r, ck->writers, ck->step, ck->save_id);
    if (memcmp(h, want, SHARD_HDR) != 0) {
        const char *why = memcmp(h, SHARD_MAGIC, 8) != 0 ? "not a checkpoint shard (bad magic)"
                        : get_u32_(h + 8) != CKPT_VERSION ? "another format version"
                        : get_u64_(h + 40) != XXH64(h, 40, 0) ? "header checksum mismatch (damaged)"
                        : get_u64_(h + 32) != ck->save_id ? "written by another save than this manifest"
                        : "writer, writers or step differ from the manifest";
        set_error(err, ERRMAX, "%s: %s", path, why);
        close(fd);
        return -1;
    }
    ck->fd[r] = fd;
    return 0;
}

/* Decompress piece p of tensor t into raw (numel * dtype size bytes), checking everything. */
static int load_piece_(Ckpt *ck, const TensorRec *t, const PieceRec *p, unsigned char *raw, char *err) {
    if (open_shard_(ck, p->shard, err) != 0) {
        size_t k = strlen(err);
        set_error(err + k, ERRMAX - k, " (needed for tensor '%s')", t->name);
        return -1;
    }
    const char *path = ck->shard_path[p->shard];
    size_t es = dtype_size_(t->dtype), rawn = (size_t)p->numel * es;
    unsigned char *z = xmalloc((size_t)p->length), *tmp = NULL;
    int rc = -1;
    if (pread_all_(ck->fd[p->shard], z, (size_t)p->length, (off_t)p->offset) != 0) {
        set_error(err, ERRMAX, "%s: tensor '%s': cannot read bytes [%llu, +%llu): %s", path, t->name,
                 (unsigned long long)p->offset, (unsigned long long)p->length, errno ? strerror(errno) : "end of file");
        goto done;
    }
    if (XXH64(z, (size_t)p->length, 0) != p->zxxh) {
        set_error(err, ERRMAX, "%s: tensor '%s': piece at byte %llu is damaged (checksum of the stored bytes "
                 "differs)", path, t->name, (unsigned long long)p->offset);
        goto done;
    }
    if (!ck->dctx && !(ck->dctx = ZSTD_createDCtx())) FATAL("out of memory?", "ZSTD_createDCtx failed");
    unsigned long long cs = ZSTD_getFrameContentSize(z, (size_t)p->length);
    size_t fs = ZSTD_findFrameCompressedSize(z, (size_t)p->length);
    if (cs != rawn || ZSTD_isError(fs) || fs != p->length) {
        set_error(err, ERRMAX, "%s: tensor '%s': piece at byte %llu is not one zstd frame of %zu bytes", path,
                 t->name, (unsigned long long)p->offset, rawn);
        goto done;
    }
    unsigned char *dst = raw;
    if (t->dtype == CKPT_F32) dst = tmp = xmalloc(rawn);
    size_t got = ZSTD_decompressDCtx(ck->dctx, dst, rawn, z, (size_t)p->length);
    if (ZSTD_isError(got) || got != rawn) {
        set_error(err, ERRMAX, "%s: tensor '%s': piece at byte %llu: zstd: %s", path, t->name,
                 (unsigned long long)p->offset, ZSTD_isError(got) ? ZSTD_getErrorName(got) : "short output");
        goto done;
    }
    if (t->dtype == CKPT_F32) unshuffle4_(raw, tmp, (size_t)p->numel);
    if (XXH64(raw, rawn, piece_seed_(t->name, t->dtype, t->ndim, t->shape, p->elem_offset)) != p->xxh) {
        set_error(err, ERRMAX, "%s: tensor '%s': elements [%llu, +%llu) fail their checksum", path, t->name,
                 (unsigned long long)p->elem_offset, (unsigned long long)p->numel);
        goto done;
    }
    rc = 0;
done:
    free(z);
    free(tmp);
    return rc;
}

int ckpt_read(Ckpt *ck, const char *name, size_t elem_offset, size_t numel, void *out, char *err_out,
              size_t errlen) {
    char err[ERRMAX];
    const TensorRec *t = find_(ck, name);
    if (!t) {
        set_error(err_out, errlen, "%s: no tensor '%s' in this checkpoint (step %ld)", ck->mpath, name, ck->step);
        return -1;
    }
    if (elem_offset > t->numel || numel > t->numel - elem_offset) {
        set_error(err_out, errlen, "%s: tensor '%s': elements [%zu, +%zu) are outside its %llu elements",
                  ck->mpath, name, elem_offset, numel, (unsigned long long)t->numel);
        return -1;
    }
    size_t es = dtype_size_(t->dtype), end = elem_offset + numel, at = elem_offset;
    unsigned char *buf = NULL;
    size_t cap = 0;
    for (int i = 0; i < t->np && at < end; i++) {
        const PieceRec *p = &t->p[i];
        size_t ps = (size_t)p->elem_offset, pe = ps + (size_t)p->numel;
        if (pe <= at) continue;
        if (ps > at) break;   /* a gap: impossible after ckpt_open's coverage check */
        size_t lo = at, hi = pe < end ? pe : end;
        unsigned char *dst = (unsigned char *)out + (lo - elem_offset) * es;
        if (lo == ps && hi == pe) {
            if (load_piece_(ck, t, p, dst, err) != 0) { free(buf); set_error(err_out, errlen, "%s", err); return -1; }
        } else {
            size_t need = (size_t)p->numel * es;
            if (need > cap) { free(buf); buf = xmalloc(need); cap = need; }
            if (load_piece_(ck, t, p, buf, err) != 0) { free(buf); set_error(err_out, errlen, "%s", err); return -1; }
            memcpy(dst, buf + (lo - ps) * es, (hi - lo) * es);
        }
        at = hi;
    }
    free(buf);
    if (at < end) {
        set_error(err_out, errlen, "%s: tensor '%s': elements [%zu, %zu) are in no piece", ck->mpath, name, at, end);
        return -1;
    }
    return 0;
}

int ckpt_verify(const char *step_dir, char *err_out, size_t errlen) {
    char err[ERRMAX];
    Ckpt *ck = ckpt_open(step_dir, err_out, errlen);
    if (!ck) return -1;
    int rc = 0;
    for (int r = 0; r < ck->writers && rc == 0; r++)
        if (open_shard_(ck, r, err) != 0) rc = -1;
    unsigned char *buf = xmalloc((size_t)1 << 20);
    size_t cap = (size_t)1 << 20;
    for (int i = 0; i < ck->nt && rc == 0; i++)
        for (int k = 0; k < ck->t[i].np && rc == 0; k++) {
            size_t need = (size_t)ck->t[i].p[k].numel * dtype_size_(ck->t[i].dtype);
            if (need > cap) { free(buf); buf = xmalloc(need); cap = need; }
            if (load_piece_(ck, &ck->t[i], &ck->t[i].p[k], buf, err) != 0) rc = -1;
        }
    free(buf);
    if (rc != 0) set_error(err_out, errlen, "%s", err);
    ckpt_close(ck);
    return rc;
}

/* ================================ run directory ================================ */

int ckpt_latest(const char *run_dir, char *out, size_t outlen, char *err, size_t errlen) {
    char *ckdir = path_join_(run_dir, "ckpt"), *lp = path_join_(ckdir, "latest");
    size_t n = 0;
    char *text = read_file_all(lp, &n);
    int rc = -1;
    long s;
    if (!text) {
        set_error(err, errlen, "%s: %s (no committed checkpoint in %s)", lp, strerror(errno), run_dir);
        goto done;
    }
    if (n < 2 || n > 64 || text[n - 1] != '\n' || memchr(text, 0, n)) {
        set_error(err, errlen, "%s: damaged (expected one line step_NNNNNNNN)", lp);
        goto done;
    }
    text[n - 1] = 0;
    if (!parse_step_name_(text, "", &s)) {
        set_error(err, errlen, "%s: damaged (\"%s\" is not step_NNNNNNNN)", lp, text);
        goto done;
    }
    if ((size_t)snprintf(out, outlen, "%s/%s", ckdir, text) >= outlen) {
        set_error(err, errlen, "%s: path too long", lp);
        goto done;
    }
    struct stat st;
    if (stat(out, &st) != 0 || !S_ISDIR(st.st_mode)) {
        set_error(err, errlen, "%s names %s, which does not exist (HINT: fall back to the newest step "
                  "that verifies, t5ckpt verify)", lp, out);
        goto done;
    }
    rc = 0;
done:
    free(text);
    free(lp);
    free(ckdir);
    return rc;
}

static int usable_(const char *dir, int full_verify, char *err) {
    if (full_verify) return ckpt_verify(dir, err, ERRMAX);
    Ckpt *ck = ckpt_open(dir, err, ERRMAX);
    ckpt_close(ck);
    return ck ? 0 : -1;
}

int ckpt_find_resume(const char *run_dir, int full_verify, char *out, size_t outlen, char *note,
                     size_t notelen, char *err_out, size_t errlen) {
    char why[ERRMAX * 2] = "", e[ERRMAX], path[4096];
    set_error(note, notelen, "%s", "");
    long latest_step = -1;
    if (ckpt_latest(run_dir, path, sizeof path, e, sizeof e) == 0) {
        parse_step_name_(strrchr(path, '/') + 1, "", &latest_step);
        if (usable_(path, full_verify, e) == 0) {
            if ((size_t)snprintf(out, outlen, "%s", path) >= outlen) { set_error(err_out, errlen, "%s: path too long", path); return -1; }
            return 0;
        }
    }
    snprintf(why, sizeof why, "%s", e);
    int n;
    long *steps = ckpt_list_steps(run_dir, &n);
    int rc = -1;
    for (int i = 0; i < n && rc != 0; i++) {
        if (steps[i] == latest_step) continue;
        snprintf(path, sizeof path, "%s/ckpt/step_%08ld", run_dir, steps[i]);
        if (usable_(path, full_verify, e) == 0) {
            if ((size_t)snprintf(out, outlen, "%s", path) >= outlen) break;
            set_error(note, notelen, "not resuming from latest (%s); using the newest checkpoint that %s "
                      "instead: %s", why, full_verify ? "verifies" : "opens", path);
            rc = 0;
        } else {
            size_t k = strlen(why);
            if (k + 8 < sizeof why) snprintf(why + k, sizeof why - k, "; %s", e);
        }
    }
    free(steps);
    if (rc != 0) set_error(err_out, errlen, "%s/ckpt: no usable checkpoint (%d committed): %s", run_dir, n, why);
    return rc;
}

static int long_desc_(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return x > y ? -1 : x < y;
}

long *ckpt_list_steps(const char *run_dir, int *n) {
    *n = 0;
    char *ckdir = path_join_(run_dir, "ckpt");
    DIR *d = opendir(ckdir);
    long *v = NULL;
    int cap = 0;
    if (d) {
        struct dirent *e;
        long s;
        while ((e = readdir(d))) {
            if (!parse_step_name_(e->d_name, "", &s)) continue;
            char *p = path_join_(ckdir, e->d_name), *m = path_join_(p, "manifest.json");
            struct stat st;
            int ok = stat(m, &st) == 0 && S_ISREG(st.st_mode);
            free(p);
            free(m);
            if (!ok) continue;
            if (*n == cap) { cap = cap ? 2 * cap : 16; v = xrealloc(v, (size_t)cap * sizeof *v); }
            v[(*n)++] = s;
        }
        closedir(d);
    }
    free(ckdir);
    if (*n) qsort(v, (size_t)*n, sizeof *v, long_desc_);
    return v;
}

int ckpt_retain(const char *run_dir, int keep_last, long keep_every, char *err, size_t errlen) {
    char latest[4096], lerr[ERRMAX];
    long latest_step = -1;
    if (ckpt_latest(run_dir, latest, sizeof latest, lerr, sizeof lerr) == 0) {
        const char *b = strrchr(latest, '/') + 1;
        parse_step_name_(b, "", &latest_step);
    }
    int n;
    long *steps = ckpt_list_steps(run_dir, &n);
    int deleted = 0;
    char *ckdir = path_join_(run_dir, "ckpt");
    for (int i = 0; i < n; i++) {
        long s = steps[i];
        int keep = (keep_last <= 0 || i < keep_last) || (keep_every > 0 && s % keep_every == 0) || s == latest_step;
        if (keep) continue;
        char name[64];
        snprintf(name, sizeof name, "step_%08ld", s);
        char *p = path_join_(ckdir, name);
        int r = rm_rf(p);
        if (r != 0) set_error(err, errlen, "%s: cannot delete an old checkpoint: %s", p, strerror(errno));
        free(p);
        if (r != 0) { deleted = -1; break; }
        deleted++;
    }
    if (deleted > 0) fsync_path_(ckdir);
    free(ckdir);
    free(steps);
    return deleted;
}
