/*
 * tests/unit/test.h: the unit-test harness (header only).
 *
 * A test file defines test functions and a main() that calls RUN(fn) for each. Each RUN prints
 * "PASS name" or "FAIL name"; tests/run.sh counts these lines. CHECK* record a failure with
 * file:line and a message but keep going, so one run shows every broken assertion.
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

#define RUN(fn) do { test_failures_ = 0; fn(); \
    printf("%s %s\n", test_failures_ ? "FAIL" : "PASS", #fn); fflush(stdout); \
    if (test_failures_) test_total_failed_++; } while (0)
#define TEST_EXIT() (test_total_failed_ ? 1 : 0)

static inline int test_quick(void) {
    const char *q = getenv("T5_TEST_QUICK");
    return q && *q && *q != '0';
}

#endif
