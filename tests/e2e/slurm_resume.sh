#!/usr/bin/env bash
# End-to-end tests of preemption and resumption on a real private Slurm cluster with the real
# trainer (2 MPI ranks through srun --mpi=pmix):
#   1. a run preempted twice while it trains (scontrol requeue from outside, then SIGUSR1
#      through the batch shell) resumes by itself each time; its final weights and metrics.jsonl
#      (timing fields aside) equal an uninterrupted run's bit for bit; the requeue count is 2
#   2. a rank killed with SIGKILL ends the job FAILED with a clear message naming the last
#      checkpoint; `scontrol requeue` resumes from that checkpoint, again bit-identical at the end
#   3. a job that reaches its time limit (1 minute) stops with a checkpoint before it and
#      resumes in the requeued job
# Takes about 3 minutes on 2 cores. T5_SLURM_SKIP_TIMELIMIT=1 leaves out the 1-minute test.
source "$(dirname "$0")/lib.bash"
source "$ROOT/tests/slurm/cluster.bash"
cd "$ROOT"
T=$(tmpdir)
REF_PID=""
CLUSTER_CLEANUP_EXTRA='[ -n "$REF_PID" ] && kill "$REF_PID" 2>/dev/null; rm -rf "$T"'
trap cluster_cleanup EXIT
watchdog 540
J=$ROOT/jobs
STEPS=80
BASE=(--data 'data/sample/c4-train.*.json.gz' --spm data/sample/spiece.model
      --val-data 'data/sample/c4-validation.*.json.gz' --eval-every 10 --eval-batches 1
      --batch 4 --enc-len 64 --dec-len 16 --threads 1 --save-every 5 --seed 7)
OPTS=("${BASE[@]}" --steps "$STEPS")

last_step() { python3 -c "import json,sys; l=[x for x in open(sys.argv[1]) if x.strip()]; print(json.loads(l[-1])['step'] if l else 0)" "$1" 2>/dev/null || echo 0; }
step_at_least() { [ "$(last_step "$1/metrics.jsonl")" -ge "$2" ] && [ -s "$1/ckpt/latest" ]; }
events_count() { local n; n=$(grep -c -P "\t$2\t" "$1/job-events.log" 2>/dev/null); echo "${n:-0}"; }
has_event() { [ "$(events_count "$1" "$2")" -ge "$3" ]; }
same_run() {  # same_run REF DIR: final weights and metrics without timings identical
    cmp -s "$1/final/model.safetensors" "$2/final/model.safetensors" || { echo "final/model.safetensors differ"; return 1; }
    python3 - "$1/metrics.jsonl" "$2/metrics.jsonl" <<'EOF'
import json, sys
# timings: every *_s field (step_s, data_wait_s, elapsed_s, dp_wait_s, ...) and the rates
TIMING = {"tokens_per_s", "gflops", "mfu", "pp_bubble"}
def rows(p):
    out = []
    for line in open(p):
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if k not in TIMING and not k.endswith("_s") and not k.endswith("_seconds")})
    return out
a, b = rows(sys.argv[1]), rows(sys.argv[2])
if len(a) != len(b):
    sys.exit("metrics: %d vs %d lines" % (len(a), len(b)))
for x, y in zip(a, b):
    if x != y:
        sys.exit("metrics differ at step %s: %s vs %s" % (x.get("step"), x, y))
EOF
}
show_logs() { tail -n 25 "$1"/slurm-*.out 2>/dev/null | sed 's/^/    /'; cat "$1/job-events.log" 2>/dev/null | sed 's/^/    /'; }

cluster_start

# The uninterrupted reference, outside Slurm, while the cluster's first job runs.
export OMP_NUM_THREADS=1
mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS "$BIN/t5pretrain" --variant tiny-nl2 "${OPTS[@]}" \
    --run-dir "$T/ref" >"$T/ref.log" 2>&1 &
REF_PID=$!

# --- 1. preempted twice, resumes by itself, bit-identical ----------------------------------------
t0=$SECONDS
job=$("$J/t5submit" --variant tiny-nl2 --run-dir "$T/pre" --ntasks-per-node 2 --time 10 \
      -- "${OPTS[@]}" 2>"$T/submit.log")
