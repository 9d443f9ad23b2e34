#!/usr/bin/env bash
# Tensor-parallel building blocks (parallel/tp.h) under mpirun, and the one-BLAS guarantee.
#   - build/tests/test_tp with np 1, 2, 4 (tp 1, 2, 4 on both reduction paths; plain) and np 2
#     (ASan; leak checking off: Open MPI's dlopen'ed components leak at exit)
#   - every program links ScaLAPACK but maps exactly one OpenBLAS, the OpenMP one (ldd and at run
#     time), and the run-time check FAILS when another BLAS is forced in (LD_PRELOAD of the
#     pthread libblas.so.3), so the check is known to be able to fail
#   - bin/t5tpbench --quick runs at tp 2 and tp 1 and its two reduction paths agree
source "$(dirname "$0")/lib.bash"
cd "$ROOT"
T=$(tmpdir)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=1
MPIRUN=(mpirun --oversubscribe)
NTESTS=13   # MPI_RUN lines test_tp prints

run_collective() {  # label, np, program
    local label=$1 np=$2 prog=$3 out rc n
    out=$(timeout 300 "${MPIRUN[@]}" -np "$np" "$prog" 2>"$T/err_$label"); rc=$?
    echo "$out" | grep -E '^(PASS|FAIL) ' | sed "s/^\(PASS\|FAIL\) \([a-z_0-9]*\).*/\1 \2_$label/"
    if [ "$rc" -ne 0 ]; then fail "tp_collective_$label" "mpirun exit $rc: $(tail -5 "$T/err_$label")"; fi
    n=$(echo "$out" | grep -c '^PASS test_')
    if [ "$n" -ne "$NTESTS" ]; then fail "tp_collective_count_$label" "$n of $NTESTS PASS lines: $(tail -5 "$T/err_$label")"; fi
}
for np in 1 2 4; do run_collective "np$np" "$np" build/tests/test_tp; done
ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 run_collective "np2_asan" 2 build/asan/test_tp

# --- one BLAS ------------------------------------------------------------------------------------
OMP_DIR=/usr/lib/x86_64-linux-gnu/openblas-openmp
for prog in bin/t5tpbench bin/t5pretrain build/tests/test_tp; do
    name=$(basename "$prog")
    libs=$(ldd "$prog" | grep -E 'blas|lapack')
    if echo "$libs" | grep -q 'openblas-pthread\|/blas/' ; then
        fail "ldd_one_blas_$name" "$libs"
    elif echo "$libs" | grep -q "libopenblas.so.0 => $OMP_DIR/" &&
         [ "$(echo "$libs" | grep -c "=> $OMP_DIR/")" -eq "$(echo "$libs" | grep -v scalapack | grep -c '=>')" ]; then
        pass "ldd_one_blas_$name"
    else fail "ldd_one_blas_$name" "expected every BLAS/LAPACK from $OMP_DIR: $libs"; fi
    # a program that uses ScaLAPACK must get its libblas.so.3 / liblapack.so.3 from there too
    if echo "$libs" | grep -q scalapack; then
        if [ "$(echo "$libs" | grep -cE "lib(blas|lapack).so.3 => $OMP_DIR/")" -eq 2 ]; then pass "ldd_scalapack_blas_$name"
        else fail "ldd_scalapack_blas_$name" "$libs"; fi
    fi
done
if readelf -d bin/t5tpbench | grep -q "(RPATH).*$OMP_DIR"; then pass blas_rpath_not_runpath
else fail blas_rpath_not_runpath "$(readelf -d bin/t5tpbench | grep -i path)"; fi
out=$(bin/t5tpbench --blas-check 2>&1); rc=$?
if [ "$rc" -eq 0 ] && echo "$out" | grep -q '^t5tpbench: blas ok: one BLAS: .*openblas-openmp/libopenblas'; then
    pass blas_runtime_one_openmp
else fail blas_runtime_one_openmp "rc $rc: $out"; fi
out=$(LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 bin/t5tpbench --blas-check 2>&1); rc=$?
if [ "$rc" -eq 1 ] && echo "$out" | grep -q 'blas FAIL: .*openblas-pthread/libblas.so.3.*HINT'; then
    pass blas_runtime_detects_second_blas
else fail blas_runtime_detects_second_blas "rc $rc: $out"; fi

# --- the benchmark runs, and its two paths agree -------------------------------------------------
check_bench() {  # label, then the command
    local label=$1; shift
    local out rc
    out=$("$@" 2>&1); rc=$?
    echo "$out" | grep '^t5tpbench: ' | sed 's/^/    /'
    local nred nsub agree
    nred=$(echo "$out" | grep -c '^t5tpbench: reduce op=')
    nsub=$(echo "$out" | grep -c '^t5tpbench: sublayer ')
    agree=$(echo "$out" | awk '/reduce agreement/ { for (i = 1; i <= NF; i++) if ($i ~ /=/) { split($i, a, "="); if (a[2] + 0 > 1e-5) bad = 1 } ; seen = 1 } END { print (seen && !bad) ? "ok" : "bad" }')
    if [ "$rc" -eq 0 ] && [ "$nred" -eq 4 ] && [ "$nsub" -eq 2 ] && [ "$agree" = ok ] &&
       echo "$out" | grep -q '^t5tpbench: plan '; then pass "t5tpbench_$label"
    else fail "t5tpbench_$label" "rc $rc, $nred reduce and $nsub sublayer lines, agreement $agree: $(echo "$out" | tail -3)"; fi
}
check_bench tp2 timeout 120 "${MPIRUN[@]}" -np 2 bin/t5tpbench --quick
check_bench tp1 timeout 120 env OMP_NUM_THREADS=2 bin/t5tpbench --quick --variant xxl
out=$(timeout 60 "${MPIRUN[@]}" -np 3 bin/t5tpbench --variant small 2>&1); rc=$?
if [ "$rc" -ne 0 ] && echo "$out" | grep -q 'HINT'; then pass t5tpbench_rejects_bad_split
else fail t5tpbench_rejects_bad_split "rc $rc: $(echo "$out" | tail -3)"; fi
