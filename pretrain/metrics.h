/*
 * pretrain/metrics.h: RUN_DIR/metrics.jsonl, one JSON object per line, one line per step.
 *
 * The writer flushes every line (a kill loses at most the line being written) and fsyncs at
 * every checkpoint (metrics_sync), so the lines a checkpoint covers are on disk before the
 * checkpoint is committed. Numbers carry full precision (%.17g): two runs can be compared bit
 * for bit. On resume, metrics_open_resume first cuts the file back to the lines of steps <= the
 * checkpoint's step (written to a temp file, fsynced, renamed), so the file never has duplicated
 * or missing steps.
 */
#ifndef T5_METRICS_H
#define T5_METRICS_H

#include <stddef.h>
#include <stdio.h>

typedef struct MetricsWriter MetricsWriter;

/* New file (truncates). NULL with a message in err. */
MetricsWriter *metrics_open(const char *path, char *err, size_t errlen);
/* Keep the lines whose "step" is <= step, then append. NULL with a message in err (a line that
 * is not a JSON object with an integer "step" is an error naming the line). */
MetricsWriter *metrics_open_resume(const char *path, long step, char *err, size_t errlen);

/* Build one line: begin, then fields in order, then end (writes and flushes). */
void metrics_begin(MetricsWriter *w);
void metrics_int(MetricsWriter *w, const char *key, long long v);
void metrics_num(MetricsWriter *w, const char *key, double v);   /* %.17g; NaN/inf as null */
int metrics_end(MetricsWriter *w);                               /* 0, or -1 (write error) */

int metrics_sync(MetricsWriter *w);   /* fflush + fsync; 0 or -1 */
void metrics_close(MetricsWriter *w); /* sync and close; NULL is fine */

#endif
