/*
 * tests/unit/test.h: the unit-test harness (header only).
 *
 * A test file defines test functions and a main() that calls RUN(fn) for each. Each RUN prints
 * "PASS name", "FAIL name" or "SKIP name: reason"; tests/run.sh counts these lines. CHECK* record
 * a failure with file:line and a message but keep going, so one run shows every broken assertion.
 * A test that cannot run on this host (a tool or package missing) calls TEST_SKIP("reason") and
 * returns: it is then neither passed nor failed but skipped (a failure recorded before the skip
 * still fails it), and a CI run with skips fails (tests/run.sh).
 *
 * T5_TEST_QUICK=1 (set by the runner for the sanitizer builds) asks tests to shrink their
 * sizes; a test must still assert the same properties.
 */
#ifndef T5_TEST_H
#define T5_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failures_ = 0;      /* failures inside the current test */
static int test_total_failed_ = 0;  /* tests that failed */
static int test_skipped_ = 0;       /* the current test called TEST_SKIP */
static char test_skip_reason_[256];

#define TEST_SKIP(...) do { test_skipped_ = 1; \
    snprintf(test_skip_reason_, sizeof test_skip_reason_, __VA_ARGS__); } while (0)

#define CHECK(cond) do { if (!(cond)) { test_failures_++; \
    fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } } while (0)
#define CHECKF(cond, ...) do { if (!(cond)) { test_failures_++; \
    fprintf(stderr, "  %s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)
#define CHECK_EQ_INT(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); \
    if (a_ != b_) { test_failures_++; fprintf(stderr, "  %s:%d: %s == %s failed: %lld vs %lld\n", \
    __FILE__, __LINE__, #a, #b, a_, b_); } } while (0)
#define CHECK_NEAR(a, b, tol) do { double a_ = (double)(a), b_ = (double)(b); \
    if (!(fabs(a_ - b_) <= (tol))) { test_failures_++; fprintf(stderr, \
    "  %s:%d: |%s - %s| <= %g failed: %.9g vs %.9g\n", __FILE__, __LINE__, #a, #b, \
    (double)(tol), a_, b_); } } while (0)
#define CHECK_STR(a, b) do { const char *a_ = (a), *b_ = (b); \
    if (!a_ || !b_ || strcmp(a_, b_) != 0) { test_failures_++; fprintf(stderr, \
    "  %s:%d: %s == %s failed: '%s' vs '%s'\n", __FILE__, __LINE__, #a, #b, \
    a_ ? a_ : "(null)", b_ ? b_ : "(null)"); } } while (0)

#define RUN(fn) do { test_failures_ = 0; test_skipped_ = 0; fn(); \
    if (test_failures_) printf("FAIL %s\n", #fn); \
    else if (test_skipped_) printf("SKIP %s: %s\n", #fn, test_skip_reason_); \
    else printf("PASS %s\n", #fn); \
    fflush(stdout); \
    if (test_failures_) test_total_failed_++; } while (0)
#define TEST_EXIT() (test_total_failed_ ? 1 : 0)

static inline int test_quick(void) {
    const char *q = getenv("T5_TEST_QUICK");
    return q && *q && *q != '0';
}

#endif