[ -n "$job" ] && pass submit_prints_job_id || { fail submit_prints_job_id "$(cat "$T/submit.log")"; exit 1; }
# a second job on the same run directory is refused while the first is queued or running
msg=$("$J/t5submit" --variant tiny-nl2 --run-dir "$T/pre" --ntasks-per-node 2 --time 10 -- "${OPTS[@]}" 2>&1); rc=$?
[ "$rc" -eq 2 ] && echo "$msg" | grep -q "already has job $job" && [ "$(squeue -h -o %i | wc -l)" -eq 1 ] \
    && pass submit_refuses_second_job_on_run_dir || fail submit_refuses_second_job_on_run_dir "rc=$rc $msg"
if wait_for 120 step_at_least "$T/pre" 15; then
    at1=$(last_step "$T/pre/metrics.jsonl")
    scontrol requeue "$job"
    # back by itself: a second start that resumes, and training past the first preemption
    if wait_for 120 has_event "$T/pre" resume 1 && wait_for 120 step_at_least "$T/pre" $((at1 + 10)); then
        pass preempt_requeue_resumes_by_itself
    else fail preempt_requeue_resumes_by_itself "$(show_logs "$T/pre")"; fi
    at2=$(last_step "$T/pre/metrics.jsonl")
    scancel -b -s USR1 "$job"
    if wait_for 120 has_event "$T/pre" resume 2; then pass preempt_usr1_through_batch_shell_resumes
    else fail preempt_usr1_through_batch_shell_resumes "$(show_logs "$T/pre")"; fi
    if [ "$at1" -lt "$STEPS" ] && [ "$at2" -lt "$STEPS" ] && [ "$at2" -gt "$at1" ]; then pass preemptions_while_training
    else fail preemptions_while_training "steps at the preemptions: $at1, $at2 of $STEPS"; fi
else
    fail preempt_requeue_resumes_by_itself "the job never reached step 15 with a checkpoint: $(show_logs "$T/pre")"
fi
wait_job "$job" 180 COMPLETED FAILED CANCELLED TIMEOUT
st=$(job_field "$job" JobState); restarts=$(job_field "$job" Restarts)
echo "  preempted run: $((SECONDS - t0)) s, preempted at steps ${at1:-?} and ${at2:-?}, job $st, restarts $restarts"
[ "$st" = COMPLETED ] && [ "$restarts" = 2 ] && pass preempted_job_completes_after_two_requeues \
    || fail preempted_job_completes_after_two_requeues "state $st restarts $restarts $(show_logs "$T/pre")"
grep -qP '\tstopped\tstep_\d+ \(SIGUSR1\)' "$T/pre/job-events.log" && grep -qP '\trequeue\t' "$T/pre/job-events.log" \
    && pass usr1_stop_checkpoints_then_requeues || fail usr1_stop_checkpoints_then_requeues "$(show_logs "$T/pre")"
wait "$REF_PID"; rc=$?; REF_PID=""
[ "$rc" -eq 0 ] || fail reference_run "exit $rc: $(tail -5 "$T/ref.log")"
msg=$(same_run "$T/ref" "$T/pre" 2>&1) && pass preempted_run_equals_uninterrupted_bit_for_bit \
    || fail preempted_run_equals_uninterrupted_bit_for_bit "$msg"
rq=$("$J/t5status" --json "$T/pre" | python3 -c "import json,sys; r=json.load(sys.stdin); print(r['requeues'], r['state'], r['step'])")
[ "$rq" = "2 done $STEPS" ] && pass status_reports_two_requeues || fail status_reports_two_requeues "$rq"

