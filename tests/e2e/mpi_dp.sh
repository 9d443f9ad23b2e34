#!/usr/bin/env bash
# MPI tests of parallel/ (grid, bucketed reducer, ZeRO-1, MPI checks) under mpirun, and the fault
# tests: a rank killed mid-reduction, a rank that never posts its side (T5_MPI_TIMEOUT).
# The collective tests are build/tests/test_dp run with np 1, 2, 4 (plain) and np 2 (ASan; leak
# checking off there because Open MPI's dlopen'ed components leak at exit, which LSan cannot
# attribute; leaks are checked by the non-MPI unit runs and valgrind).
source "$(dirname "$0")/lib.bash"
cd "$ROOT"
T=$(tmpdir)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=1
MPIRUN=(mpirun --oversubscribe)
now() { date +%s.%N; }

run_collective() {  # label, np, program
    local label=$1 np=$2 prog=$3
    local out rc
    out=$(timeout 300 "${MPIRUN[@]}" -np "$np" "$prog" 2>"$T/err_$label"); rc=$?
    echo "$out" | grep -E '^(PASS|FAIL) ' | grep -v -E '^PASS test_(buckets|owners|timeout)' | sed "s/^\(PASS\|FAIL\) \([a-z_0-9]*\).*/\1 \2_np$np${label#np$np}/"
    if [ "$rc" -ne 0 ]; then fail "collective_$label" "mpirun exit $rc: $(tail -5 "$T/err_$label")"; fi
    local n; n=$(echo "$out" | grep -c '^PASS test_')
    if [ "$n" -lt 8 ]; then fail "collective_count_$label" "only $n PASS lines: $(tail -5 "$T/err_$label")"; fi
}
for np in 1 2 4; do run_collective "np$np" "$np" build/tests/test_dp; done
ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 run_collective "np2_asan" 2 build/asan/test_dp

# --- a rank killed mid-reduction: the job ends within a bounded time, names the rank and the
# collective the survivors were waiting in --------------------------------------------------
for np in 2 4; do
    t0=$(now)
    timeout 60 "${MPIRUN[@]}" -np "$np" build/tests/test_dp --kill-rank 1 >"$T/kill$np.log" 2>&1; rc=$?
    t1=$(now)
    tkill=$(grep -o 'mid-reduction at epoch [0-9.]*' "$T/kill$np.log" | awk '{print $4}')
    total=$(echo "$t1 - $t0" | bc); after=$(echo "$t1 - ${tkill:-$t0}" | bc)
    echo "measured: np $np, rank 1 killed: job ended ${after}s after the kill (${total}s in all), rc $rc"
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ -n "$tkill" ] && (( $(echo "$after < 20" | bc) )); then
        pass "rank_killed_job_ends_np$np"
    else fail "rank_killed_job_ends_np$np" "rc=$rc after=${after}s: $(tail -5 "$T/kill$np.log")"; fi
    if grep -q 'process rank 1 .*exited on signal 9' "$T/kill$np.log"; then pass "rank_killed_names_rank_np$np"
    else fail "rank_killed_names_rank_np$np" "$(tail -8 "$T/kill$np.log")"; fi
    if grep -qE '^rank [0-9]+ step 7: signal 15 while waiting in dp bucket [0-9]+/8 MPI_Iallreduce' "$T/kill$np.log"; then
        pass "rank_killed_names_collective_np$np"
    else fail "rank_killed_names_collective_np$np" "$(tail -8 "$T/kill$np.log")"; fi
done

# --- a rank that never posts its side: the others time out after T5_MPI_TIMEOUT and abort ------
t0=$(now)
T5_MPI_TIMEOUT=2 timeout 60 "${MPIRUN[@]}" -np 2 build/tests/test_dp --absent-rank 1 >"$T/absent.log" 2>&1; rc=$?
el=$(echo "$(now) - $t0" | bc)
echo "measured: T5_MPI_TIMEOUT=2 with an absent peer: job ended after ${el}s, rc $rc"
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && (( $(echo "$el >= 2 && $el < 20" | bc) )) &&
   grep -qE '^fatal: rank 0 step 7: timed out after 2\.[0-9] s waiting for dp bucket 0/8 MPI_Iallreduce' "$T/absent.log" &&
   grep -q '^HINT: ' "$T/absent.log"; then
    pass mpi_wait_timeout_names_collective
else fail mpi_wait_timeout_names_collective "rc=$rc el=${el}s: $(tail -8 "$T/absent.log")"; fi
