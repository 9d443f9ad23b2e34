#!/usr/bin/env bash
# End-to-end tests of the Slurm job tools on a real private cluster (munged, slurmctld, slurmd
# started here by jobs/slurm/local-cluster.sh): t5status and t5plot on run directories, the
# cluster's start and stop by pid file, refusals before submitting (unknown variant, a run
# directory of another variant, a model the partition's memory cannot hold, more CPUs than a
# node has), and a 3-variant job array of real training runs that t5status reports.
# T5_SLURM_LONG=1 adds a dry run of all 100 published variants (about 35 s of plans).
source "$(dirname "$0")/lib.bash"
source "$ROOT/tests/slurm/cluster.bash"
cd "$ROOT"
T=$(tmpdir)
CLUSTER_CLEANUP_EXTRA='rm -rf "$T"'
trap cluster_cleanup EXIT
watchdog 420
J=$ROOT/jobs
DATA='data/sample/c4-train.*.json.gz'
VAL='data/sample/c4-validation.*.json.gz'
SPM=data/sample/spiece.model

# --- t5status from run directories alone (no Slurm configured) ---------------------------------
mkrun() {  # mkrun DIR STEPS_DONE TOTAL EVENTS... (each event "JOB RESTART NAME")
    local d=$1 done_steps=$2 total=$3; shift 3
    mkdir -p "$d/ckpt"
    printf 'variant = t5-efficient-tiny\nsteps = %s\n' "$total" > "$d/config.txt"
    python3 - "$d/metrics.jsonl" "$done_steps" <<'EOF'
import json, sys
with open(sys.argv[1], "w") as f:
    for s in range(1, int(sys.argv[2]) + 1):
        r = {"step": s, "loss": 10.0 - s * 0.5, "tokens": s * 256, "tokens_per_s": 1000.0 + s, "step_s": 2.0}
        if s % 2 == 0:
            r["val_loss"] = 10.2 - s * 0.5
            r["val_neg_log_perplexity"] = -r["val_loss"]
        f.write(json.dumps(r) + "\n")
EOF
    local name
    name=$(printf 'step_%08d' "$done_steps")
    mkdir -p "$d/ckpt/$name"
    echo "{\"step\": $done_steps, \"meta\": {\"variant\": \"t5-efficient-tiny\", \"step\": $done_steps}}" > "$d/ckpt/$name/manifest.json"
    echo "$name" > "$d/ckpt/latest"
    local e
    for e in "$@"; do
        set -- $e
        printf '2026-01-01T00:00:00Z\t%s\t%s\t%s\t\n' "$1" "$2" "$3" >> "$d/job-events.log"
    done
}
mkrun "$T/st/done" 6 6 "11 - submit" "11 0 start" "11 0 done"
mkdir -p "$T/st/done/final"
mkrun "$T/st/pre" 3 10 "12 - submit" "12 0 start" "12 0 stopped" "12 0 requeue" "12 1 start" "12 1 stopped" \
    "12 2 start" "12 2 stopped" "12 2 requeue"
mkrun "$T/st/fail" 5 10 "13 - submit" "13 0 start" "13 0 failed"
mkrun "$T/st/pend" 0 10 "14 - submit"
rm -f "$T/st/pend/metrics.jsonl"; rm -rf "$T/st/pend/ckpt"
out=$(env -u SLURM_CONF "$J/t5status" --json "$T/st/done" "$T/st/pre" "$T/st/fail" "$T/st/pend" 2>&1)
if python3 - "$out" <<'EOF'
import json, sys
rows = {r["run"].rsplit("/", 1)[1]: r for r in map(json.loads, sys.argv[1].splitlines())}
d, p, f, q = rows["done"], rows["pre"], rows["fail"], rows["pend"]
assert [d["state"], p["state"], f["state"], q["state"]] == ["done", "preempted", "failed", "pending"], rows
assert (d["step"], d["total"], p["step"], p["total"]) == (6, 6, 3, 10), (d, p)
assert d["loss"] == 7.0 and d["val_neg_log_perplexity"] == -(10.2 - 3.0), d
assert p["val_step"] == 2 and p["tokens_per_s"] == 1003.0, p
assert abs(p["eta_s"] - 7 * 2.0) < 1e-9 and d["eta_s"] is None, (p["eta_s"], d["eta_s"])
assert p["checkpoint"] == "step_00000003" and p["checkpoint_age_s"] is not None
assert (d["requeues"], p["requeues"], f["requeues"], q["requeues"]) == (0, 2, 0, 0), rows
assert d["variant"] == "t5-efficient-tiny" and q["job"] == "14", (d, q)
EOF
then pass status_from_run_directories; else fail status_from_run_directories "$out"; fi
table=$(env -u SLURM_CONF "$J/t5status" "$T/st/done" "$T/st/pre" "$T/st/fail" "$T/st/pend")
if [ "$(echo "$table" | wc -l)" -eq 5 ] && echo "$table" | head -1 | grep -q 'variant.*state.*step/total.*loss.*val_nlp.*tok/s.*ETA.*checkpoint.*age.*requeues' \
   && echo "$table" | grep -qE '^pre +tiny +preempted +3/10 +8\.5000 +-9\.2000 +1003 +14s +step_00000003 .* 2 +12$'; then
    pass status_table
