#!/usr/bin/env bash
# End-to-end fault tests of checkpoints in bin/t5pretrain:
#   kill -9 at 20 random instants of a run that saves every step (some inside a save): after
#     each, the latest checkpoint verifies, and --resume ends with the weights and metrics of an
#     uninterrupted run, bit for bit;
#   disk full during a save (a small tmpfs): a clear error, the previous checkpoint intact, exit 1;
#   validation data too small for --eval-batches: refused at start (exit 2), no work done;
#   a data error late in a run (a damaged training file, validation files that break mid-run):
#     exit 1 naming the problem, with the checkpoint of the last step kept.
# T5_KILL_INSTANTS (default 20) sets how many kills.
source "$(dirname "$0")/lib.bash"
cd "$ROOT"
T=$(tmpdir)
MNT=
cleanup() {
    if [ -n "$MNT" ] && mountpoint -q "$MNT"; then umount "$MNT"; fi
    rm -rf "$T"
}
trap cleanup EXIT
export OMP_NUM_THREADS=1
SPM=data/sample/spiece.model
DATA='data/sample/c4-train.*.json.gz'
VAL='data/sample/c4-validation.*.json.gz'
C=(--variant tiny-nl2 --enc-len 128 --dec-len 32 --batch 4 --precision fp32 --threads 1 --seed 7 --spm "$SPM")

# --- kill -9 at random instants; every latest checkpoint verifies; the end is bit for bit ----------
# The killed run asks for many steps (so no incarnation finishes, however fast the machine); after
# the kills it is resumed to FINAL = its last checkpoint + 3 (--steps may change on resume; the
# rsqrt schedule does not depend on it), and the reference trains FINAL steps straight, saving
# only at its end (--save-every changes nothing else).
STEPS=100000
KILLS=${T5_KILL_INSTANTS:-20}
seed=${T5_KILL_SEED:-$RANDOM}
echo "  kill instants from seed $seed (T5_KILL_SEED=$seed repeats them)"
RANDOM=$seed
kills=0 in_save=0 bad_verify=0 resumes=0
log="$T/kill.log"
for i in $(seq 1 "$KILLS"); do
    before=$({ wc -l < "$T/run/metrics.jsonl"; } 2>/dev/null || echo 0)
    if [ -e "$T/run/ckpt/latest" ]; then
        "$BIN/t5pretrain" --resume --run-dir "$T/run" >>"$log" 2>&1 &
        resumes=$((resumes + 1))
    else
        rm -rf "$T/run"    # killed before its first checkpoint: nothing to resume, start again
        "$BIN/t5pretrain" "${C[@]}" --data "$DATA" --steps $STEPS --save-every 1 --run-dir "$T/run" >>"$log" 2>&1 &
        before=0
    fi
    pid=$!
    # after the first new step (so every incarnation makes progress), a random instant within the
    # next 0.8 s: steps, background saves and the commits between them
    wait_lines "$T/run/metrics.jsonl" $((before + 1))
    sleep "$(printf '0.%03d' $((RANDOM % 800)))"
    if ! kill -KILL "$pid" 2>/dev/null; then wait "$pid"; echo "  incarnation $i ended before its kill (exit $?)" >&2; break; fi
    wait "$pid" 2>/dev/null
    kills=$((kills + 1))
    ls -d "$T/run/ckpt/"step_*.tmp >/dev/null 2>&1 && in_save=$((in_save + 1))
    if [ -e "$T/run/ckpt/latest" ] && ! "$BIN/t5ckpt" verify "$T/run" >>"$T/verify.log" 2>&1; then
        bad_verify=$((bad_verify + 1))
        echo "  after kill $kills: latest $(cat "$T/run/ckpt/latest") does not verify" >&2
    fi
