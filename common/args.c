/* common/args.c: see args.h. */
#include "args.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* "run-dir", "--run-dir" and "run_dir" all name field run_dir. */
int args_find(const ArgParser *p, const char *name) {
    while (*name == '-') name++;
    char norm[80];
    size_t len = strlen(name);
    if (len >= sizeof norm) return -1;
    for (size_t i = 0; i <= len; i++) norm[i] = name[i] == '-' ? '_' : name[i];
    for (int i = 0; i < p->n_specs; i++)
        if (strcmp(p->specs[i].name, norm) == 0) return i;
    return -1;
}

int args_given(const ArgParser *p, const char *name) {
    int i = args_find(p, name);
    return i >= 0 && p->given && p->given[i];
}

static void flag_name_(const ArgSpec *s, char *buf, size_t n) {
    snprintf(buf, n, "--%s", s->name);
    for (char *c = buf + 2; *c; c++) if (*c == '_') *c = '-';
}

/* 1 if value is one of the '|'-separated choices. */
static int in_choices_(const char *choices, const char *value) {
    size_t vl = strlen(value);
    for (const char *c = choices; *c;) {
        const char *bar = strchr(c, '|');
        size_t l = bar ? (size_t)(bar - c) : strlen(c);
        if (l == vl && strncmp(c, value, l) == 0) return 1;
        if (!bar) break;
        c = bar + 1;
    }
    return 0;
}

static int set_spec_(const ArgParser *p, void *target, int idx, const char *value, const char *where,
                     char *err, size_t errlen) {
    const ArgSpec *s = &p->specs[idx];
    char fname[96];
    flag_name_(s, fname, sizeof fname);
    char *field = (char *)target + s->offset;
    if (s->kind == ARG_STR) {
        if (strlen(value) >= s->size) {
            set_error(err, errlen, "%s: %s value is too long (at most %zu characters)", where, fname, s->size - 1);
            return -1;
        }
        if (s->choices && !in_choices_(s->choices, value)) {
            set_error(err, errlen, "%s: %s must be one of %s, got '%s'", where, fname, s->choices, value);
            return -1;
        }
        memcpy(field, value, strlen(value) + 1);
    } else if (s->kind == ARG_FLAG) {
        int v;
        if (!*value || !strcmp(value, "1") || !strcmp(value, "true") || !strcmp(value, "yes")) v = 1;
        else if (!strcmp(value, "0") || !strcmp(value, "false") || !strcmp(value, "no")) v = 0;
        else {
            set_error(err, errlen, "%s: %s takes true/false, got '%s'", where, fname, value);
            return -1;
        }
        *(int *)field = v;
    } else {
        char *end = NULL;
        errno = 0;
        double v = strtod(value, &end);
        if (!*value || errno || !end || *end || !isfinite(v)) {
            set_error(err, errlen, "%s: %s expects a number, got '%s'", where, fname, value);
            return -1;
        }
        if (s->kind != ARG_DOUBLE && v != floor(v)) {
            set_error(err, errlen, "%s: %s expects a whole number, got '%s'", where, fname, value);
            return -1;
        }
        if (v < s->min || v > s->max) {
            set_error(err, errlen, "%s: %s must be in [%g, %g], got %s", where, fname, s->min, s->max, value);
            return -1;
        }
        if (s->kind == ARG_INT) *(int *)field = (int)v;
        else if (s->kind == ARG_LONG) *(long *)field = (long)v;
        else *(double *)field = v;
    }
    if (p->given) p->given[idx] = 1;
    return 0;
}

int args_set(const ArgParser *p, void *target, const char *name, const char *value,
             const char *where, char *err, size_t errlen) {
    int i = args_find(p, name);
    if (i < 0) {
        set_error(err, errlen, "%s: unknown option '%s' (see --help)", where, name);
        return -1;
    }
    return set_spec_(p, target, i, value, where, err, errlen);
}

int args_parse(const ArgParser *p, void *target, const void *defaults, int argc, char **argv,
               int first, FILE *out, char **positional, int max_positional, int *n_positional,
               char *err, size_t errlen) {
    if (n_positional) *n_positional = 0;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (out) args_print_usage(p, defaults, out);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (positional && n_positional && *n_positional < max_positional) {
                positional[(*n_positional)++] = argv[i];
                continue;
            }
            set_error(err, errlen, "unexpected argument '%s' (options start with --; quote globs such as "
                      "--data 'dir/c4-train.*.json.gz' so the shell does not expand them; see --help)", a);
            return -1;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        char nm[80];
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        if (nlen >= sizeof nm) nlen = sizeof nm - 1;
        memcpy(nm, name, nlen);
        nm[nlen] = 0;
        int idx = args_find(p, nm);
        if (idx < 0) {
            set_error(err, errlen, "unknown option '%s' (see --help)", a);
            return -1;
        }
        const char *value;
        if (eq) value = eq + 1;
        else if (p->specs[idx].kind == ARG_FLAG) value = "";
        else {
            if (i + 1 >= argc) { set_error(err, errlen, "option '%s' needs a value", a); return -1; }
            value = argv[++i];
        }
        if (set_spec_(p, target, idx, value, "command line", err, errlen)) return -1;
    }
    return 0;
}

static char *trim_(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) *--e = 0;
    return s;
}

