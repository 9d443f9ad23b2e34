/*
 * ckpt/ckpt.h: sharded, atomic, checksummed training checkpoints (the resumable state of a run).
 *
 * Layout (RUN = the run directory):
 *   RUN/ckpt/step_NNNNNNNN/             a committed checkpoint (8-digit step, zero padded)
 *       manifest.json                   written last, by rank 0 (format below)
 *       shard-RRRRR-of-WWWWW.zst        the pieces written by rank R of W writers
 *   RUN/ckpt/step_NNNNNNNN.tmp/         a checkpoint being written (never loaded)
 *   RUN/ckpt/latest                     one line "step_NNNNNNNN\n": the newest committed step,
 *                                       replaced atomically after each commit
 *
 * The byte-level format of shards and manifest is specified in the header comment of ckpt.c
 * (magic, version, framing, checksums), as gguf.h does.
 *
 * What a checkpoint holds is up to the caller: named pieces (float or byte) and one JSON object of
 * metadata. A piece is a contiguous range [elem_offset, elem_offset + numel) of the flattened
 * global tensor `name` of global shape `shape`; different ranks may write different pieces of the
 * same tensor (ZeRO, tensor parallelism) and a reader asks for any range by name, so a run can
 * resume with a different layout. Names used by the trainer:
 *   "param/<HF name>"                                  parameters (fp32)
 *   "adafactor_r/<HF name>", "adafactor_c/<HF name>",  Adafactor factored row/column statistics
 *   "adafactor_v/<HF name>"                            Adafactor unfactored second moment
 *   "adamw_m/<HF name>", "adamw_v/<HF name>"           AdamW moments
 *   "data_cursor"                                      merged data-stream cursors (bytes, JSON)
 *
 * The meta object (rank 0's meta_json) is free-form for ckpt_save, but bin/t5ckpt (info, export)
 * reads these keys, so the trainer writes them:
 *   "variant"  string, the canonical variant name
 *   "step"     integer, optimizer steps done;   "tokens"  integer, tokens seen
 *   "config"   object: the T5Config with the keys (and meanings) of Hugging Face config.json:
 *              d_model, d_kv, d_ff, num_layers, num_decoder_layers, num_heads,
 *              relative_attention_num_buckets, relative_attention_max_distance, vocab_size,
 *              feed_forward_proj ("relu" | "gated-gelu"), tie_word_embeddings, layer_norm_epsilon
 *   "options"  object: every option in force, including "spm" (path of the SentencePiece model,
 *              copied as spiece.model by export) and "data" (the training data glob)
 *   "layout", "rng", ...  anything else the trainer needs to resume (the parallel layout at save)
 * and every parameter as "param/<HF name>" (F32, the HF shape), so export needs nothing else.
 *
 * Commit protocol (redis rdbSave discipline): every rank writes its shard into step_N.tmp/ and
 * fsyncs it; the piece tables are gathered to rank 0; rank 0 writes manifest.json (temp, fsync,
 * rename), fsyncs the directory, renames step_N.tmp -> step_N, fsyncs RUN/ckpt, then replaces
 * RUN/ckpt/latest (temp, fsync, rename, fsync dir). A crash at any instant leaves the previous
 * checkpoint intact and loadable; a leftover step_N.tmp is removed by the next save.
 */
#ifndef T5_CKPT_CKPT_H
#define T5_CKPT_CKPT_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { CKPT_F32 = 0, CKPT_U8 = 1 } CkptDtype;

/* zstd level used when CkptSaveArgs.zstd_level is 0. Chosen by measurement (ckpt/README.md):
 * on normal-distributed fp32 stored byte-plane shuffled, level 1 gives the best ratio per second
 * (higher levels are 2-10x slower for under 1% more). */
#define CKPT_DEFAULT_ZSTD_LEVEL 1

/* One piece this rank writes. data is only read during ckpt_save / ckpt_save_begin. */
typedef struct {
    const char *name;       /* global name, e.g. "param/shared.weight" */
    CkptDtype dtype;
    int ndim;               /* 1 or 2 */
    int64_t shape[2];       /* global shape */
    size_t elem_offset;     /* first element of the flattened global tensor held here */
    size_t numel;           /* elements in this piece */
    const void *data;
} CkptPiece;

typedef struct {
    const char *run_dir;
    long step;
    const char *meta_json;  /* rank 0 only (others NULL): a JSON object, stored as "meta" */
    int zstd_level;         /* 0 = the module's default (chosen by measurement) */
} CkptSaveArgs;

