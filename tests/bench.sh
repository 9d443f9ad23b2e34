#!/usr/bin/env bash
# tests/bench.sh (make bench): speed and memory, 1 process x 2 threads.
#
#   1. sgemm peak under OpenBLAS's own kernel choice (T5_BLAS_CORETYPE=off) and under the kernel
#      blas_runtime selects (auto): the ratio is what the re-exec buys on this machine
#   2. bin/t5bench on t5-efficient-small and t5-efficient-tiny: micro-batch B, Le 512, Ld,
#      forward + backward + Adafactor; median step time, tokens/s, GFLOP/s, MFU, peak RSS vs the
#      analytical estimate
# Knobs (environment): BENCH_B (8), BENCH_LD (114: the real target length; 128 = packed rows), BENCH_STEPS (5), BENCH_THREADS (2),
# BENCH_VARIANTS ("t5-efficient-small t5-efficient-tiny"), T5BENCH (bin/t5bench), BENCH_OUT
# (build/bench: one log per run).
set -u
cd "$(dirname "$0")/.."
B=${BENCH_B:-8} LD=${BENCH_LD:-114} STEPS=${BENCH_STEPS:-5} THREADS=${BENCH_THREADS:-2}
VARIANTS=${BENCH_VARIANTS:-"t5-efficient-small t5-efficient-tiny"}
T5BENCH=${T5BENCH:-bin/t5bench}
[ -x "$T5BENCH" ] || { echo "bench: $T5BENCH missing; run make first" >&2; exit 1; }
out=${BENCH_OUT:-build/bench}
mkdir -p "$out"
# Start from a clean BLAS environment so "generic" and "tuned" mean the same on every machine.
clean=(env -u OPENBLAS_CORETYPE -u T5_BLAS_CORETYPE -u T5_BLAS_REEXEC -u T5_BLAS_LIBCORE
       -u T5_BLAS_WHY OMP_NUM_THREADS="$THREADS")

num() { grep '^{' "$1" | tail -1 | sed -n "s/.*\"$2\":\\([0-9.eE+-]*\).*/\\1/p"; }
str() { grep '^{' "$1" | tail -1 | sed -n "s/.*\"$2\":\"\\([^\"]*\\)\".*/\\1/p"; }
run() {  # log, then command
    local log=$1; shift
    echo "+ $*" >"$log"
    if ! "$@" >>"$log" 2>&1; then
        echo "bench: FAILED: $* (see $log)"; tail -5 "$log" | sed 's/^/    /'; return 1
    fi
}

status=0
echo "== sgemm 2048^3, $THREADS threads, median of 5"
run "$out/gemm-generic.log" "${clean[@]}" T5_BLAS_CORETYPE=off "$T5BENCH" --gemm-only --threads "$THREADS" || status=1
run "$out/gemm-tuned.log" "${clean[@]}" "$T5BENCH" --gemm-only --threads "$THREADS" || status=1
gg=$(num "$out/gemm-generic.log" sgemm_gflops); cg=$(str "$out/gemm-generic.log" blas_core)
gt=$(num "$out/gemm-tuned.log" sgemm_gflops); ct=$(str "$out/gemm-tuned.log" blas_core)
grep -h '^t5bench: BLAS' "$out/gemm-generic.log" "$out/gemm-tuned.log"

for v in $VARIANTS; do
    echo "== $v: B=$B Le=512 Ld=$LD, 1 warm-up + $STEPS steps, $THREADS threads"
    run "$out/$v.log" "${clean[@]}" "$T5BENCH" --variant "$v" --batch "$B" --dec-len "$LD" \
        --steps "$STEPS" --threads "$THREADS" || { status=1; continue; }
    grep -E '^(step:|tokens/s|compute|memory|loss|sgemm)' "$out/$v.log" | sed 's/^/  /'
done

echo
echo "== summary (1 process x $THREADS threads; medians)"
printf '%-28s %10s %10s\n' "sgemm 2048^3" "core" "GFLOP/s"
printf '%-28s %10s %10s\n' "  OpenBLAS own choice (off)" "${cg:-?}" "${gg:-?}"
printf '%-28s %10s %10s\n' "  blas_runtime (auto)" "${ct:-?}" "${gt:-?}"
if [ -n "$gg" ] && [ -n "$gt" ]; then
    awk -v a="$gt" -v b="$gg" 'BEGIN{ if (b > 0) printf "  tuned / generic ratio: %.2fx\n", a/b }'
fi
echo
printf '%-26s %4s %4s %8s %7s %10s %9s %8s %6s %9s %9s %6s\n' variant B Ld step_s max/min \
    enc_tok/s tgt_tok/s GFLOP/s MFU rss_MiB est_MiB ratio
for v in $VARIANTS; do
    f=$out/$v.log
    [ -f "$f" ] && grep -q '"step_s"' "$f" || { printf '%-26s (failed, see %s)\n' "$v" "$f"; continue; }
    awk -v v="$v" -v B="$(num "$f" B)" -v Ld="$(num "$f" Ld)" -v s="$(num "$f" step_s)" \
        -v e="$(num "$f" enc_tokens_per_s)" -v t="$(num "$f" target_tokens_per_s)" \
        -v g="$(num "$f" gflops)" -v m="$(num "$f" mfu)" -v r="$(num "$f" peak_rss_bytes)" \
        -v est="$(num "$f" est_bytes)" -v q="$(num "$f" rss_ratio)" \
        -v lo="$(num "$f" step_min_s)" -v hi="$(num "$f" step_max_s)" 'BEGIN{
        printf "%-26s %4d %4d %8.3f %7.2f %10.0f %9.0f %8.1f %5.1f%% %9.0f %9.0f %6.2f\n",
            v, B, Ld, s, (lo > 0 ? hi/lo : 0), e, t, g, 100*m, r/1048576, est/1048576, q }'
done
echo "(max/min: spread of the timed steps; well above 1 means the machine was busy. MFU is"
echo " relative to the sgemm peak measured in the same run.)"
echo "logs: $out/"
exit $status
