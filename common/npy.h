/*
 * common/npy.h: NumPy .npy files of 2-D int32 arrays (batches dumped by t5data, read by t5eval).
 *
 * File format (NumPy format version 1.0; versions 2.0 and 3.0 are accepted on read):
 *
 *   1. magic     6 bytes  "\x93NUMPY"
 *   2. version   2 bytes  major, minor: 1,0 (2,0 and 3,0 only differ in step 3)
 *   3. HLEN      uint16 little-endian (v1.0) or uint32 little-endian (v2.0, v3.0):
 *                the byte length of the header text that follows
 *   4. header    HLEN bytes of ASCII (UTF-8 for v3.0): a Python dict literal, e.g.
 *                  {'descr': '<i4', 'fortran_order': False, 'shape': (4, 512), }
 *                padded with spaces and ended by '\n' so that the data starts at a multiple of
 *                64 bytes (6 + 2 + 2 + HLEN == 0 mod 64 for the files we write)
 *                  descr          '<i4' = little-endian int32, '<i8' = little-endian int64
 *                  fortran_order  False = C (row-major) order
 *                  shape          (rows, cols)
 *   5. data      rows*cols elements, row-major, nothing after them.
 *
 * We write '<i4', C order, 2-D. We read '<i4' and '<i8' ('<i8' is what NumPy uses by default,
 * so hand-made test batches work; values must fit in int32), C order, 2-D only.
 */
#ifndef T5_COMMON_NPY_H
#define T5_COMMON_NPY_H

#include <stddef.h>
#include <stdint.h>

/* Write data[rows][cols] (row-major) as a '<i4' .npy file at path, durably (temporary file,
 * fsync, rename, fsync of the directory: a crash leaves either the old file or the new one).
 * rows, cols >= 0. Returns 0 on success, -1 on error with errno set (EINVAL for bad sizes). */
int npy_write_i32(const char *path, const int32_t *data, int rows, int cols);

/* Read a 2-D C-order '<i4' or '<i8' .npy file. On success returns a malloc'ed row-major array of
 * rows*cols int32 (never NULL, even for 0 elements; the caller frees it) and sets *rows, *cols.
 * On failure returns NULL, leaves *rows and *cols unchanged and writes a message naming the file
 * and the problem (bad magic, unsupported dtype/order/rank, truncated data, value out of int32
 * range, ...) into err (errlen bytes). */
int32_t *npy_read_i32(const char *path, int *rows, int *cols, char *err, size_t errlen);

#endif