int args_parse_file(const ArgParser *p, void *target, const char *path, const char *skip,
                    char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        set_error(err, errlen, "cannot open config file '%s': %s", path, strerror(errno));
        return -1;
    }
    char line[8192];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char *s = trim_(line);
        if (!*s) continue;
        size_t klen = strcspn(s, " \t=");
        char key[80];
        snprintf(key, sizeof key, "%.*s", (int)(klen < sizeof key ? klen : sizeof key - 1), s);
        char *rest = trim_(s + klen);
        if (*rest == '=') rest = trim_(rest + 1);
        char where[1200];
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        int idx = args_find(p, key);
        if (idx < 0) {
            set_error(err, errlen, "%s: unknown option '%s' (see --help)", where, key);
            rc = -1;
        } else if (skip && in_choices_(skip, p->specs[idx].name)) {
            set_error(err, errlen, "%s: '%s' cannot be set in a config file", where, key);
            rc = -1;
        } else {
            rc = set_spec_(p, target, idx, rest, where, err, errlen);
        }
    }
    fclose(f);
    return rc;
}

void args_format(const ArgParser *p, const void *target, int i, char *buf, size_t n) {
    const ArgSpec *s = &p->specs[i];
    const char *field = (const char *)target + s->offset;
    switch (s->kind) {
    case ARG_STR: snprintf(buf, n, "%s", field); break;
    case ARG_INT: case ARG_FLAG: snprintf(buf, n, "%d", *(const int *)field); break;
    case ARG_LONG: snprintf(buf, n, "%ld", *(const long *)field); break;
    case ARG_DOUBLE: snprintf(buf, n, "%.17g", *(const double *)field); break;
    }
}

void args_print_config(const ArgParser *p, const void *target, const char *skip, FILE *out) {
    char buf[4200];
    for (int i = 0; i < p->n_specs; i++) {
        if (skip && in_choices_(skip, p->specs[i].name)) continue;
        args_format(p, target, i, buf, sizeof buf);
        fprintf(out, "%s = %s\n", p->specs[i].name, buf);
    }
}

char *args_to_json(const ArgParser *p, const void *target) {
    json_t *obj = json_object();
    for (int i = 0; i < p->n_specs; i++) {
        const ArgSpec *s = &p->specs[i];
        const char *field = (const char *)target + s->offset;
        json_t *v = NULL;
        switch (s->kind) {
        case ARG_STR: v = json_string(field); break;
        case ARG_INT: case ARG_FLAG: v = json_integer(*(const int *)field); break;
        case ARG_LONG: v = json_integer(*(const long *)field); break;
        case ARG_DOUBLE: v = json_real(*(const double *)field); break;
        }
        json_object_set_new(obj, s->name, v);
    }
    char *text = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(obj);
    if (!text) FATAL("out of memory?", "args_to_json: cannot serialise the options");
    char *copy = xstrdup(text);
    free(text);
    return copy;
}

int args_apply_json(const ArgParser *p, void *target, const char *json, int ignore_unknown,
                    const char *where, char *err, size_t errlen) {
    json_error_t je;
    json_t *obj = json_loads(json, 0, &je);
    if (!obj || !json_is_object(obj)) {
        set_error(err, errlen, "%s: options are not a JSON object (%s)", where, obj ? "wrong type" : je.text);
        json_decref(obj);
        return -1;
    }
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(obj, key, v) {
        int idx = args_find(p, key);
        if (idx < 0) {
            if (ignore_unknown) continue;
            set_error(err, errlen, "%s: unknown option '%s'", where, key);
            rc = -1;
            break;
        }
        char buf[4200];
        if (json_is_string(v)) snprintf(buf, sizeof buf, "%s", json_string_value(v));
        else if (json_is_integer(v)) snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
        else if (json_is_real(v)) snprintf(buf, sizeof buf, "%.17g", json_real_value(v));
        else if (json_is_boolean(v)) snprintf(buf, sizeof buf, "%d", json_is_true(v));
        else {
            set_error(err, errlen, "%s: option '%s' has a value of the wrong type", where, key);
            rc = -1;
            break;
        }
        if (set_spec_(p, target, idx, buf, where, err, errlen)) { rc = -1; break; }
    }
    json_decref(obj);
    return rc;
}

void args_print_usage(const ArgParser *p, const void *defaults, FILE *out) {
    fprintf(out, "%s\n", p->usage);
    for (int i = 0; i < p->n_specs; i++) {
        const ArgSpec *s = &p->specs[i];
        char fname[96], arg[128], dflt[256];
        flag_name_(s, fname, sizeof fname);
        const char *meta = s->meta ? s->meta : s->kind == ARG_STR ? "S" : s->kind == ARG_FLAG ? "" : "N";
        snprintf(arg, sizeof arg, "%s%s%s", fname, *meta ? " " : "", meta);
        if (s->default_text) snprintf(dflt, sizeof dflt, "%s", s->default_text);
        else if (s->kind == ARG_FLAG) snprintf(dflt, sizeof dflt, "%s", "");
        else if (defaults) args_format(p, defaults, i, dflt, sizeof dflt);
        else dflt[0] = 0;
        if (s->kind == ARG_STR && !dflt[0] && !s->default_text) snprintf(dflt, sizeof dflt, "none");
        if (strlen(arg) > 28) fprintf(out, "  %s\n  %-28s %s", arg, "", s->help);
        else fprintf(out, "  %-28s %s", arg, s->help);
        if (dflt[0]) fprintf(out, " [default: %s]", dflt);
        fputc('\n', out);
    }
}
