/* common/util.c: see util.h for the contracts. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void fatal_at(const char *file, int line, const char *hint, const char *fmt, ...) {
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "fatal (%s:%d): ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (hint && *hint) fprintf(stderr, "HINT: %s\n", hint);
    exit(1);
}

void set_error(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void *malloc_check(size_t size, const char *file, int line) {
    void *p = malloc(size ? size : 1);
    if (!p) fatal_at(file, line, "reduce --batch / --micro-batch or use a smaller variant",
                     "out of memory allocating %zu bytes", size);
    return p;
}

void *calloc_check(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) fatal_at(file, line, "reduce --batch / --micro-batch or use a smaller variant",
                     "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

void *realloc_check(void *q, size_t size, const char *file, int line) {
    void *p = realloc(q, size ? size : 1);
    if (!p) fatal_at(file, line, NULL, "out of memory reallocating to %zu bytes", size);
    return p;
}

FILE *fopen_check(const char *path, const char *mode, const char *file, int line) {
    FILE *f = fopen(path, mode);
    if (!f) fatal_at(file, line, "check that the path exists and is readable/writable",
                     "cannot open '%s' (mode %s): %s", path, mode, strerror(errno));
    return f;
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

void *xmalloc_aligned(size_t size) {
    void *p = NULL;
    size_t rounded = (size + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0 || !p)
        FATAL("reduce --batch / --micro-batch or use a smaller variant",
              "out of memory allocating %zu aligned bytes", size);
    return p;
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The "<key> <n> kB" value of a /proc file such as /proc/self/status, in bytes; 0 if unknown. */
static size_t proc_kb_field_(const char *path, const char *key) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[256];
    size_t kb = 0, klen = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) == 0) { kb = (size_t)strtoull(line + klen, NULL, 10); break; }
    }
    fclose(f);
    return kb * 1024;
}

size_t peak_rss_bytes(void) { return proc_kb_field_("/proc/self/status", "VmHWM:"); }
size_t current_rss_bytes(void) { return proc_kb_field_("/proc/self/status", "VmRSS:"); }
size_t mem_available_bytes(void) { return proc_kb_field_("/proc/meminfo", "MemAvailable:"); }

int fsync_dir_of(const char *path) {
    char *copy = xstrdup(path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    free(copy);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int write_file_atomic(const char *path, const void *data, size_t size) {
    size_t n = strlen(path) + 32;
    char *tmp = xmalloc(n);
    snprintf(tmp, n, "%s.tmp-%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { free(tmp); return -1; }
    const char *p = data;
    size_t left = size;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            goto fail;
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0) goto fail;
    if (close(fd) != 0) { fd = -1; goto fail; }
    fd = -1;
    if (rename(tmp, path) != 0) goto fail;
    free(tmp);
    return fsync_dir_of(path);
fail:;
    int saved = errno;
    if (fd >= 0) close(fd);
    unlink(tmp);
    free(tmp);
    errno = saved;
    return -1;
}

char *read_file_all(const char *path, size_t *size_out) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (len + 1 >= cap) { cap *= 2; buf = xrealloc(buf, cap); }
        size_t r = fread(buf + len, 1, cap - len - 1, f);
        len += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) { free(buf); errno = EIO; return NULL; }
    buf[len] = 0;
    if (size_out) *size_out = len;
    return buf;
}

int mkdir_p(const char *path) {
    char *copy = xstrdup(path);
    for (char *p = copy + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(copy, 0755) != 0 && errno != EEXIST) { free(copy); return -1; }
        *p = '/';
    }
    int rc = mkdir(copy, 0755);
    free(copy);
    return (rc == 0 || errno == EEXIST) ? 0 : -1;
}

uint64_t rng_mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

uint64_t rng_next_u64(Rng *r) {
    /* Two rounds of mixing over (key, counter): a counter-based generator, so position alone
     * determines the value. */
    uint64_t c = r->counter++;
    return rng_mix64(rng_mix64(c ^ r->key) + r->key);
}

double rng_next_double(Rng *r) { return (double)(rng_next_u64(r) >> 11) * 0x1.0p-53; }

uint64_t rng_next_below(Rng *r, uint64_t n) {
    if (n <= 1) return 0;
    uint64_t limit = UINT64_MAX - UINT64_MAX % n; /* reject the biased tail */
    uint64_t x;
    do { x = rng_next_u64(r); } while (x >= limit);
    return x % n;
}

double rng_next_normal(Rng *r) {
    double u1 = rng_next_double(r), u2 = rng_next_double(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static int rm_one_(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

int rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    return nftw(path, rm_one_, 16, FTW_DEPTH | FTW_PHYS);
}
