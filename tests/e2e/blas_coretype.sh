#!/usr/bin/env bash
# tests/e2e/blas_coretype.sh: OpenBLAS kernel selection through bin/t5bench --gemm-only.
#
#   auto     with OPENBLAS_CORETYPE unset, the log names the CPU's best core (SkylakeX for
#            AVX-512 F+BW+DQ+VL, Haswell for AVX2+FMA) and, when the library default is older,
#            sgemm is at least 2x faster than with T5_BLAS_CORETYPE=off
#   off      reports the library's own choice (the "library default" named by the auto run)
#   user     an explicit OPENBLAS_CORETYPE=Haswell is kept (if the CPU can run it)
#   forced   T5_BLAS_CORETYPE=Haswell selects Haswell even if OPENBLAS_CORETYPE says otherwise
#   results  the same fixed product under two kernels agrees (and both match a float64 numpy
#            reference) within the sgemm error bound
#   fallback a (simulated) wrong result under the selected kernel (the auto choice, or a forced
#            Haswell when auto keeps the library's core) re-executes with the library's choice
#            and warns; wrong under both is fatal with a HINT; no exec loop
# A check that cannot apply on this host prints "SKIP name: not applicable on this host: why"
# (tests/run.sh counts it as skipped, never as passed).
source "$(dirname "$0")/lib.bash"
T5BENCH=${T5BENCH:-$BIN/t5bench}   # override to test another build
if [ ! -x "$T5BENCH" ]; then fail blas_coretype "missing $T5BENCH (run make)"; exit 1; fi
T=$(tmpdir)
trap 'rm -rf "$T"' EXIT
# Clean environment for every run: no inherited core type or markers.
clean=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE -u T5_BLAS_CORETYPE -u T5_BLAS_REEXEC
       -u T5_BLAS_LIBCORE -u T5_BLAS_WHY -u T5_BLAS_SELFTEST_FAIL OMP_NUM_THREADS=2)
# One thread: the speed comparison then does not depend on whether the other core is busy.
bench() { timeout 120 "${clean[@]}" "$@" "$T5BENCH" --gemm-only --threads 1 --gemm-n 1024 --gemm-reps 5; }
json_num() { grep '^{' "$1" | tail -1 | sed -n "s/.*\"$2\":\\([0-9.eE+-]*\).*/\\1/p"; }
json_str() { grep '^{' "$1" | tail -1 | sed -n "s/.*\"$2\":\"\\([^\"]*\\)\".*/\\1/p"; }

flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { [[ " $flags " == *" $1 "* ]]; }
best=""
if has avx512f && has avx512bw && has avx512dq && has avx512vl; then best=SkylakeX
elif has avx2 && has fma; then best=Haswell; fi
# Cores of the same ISA level count as "best" (the library may itself pick Cooperlake etc.).
level() { case "${1,,}" in skylakex|cooperlake|sapphirerapids) echo 3;; haswell|zen|excavator) echo 2;;
          sandybridge|bulldozer|piledriver|steamroller) echo 1;; *) echo 0;; esac; }

# --- auto and off ---------------------------------------------------------------------------
bench >"$T/auto.log" 2>&1; rc_auto=$?
bench T5_BLAS_CORETYPE=off >"$T/off.log" 2>&1; rc_off=$?
core_auto=$(json_str "$T/auto.log" blas_core); g_auto=$(json_num "$T/auto.log" sgemm_gflops)
core_off=$(json_str "$T/off.log" blas_core); g_off=$(json_num "$T/off.log" sgemm_gflops)
echo "auto: core $core_auto, $g_auto GFLOP/s | off: core $core_off, $g_off GFLOP/s"
grep '^t5bench: BLAS' "$T/auto.log" "$T/off.log"
if [ $rc_auto -ne 0 ] || [ -z "$core_auto" ] || [ -z "$g_auto" ]; then
    fail blas_auto "t5bench exit $rc_auto: $(tail -3 "$T/auto.log")"
elif [ -n "$best" ] && [ "$(level "$core_auto")" -lt "$(level "$best")" ]; then
    fail blas_auto "CPU supports $best but the run used $core_auto"
elif ! grep -q "^t5bench: BLAS OpenBLAS .*core $core_auto (.*GEMM check ok" "$T/auto.log"; then
    fail blas_auto "describe line missing or wrong: $(grep BLAS "$T/auto.log")"
else pass blas_auto; fi

if [ $rc_off -ne 0 ] || [ -z "$core_off" ]; then
    fail blas_off "t5bench exit $rc_off: $(tail -3 "$T/off.log")"
elif ! grep -q "core $core_off (library choice, T5_BLAS_CORETYPE=off)" "$T/off.log"; then
    fail blas_off "off mode not reported: $(grep BLAS "$T/off.log")"
elif grep -q "library default " "$T/auto.log" &&
     ! grep -q "library default $core_off)" "$T/auto.log"; then
    fail blas_off "off core $core_off is not the library default named by the auto run"
else pass blas_off; fi

# Speed: only meaningful when auto actually changed the kernel.
if [ "$core_auto" != "$core_off" ] && [ -n "$g_auto" ] && [ -n "$g_off" ]; then
    if awk -v a="$g_auto" -v o="$g_off" 'BEGIN{exit !(a >= 2*o)}'; then pass blas_speedup
    else fail blas_speedup "$core_auto $g_auto GFLOP/s is not >= 2x $core_off $g_off GFLOP/s"; fi
else
    echo "SKIP blas_speedup: not applicable on this host: the library default $core_off already matches the CPU, so auto changes no kernel"
fi

