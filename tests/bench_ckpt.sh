#!/usr/bin/env bash
# tests/bench_ckpt.sh: measured checkpoint costs of t5pretrain (not a pass/fail test; minutes).
#
#   1. save: `small`, --synthetic, --save-every 1, on 1 and 2 ranks. Every save is timed from the
#      mkdir of step_N.tmp to the rename of `latest` (strace of those system calls only): saves of
#      steps before the last run in the background (trainer_save(t, 1)), the last one in the
#      foreground. MB/s per rank = the rank's share of the raw (fp32) bytes / seconds; the
#      compression ratio is t5ckpt info's raw/stored.
#   2. stall per save: the wall time between two steps' metrics lines, less the step's own time,
#      with a save every step minus without saves (the same run otherwise); and how much slower
#      the steps themselves get while a background save writes.
#   3. load: t5ckpt verify (reads, decompresses and checks every piece) in MB/s.
#   4. resume start-up: process start to the first step, fresh vs --resume, on the sample corpus
#      (tiny-nl2), and on a generated ~300 MB C4 .json.gz shard (2 steps of batch 2, then resume):
#      the difference is the restore (checkpoint read + data cursor).
# Environment: BENCH_CKPT_STEPS (default 4), BENCH_SHARD_MB (default 300), BENCH_VARIANT (small).
source "$(dirname "$0")/e2e/lib.bash"
cd "$ROOT"
T=$(tmpdir)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=1
STEPS=${BENCH_CKPT_STEPS:-4}
VARIANT=${BENCH_VARIANT:-small}
SHARD_MB=${BENCH_SHARD_MB:-300}
SPM=data/sample/spiece.model
MPI2=(mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS=1)

