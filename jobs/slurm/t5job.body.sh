# jobs/slurm/t5job.body.sh: the body of every batch script that jobs/t5submit and jobs/t5sweep
# write (they copy it below the #SBATCH lines and the settings block, so a job.sbatch is
# self-contained: editing or updating the checkout does not change a queued job).
#
# Settings block (written by t5submit/t5sweep, bash variables):
#   T5_TRAINER      absolute path of bin/t5pretrain
#   T5_LAUNCHER     srun | mpirun
#   T5_RUN_DIR      the run directory (for arrays: set from T5_SWEEP_TABLE, see below)
#   T5_ARGS         array: t5pretrain options except --run-dir, --resume, --end-time
#   T5_SWEEP_TABLE  (arrays only) TSV "index variant run_dir": element SLURM_ARRAY_TASK_ID
#                   takes its variant and run directory from it
#
# What one run of the script does:
#   1. appends "start" to RUN_DIR/job-events.log (job id, restart count, node list, time)
#   2. reads the job's end time from Slurm and passes it as --end-time, so the trainer stops with
#      a checkpoint before the wall-clock limit even if no signal comes
#   3. adds --resume when RUN_DIR/ckpt/latest exists
#   4. launches the ranks (srun --mpi=pmix, or mpirun inside the allocation) in the background and
#      waits; SIGUSR1 (sbatch --signal=B:USR1@S, or scancel -b -s USR1) is forwarded to the
#      ranks as a stop request. SIGTERM is not forwarded: Slurm sends it to the job's steps
#      itself (requeue, cancel, time limit) and a second stop signal would end the trainer
#      without a checkpoint. (With mpirun the ranks do not see that SIGTERM: mpirun ends them,
#      and the next run resumes from the last periodic checkpoint, --save-every.)
#   5. on the trainer's exit code:
#        0   finished: "done", the job ends COMPLETED
#        75  stopped with a committed checkpoint: after a SIGUSR1 or the end-time deadline the
#            job requeues itself (scontrol requeue); after a SIGTERM Slurm already decided
#            (requeue, cancel or time limit) and the script just ends
#        3   training data exhausted (checkpoint written): "data-exhausted", ends, no requeue
#        2   bad configuration: ends, no requeue
#        other (a rank failed or was killed): "failed" with the last checkpoint named; ends
#            FAILED (exit 1). `scontrol requeue JOBID` (or t5submit again) resumes from it.
#
# RUN_DIR/job-events.log, one line per event, tab-separated:
#   UTC-time  job-id  restart-count  event  detail
# events: start, resume, stop-signal, requeue, done, stopped, data-exhausted, config-error, failed

set -u
export PATH=${PATH:-/usr/local/bin:/usr/bin:/bin}:/usr/sbin:/usr/bin:/bin

if [ -n "${T5_SWEEP_TABLE:-}" ]; then
    idx=${SLURM_ARRAY_TASK_ID:?T5_SWEEP_TABLE set but this is not an array element}
    row=$(awk -F'\t' -v i="$idx" '$1 == i' "$T5_SWEEP_TABLE")
    [ -n "$row" ] || { echo "t5job: no row $idx in $T5_SWEEP_TABLE" >&2; exit 2; }
    T5_VARIANT=$(cut -f2 <<<"$row")
    T5_RUN_DIR=$(cut -f3 <<<"$row")
    T5_ARGS=(--variant "$T5_VARIANT" "${T5_ARGS[@]}")
    mkdir -p "$T5_RUN_DIR"
    exec >>"$T5_RUN_DIR/slurm-$SLURM_JOB_ID.out" 2>&1
fi

restart=${SLURM_RESTART_COUNT:-0}
events=$T5_RUN_DIR/job-events.log
log() { echo "t5job[$SLURM_JOB_ID restart $restart] $(date -u +%FT%TZ): $*"; }
event() {  # event NAME DETAIL
    printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$SLURM_JOB_ID" "$restart" "$1" "${2:-}" >>"$events"
}
latest_ckpt() { [ -s "$T5_RUN_DIR/ckpt/latest" ] && tr -d ' \n' < "$T5_RUN_DIR/ckpt/latest"; }

mkdir -p "$T5_RUN_DIR"
event start "nodes=${SLURM_JOB_NODELIST:-?} tasks=${SLURM_NTASKS:-1} cpus_per_task=${SLURM_CPUS_PER_TASK:-1}"
log "start on ${SLURM_JOB_NODELIST:-?}: ${SLURM_NTASKS:-1} rank(s) x ${SLURM_CPUS_PER_TASK:-1} thread(s), run dir $T5_RUN_DIR"

# The job's end time (epoch seconds) from Slurm; none for an unlimited job.
end_time=""
end_str=$(squeue -h -j "$SLURM_JOB_ID" -o '%e' 2>/dev/null | head -1)
case "$end_str" in
    ""|N/A|NONE|Unknown|UNLIMITED) ;;
    *) end_time=$(date -d "$end_str" +%s 2>/dev/null) || end_time="" ;;
