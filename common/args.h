/*
 * common/args.h: the one command-line / config-file option parser of every program.
 *
 * A program describes its options with a table of ArgSpec (name, kind, field offset in its
 * options struct, accepted range or choices, help) and parses into that struct:
 *   - flags "--name value", "--name=value", "--flag" (the flag of field run_dir is --run-dir);
 *   - config files (args_parse_file): one "name = value" per line, '#' starts a comment;
 *   - JSON objects {"name": value, ...} (args_apply_json), as stored in checkpoints.
 * Every value is checked when parsed (number syntax, whole numbers, range, choices, length) and
 * the message names where it came from ("command line", "FILE:LINE"). `--help` prints the usage
 * with every option's default, taken from the defaults struct the caller passes.
 * Options that were given explicitly are remembered (args_given), so a caller can tell a default
 * from a user's choice (resume checks, "honour or reject, never replace without a word").
 */
#ifndef T5_COMMON_ARGS_H
#define T5_COMMON_ARGS_H

#include <stddef.h>
#include <stdio.h>

typedef enum { ARG_STR, ARG_INT, ARG_LONG, ARG_DOUBLE, ARG_FLAG } ArgKind;

typedef struct {
    const char *name;       /* field-style name: "run_dir" (flag --run-dir) */
    ArgKind kind;
    size_t offset;          /* of the field in the options struct */
    size_t size;            /* strings: buffer size */
    double min, max;        /* numbers: accepted range */
    const char *choices;    /* strings: "a|b|c" accepted values (NULL = any) */
    const char *meta;       /* value placeholder in --help ("N", "DIR"); NULL = from the kind */
    const char *help;
    const char *default_text; /* shown as the default instead of the value (NULL = the value) */
} ArgSpec;

#define ARG_STR_(T, f, ch, meta, help, dflt) { #f, ARG_STR, offsetof(T, f), sizeof(((T *)0)->f), 0, 0, ch, meta, help, dflt }
#define ARG_NUM_(T, kind, f, lo, hi, meta, help, dflt) { #f, kind, offsetof(T, f), 0, lo, hi, NULL, meta, help, dflt }
#define ARG_FLAG_(T, f, help) { #f, ARG_FLAG, offsetof(T, f), 0, 0, 1, NULL, NULL, help, NULL }

typedef struct {
    const char *usage;      /* printed first by --help (may be multi-line) */
    const ArgSpec *specs;
    int n_specs;
    unsigned char *given;   /* n_specs bytes, set to 1 for each option given (may be NULL) */
} ArgParser;

/* Parse argv[first..argc) into target. "--help"/"-h" prints the usage (defaults from
 * `defaults`, a struct of the same type holding the default values) to out and returns 1.
 * Arguments not starting with "--" are an error unless positional != NULL: then they are
 * collected in order into positional[0..max_positional) and their count stored in *n_positional.
 * Returns 0, or -1 with a message in err (target may be partly filled). */
int args_parse(const ArgParser *p, void *target, const void *defaults, int argc, char **argv,
               int first, FILE *out, char **positional, int max_positional, int *n_positional,
               char *err, size_t errlen);

/* Config file: "name = value" lines. skip (may be NULL) names options a file may not set
 * ("a|b"). 0, or -1 with FILE:LINE in err. */
int args_parse_file(const ArgParser *p, void *target, const char *path, const char *skip,
                    char *err, size_t errlen);

/* Set one option by name (field-style or flag-style) from text; where names the source. */
int args_set(const ArgParser *p, void *target, const char *name, const char *value,
             const char *where, char *err, size_t errlen);

/* Index of the option named `name` ("run_dir", "run-dir" or "--run-dir"), or -1. */
int args_find(const ArgParser *p, const char *name);
/* 1 if option `name` was given explicitly (command line, file or JSON), else 0. */
int args_given(const ArgParser *p, const char *name);

/* The value of option i as text (numbers with full precision: %.17g, whole numbers as integers). */
void args_format(const ArgParser *p, const void *target, int i, char *buf, size_t n);

/* Print "name = value" for every option except those in skip ("a|b"): a valid config file. */
void args_print_config(const ArgParser *p, const void *target, const char *skip, FILE *out);

/* JSON object text of every option (malloc'ed; caller frees); strings as strings, numbers as
 * numbers. args_apply_json sets every option present in the object; unknown keys are an error
 * unless ignore_unknown. 0, or -1 with a message. */
char *args_to_json(const ArgParser *p, const void *target);
int args_apply_json(const ArgParser *p, void *target, const char *json, int ignore_unknown,
                    const char *where, char *err, size_t errlen);

/* Print the usage and every option with its default. */
void args_print_usage(const ArgParser *p, const void *defaults, FILE *out);

#endif