/* Collective over comm: write and commit checkpoint `step` (layout above). Every rank passes its
 * own pieces (possibly none). Returns 0 on every rank when committed; on any rank's failure
 * (disk full, permission...) returns -1 on EVERY rank with a message naming the file in err, the
 * temp directory removed and the previous checkpoint and `latest` untouched. */
int ckpt_save(MPI_Comm comm, const CkptSaveArgs *args, const CkptPiece *pieces, int n_pieces,
              char *err, size_t errlen);

/* Background save: ckpt_save_begin copies the pieces and meta_json (so the caller may change its
 * buffers at once), duplicates comm (collective, in the calling thread) and writes/commits them
 * on a thread of its own; ckpt_save_end waits for it and returns what ckpt_save would have
 * (collective: every rank calls it). Needs MPI_THREAD_MULTIPLE. At most one background save is in
 * flight per process: calling begin again before end is a programming error (fatal, with a hint).
 * begin never returns NULL. */
typedef struct CkptAsync CkptAsync;
CkptAsync *ckpt_save_begin(MPI_Comm comm, const CkptSaveArgs *args, const CkptPiece *pieces,
                           int n_pieces, char *err, size_t errlen);
int ckpt_save_end(CkptAsync *job, char *err, size_t errlen);   /* frees job; NULL -> 0 */

/* ---- reading (no MPI needed) ---- */
typedef struct Ckpt Ckpt;

/* Open a committed checkpoint directory (RUN/ckpt/step_N): read and verify manifest.json (its
 * checksum, format, version, every field's type). NULL with a message naming the file. */
Ckpt *ckpt_open(const char *step_dir, char *err, size_t errlen);
void ckpt_close(Ckpt *ck);

long ckpt_step(const Ckpt *ck);
const char *ckpt_meta_json(const Ckpt *ck);         /* the "meta" object as JSON text */
int ckpt_writers(const Ckpt *ck);                    /* ranks that wrote shards */

/* Global shape and dtype of tensor `name`; 0, or -1 if the checkpoint has no such tensor. */
int ckpt_tensor_info(const Ckpt *ck, const char *name, CkptDtype *dtype, int *ndim,
                     int64_t shape[2]);
/* Names of every tensor (i in [0, ckpt_tensor_count)). */
int ckpt_tensor_count(const Ckpt *ck);
const char *ckpt_tensor_name(const Ckpt *ck, int i);

/* Bytes of every piece as stored (compressed) and raw (uncompressed), summed over all tensors. */
void ckpt_sizes(const Ckpt *ck, uint64_t *stored_bytes, uint64_t *raw_bytes);

/* Read elements [elem_offset, elem_offset + numel) of tensor `name` into out (dtype size each),
 * from whichever pieces hold them, checking every piece's checksum. 0, or -1 with a message
 * naming the shard file and tensor (missing range, checksum mismatch, truncated shard...). */
int ckpt_read(Ckpt *ck, const char *name, size_t elem_offset, size_t numel, void *out,
              char *err, size_t errlen);

/* Check every piece of every shard (decompress, checksum, coverage of each tensor with no gap or
 * overlap). 0, or -1 with the first fault named (file and tensor). */
int ckpt_verify(const char *step_dir, char *err, size_t errlen);

/* ---- run-directory helpers ---- */
/* Path of RUN/ckpt/<name in latest> into out. 0, or -1 if there is none (message in err). */
int ckpt_latest(const char *run_dir, char *out, size_t outlen, char *err, size_t errlen);
/* Committed steps in RUN/ckpt, newest first (malloc'ed; caller frees). Count in *n. */
long *ckpt_list_steps(const char *run_dir, int *n);
/* Retention after a commit (rank 0 only, no save in flight): keep the newest keep_last (0 = all)
 * and every step that is a multiple of keep_every (0 = none); never the one `latest` names.
 * Returns how many were deleted, -1 on error (message names the directory). */
int ckpt_retain(const char *run_dir, int keep_last, long keep_every, char *err, size_t errlen);

/* ---- testing only ----
 * ckpt_test_crash_point = k (default 0) makes ckpt_save stop like a killed process at stage k,
 * touching nothing more and cleaning nothing up (it returns -1 with "simulated crash"):
 *   1 shards written and fsynced in step_N.tmp/, no manifest yet
 *   2 manifest.json written into step_N.tmp/, directory not yet renamed
 *   3 step_N.tmp renamed to step_N, latest not yet replaced */
extern int ckpt_test_crash_point;

#endif