else fail status_table "$table"; fi
msg=$("$J/t5status" "$T/nothing" 2>&1); rc=$?
[ "$rc" -ne 0 ] && echo "$msg" | grep -q "no such run directory" && pass status_missing_dir || fail status_missing_dir "rc=$rc $msg"

# --- t5plot: a PNG with both runs' curves -----------------------------------------------------
if "$J/t5plot" "$T/st/done" "$T/st/pre" -o "$T/loss.png" >"$T/plot.log" 2>&1; then
    png=$(python3 tests/slurm/png_check.py "$T/loss.png" 9400d3 009e73 2>&1)
    # the default gnuplot colours of run 1 and run 2: both curves must be drawn, on a real plot
    if python3 - "$png" <<'EOF'
import re, sys
t = sys.argv[1]
w, h, colours, ink = re.match(r"(\d+)x(\d+) colours=(\d+) ink=([\d.]+)", t).groups()
c1 = int(re.search(r"9400d3=(\d+)", t).group(1)); c2 = int(re.search(r"009e73=(\d+)", t).group(1))
assert int(w) >= 800 and int(h) >= 400 and int(colours) > 50 and 0.01 < float(ink) < 0.5, t
assert c1 > 300 and c2 > 300, t
EOF
    then pass plot_png_has_both_runs; else fail plot_png_has_both_runs "$png"; fi
else fail plot_png_has_both_runs "$(cat "$T/plot.log")"; fi
"$J/t5plot" "$T/st/pend" -o "$T/none.png" >"$T/plot2.log" 2>&1; rc=$?
[ "$rc" -eq 2 ] && [ ! -e "$T/none.png" ] && grep -q "nothing to plot" "$T/plot2.log" \
    && pass plot_refuses_without_metrics || fail plot_refuses_without_metrics "rc=$rc $(cat "$T/plot2.log")"

# --- the cluster: start, daemons by pid file ---------------------------------------------------
t0=$SECONDS
cluster_start T5_CLUSTER_SMALL_MB=3000
alive=0
for d in munged slurmctld slurmd; do
    pid=$(cat "$CLUSTER_DIR/run/$d.pid" 2>/dev/null)
    [ -n "$pid" ] && [ "$(readlink -f /proc/$pid/exe)" = "$(readlink -f /usr/sbin/$d)" ] && alive=$((alive + 1))
done
state=$(sinfo -h -N -p debug -o '%T %m')
small=$(scontrol show partition small -o | tr ' ' '\n' | grep '^MaxMemPerNode=')
if [ "$alive" -eq 3 ] && [ "$state" = "idle $(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')" ] \
   && [ "$small" = MaxMemPerNode=3000 ]; then pass cluster_starts_idle
else fail cluster_starts_idle "alive=$alive state='$state' $(cluster_log_tail)"; fi
echo "  cluster start: $((SECONDS - t0)) s"

# --- refusals before anything is submitted -------------------------------------------------------
refused() {  # refused NAME WANT COMMAND...: exit 2, message contains WANT, nothing queued
    local name=$1 want=$2; shift 2
    local msg rc
    msg=$("$@" 2>&1); rc=$?
    if [ "$rc" -eq 2 ] && echo "$msg" | tr '\n' ' ' | grep -q -- "$want" && [ -z "$(squeue -h -o %i)" ]; then pass "$name"
    else fail "$name" "rc=$rc queue='$(squeue -h -o %i | tr '\n' ' ')' message: $msg"; fi
}
refused submit_unknown_variant "unknown variant 'tiny-nl99x'.*Nearest" \
    "$J/t5submit" --variant tiny-nl99x --run-dir "$T/bad1" -- --synthetic --steps 2
[ ! -e "$T/bad1" ] && pass submit_unknown_variant_creates_nothing || fail submit_unknown_variant_creates_nothing "$T/bad1 exists"
mkdir -p "$T/other"; printf 'variant = t5-efficient-mini\nsteps = 9\n' > "$T/other/config.txt"; echo '{}' > "$T/other/metrics.jsonl"
refused submit_run_dir_of_other_variant "holds a run of t5-efficient-mini, not t5-efficient-tiny" \
    "$J/t5submit" --variant tiny --run-dir "$T/other" -- --synthetic --steps 2
