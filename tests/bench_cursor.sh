#!/usr/bin/env bash
# tests/bench_cursor.sh: what a data-cursor restore costs at the end of a big .json.gz shard,
# from the file start (version-1 cursors, and before seek points) and from the last seek point
# (c4_reader.h "Seek points"), and what recording seek points costs while reading.
#
#   bash tests/bench_cursor.sh            # ~360 MB of JSON, ~110 MB gzip -6 (a real C4 shard is
#                                         # ~800 MB / ~300 MB); takes ~1-2 minutes on 2 cores
#   MB=800 bash tests/bench_cursor.sh     # the size of a real shard
#   INTERVALS="262144 1048576 4194304" bash tests/bench_cursor.sh
#
# The shard is the sample corpus (data/sample) repeated, gzip -6, in a mktemp directory that is
# deleted at the end. Needs build/libt5.a (make all). Per interval it prints the read time with
# seek points (against none), the seek points taken, and the restore times to the last document:
#   open + parse every document before it  vs  c4_reader_open_at(last point) + the documents after
# Every time is the best of REPS (default 3) runs.
# (the loader's restore does exactly this per stream; the cursor's JSON parse, ~15 KB per stream,
# comes on top and is not measured here).
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${MB:-360}
INTERVALS=${INTERVALS:-"1048576"}
[ -f build/libt5.a ] || { echo "bench_cursor: build/libt5.a missing (make all)" >&2; exit 1; }
TMP=$(mktemp -d /tmp/bench_cursor.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

cat >"$TMP/restore.c" <<'EOF'
#include "data/c4_reader.h"
#include "common/util.h"
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static double read_all_(const char *path, long *docs, long target, C4SeekPoint *last) {
    C4ReaderOptions o = { 0, -1, NULL };
    double t0 = now_seconds();
    C4Reader *r = c4_reader_open(path, &o, NULL, 0);
    if (!r) FATAL(NULL, "cannot open %s", path);
    C4Document d;
    static C4SeekPoint sp;
    long n = 0;
    int have = 0;
    for (;;) {
        int got = c4_reader_next(r, &d);
        if (last && c4_reader_take_seek_point(r, &sp) && sp.stats.documents <= target) {
            *last = sp;
            have = 1;
        }
        if (!got) break;
        n++;
    }
    c4_reader_close(r);
    *docs = n;
    if (last && !have) last->kind = C4_SEEK_NONE;
    return now_seconds() - t0;
}

/* Time to deliver document `target` (0-based): from the start, or from sp. */
static double reach_(const char *path, long target, const C4SeekPoint *sp, uint32_t *crc) {
    C4ReaderOptions o = { 0, -1, NULL };
    char err[512];
    double t0 = now_seconds();
    C4Reader *r = sp ? c4_reader_open_at(path, &o, sp, err, sizeof err)
                     : c4_reader_open(path, &o, err, sizeof err);
    if (!r) FATAL(NULL, "%s", err);
    C4Document d;
    for (long i = sp ? sp->stats.documents : 0; i <= target; i++)
        if (c4_reader_next(r, &d) != 1) FATAL(NULL, "ends before document %ld", target);
    *crc = (uint32_t)crc32(0, (const Bytef *)d.text, (uInt)d.text_len);
    double t = now_seconds() - t0;
    c4_reader_close(r);
    return t;
}

int main(int argc, char **argv) {
    const char *path = argv[1];
    long docs, docs2;
    int reps = getenv("REPS") ? atoi(getenv("REPS")) : 3;   /* best of: the machine is shared */
    c4_seek_interval_set(-1);
    double t_off = 1e30;
    for (int i = 0; i < reps; i++) {
        double t = read_all_(path, &docs, 0, NULL);
        if (t < t_off) t_off = t;
    }
    long target = docs - 1;
    printf("file: %ld documents; read without seek points: %.2f s\n", docs, t_off);
    for (int k = 2; k < argc; k++) {
        long long every = atoll(argv[k]);
        c4_seek_interval_set(every);
        C4SeekPoint *last = xmalloc(sizeof *last);
        double t_on = 1e30, slow = 1e30, fast = 1e30;
        uint32_t c1 = 0, c2 = 1;
        for (int i = 0; i < reps; i++) {
            double t = read_all_(path, &docs2, target, last);
            if (t < t_on) t_on = t;
            t = reach_(path, target, NULL, &c1);
            if (t < slow) slow = t;
            if (last->kind) {
                t = reach_(path, target, last, &c2);
                if (t < fast) fast = t;
            }
        }
        uLongf zl = compressBound(C4_SEEK_WINDOW);
        unsigned char *z = xmalloc(zl);
        compress2(z, &zl, last->window, (uLong)last->window_len, 9);
        printf("interval %lld KiB: read with seek points %.2f s (%+.1f%%); last point at "
               "uncompressed byte %lld (document %ld); window %zu bytes, zlib -9 %lu, base64 %lu\n"
               "  restore to the last document (%ld): from the start %.3f s, from the seek point "
               "%.4f s (%s)\n",
               every >> 10, t_on, 100.0 * (t_on - t_off) / t_off, last->out_off,
               last->stats.documents, last->window_len, (unsigned long)zl,
               (unsigned long)(4 * ((zl + 2) / 3)), target, slow, fast,
               c1 == c2 ? "same document" : "DIFFERENT DOCUMENT");
        free(z);
        free(last);
        if (c1 != c2 || docs2 != docs) return 1;
    }
    return 0;
}
EOF
mpicc -O2 -std=c11 -I. -D_GNU_SOURCE "$TMP/restore.c" build/libt5.a -o "$TMP/restore" \
    -larchive -ljansson -lzstd -lz -lxxhash -lm -lpthread -fopenmp

echo "bench_cursor: generating ~$MB MB of JSON from data/sample, gzip -6 ..."
t0=$(date +%s.%N)
one=$(zcat data/sample/c4-train.*.json.gz | wc -c)
reps=$(( MB * 1000000 / one + 1 ))
for _ in $(seq "$reps"); do zcat data/sample/c4-train.*.json.gz; done | gzip -6 >"$TMP/big.json.gz"
t1=$(date +%s.%N)
printf 'file: %s bytes gzip (%d copies of the sample, %.0f s to make)\n' \
    "$(stat -c %s "$TMP/big.json.gz")" "$reps" "$(echo "$t1 - $t0" | bc)"
t0=$(date +%s.%N); zcat "$TMP/big.json.gz" | wc -c >/dev/null; t1=$(date +%s.%N)
printf 'zcat of the file: %.2f s\n' "$(echo "$t1 - $t0" | bc)"
# shellcheck disable=SC2086
"$TMP/restore" "$TMP/big.json.gz" $INTERVALS