done
last=$(latest_step "$T/run")
FINAL=$(( ${last:-0} + 3 ))
"$BIN/t5pretrain" --resume --run-dir "$T/run" --steps $FINAL >>"$log" 2>&1; rc=$?
"$BIN/t5pretrain" "${C[@]}" --data "$DATA" --steps $FINAL --run-dir "$T/ref" >"$T/ref.log" 2>&1
echo "  $kills kills ($in_save inside a save, leaving step_N.tmp), $resumes resumes; last checkpoint at step $last, resumed to $FINAL"
if [ "$bad_verify" -eq 0 ] && [ "$kills" -eq "$KILLS" ] && [ -n "$last" ] && [ "$rc" -eq 0 ] \
   && cmp -s "$T/ref/final/model.safetensors" "$T/run/final/model.safetensors" \
   && /usr/bin/python3 - "$T/ref/metrics.jsonl" "$T/run/metrics.jsonl" <<'EOF'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
# timings: every "*_s" field (step_s, elapsed_s, data_wait_s, dp_wait_s...), speeds, mfu
timing = lambda k: k.endswith("_s") or k in ("gflops", "mfu")
assert [r["step"] for r in b] == [r["step"] for r in a], [r["step"] for r in b]
for x, y in zip(a, b):
    for k in x:
        if not timing(k): assert x[k] == y[k], (x["step"], k, x[k], y[k])
EOF
then pass kill9_at_random_instants_verifies_and_resumes_bit_exact
else fail kill9_at_random_instants_verifies_and_resumes_bit_exact "$bad_verify bad verifies, $kills kills, final rc=$rc: $(tail -3 "$log")"; fi
if [ "$in_save" -ge 1 ]; then pass kill9_instants_include_a_save
else fail kill9_instants_include_a_save "no kill left a step_N.tmp behind (seed $seed)"; fi

# --- disk full during a save: clear error, previous checkpoint intact, exit 1 -------------------------
# A checkpoint of tiny-nl2 is ~19 MB: a 30 MB tmpfs holds the first, not the second.
MNT="$T/mnt"
mkdir -p "$MNT"
if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP disk_full_keeps_previous_checkpoint_and_exits_1: mounting a tmpfs needs root"
elif mount -t tmpfs -o size=30m tmpfs "$MNT" 2>"$T/mount.log"; then
    "$BIN/t5pretrain" "${C[@]}" --data "$DATA" --steps 10 --save-every 2 --run-dir "$MNT/run" >"$T/full.log" 2>&1; rc=$?
    step=$(latest_step "$MNT/run")
    if [ "$rc" -eq 1 ] && [ "$step" = 2 ] && grep -q "No space left on device" "$T/full.log" \
       && grep -q "checkpoint of step 4 not saved" "$T/full.log" && grep -q "last committed one is intact" "$T/full.log" \
       && ! ls -d "$MNT/run/ckpt/"step_*.tmp >/dev/null 2>&1 && [ ! -e "$MNT/run/final" ] \
       && "$BIN/t5ckpt" verify "$MNT/run" >/dev/null 2>&1; then
        pass disk_full_keeps_previous_checkpoint_and_exits_1
    else fail disk_full_keeps_previous_checkpoint_and_exits_1 "rc=$rc latest '$step': $(grep -i "error\|stopping" "$T/full.log" | head -4)"; fi
    umount "$MNT"
else
    fail disk_full_keeps_previous_checkpoint_and_exits_1 "cannot mount a tmpfs (root needed): $(cat "$T/mount.log")"
fi

# --- validation data too small for --eval-batches: refused before any work ------------------------------
# (batch 128: the bundled shard's 81 documents cannot feed 128 streams; batch 16: too few batches)
msg=$("$BIN/t5pretrain" "${C[@]}" --batch 128 --data "$DATA" --val-data "$VAL" --eval-every 10 --eval-batches 4 \
      --steps 20 --run-dir "$T/val_small" 2>&1); rc=$?
if [ "$rc" -eq 2 ] && echo "$msg" | grep -q "validation" && [ ! -e "$T/val_small" ]; then
    pass validation_too_few_documents_refused_at_start
else fail validation_too_few_documents_refused_at_start "rc=$rc: $(echo "$msg" | tail -2)"; fi
msg=$("$BIN/t5pretrain" "${C[@]}" --batch 16 --data "$DATA" --val-data "$VAL" --eval-every 10 --eval-batches 500 \
      --steps 20 --run-dir "$T/val_small" 2>&1); rc=$?