refused submit_memory_over_partition "needs .* per node .* partition small cannot hold it: its MaxMemPerNode" \
    "$J/t5submit" --variant large --run-dir "$T/big" --partition small -- --synthetic --steps 2
refused submit_more_cpus_than_node "CPUs, but the nodes of partition debug have" \
    "$J/t5submit" --variant tiny --run-dir "$T/cpus" --ntasks-per-node 2 --cpus-per-task 8 -- --synthetic --steps 2 --batch 2
refused sweep_refuses_all_when_one_is_bad "unknown variant 'nope'" \
    "$J/t5sweep" --variants tiny-nl2,nope --run-root "$T/sw-bad" -- --synthetic --steps 2
[ ! -e "$T/sw-bad" ] && pass sweep_bad_creates_nothing || fail sweep_bad_creates_nothing "$(ls -R "$T/sw-bad")"

# --- dry run: the script and the plan, nothing submitted ----------------------------------------
out=$("$J/t5submit" --variant tiny-nl2 --run-dir "$T/dry" --ntasks-per-node 2 --time 0:30:00 --dry-run \
      -- --synthetic --steps 5 --batch 2 2>&1); rc=$?
if [ "$rc" -eq 0 ] && echo "$out" | grep -q '^#SBATCH --signal=B:USR1@' && echo "$out" | grep -q '^#SBATCH --requeue' \
   && echo "$out" | grep -q '^#SBATCH --open-mode=append' && echo "$out" | grep -q 'srun --mpi=pmix' \
   && echo "$out" | grep -qE '^# plan: t5-efficient-tiny-nl2, 2 rank\(s\).*memory [0-9.]+ [MG]iB per rank' \
   && [ ! -e "$T/dry" ] && [ -z "$(squeue -h -o %i)" ]; then pass submit_dry_run_prints_script_and_plan
else fail submit_dry_run_prints_script_and_plan "rc=$rc $(echo "$out" | grep -E '^#SBATCH|^# plan|refused')"; fi

# --- all 100 published variants planned into one array (35 s of plans: T5_SLURM_LONG=1) ----------
if [ "${T5_SLURM_LONG:-0}" = 1 ]; then
    out=$("$J/t5sweep" --variants all --run-root "$T/all" --cpus-per-task 2 --dry-run -- --synthetic 2>&1); rc=$?
    if [ "$rc" -eq 0 ] && [ "$(echo "$out" | grep -c '^# plan t5-efficient-')" -eq 100 ] \
       && echo "$out" | grep -q '^#SBATCH --array=0-99$' && [ ! -e "$T/all" ]; then pass sweep_all_published_variants_dry_run
    else fail sweep_all_published_variants_dry_run "rc=$rc $(echo "$out" | grep -E 'refused|^#SBATCH --array' | head -3)"; fi
fi

# --- a 3-variant array of real runs --------------------------------------------------------------
t0=$SECONDS
out=$("$J/t5sweep" --variants tiny-nl2,tiny-nh1,small-dm128 --run-root "$T/sweep" --time 10 \
      --eval --eval-batches 2 --export "$T/hf" \
      -- --data "$DATA" --spm "$SPM" --val-data "$VAL" --eval-every 2 --eval-batches 1 \
         --steps 4 --batch 2 --enc-len 64 --dec-len 16 --save-every 2 2>&1); rc=$?
array=$(echo "$out" | sed -n 's/^array \([0-9]*\):.*/\1/p')
if [ "$rc" -eq 0 ] && [ -n "$array" ] && [ "$(echo "$out" | grep -c "^  ${array}_[0-2] ")" -eq 3 ]; then
    pass sweep_submits_one_array_of_three
else fail sweep_submits_one_array_of_three "rc=$rc $out"; fi
followups=$(echo "$out" | sed -n 's/.*follow-up \([0-9]*\)$/\1/p')
all_done() {  # every element and follow-up job has ended
    local j st
    for j in "${array}_0" "${array}_1" "${array}_2" $followups; do
        st=$(job_field "$j" JobState)
        case "$st" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL) ;; *) return 1 ;; esac
    done
}
[ -n "$array" ] && wait_for 240 all_done
echo "  sweep of 3: $((SECONDS - t0)) s"
st=$("$J/t5status" --json "$T"/sweep/t5-efficient-*)
if python3 - "$st" "$array" <<'EOF'
import json, sys
rows = [json.loads(l) for l in sys.argv[1].splitlines()]
assert len(rows) == 3, rows
got = sorted((r["variant"], r["state"], r["step"], r["total"], r["job"].split("_")[0]) for r in rows)
a = sys.argv[2]
assert got == [("t5-efficient-small-dm128", "done", 4, 4, a), ("t5-efficient-tiny-nh1", "done", 4, 4, a),
               ("t5-efficient-tiny-nl2", "done", 4, 4, a)], got