# --- 2. a rank killed with SIGKILL: a clear failure, then resumption from the last checkpoint -----
t0=$SECONDS
job=$("$J/t5submit" --variant tiny-nl2 --run-dir "$T/kill" --ntasks-per-node 2 --time 10 -- "${OPTS[@]}" 2>"$T/submit2.log")
if [ -n "$job" ] && wait_for 120 step_at_least "$T/kill" 12; then
    pid=$(rank_pid "$job" 1 "$BIN/t5pretrain")
    if [ -n "$pid" ]; then kill -9 "$pid"; else fail kill_rank "no process of rank 1 of job $job"; fi
    wait_job "$job" 60 FAILED COMPLETED CANCELLED
    st=$(job_field "$job" JobState)
    ck=$(tr -d '\n' < "$T/kill/ckpt/latest")
    out=$(cat "$T/kill"/slurm-"$job".out)
    if [ "$st" = FAILED ] && echo "$out" | grep -q "ERROR: the training step failed" \
       && echo "$out" | grep -q "Last committed checkpoint: $ck" && echo "$out" | grep -q "HINT: scontrol requeue $job"; then
        pass killed_rank_fails_job_with_clear_message
    else fail killed_rank_fails_job_with_clear_message "state $st; $(echo "$out" | tail -12)"; fi
    [ "$("$J/t5status" --json "$T/kill" | python3 -c "import json,sys; print(json.load(sys.stdin)['state'])")" = failed ] \
        && pass status_reports_failed || fail status_reports_failed "$("$J/t5status" "$T/kill")"
    scontrol requeue "$job"
    wait_job "$job" 180 COMPLETED FAILED CANCELLED TIMEOUT
    st=$(job_field "$job" JobState)
    if [ "$st" = COMPLETED ] && grep -qP "\tresume\t$ck\$" "$T/kill/job-events.log"; then
        pass requeue_after_failure_resumes_from_last_checkpoint
    else fail requeue_after_failure_resumes_from_last_checkpoint "state $st, checkpoint $ck: $(show_logs "$T/kill")"; fi
    msg=$(same_run "$T/ref" "$T/kill" 2>&1) && pass failed_and_resumed_run_equals_uninterrupted \
        || fail failed_and_resumed_run_equals_uninterrupted "$msg"
else
    fail killed_rank_fails_job_with_clear_message "job '$job' never reached step 12: $(cat "$T/submit2.log"; show_logs "$T/kill")"
fi
echo "  killed-rank run: $((SECONDS - t0)) s"

# --- 3. the time limit: a checkpoint before it, then the requeued job resumes --------------------
if [ "${T5_SLURM_SKIP_TIMELIMIT:-0}" != 1 ]; then
    t0=$SECONDS
    job=$("$J/t5submit" --variant tiny-nl2 --run-dir "$T/limit" --ntasks-per-node 2 --time 1 --signal-seconds 10 \
          -- "${BASE[@]}" --steps 100000 --end-time-margin 15 2>"$T/submit3.log")
    # (--steps 100000: the job cannot finish within its minute)
    if [ -n "$job" ] && wait_for 150 has_event "$T/limit" resume 1; then
        pass time_limit_stops_with_checkpoint_and_resumes
    else fail time_limit_stops_with_checkpoint_and_resumes "$(cat "$T/submit3.log"; show_logs "$T/limit")"; fi
    how=$(grep -P '\tstopped\t' "$T/limit/job-events.log" | head -1 | cut -f5)
    st=$(job_field "$job" JobState)
    # stopped by the trainer (end-time deadline or the USR1 warning), never killed by the limit
    if [ -n "$how" ] && [ "$st" != TIMEOUT ] && ! grep -q "DUE TO TIME LIMIT" "$T/limit"/slurm-*.out; then
        pass time_limit_never_reached
    else fail time_limit_never_reached "stop '$how', state $st: $(show_logs "$T/limit")"; fi
    echo "  time-limit run: $((SECONDS - t0)) s, first stop: $how"
    scancel "$job"
    wait_job "$job" 60 CANCELLED
    st=$("$J/t5status" --json "$T/limit" | python3 -c "import json,sys; r=json.load(sys.stdin); print(r['state'], r['slurm_state'], r['requeues'] >= 1)")
    [ "$st" = "cancelled CANCELLED True" ] && pass status_reports_cancelled || fail status_reports_cancelled "$st"
fi