# --- explicit user setting and forced setting ----------------------------------------------
if has avx2 && has fma; then
    bench OPENBLAS_CORETYPE=Haswell >"$T/user.log" 2>&1
    if [ "$(json_str "$T/user.log" blas_core)" = Haswell ] &&
       grep -q "OPENBLAS_CORETYPE=Haswell set by user" "$T/user.log"; then pass blas_user_kept
    else fail blas_user_kept "$(grep -E 'BLAS|fatal' "$T/user.log")"; fi
    bench T5_BLAS_CORETYPE=Haswell OPENBLAS_CORETYPE=Prescott >"$T/forced.log" 2>&1
    if [ "$(json_str "$T/forced.log" blas_core)" = Haswell ] &&
       grep -q "forced by T5_BLAS_CORETYPE" "$T/forced.log"; then pass blas_forced
    else fail blas_forced "$(grep -E 'BLAS|fatal' "$T/forced.log")"; fi
else
    echo "note: CPU lacks AVX2+FMA; Haswell kernels cannot run here"
    bench OPENBLAS_CORETYPE=Prescott >"$T/user.log" 2>&1
    if [ "$(json_str "$T/user.log" blas_core)" = Prescott ]; then pass blas_user_kept
    else fail blas_user_kept "$(grep -E 'BLAS|fatal' "$T/user.log")"; fi
    echo "SKIP blas_forced: not applicable on this host: the CPU lacks AVX2+FMA, so a forced Haswell cannot run"
fi

# --- same product under two kernels --------------------------------------------------------
if ! /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
    echo "SKIP blas_results_agree: /usr/bin/python3 with numpy not available (apt-get install python3-numpy)"
else
timeout 120 "${clean[@]}" "$T5BENCH" --gemm-only --gemm-n 64 --gemm-reps 1 --gemm-dump "$T/d_auto" >/dev/null 2>&1
timeout 120 "${clean[@]}" T5_BLAS_CORETYPE=off "$T5BENCH" --gemm-only --gemm-n 64 --gemm-reps 1 \
    --gemm-dump "$T/d_off" >/dev/null 2>&1
if /usr/bin/python3 - "$T/d_auto" "$T/d_off" <<'EOF'
import sys, numpy as np
def load(d):
    M, K, N = map(int, open(d + "/dims.txt").read().split())
    A = np.fromfile(d + "/A.f32", np.float32).reshape(M, K).astype(np.float64)
    B = np.fromfile(d + "/B.f32", np.float32).reshape(K, N).astype(np.float64)
    C = np.fromfile(d + "/C.f32", np.float32).reshape(M, N).astype(np.float64)
    return A, B, C, K
A1, B1, C1, K = load(sys.argv[1])
A2, B2, C2, _ = load(sys.argv[2])
assert np.array_equal(A1, A2) and np.array_equal(B1, B2), "inputs differ between runs"
ref, mag = A1 @ B1, np.abs(A1) @ np.abs(B1)
tol = 2 * K * 2.0**-24          # fp32 dot-product bound gamma_K, with slack (blas_runtime.c)
e1, e2 = np.max(np.abs(C1 - ref) / mag), np.max(np.abs(C2 - ref) / mag)
e12 = np.max(np.abs(C1 - C2) / mag)
print(f"kernel errors vs float64: {e1:.2e} {e2:.2e}; between kernels {e12:.2e}; tol {tol:.2e}")
sys.exit(0 if (e1 <= tol and e2 <= tol and e12 <= 2 * tol) else 1)
EOF
then pass blas_results_agree; else fail blas_results_agree "products differ beyond the bound"; fi
fi

# --- fallback and fatal paths (simulated wrong kernel) --------------------------------------
# The selected kernel must differ from the library's: the auto choice if it changed the kernel,
# else a forced Haswell (any AVX2+FMA CPU whose library default is another core).
sel="" force=()
if [ "$core_auto" != "$core_off" ]; then sel=$core_auto
elif has avx2 && has fma && [ "$core_off" != Haswell ]; then sel=Haswell; force=(T5_BLAS_CORETYPE=Haswell)
fi
if [ -n "$sel" ]; then
    bench "${force[@]}" T5_BLAS_SELFTEST_FAIL="$sel" >"$T/fb.log" 2>&1; rc=$?
    if [ $rc -eq 0 ] && [ "$(json_str "$T/fb.log" blas_core)" = "$core_off" ] &&
       grep -q "WARNING: OpenBLAS sgemm gives WRONG results under core type $sel" "$T/fb.log" &&
       grep -q "library default again: GEMM check failed under $sel" "$T/fb.log"; then
        pass blas_fallback
    else fail blas_fallback "exit $rc: $(grep -E 'BLAS|WARN|fatal' "$T/fb.log" | head -5)"; fi
    bench "${force[@]}" T5_BLAS_SELFTEST_FAIL="$sel,$core_off" >"$T/fatal.log" 2>&1; rc=$?
    if [ $rc -ne 0 ] && grep -q "fatal" "$T/fatal.log" && grep -q "HINT" "$T/fatal.log" &&
       [ "$(grep -c 'WARNING: OpenBLAS sgemm gives WRONG' "$T/fatal.log")" -eq 1 ]; then
        pass blas_fatal
    else fail blas_fatal "exit $rc: $(head -c 600 "$T/fatal.log")"; fi
else
    echo "SKIP blas_fallback: not applicable on this host: no kernel other than the library's $core_off can be selected"
    bench T5_BLAS_SELFTEST_FAIL="$core_off" >"$T/fatal.log" 2>&1; rc=$?
    if [ $rc -ne 0 ] && grep -q "HINT" "$T/fatal.log"; then pass blas_fatal
    else fail blas_fatal "exit $rc"; fi
fi
