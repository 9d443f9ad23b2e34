#!/usr/bin/env bash
# End-to-end tests of jobs/t5run, the mpirun launcher whose stop (Ctrl-C, kill -TERM) ends with a
# checkpoint, and of a stop signal given mid-step to a single t5pretrain process. The steps are
# slow on purpose (tiny, synthetic 512/114, batch 8 on 2 ranks: seconds per step), so the signal
# lands inside a step and mpirun's SIGKILL escalation (one second) would come before its end.
source "$(dirname "$0")/lib.bash"
cd "$ROOT"
T=$(tmpdir)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=1
RUN=("$ROOT/jobs/t5run" -np 2 --oversubscribe --)
SLOW=(--variant tiny --synthetic --batch 8 --threads 1 --precision fp32 --steps 100000)


# --- the launcher passes the trainer's exit code through --------------------------------------
msg=$("${RUN[@]}" --variant smal --synthetic --run-dir "$T/bad" 2>&1); rc=$?
if [ "$rc" -eq 2 ] && echo "$msg" | grep -q "nearest"; then pass launcher_passes_exit_code
else fail launcher_passes_exit_code "rc=$rc: $(echo "$msg" | tail -3)"; fi

# --- Ctrl-C on a terminal: SIGINT to the launcher's whole process group, mid-step ----------------
# (the launcher gets a session and group of its own, as an interactive shell's job would, with
# SIGINT at its default: a script's background job would start with SIGINT ignored; mpirun is in
# another session and must not see the SIGINT itself)
/usr/bin/python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])' \
    "${RUN[@]}" "${SLOW[@]}" --run-dir "$T/run" >"$T/run1.log" 2>&1 &
lpid=$!
wait_lines "$T/run/metrics.jsonl" 1
sleep 0.5
n0=$(wc -l < "$T/run/metrics.jsonl")
kill -INT -- "-$lpid"
wait "$lpid"; rc=$?
step=$(latest_step "$T/run")
if [ "$rc" -eq 75 ] && [ "$step" = $((n0 + 1)) ] && [ "$(wc -l < "$T/run/metrics.jsonl")" -eq "$step" ] \
   && [ ! -e "$T/run/final" ] && grep -q "stop requested by a signal" "$T/run1.log" \
   && "$BIN/t5ckpt" verify "$T/run" >/dev/null 2>&1; then
    pass launcher_ctrl_c_mid_step_saves_and_exits_75
else fail launcher_ctrl_c_mid_step_saves_and_exits_75 "rc=$rc, $n0 steps at the signal, checkpoint step '$step': $(tail -4 "$T/run1.log")"; fi

# --- kill -TERM of the launcher mid-step, in a resumed run ----------------------------------------
"${RUN[@]}" --resume --run-dir "$T/run" >"$T/run2.log" 2>&1 &
lpid=$!
wait_lines "$T/run/metrics.jsonl" $((step + 1))
sleep 0.5
n1=$(wc -l < "$T/run/metrics.jsonl")
kill -TERM "$lpid"
wait "$lpid"; rc=$?
step2=$(latest_step "$T/run")
if [ "$rc" -eq 75 ] && [ "$step2" = $((n1 + 1)) ] && grep -q "resumed at step $step " "$T/run2.log" \
   && "$BIN/t5ckpt" verify "$T/run" >/dev/null 2>&1; then
    pass launcher_term_mid_step_saves_and_exits_75
else fail launcher_term_mid_step_saves_and_exits_75 "rc=$rc, $n1 steps at the signal, checkpoint step '$step2': $(tail -4 "$T/run2.log")"; fi

# --- the stopped run resumes to its end through the launcher ---------------------------------------
"${RUN[@]}" --resume --run-dir "$T/run" --steps $((step2 + 1)) >"$T/run3.log" 2>&1; rc=$?
if [ "$rc" -eq 0 ] && [ "$(latest_step "$T/run")" = $((step2 + 1)) ] && [ -s "$T/run/final/model.safetensors" ] \
   && [ "$(wc -l < "$T/run/metrics.jsonl")" -eq $((step2 + 1)) ]; then
    pass launcher_resume_finishes
else fail launcher_resume_finishes "rc=$rc: $(tail -3 "$T/run3.log")"; fi

# --- a single t5pretrain process given SIGTERM mid-step finishes that step, saves, exits 75 ----------
"$BIN/t5pretrain" --variant tiny --synthetic --batch 4 --threads 1 --precision fp32 --steps 100000 \
    --run-dir "$T/one" >"$T/one.log" 2>&1 &
pid=$!
wait_lines "$T/one/metrics.jsonl" 1
sleep 0.5
n0=$(wc -l < "$T/one/metrics.jsonl")
kill -TERM "$pid"
wait "$pid"; rc=$?
step=$(latest_step "$T/one")
if [ "$rc" -eq 75 ] && [ "$step" = $((n0 + 1)) ] && "$BIN/t5ckpt" verify "$T/one" >/dev/null 2>&1; then
    pass single_process_term_mid_step_saves_and_exits_75
else fail single_process_term_mid_step_saves_and_exits_75 "rc=$rc, $n0 steps at the signal, checkpoint step '$step': $(tail -3 "$T/one.log")"; fi