if [ "$rc" -eq 2 ] && echo "$msg" | grep -q "fewer than --eval-batches 500 batches of --batch 16" && [ ! -e "$T/val_small" ]; then
    pass validation_too_few_batches_refused_at_start
else fail validation_too_few_batches_refused_at_start "rc=$rc: $(echo "$msg" | tail -2)"; fi

# --- a training file that disappears mid-run: exit 1 naming it, the last step's checkpoint kept, and
# that checkpoint resumes (once the file is back) to the uninterrupted run's result, bit for bit
mkdir -p "$T/bad"
zcat data/sample/c4-train.00000-of-00004.json.gz | head -12 | gzip > "$T/shard.json.gz"
cp "$T/shard.json.gz" "$T/bad/c4-train.00000-of-00001.json.gz"
BAD=("${C[@]}" --data "$T/bad/*.json.gz")
"$BIN/t5pretrain" "${BAD[@]}" --steps 1000 --run-dir "$T/bad_run" >"$T/bad.log" 2>&1 &
pid=$!
wait_lines "$T/bad_run/metrics.jsonl" 1
rm "$T/bad/c4-train.00000-of-00001.json.gz"   # each stream reopens it at its next epoch
wait "$pid"; rc=$?
step=$(latest_step "$T/bad_run")
lines=$({ wc -l < "$T/bad_run/metrics.jsonl"; } 2>/dev/null || echo 0)
if [ "$rc" -eq 1 ] && [ "$lines" -ge 1 ] && [ "$step" = "$lines" ] && grep -q "cannot open '$T/bad/c4-train.00000-of-00001.json.gz'" "$T/bad.log" \
   && grep -q "Saving the state of step $lines" "$T/bad.log" && "$BIN/t5ckpt" verify "$T/bad_run" >/dev/null 2>&1; then
    pass late_data_error_keeps_checkpoint
else fail late_data_error_keeps_checkpoint "rc=$rc, $lines steps, latest '$step': $(grep -i "error" "$T/bad.log" | head -3)"; fi
cp "$T/shard.json.gz" "$T/bad/c4-train.00000-of-00001.json.gz"
"$BIN/t5pretrain" --resume --run-dir "$T/bad_run" --steps $((lines + 4)) >"$T/bad2.log" 2>&1; rc=$?
"$BIN/t5pretrain" "${BAD[@]}" --steps $((lines + 4)) --run-dir "$T/bad_ref" >"$T/bad_ref.log" 2>&1
if [ "$rc" -eq 0 ] && cmp -s "$T/bad_ref/final/model.safetensors" "$T/bad_run/final/model.safetensors"; then
    pass checkpoint_kept_after_data_error_resumes_bit_exact
else fail checkpoint_kept_after_data_error_resumes_bit_exact "rc=$rc: $(tail -2 "$T/bad2.log")"; fi

# --- validation files that break mid-run: exit 1, the checkpoint of that step kept -------------------------
cp data/sample/c4-validation.00000-of-00001.json.gz "$T/val.json.gz"
"$BIN/t5pretrain" "${C[@]}" --data "$DATA" --val-data "$T/val.json.gz" --eval-every 8 --eval-batches 1 --steps 20 \
    --run-dir "$T/val_run" >"$T/val.log" 2>&1 &
pid=$!
wait_lines "$T/val_run/metrics.jsonl" 1
head -c 2000 data/sample/c4-validation.00000-of-00001.json.gz > "$T/val.json.gz.new"
mv "$T/val.json.gz.new" "$T/val.json.gz"
wait "$pid"; rc=$?
step=$(latest_step "$T/val_run")
if [ "$rc" -eq 1 ] && [ "$step" = 8 ] && grep -q "validation failed at step 8" "$T/val.log" \
   && "$BIN/t5ckpt" verify "$T/val_run" >/dev/null 2>&1; then
    pass late_validation_error_keeps_checkpoint
else fail late_validation_error_keeps_checkpoint "rc=$rc latest '$step': $(grep -i "error" "$T/val.log" | head -3)"; fi
