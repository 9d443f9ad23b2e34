/*
 * ckpt/safetensors.h: read and write safetensors files (the Hugging Face weights format).
 *
 * File format, byte by byte (https://github.com/huggingface/safetensors, "Format"):
 *
 *   1. N        8 bytes, uint64 little-endian: the byte length of the JSON header.
 *   2. header   N bytes of UTF-8 JSON, starting with '{'. The writer pads it with trailing
 *               spaces (0x20) so that 8 + N is a multiple of 8 (the data then starts 8-byte
 *               aligned). Readers accept any N with 8 + N <= file size, N <= 100 MB.
 *               The header is one object; each key is a tensor name and each value
 *                 {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [BEGIN, END]}
 *               BEGIN/END are byte offsets relative to the start of the data section (byte 8+N),
 *               END - BEGIN = product(shape) * sizeof(dtype) (a scalar, shape [], has 1 element).
 *               The optional key "__metadata__" maps to an object of string -> string; Hugging
 *               Face transformers requires {"format": "pt"} there, so the writer always adds it.
 *               Keys are unique (duplicates are rejected).
 *   3. data     the tensors' bytes, little-endian, row-major (C order), no padding between
 *               tensors. The tensors' [BEGIN, END) ranges cover the data section exactly: no
 *               overlap, no gap, nothing after the last tensor.
 *
 *   dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL F8_E4M3 F8_E5M2 are recognised;
 *   this module writes F32 and converts F32, F16 (IEEE half) and BF16 (upper 16 bits of an F32)
 *   to float on read. Any other dtype is reported by name when a caller asks for its values.
 *
 * The reader maps the file read-only (mmap), validates the whole header on open (header size vs
 * file size, JSON, dtype, shape, offsets in range, overlaps and gaps, shape product vs byte size)
 * and returns errors that name the file and the tensor. The writer streams the tensors into
 * PATH.tmp-<pid>, fsyncs, renames onto PATH and fsyncs the directory.
 */
#ifndef T5_CKPT_SAFETENSORS_H
#define T5_CKPT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef enum {
    ST_F64, ST_F32, ST_F16, ST_BF16, ST_I64, ST_I32, ST_I16, ST_I8,
    ST_U64, ST_U32, ST_U16, ST_U8, ST_BOOL, ST_F8_E4M3, ST_F8_E5M2
} StDtype;

typedef struct {
    char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;          /* product of shape (1 for a scalar) */
    size_t begin, end;     /* byte range relative to the data section */
} StTensorInfo;

typedef struct {
    char *path;
    const unsigned char *map;   /* whole file, read-only mapping (NULL for an empty data map) */
    size_t file_size;
    size_t data_start;          /* 8 + N */
    int num_tensors;
    StTensorInfo *tensors;      /* in header order */
    int num_meta;
    char **meta_keys, **meta_values;
} StFile;

/* One tensor to write: F32 values, row-major. */
typedef struct {
    const char *name;
    int ndim;                    /* 0 .. ST_MAX_DIMS */
    int64_t shape[ST_MAX_DIMS];
    const float *data;           /* product(shape) floats */
} StWriteTensor;

/* "F32", "BF16", ... and the element size in bytes (BOOL: 1). Cannot fail. */
const char *st_dtype_name(StDtype d);
size_t st_dtype_size(StDtype d);

/* Open and validate path (see the format above). On success returns 0 and *f owns the mapping
 * and the tensor table (free with st_close). On failure returns -1, writes a message naming the
 * file (and the tensor, when one is at fault) into err, and *f holds nothing to free. */
int st_open(StFile *f, const char *path, char *err, size_t errlen);
/* Unmap and free everything in *f; safe on a zeroed StFile and twice. */
void st_close(StFile *f);
/* Index of the tensor called name, or -1. */
int st_find(const StFile *f, const char *name);
/* Value of a "__metadata__" key, or NULL. The string belongs to *f. */
const char *st_meta_get(const StFile *f, const char *key);
/* Convert tensor idx (F32, F16 or BF16) to float into out[numel] (caller's memory).
 * Returns 0, or -1 with a message naming file, tensor and dtype for other dtypes. */
int st_read_f32(const StFile *f, int idx, float *out, char *err, size_t errlen);
/* Write n F32 tensors, in the given order, with "__metadata__" = {"format": "pt"} plus n_meta
 * key/value pairs (meta_kv[2i], meta_kv[2i+1]). Names must be unique and non-empty, and not
 * "__metadata__". Durable (temp file, fsync, rename, fsync of the directory): on failure returns
 * -1 with a message in err and an existing file at path is left untouched. Returns 0 on success. */
int st_write_f32(const char *path, const StWriteTensor *ts, int n, const char *const *meta_kv,
                 int n_meta, char *err, size_t errlen);

/* Scalar conversions (exposed for tests). */
float st_f16_to_f32(uint16_t h);
float st_bf16_to_f32(uint16_t b);

#endif