# stamp: prefix each line of stdin with seconds since $1 (unix time)
stamp() { /usr/bin/python3 -u -c '
import sys, time
t0 = float(sys.argv[1])
for l in sys.stdin: print("%.3f %s" % (time.time() - t0, l), end="", flush=True)' "$1"; }

save_times() {  # save_times STRACE_FILE RUN_DIR WRITERS LABEL
    /usr/bin/python3 - "$@" <<'EOF'
import re, sys, json, subprocess
path, run, writers, label = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
begin, end = {}, {}
for line in open(path):
    m = re.search(r'^(?:\d+\s+)?(\d+\.\d+) mkdir(?:at)?\(.*"([^"]*/step_(\d+))\.tmp"', line)
    if m: begin.setdefault(int(m.group(3)), float(m.group(1)))
    m = re.search(r'^(?:\d+\s+)?(\d+\.\d+) rename(?:at2?)?\(.*"([^"]*/latest)[^"]*", .*"[^"]*/latest"', line)
    if m:
        # the latest rename that follows a begin: the commit of the newest open save
        open_steps = [s for s in begin if s not in end and begin[s] <= float(m.group(1))]
        if open_steps: end[max(open_steps)] = float(m.group(1))
info = subprocess.run(["bin/t5ckpt", "info", run], capture_output=True, text=True).stdout
kv = dict(l.split("\t", 1) for l in info.splitlines() if "\t" in l)
raw, stored = int(kv["raw_bytes"]), int(kv["stored_bytes"])
print("%s: checkpoint %.1f MB raw, %.1f MB stored, compression ratio %.3f, %d writer(s)"
      % (label, raw / 1e6, stored / 1e6, raw / stored, writers))
last = max(end) if end else None
for s in sorted(end):
    d = end[s] - begin[s]
    kind = "foreground" if s == last else "background"
    print("  save of step %d (%s): %.3f s, %.1f MB/s per rank (raw), %.1f MB/s per rank (stored)"
          % (s, kind, d, raw / writers / d / 1e6, stored / writers / d / 1e6))
EOF
}

stall() {  # stall RUN_WITH_SAVES RUN_WITHOUT LABEL
    /usr/bin/python3 - "$@" <<'EOF'
import json, sys
def load(d):
    rows = [json.loads(l) for l in open(d + "/metrics.jsonl")]
    gaps = [b["elapsed_s"] - a["elapsed_s"] - b["step_s"] for a, b in zip(rows, rows[1:])]
    steps = [r["step_s"] for r in rows[1:]]
    return sum(gaps) / len(gaps), sum(steps) / len(steps)
g1, s1 = load(sys.argv[1]); g0, s0 = load(sys.argv[2])
print("%s: between steps %.3f s with a background save per step vs %.3f s without: stall %.3f s per save;"
      " step %.3f s vs %.3f s (%.1f%% slower while the save writes)" % (sys.argv[3], g1, g0, g1 - g0, s1, s0, 100 * (s1 / s0 - 1)))
EOF
}

startup() {  # startup LOG: seconds from process start to the end of the first step of this process
    /usr/bin/python3 - "$1" <<'EOF'
import re, sys
for l in open(sys.argv[1]):
    m = re.match(r"(\d+\.\d+) step (\d+)/", l)
    if m: print(m.group(1)); break
EOF
}

echo "== save and stall: $VARIANT, synthetic, batch 2, $STEPS steps =="
SYN=(--variant "$VARIANT" --synthetic --batch 2 --threads 1 --steps "$STEPS")
TR=(strace -f -qq -ttt -e trace=mkdir,mkdirat,rename,renameat,renameat2)
"${TR[@]}" -o "$T/st1.txt" "$BIN/t5pretrain" "${SYN[@]}" --save-every 1 --run-dir "$T/s1" >"$T/s1.log" 2>&1
save_times "$T/st1.txt" "$T/s1" 1 "1 rank"
"$BIN/t5pretrain" "${SYN[@]}" --run-dir "$T/s0" >"$T/s0.log" 2>&1
stall "$T/s1" "$T/s0" "1 rank"
"${TR[@]}" -o "$T/st2.txt" "${MPI2[@]}" "$BIN/t5pretrain" "${SYN[@]}" --save-every 1 --run-dir "$T/s2" >"$T/s2.log" 2>&1
save_times "$T/st2.txt" "$T/s2" 2 "2 ranks"
"${MPI2[@]}" "$BIN/t5pretrain" "${SYN[@]}" --run-dir "$T/s20" >"$T/s20.log" 2>&1
stall "$T/s2" "$T/s20" "2 ranks"

echo "== load =="
raw=$("$BIN/t5ckpt" info "$T/s1" 2>/dev/null | sed -n 's/^raw_bytes\t//p')
t0=$(date +%s.%N); "$BIN/t5ckpt" verify "$T/s1" >/dev/null 2>&1; t1=$(date +%s.%N)
/usr/bin/python3 -c "import sys; r, d = float(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]); print('t5ckpt verify (read + decompress + checksum): %.2f s, %.1f MB/s (raw)' % (d, r / d / 1e6))" "$raw" "$t0" "$t1"

resume_startup() {  # resume_startup LABEL ARGS...: fresh run of 2 steps, then --resume to 3
    local label=$1; shift
    local t0
    t0=$(date +%s.%N); "$BIN/t5pretrain" "$@" --steps 2 --run-dir "$T/r_$label" 2>&1 | stamp "$t0" >"$T/r_$label.1.log"
    t0=$(date +%s.%N); "$BIN/t5pretrain" --resume --run-dir "$T/r_$label" --steps 3 2>&1 | stamp "$t0" >"$T/r_$label.2.log"
    local a b
    a=$(startup "$T/r_$label.1.log"); b=$(startup "$T/r_$label.2.log")
    /usr/bin/python3 - "$label" "$a" "$b" "$T/r_$label/metrics.jsonl" <<'EOF'
import json, sys
label, a, b = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = [json.loads(l) for l in open(sys.argv[4])]
sa, sb = rows[0]["step_s"], rows[2]["step_s"]
print("%s: start-up (process start to the first step, less that step) fresh %.2f s, --resume %.2f s: restore %.2f s"
      % (label, a - sa, b - sb, (b - sb) - (a - sa)))
EOF
}
echo "== resume start-up =="
TINY=(--variant tiny-nl2 --enc-len 128 --dec-len 32 --batch 2 --precision fp32 --threads 1 --spm "$SPM")
resume_startup sample "${TINY[@]}" --data 'data/sample/c4-train.*.json.gz'
mkdir -p "$T/big"
rounds=$((SHARD_MB * 1000000 / 1842931 + 1))
echo "generating a ${SHARD_MB} MB C4 shard ($rounds copies of the sample text, gzip -1)..."
for _ in $(seq 1 "$rounds"); do zcat data/sample/c4-train.*.json.gz; done | gzip -1 > "$T/big/c4-train.00000-of-00001.json.gz"
echo "shard: $(du -m "$T/big/c4-train.00000-of-00001.json.gz" | cut -f1) MB compressed"
resume_startup big "${TINY[@]}" --data "$T/big/*.json.gz"
echo "  (documents skipped on restore: $(grep -ho "skipped_on_restore=[0-9]*" "$T/r_big.2.log" | head -1); a cursor deep in"
echo "   the shard costs up to one read + parse pass of it; its decompression alone:)"
t0=$(date +%s.%N); zcat "$T/big/c4-train.00000-of-00001.json.gz" | wc -c >"$T/bytes"; t1=$(date +%s.%N)
/usr/bin/python3 -c "import sys; b, d = int(open(sys.argv[1]).read()), float(sys.argv[3]) - float(sys.argv[2]); print('  zcat of the shard: %.0f MB in %.1f s (%.0f MB/s)' % (b / 1e6, d, b / d / 1e6))" "$T/bytes" "$t0" "$t1"
