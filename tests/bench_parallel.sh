#!/usr/bin/env bash
# tests/bench_parallel.sh (part of make bench): data and pipeline parallelism on this machine.
#
#   1. t5-efficient-small, --synthetic, batch 8 x 512/114: 1 process x 2 threads against 2
#      data-parallel ranks x 1 thread (the same global batch): median tokens/s over the timed
#      steps, the ratio (target >= 0.9), the reduction time left after backward (dp_wait_s).
#   2. a Deep-Narrow variant (BENCH_PP_VARIANT, default small-el16: 16 encoder + 6 decoder
#      blocks), batch 8, micro-batch 1: pp 1 (1 x 2 threads) against pp 2 (2 x 1 thread):
#      tokens/s, measured bubble vs (P-1)/(m+P-1), peak RSS per rank, parameters per stage.
#   3. communication volume per step and rank on each axis (dp_bytes, pp_bytes in metrics.jsonl).
# Knobs: BENCH_PRECISION (fp32), BENCH_STEPS (6; the first is not timed), BENCH_OUT (build/bench).
set -u
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
P=${BENCH_PRECISION:-fp32} STEPS=${BENCH_STEPS:-6} OUT=${BENCH_OUT:-build/bench}
VDN=${BENCH_PP_VARIANT:-small-el16}
mkdir -p "$OUT"
T=$(mktemp -d "${TMPDIR:-/tmp}/t5bench-par.XXXXXX")
trap 'rm -rf "$T"' EXIT
clean=(env -u OPENBLAS_CORETYPE -u T5_BLAS_CORETYPE)
run() {  # name ranks threads [flags]
    local name=$1 np=$2 th=$3; shift 3
    "${clean[@]}" mpirun --oversubscribe -np "$np" -x OMP_NUM_THREADS="$th" bin/t5pretrain --synthetic \
        --batch 8 --enc-len 512 --dec-len 114 --steps "$STEPS" --threads "$th" --precision "$P" \
        --run-dir "$T/$name" "$@" >"$OUT/par-$name.log" 2>&1 || { echo "bench: $name failed (see $OUT/par-$name.log)"; return 1; }
}
summary() {  # name: median tokens/s, dp wait, bubble, bytes
    python3 - "$T/$1/metrics.jsonl" "$OUT/par-$1.log" "$1" <<'PY'
import json, re, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
med = lambda k: st.median([r[k] for r in rows]) if rows and k in rows[0] else float("nan")
log = open(sys.argv[2]).read()
rss = re.findall(r"peak RSS ([0-9.]+) MiB", log)
print("%-14s tok/s %7.0f  step %6.2f s  GFLOP/s %6.1f  dp_wait %5.3f s  bubble %5.3f (ideal %5.3f)  "
      "dp MB/rank %6.1f  pp MB/rank %6.1f  rank-0 peak RSS %s MiB"
      % (sys.argv[3], med("tokens_per_s"), med("step_s"), med("gflops"), med("dp_wait_s"), med("pp_bubble"),
         med("pp_bubble_ideal"), med("dp_bytes") / 1e6, med("pp_bytes") / 1e6, rss[-1] if rss else "?"))
PY
}
tps() { python3 -c "import json,statistics as s; r=[json.loads(l) for l in open('$T/$1/metrics.jsonl')][1:]; print(s.median(x['tokens_per_s'] for x in r))"; }

echo "== data parallel: t5-efficient-small, batch 8 x 512/114, $P"
run one 1 2 --variant small && run dp2 2 1 --variant small
summary one; summary dp2
awk -v a="$(tps dp2)" -v b="$(tps one)" 'BEGIN{ printf "  dp 2 x 1 thread / 1 x 2 threads = %.2fx (target >= 0.9)\n", a/b }'

echo "== pipeline: $VDN, batch 8, micro-batch 1, $P"
run pp1 1 2 --variant "$VDN" --micro-batch 1 && run pp2 2 1 --variant "$VDN" --micro-batch 1 --pp 2
grep -h "pipeline\|stage cost" "$OUT/par-pp2.log" | sed 's/^/  /'
summary pp1; summary pp2
awk -v a="$(tps pp2)" -v b="$(tps pp1)" 'BEGIN{ printf "  pp 2 x 1 thread / pp 1 x 2 threads = %.2fx\n", a/b }'
echo "(peak RSS is rank 0's: with pp 2 that is stage 0; the estimate per rank is in the logs: $OUT/par-*.log)"