for r in rows:
    assert r["loss"] is not None and r["val_neg_log_perplexity"] is not None and r["val_neg_log_perplexity"] < 0, r
    assert r["slurm_state"] == "COMPLETED" and r["requeues"] == 0, r
EOF
then pass sweep_three_variants_done_in_status
else
    fail sweep_three_variants_done_in_status "$st"
    tail -n 20 "$T"/sweep/*/slurm-*.out "$T"/sweep/logs/* 2>/dev/null | head -60
fi
# the follow-up jobs (afterok on each element): validation neg-log-perplexity and a Hugging Face export
ok=0
for v in t5-efficient-tiny-nl2 t5-efficient-tiny-nh1 t5-efficient-small-dm128; do
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['neg_log_perplexity'] < 0 and r['batches'] == 2" \
        "$T/sweep/$v/eval.json" 2>/dev/null && [ -s "$T/hf/$v/model.safetensors" ] && [ -s "$T/hf/$v/config.json" ] \
        && [ -s "$T/hf/$v/spiece.model" ] && ok=$((ok + 1))
done
[ "$(echo $followups | wc -w)" -eq 3 ] && [ "$ok" -eq 3 ] && pass sweep_followups_eval_and_export \
    || fail sweep_followups_eval_and_export "follow-ups '$followups', $ok of 3 complete: $(tail -5 "$T"/sweep/*/followup-*.out 2>&1)"
# threads from the job (--cpus-per-task 1), not from the node's cores
n=$(grep -l "1 thread(s) per rank (SLURM_CPUS_PER_TASK=1)" "$T"/sweep/t5-efficient-*/slurm-*.out 2>/dev/null | wc -l)
[ "$n" -eq 3 ] && pass trainer_threads_from_slurm_cpus_per_task \
    || fail trainer_threads_from_slurm_cpus_per_task "$n of 3 logs: $(grep -h 'thread(s) per rank' "$T"/sweep/*/slurm-*.out)"
table=$("$J/t5status" "$T"/sweep/t5-efficient-*)
[ "$(echo "$table" | grep -c " done ")" -eq 3 ] && pass sweep_status_table_rows || fail sweep_status_table_rows "$table"
"$J/t5plot" "$T"/sweep/t5-efficient-* -o "$T/sweep.png" >/dev/null 2>&1 && [ -s "$T/sweep.png" ] \
    && pass sweep_plot || fail sweep_plot "no $T/sweep.png"

# --- mpirun inside the allocation instead of srun --------------------------------------------------
job=$("$J/t5submit" --variant tiny-nl2 --run-dir "$T/mpirun" --ntasks-per-node 2 --time 5 --launcher mpirun \
      -- --data "$DATA" --spm "$SPM" --steps 3 --batch 2 --enc-len 64 --dec-len 16 --threads 1 2>"$T/mpirun.log")
if [ -n "$job" ] && wait_job "$job" 120 COMPLETED FAILED CANCELLED TIMEOUT && [ "$(job_field "$job" JobState)" = COMPLETED ] \
   && [ -s "$T/mpirun/final/model.safetensors" ] && grep -q "launch: mpirun -np 2" "$T/mpirun/slurm-$job.out"; then
    pass submit_with_mpirun_launcher
else fail submit_with_mpirun_launcher "job '$job' $(job_field "$job" JobState): $(cat "$T/mpirun.log"; tail -5 "$T"/mpirun/slurm-*.out)"; fi

# --- stop: every daemon gone (by pid), jobs cancelled first --------------------------------------
pids=$(cat "$CLUSTER_DIR"/run/*.pid 2>/dev/null)
t0=$SECONDS
bash jobs/slurm/local-cluster.sh stop "$CLUSTER_DIR" >"$T/stop.log" 2>&1
left=0
# a daemon's zombie (waiting for init to reap it) has exited
for p in $pids; do [ -d "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] && left=$((left + 1)); done
[ "$left" -eq 0 ] && [ -n "$pids" ] && pass cluster_stops_by_pid || fail cluster_stops_by_pid "$left of '$pids' alive: $(cat "$T/stop.log")"
echo "  cluster stop: $((SECONDS - t0)) s"