esac
if [ -z "$end_time" ]; then
    end_str=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | tr ' ' '\n' | sed -n 's/^EndTime=//p' | head -1)
    case "$end_str" in ""|Unknown|None) ;; *) end_time=$(date -d "$end_str" +%s 2>/dev/null) || end_time="" ;; esac
fi
args=("${T5_ARGS[@]}" --run-dir "$T5_RUN_DIR")
if [ -n "$end_time" ]; then
    args+=(--end-time "$end_time")
    log "job ends at $(date -u -d "@$end_time" +%FT%TZ) ($((end_time - $(date +%s))) s from now): --end-time $end_time"
else
    log "no end time from Slurm (unlimited job): no --end-time"
fi
if ck=$(latest_ckpt); then
    args+=(--resume)
    event resume "$ck"
    log "resuming from $T5_RUN_DIR/ckpt/$ck"
fi

threads=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=$threads
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
case "$T5_LAUNCHER" in
    srun)   launch=(srun --mpi=pmix --kill-on-bad-exit=1 --cpus-per-task="$threads"
                    --ntasks="${SLURM_NTASKS:-1}" "$T5_TRAINER") ;;
    mpirun) launch=(mpirun -np "${SLURM_NTASKS:-1}" --bind-to none -x OMP_NUM_THREADS
                    "$T5_TRAINER") ;;
    *) log "unknown launcher '$T5_LAUNCHER'"; exit 2 ;;
esac

stop_signal=""
child=""
on_usr1() {
    stop_signal=USR1
    event stop-signal USR1
    log "SIGUSR1 (time limit near, or a preemption notice): asking the ranks to checkpoint and stop"
    [ -n "$child" ] && kill -USR1 "$child" 2>/dev/null
}
on_term() {
    stop_signal=TERM
    event stop-signal TERM
    log "SIGTERM from Slurm (requeue, cancel or time limit): the ranks got it too and checkpoint"
}
trap on_usr1 USR1
trap on_term TERM INT

log "launch: ${launch[*]} ${args[*]}"
"${launch[@]}" "${args[@]}" &
child=$!
# wait returns early (status > 128) when a trapped signal arrives: wait again until the
# launcher has really exited, then take its saved status.
while kill -0 "$child" 2>/dev/null; do wait "$child"; done
wait "$child"
rc=$?
child=""
# srun can exit 0 when the step never started ("task 0 launch failed"): done means final/ exists
if [ "$rc" -eq 0 ] && [ ! -f "$T5_RUN_DIR/final/model.safetensors" ]; then
    log "the launcher exited 0 but $T5_RUN_DIR/final was not written: the training step did not run (see the srun lines above)"
    rc=1
fi

case "$rc" in
    0)
        event done "$(latest_ckpt || echo -)"
        log "finished all steps: $T5_RUN_DIR/final"
        exit 0 ;;
    75)
        ck=$(latest_ckpt || echo none)
        if [ "$stop_signal" = TERM ]; then
            event stopped "$ck (SIGTERM: Slurm requeues or ends the job)"
            log "stopped with checkpoint $ck after SIGTERM; Slurm decides whether the job runs again"
            exit 75
        fi
        why=${stop_signal:+SIGUSR1}
        why=${why:-end-time deadline}
        event stopped "$ck ($why)"
        log "stopped with checkpoint $ck ($why): requeueing job $SLURM_JOB_ID"
        event requeue "$ck"
        # The requeue ends this instance of the job (SIGTERM to this shell): nothing is left to do.
        trap '' TERM
        if scontrol requeue "$SLURM_JOB_ID"; then exit 0; fi
        event failed "scontrol requeue $SLURM_JOB_ID failed"
        log "ERROR: scontrol requeue $SLURM_JOB_ID failed. HINT: the job needs --requeue and a cluster" \
            "that allows requeueing (JobRequeue); resume by hand with jobs/t5submit on the same --run-dir"
        exit 75 ;;
    3)
        event data-exhausted "$(latest_ckpt || echo -)"
        log "the training data ran out (checkpoint $(latest_ckpt || echo none)); not requeued." \
            "HINT: more data or --max-epochs, then resubmit on the same run directory"
        exit 3 ;;
    2)
        event config-error "exit 2"
        log "the trainer refused its configuration (exit 2, message above); not requeued"
        exit 2 ;;
    *)
        ck=$(latest_ckpt || echo none)
        if [ "$rc" -gt 128 ]; then what="killed by signal $((rc - 128))"; else what="exit code $rc"; fi
        if [ "$stop_signal" = TERM ]; then
            # Slurm is ending this run (requeue, cancel, time limit). mpirun ends its ranks on
            # SIGTERM without passing it on, so they could not checkpoint: the next run resumes
            # from the last periodic checkpoint.
            event stopped "$ck (SIGTERM; $what before a checkpoint at the signal)"
            log "ended by SIGTERM ($what); the next run resumes from checkpoint $ck"
            exit "$rc"
        fi
        event failed "$what; last checkpoint $ck"
        log "ERROR: the training step failed ($what): a rank died or failed (see the srun/mpirun" \
            "lines above for which task). Last committed checkpoint: $ck." \
            "HINT: scontrol requeue $SLURM_JOB_ID (or jobs/t5submit with the same --run-dir) resumes from it"
        exit 1 ;;
esac
