#!/usr/bin/env bash
# tests/run.sh: run every test and print "N passed, N failed" as the last line.
#
#   unit tests      build/tests/test_*   (plain build)
#                   build/asan/test_*    (ASan + UBSan build, T5_TEST_QUICK=1)
#                   valgrind build/tests/test_*  (T5_TEST_QUICK=1; T5_SKIP_VALGRIND=1 skips)
#   end-to-end      tests/e2e/*.sh       (programs, MPI, fault and data tests)
#
# Every test program prints "PASS name" / "FAIL name" lines; each line counts once. A program
# that exits non-zero or dies without printing a FAIL line counts as one more failure.
# TESTS=pattern runs only the programs whose path matches the pattern.
set -u
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp}
pattern=${TESTS:-}
passed=0 failed=0
log_dir=build/test-logs
mkdir -p "$log_dir"

run_one() {  # label, then the command
    local label=$1; shift
    if [ -n "$pattern" ] && [[ "$label" != *$pattern* ]]; then return; fi
    local log="$log_dir/$(echo "$label" | tr '/: ' '___').log"
    local t0=$SECONDS
    "$@" >"$log" 2>&1
    local rc=$?
    local p f
    p=$(grep -c '^PASS ' "$log")
    f=$(grep -c '^FAIL ' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "FAIL $label (exit $rc, no FAIL line)" >>"$log"; fi
    passed=$((passed + p)); failed=$((failed + f))
    printf '%-44s %3d passed %3d failed  %4ds\n' "$label" "$p" "$f" $((SECONDS - t0))
    if [ "$f" -ne 0 ]; then grep -E '^FAIL |CHECK failed|ERROR|error|fatal' "$log" | head -20 | sed 's/^/    /'; fi
}

for t in build/tests/test_*; do
    [ -x "$t" ] || continue
    run_one "unit/$(basename "$t")" "$t"
done
for t in build/asan/test_*; do
    [ -x "$t" ] || continue
    run_one "asan/$(basename "$t")" env T5_TEST_QUICK=1 "$t"
done
# valgrind: memory errors and definite leaks in the plain build (quick sizes; ~3 minutes).
if command -v valgrind >/dev/null && [ "${T5_SKIP_VALGRIND:-0}" != 1 ]; then
    for t in build/tests/test_*; do
        [ -x "$t" ] || continue
        run_one "valgrind/$(basename "$t")" env T5_TEST_QUICK=1 valgrind -q --suppressions=tests/valgrind-mpi.supp --leak-check=full \
            --errors-for-leak-kinds=definite --error-exitcode=9 "$t"
    done
fi
for t in tests/e2e/*.sh; do
    [ -f "$t" ] || continue
    run_one "e2e/$(basename "$t" .sh)" bash "$t"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
