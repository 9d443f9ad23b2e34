/* pretrain/metrics.c: see metrics.h. */
#include "metrics.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/util.h"

struct MetricsWriter {
    FILE *f;
    char path[1200];
    int fields;   /* fields written into the current line */
};

MetricsWriter *metrics_open(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "w");
    if (!f) {
        set_error(err, errlen, "cannot create %s: %s", path, strerror(errno));
        return NULL;
    }
    MetricsWriter *w = xcalloc(1, sizeof *w);
    w->f = f;
    snprintf(w->path, sizeof w->path, "%s", path);
    return w;
}

MetricsWriter *metrics_open_resume(const char *path, long step, char *err, size_t errlen) {
    size_t size = 0;
    char *text = read_file_all(path, &size);
    if (!text) {
        if (errno != ENOENT) {
            set_error(err, errlen, "cannot read %s: %s", path, strerror(errno));
            return NULL;
        }
        return metrics_open(path, err, errlen);
    }
    /* Keep whole lines with step <= `step`; a torn last line (no newline) is dropped. */
    size_t keep = 0;
    int lineno = 0;
    for (size_t pos = 0; pos < size;) {
        char *nl = memchr(text + pos, '\n', size - pos);
        if (!nl) break;
        lineno++;
        *nl = 0;
        json_error_t je;
        json_t *obj = json_loads(text + pos, 0, &je);
        json_t *s = obj ? json_object_get(obj, "step") : NULL;
        if (!s || !json_is_integer(s)) {
            set_error(err, errlen, "%s:%d is not a metrics line (a JSON object with an integer \"step\"); "
                      "move the file away to resume", path, lineno);
            json_decref(obj);
            free(text);
            return NULL;
        }
        long line_step = (long)json_integer_value(s);
        json_decref(obj);
        *nl = '\n';
        if (line_step > step) break;
        pos = (size_t)(nl - text) + 1;
        keep = pos;
    }
    int rc = write_file_atomic(path, text, keep);
    free(text);
    if (rc != 0) {
        set_error(err, errlen, "cannot rewrite %s: %s", path, strerror(errno));
        return NULL;
    }
    FILE *f = fopen(path, "a");
    if (!f) {
        set_error(err, errlen, "cannot append to %s: %s", path, strerror(errno));
        return NULL;
    }
    MetricsWriter *w = xcalloc(1, sizeof *w);
    w->f = f;
    snprintf(w->path, sizeof w->path, "%s", path);
    return w;
}

void metrics_begin(MetricsWriter *w) {
    fputc('{', w->f);
    w->fields = 0;
}

static void key_(MetricsWriter *w, const char *key) {
    fprintf(w->f, "%s\"%s\": ", w->fields++ ? ", " : "", key);
}

void metrics_int(MetricsWriter *w, const char *key, long long v) {
    key_(w, key);
    fprintf(w->f, "%lld", v);
}

void metrics_num(MetricsWriter *w, const char *key, double v) {
    key_(w, key);
    if (isfinite(v)) fprintf(w->f, "%.17g", v);
    else fputs("null", w->f);
}

int metrics_end(MetricsWriter *w) {
    fputs("}\n", w->f);
    return fflush(w->f) == 0 && !ferror(w->f) ? 0 : -1;
}

int metrics_sync(MetricsWriter *w) {
    if (!w) return 0;
    if (fflush(w->f) != 0) return -1;
    return fsync(fileno(w->f));
}

void metrics_close(MetricsWriter *w) {
    if (!w) return;
    metrics_sync(w);
    fclose(w->f);
    free(w);
}
