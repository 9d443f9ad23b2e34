/*
 * common/util.h: small helpers every module uses.
 *
 * Fatal environment errors (out of memory, a file that cannot be opened) go through the
 * check wrappers below: they print where it happened, what failed and a HINT, then exit(1).
 * Recoverable errors (bad configuration, bad input records) are returned to the caller as
 * error codes with a message buffer, never through these wrappers.
 */
#ifndef T5_COMMON_UTIL_H
#define T5_COMMON_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Print "fatal: <msg>" (+ optional "HINT: <hint>") to stderr with file:line, then exit(1). */
#if defined(__GNUC__)
__attribute__((noreturn, format(printf, 4, 5)))
#endif
void fatal_at(const char *file, int line, const char *hint, const char *fmt, ...);
#define FATAL(hint, ...) fatal_at(__FILE__, __LINE__, (hint), __VA_ARGS__)

void *malloc_check(size_t size, const char *file, int line);
void *calloc_check(size_t n, size_t size, const char *file, int line);
void *realloc_check(void *p, size_t size, const char *file, int line);
FILE *fopen_check(const char *path, const char *mode, const char *file, int line);
#define xmalloc(sz) malloc_check((sz), __FILE__, __LINE__)
#define xcalloc(n, sz) calloc_check((n), (sz), __FILE__, __LINE__)
#define xrealloc(p, sz) realloc_check((p), (sz), __FILE__, __LINE__)
#define xfopen(path, mode) fopen_check((path), (mode), __FILE__, __LINE__)
char *xstrdup(const char *s);

/* 64-byte aligned allocation (free with free()); fatal on failure. */
void *xmalloc_aligned(size_t size);

/* Monotonic wall-clock seconds. */
double now_seconds(void);

/* Peak resident set size of this process in bytes (from /proc/self/status VmHWM), 0 if unknown. */
size_t peak_rss_bytes(void);
/* Current resident set size (VmRSS) of this process in bytes, 0 if unknown. */
size_t current_rss_bytes(void);
/* MemAvailable of /proc/meminfo in bytes (what the machine can still give), 0 if unknown. */
size_t mem_available_bytes(void);

/* Format a message into err (errlen bytes) for functions that report errors to their caller.
 * Does nothing if err is NULL or errlen is 0. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
void set_error(char *err, size_t errlen, const char *fmt, ...);

/* fsync the directory that holds path (after a rename into it). 0 on success, -1 with errno. */
int fsync_dir_of(const char *path);

/* Durable write of a whole buffer: write PATH.tmp-<pid>, fsync, rename onto PATH, fsync the
 * directory. Returns 0 on success, -1 on error (errno set; the old PATH, if any, is intact). */
int write_file_atomic(const char *path, const void *data, size_t size);

/* Read a whole file into a malloc'ed buffer (NUL-terminated for convenience). Returns NULL on
 * error with errno set; *size_out gets the byte count without the terminator. */
char *read_file_all(const char *path, size_t *size_out);

/* Remove path and everything under it (like rm -rf; symbolic links are removed, not followed).
 * A missing path is fine. 0 on success, -1 with errno. */
int rm_rf(const char *path);

/* Create a directory and its parents (like mkdir -p). 0 on success, -1 on error. */
int mkdir_p(const char *path);

/* Counter-based random numbers (splitmix64-style mixing): a pure function of (key, counter),
 * so any stream can be regenerated from its position alone. */
uint64_t rng_mix64(uint64_t x);
typedef struct { uint64_t key; uint64_t counter; } Rng;
static inline Rng rng_make(uint64_t seed, uint64_t stream) {
    Rng r = { rng_mix64(seed ^ rng_mix64(stream + 0x9E3779B97F4A7C15ULL)), 0 };
    return r;
}
uint64_t rng_next_u64(Rng *r);
double rng_next_double(Rng *r);               /* uniform in [0, 1) with 53 random bits */
uint64_t rng_next_below(Rng *r, uint64_t n);  /* uniform integer in [0, n), unbiased */
double rng_next_normal(Rng *r);               /* standard normal (Box-Muller, no caching) */

#ifdef __cplusplus
}
#endif

#endif
