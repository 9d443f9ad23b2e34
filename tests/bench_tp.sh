#!/usr/bin/env bash
# tests/bench_tp.sh: tensor parallelism against one process on a wide model (make bench).
#
# xl-nl2: the xl width (d_model 1024, 32 heads of 128, d_ff 16384) cut to 2 + 2 blocks, sample
# corpus, batch 4 x 128/32, fp32, STEPS steps (default 6; the first is left out of the medians).
# Three runs on the same 2 cores: 1 process x 2 threads, --tp 2 x 1 thread with MPI_Allreduce sums,
# --tp 2 x 1 thread with --tp-reduce pblas (the attention output products through psgemm, the rest by
# MPI). Prints per run the median step time, tokens/s, the time
# inside the tensor-parallel sums, the bytes summed per rank per step, peak RSS of rank 0 against
# the estimate, and the ratios. Timings are only meaningful on an otherwise idle machine.
source "$(dirname "$0")/e2e/lib.bash"
T=$(tmpdir)
trap 'rm -rf "$T"' EXIT
cd "$ROOT"
STEPS=${STEPS:-6}
unset OPENBLAS_CORETYPE
COMMON=(--variant xl-nl2 --data 'data/sample/c4-train.*.json.gz' --spm data/sample/spiece.model --batch 4
        --micro-batch 1 --enc-len 128 --dec-len 32 --precision fp32 --seed 3 --steps "$STEPS")
run() {  # name np threads [args]
    local name=$1 np=$2 th=$3; shift 3
    if [ "$np" = 1 ]; then
        OMP_NUM_THREADS=$th "$BIN/t5pretrain" "${COMMON[@]}" --threads "$th" "$@" --run-dir "$T/$name" >"$T/$name.log" 2>&1
    else
        mpirun --oversubscribe -np "$np" -x OMP_NUM_THREADS="$th" "$BIN/t5pretrain" "${COMMON[@]}" --threads "$th" "$@" \
            --run-dir "$T/$name" >"$T/$name.log" 2>&1
    fi || { echo "bench_tp: $name failed: $(tail -3 "$T/$name.log")"; return 1; }
}
run one 1 2 && run tp2_mpi 2 1 --tp 2 && run tp2_pblas 2 1 --tp 2 --tp-reduce pblas || exit 1
/usr/bin/python3 - "$T" <<'EOF'
import json, re, statistics, sys
T = sys.argv[1]
res = {}
for name in ("one", "tp2_mpi", "tp2_pblas"):
    m = [json.loads(l) for l in open(f"{T}/{name}/metrics.jsonl")][1:]
    log = open(f"{T}/{name}.log").read()
    rss = re.search(r"peak RSS ([0-9.]+) MiB \(estimate ([0-9.]+) MiB\)", log)
    res[name] = dict(step=statistics.median(x["step_s"] for x in m),
                     tok=statistics.median(x["tokens_per_s"] for x in m),
                     tp_s=statistics.median(x.get("tp_reduce_s", 0) for x in m),
                     tp_mb=statistics.median(x.get("tp_bytes", 0) for x in m) / 1e6,
                     rss=float(rss.group(1)), est=float(rss.group(2)))
print("bench_tp: xl-nl2 (243M params, vocabulary 8192), batch 4 x 128/32, fp32, median of %d steps" % len(m))
print("bench_tp: %-10s %8s %9s %10s %13s %9s %9s" % ("run", "step_s", "tokens/s", "tp_sums_s", "tp_MB/rank", "RSS_MiB", "est_MiB"))
for k, r in res.items():
    print("bench_tp: %-10s %8.3f %9.0f %10.3f %13.1f %9.0f %9.0f" % (k, r["step"], r["tok"], r["tp_s"], r["tp_mb"], r["rss"], r["est"]))
o, a, b = res["one"], res["tp2_mpi"], res["tp2_pblas"]
print("bench_tp: tp 2 x 1 thread (MPI sums) / 1 x 2 threads: %.2fx the speed; --tp-reduce pblas / mpi: %.2fx the step time; "
      "rank-0 RSS tp 2 / tp 1: %.2f" % (o["step"] / a["step"], b["step"] / a["step"], a["rss"] / o["rss"]))
EOF
