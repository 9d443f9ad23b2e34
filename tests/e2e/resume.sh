#!/usr/bin/env bash
# End-to-end tests of checkpoints and --resume in bin/t5pretrain:
#   exactness: a run stopped (signal, kill -9, --steps) and resumed equals the straight run bit for
#     bit (every metrics.jsonl field but timings, and final/model.safetensors), with real data and
#     validation, and across an epoch change of the data streams;
#   another layout: 2 ranks -> 1, 1 -> 2, 1 -> 2 threads give the same batches (target tokens;
#     with frozen weights, every step's loss equals t5eval's on t5data dump-batch --step S) and
#     losses within summation-order differences;
#   refusals: changed options (values named), --resume without a checkpoint, a directory with
#     results without --resume; metrics.jsonl cut back to the checkpoint; --resume --steps N;
#     --init-from; a corrupted newest checkpoint: reported by file and tensor, and --resume falls
#     back to the previous one, loudly.
source "$(dirname "$0")/lib.bash"
cd "$ROOT"
T=$(tmpdir)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=1
SPM=data/sample/spiece.model
DATA='data/sample/c4-train.*.json.gz'
VAL='data/sample/c4-validation.*.json.gz'
# every run of the exactness tests uses these (the options that cannot change on resume)
BASE=(--variant tiny-nl2 --enc-len 128 --dec-len 32 --batch 4 --precision fp32 --seed 3
      --data "$DATA" --spm "$SPM" --val-data "$VAL" --eval-every 4 --eval-batches 1)
MPI2=(mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS=1)

# same_metrics MODE A B [R]: B's metrics.jsonl holds exactly the steps 1..N of A (N = A's rows) and
# equals A in every field but timings: MODE exact (bit for bit) or close: steps up to R bit for
# bit (the same layout as A), later ones with token counts exact and the rest within 1e-5
# relative, the gradient norm 1e-4 (another summation order from the same state at step R).
same_metrics() {
    /usr/bin/python3 - "$@" <<'EOF'
import json, sys
mode, fa, fb = sys.argv[1:4]
resumed_at = int(sys.argv[4]) if len(sys.argv) > 4 else 0
a = [json.loads(l) for l in open(fa + "/metrics.jsonl")]
b = [json.loads(l) for l in open(fb + "/metrics.jsonl")]
# timings: every "*_s" field (step_s, elapsed_s, data_wait_s, dp_wait_s...), speeds, mfu
timing = lambda k: k.endswith("_s") or k in ("gflops", "mfu")
assert [r["step"] for r in b] == list(range(1, len(a) + 1)), ("steps of %s" % fb, [r["step"] for r in b])
worst = {}
for x, y in zip(a, b):
    # communication volumes (dp_bytes, pp_bytes) describe the layout: compared within one only
    other_layout = mode == "close" and x["step"] > resumed_at
    skip = lambda k: timing(k) or (other_layout and k.endswith("_bytes"))
    kx = {k for k in x if not skip(k)}
    ky = {k for k in y if not skip(k)}
    assert kx == ky, ("fields differ at step", x["step"], kx ^ ky)
    for k in kx:
        if mode == "exact" or x["step"] <= resumed_at or k in ("step", "tokens", "target_tokens", "val_tokens"):
            assert x[k] == y[k], ("step", x["step"], k, x[k], y[k])
        else:
            rel = abs(x[k] - y[k]) / max(abs(x[k]), 1e-30)
            # the gradient norm, a sum of squares of every gradient, shows the summation order most
            tol = 1e-4 if k == "grad_norm" else 1e-5
            worst[k] = max(worst.get(k, 0.0), rel)
            assert rel <= tol, ("step", x["step"], k, x[k], y[k], rel)
if mode == "close":
    print("largest relative differences over %d steps: %s" % (len(a), ", ".join("%s %.2g" % kv for kv in sorted(worst.items()))))
EOF
}
same_weights() { cmp -s "$1/final/model.safetensors" "$2/final/model.safetensors"; }

# --- the straight run every other is compared with (checkpoints every 4 steps, in the background)
"$BIN/t5pretrain" "${BASE[@]}" --threads 1 --steps 12 --save-every 4 --run-dir "$T/full" >"$T/full.log" 2>&1; rc=$?
if [ "$rc" -eq 0 ] && [ "$(wc -l < "$T/full/metrics.jsonl")" -eq 12 ] && [ "$(latest_step "$T/full")" = 12 ] \
   && [ -d "$T/full/ckpt/step_00000004" ] && [ -d "$T/full/ckpt/step_00000008" ] && [ -s "$T/full/final/model.safetensors" ]; then
    pass straight_run_ends_with_a_checkpoint
else fail straight_run_ends_with_a_checkpoint "rc=$rc: $(tail -3 "$T/full.log")"; fi

# --- stop by a signal mid-run, resume: bit for bit ----------------------------------------------
"$BIN/t5pretrain" "${BASE[@]}" --threads 1 --steps 12 --run-dir "$T/sig" >"$T/sig1.log" 2>&1 &
pid=$!
wait_lines "$T/sig/metrics.jsonl" 5
kill -USR1 "$pid"
wait "$pid"; rc1=$?
stopped=$(latest_step "$T/sig")
"$BIN/t5pretrain" --resume --run-dir "$T/sig" >"$T/sig2.log" 2>&1; rc2=$?
if [ "$rc1" -eq 75 ] && [ -n "$stopped" ] && [ "$stopped" -lt 12 ] && [ "$rc2" -eq 0 ] \
   && grep -q "resumed at step $stopped " "$T/sig2.log" && same_metrics exact "$T/full" "$T/sig" && same_weights "$T/full" "$T/sig"; then
    pass signal_stop_and_resume_is_bit_exact
else fail signal_stop_and_resume_is_bit_exact "stopped at '$stopped' rc=$rc1/$rc2: $(tail -2 "$T/sig2.log")"; fi

# --- kill -9 after the checkpoint of step 6: metrics.jsonl is cut back to step 6, then bit for bit --
"$BIN/t5pretrain" "${BASE[@]}" --threads 1 --steps 12 --save-every 6 --run-dir "$T/k9" >"$T/k91.log" 2>&1 &
pid=$!
wait_lines "$T/k9/metrics.jsonl" 8
kill -KILL "$pid"
wait "$pid" 2>/dev/null
lines_at_kill=$(wc -l < "$T/k9/metrics.jsonl")
"$BIN/t5pretrain" --resume --run-dir "$T/k9" >"$T/k92.log" 2>&1; rc=$?
if [ "$lines_at_kill" -ge 8 ] && [ "$lines_at_kill" -lt 12 ] && [ "$rc" -eq 0 ] && grep -q "resumed at step 6 " "$T/k92.log" \
   && same_metrics exact "$T/full" "$T/k9" && same_weights "$T/full" "$T/k9"; then
    pass kill9_metrics_cut_back_and_resume_is_bit_exact
else fail kill9_metrics_cut_back_and_resume_is_bit_exact "$lines_at_kill lines at the kill, rc=$rc: $(tail -2 "$T/k92.log")"; fi

# --- a stop across an epoch change (one small shard: each stream ends an epoch within a few steps)
mkdir -p "$T/ep"
zcat data/sample/c4-train.00000-of-00004.json.gz | head -12 | gzip > "$T/ep/c4-train.00000-of-00001.json.gz"
EP=(--variant tiny-nl2 --enc-len 128 --dec-len 32 --batch 4 --precision fp32 --threads 1 --seed 3
    --data "$T/ep/*.json.gz" --spm "$SPM")
# the first batch that needs a second epoch: t5data cannot make it with --epochs 1
edge=
for s in $(seq 1 10); do
    if ! "$BIN/t5data" dump-batch --data "$T/ep/*.json.gz" --spm "$SPM" --batch 4 --seed 3 --enc-len 128 \
         --dec-len 32 --epochs 1 --step "$s" --out "$T/ep/dump$s" >/dev/null 2>&1; then edge=$s; break; fi
done
"$BIN/t5pretrain" "${EP[@]}" --steps 12 --run-dir "$T/ep_full" >"$T/ep_full.log" 2>&1
"$BIN/t5pretrain" "${EP[@]}" --steps "${edge:-1}" --run-dir "$T/ep_stop" >"$T/ep_stop1.log" 2>&1; rc1=$?
"$BIN/t5pretrain" --resume --run-dir "$T/ep_stop" --steps 12 >"$T/ep_stop2.log" 2>&1; rc2=$?
if [ -n "$edge" ] && [ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ] && same_metrics exact "$T/ep_full" "$T/ep_stop" \
   && same_weights "$T/ep_full" "$T/ep_stop"; then
    pass epoch_change_stop_and_resume_is_bit_exact
else fail epoch_change_stop_and_resume_is_bit_exact "edge '$edge' rc=$rc1/$rc2: $(tail -2 "$T/ep_stop2.log")"; fi
# that run also checks --resume --steps N: a finished run continues to more steps
if [ "$(latest_step "$T/ep_stop")" = 12 ] && grep -q "resumed at step ${edge:-x} " "$T/ep_stop2.log"; then
    pass finished_run_continues_with_resume_steps
else fail finished_run_continues_with_resume_steps "$(tail -2 "$T/ep_stop2.log")"; fi

# --- out of data (--max-epochs): exit 3, with the checkpoint of the last full batch and final/ --------
"$BIN/t5pretrain" "${EP[@]}" --steps 100 --max-epochs 1 --run-dir "$T/ep_out" >"$T/ep_out.log" 2>&1; rc=$?
if [ "$rc" -eq 3 ] && [ -n "$edge" ] && [ "$(latest_step "$T/ep_out")" = "$edge" ] && [ "$(wc -l < "$T/ep_out/metrics.jsonl")" -eq "$edge" ] \
   && [ -s "$T/ep_out/final/model.safetensors" ] && grep -q "training data exhausted after step $edge" "$T/ep_out.log"; then
    pass data_exhausted_exit_3_with_checkpoint
else fail data_exhausted_exit_3_with_checkpoint "rc=$rc edge '$edge' latest '$(latest_step "$T/ep_out")': $(tail -2 "$T/ep_out.log")"; fi

# --- --save-every-minutes: checkpoints by the clock (0.002 min = 0.12 s; a step takes 0.15-0.4 s) -----
"$BIN/t5pretrain" "${EP[@]}" --steps 12 --save-every-minutes 0.002 --run-dir "$T/ep_min" >"$T/ep_min.log" 2>&1; rc=$?
n=$(ls -d "$T/ep_min/ckpt/"step_???????? 2>/dev/null | wc -l)
if [ "$rc" -eq 0 ] && [ "$n" -ge 4 ] && same_weights "$T/ep_full" "$T/ep_min"; then pass save_every_minutes_saves_by_the_clock
else fail save_every_minutes_saves_by_the_clock "rc=$rc, $n checkpoints: $(tail -2 "$T/ep_min.log")"; fi

# --- another layout: 2 ranks -> 1 rank, 1 rank -> 2 ranks, 1 thread -> 2 threads ------------------
# Stopped by --steps 8 (a step with validation in the straight run too: a run evaluates at its end)
# and compared with the straight run of the layout it was saved with: the same state at step 8,
# then only the summation order differs. (Straight runs of two layouts drift apart by ~1e-5 over
# 10 steps by themselves, so they are not the reference.)
"${MPI2[@]}" "$BIN/t5pretrain" "${BASE[@]}" --threads 1 --steps 12 --run-dir "$T/dp2" >"$T/dp2.log" 2>&1
"${MPI2[@]}" "$BIN/t5pretrain" "${BASE[@]}" --threads 1 --steps 8 --run-dir "$T/dp2_8" >"$T/dp2_8.log" 2>&1
cp -a "$T/dp2_8" "$T/dp2_frozen"
"$BIN/t5pretrain" --resume --run-dir "$T/dp2_8" --steps 12 >"$T/dp2_to1.log" 2>&1; rc=$?
if [ "$rc" -eq 0 ] && out=$(same_metrics close "$T/dp2" "$T/dp2_8" 8); then
    pass two_ranks_to_one_same_batches_and_losses; echo "  2 -> 1: $out"
else fail two_ranks_to_one_same_batches_and_losses "rc=$rc: $(tail -2 "$T/dp2_to1.log")"; fi
"$BIN/t5pretrain" "${BASE[@]}" --threads 1 --steps 8 --run-dir "$T/one8" >"$T/one8.log" 2>&1
cp -a "$T/one8" "$T/one8_t2"
cp -a "$T/one8" "$T/one8_frozen"
"${MPI2[@]}" "$BIN/t5pretrain" --resume --run-dir "$T/one8" --steps 12 >"$T/one_to2.log" 2>&1; rc=$?
if [ "$rc" -eq 0 ] && out=$(same_metrics close "$T/full" "$T/one8" 8); then
    pass one_rank_to_two_same_batches_and_losses; echo "  1 -> 2: $out"
else fail one_rank_to_two_same_batches_and_losses "rc=$rc: $(tail -2 "$T/one_to2.log")"; fi

# The batches themselves: continue with a learning rate too small to move a weight (--lr may change
# on resume), so each step's loss is that of the checkpoint's weights on the batch the trainer
# consumed; it must equal t5eval's on t5data dump-batch --step S of those weights.
frozen_equals_dump() {  # frozen_equals_dump RUN (resumed from its step 8 with --lr 1e-30 to 12)
    local run=$1 s
    "$BIN/t5ckpt" export --model "$run/ckpt/step_00000008" --out "$run/w8" >/dev/null 2>&1 || return 1
    for s in 8 9 10 11; do
        "$BIN/t5data" dump-batch --data "$DATA" --spm "$SPM" --batch 4 --seed 3 --step "$s" --enc-len 128 --dec-len 32 \
            --out "$run/b$s" >/dev/null 2>&1 || return 1
        "$BIN/t5eval" --model "$run/w8" --batch "$run/b$s" --threads 1 2>/dev/null > "$run/e$s.json" || return 1
    done
    /usr/bin/python3 - "$run" <<'EOF2'
import json, sys
run = sys.argv[1]
rows = {r["step"]: r for r in map(json.loads, open(run + "/metrics.jsonl"))}
for s in (8, 9, 10, 11):
    ev = json.load(open("%s/e%d.json" % (run, s)))
    r = rows[s + 1]
    assert r["target_tokens"] == ev["tokens"], (s, r["target_tokens"], ev["tokens"])
    assert abs(r["ce"] - ev["loss"]) <= 2e-5 * abs(ev["loss"]), (s, r["ce"], ev["loss"])
print("steps 9-12 after the change of layout: the losses of t5data dump-batch --step 8..11")
EOF2
}
"$BIN/t5pretrain" --resume --run-dir "$T/dp2_frozen" --steps 12 --lr 1e-30 >"$T/dp2_frozen.log" 2>&1; rc=$?
if [ "$rc" -eq 0 ] && out=$(frozen_equals_dump "$T/dp2_frozen"); then pass two_ranks_to_one_batches_equal_dump_batch; echo "  $out"
else fail two_ranks_to_one_batches_equal_dump_batch "rc=$rc: $out $(tail -2 "$T/dp2_frozen.log")"; fi
"${MPI2[@]}" "$BIN/t5pretrain" --resume --run-dir "$T/one8_frozen" --steps 12 --lr 1e-30 >"$T/one8_frozen.log" 2>&1; rc=$?
if [ "$rc" -eq 0 ] && out=$(frozen_equals_dump "$T/one8_frozen"); then pass one_rank_to_two_batches_equal_dump_batch; echo "  $out"
else fail one_rank_to_two_batches_equal_dump_batch "rc=$rc: $out $(tail -2 "$T/one8_frozen.log")"; fi
"$BIN/t5pretrain" --resume --run-dir "$T/one8_t2" --steps 12 --threads 2 >"$T/t2.log" 2>&1; rc=$?
if [ "$rc" -eq 0 ] && out=$(same_metrics close "$T/full" "$T/one8_t2" 8) && grep -q "2 thread(s) per rank" "$T/t2.log"; then
    pass other_thread_count_same_batches_and_losses; echo "  1 -> 2 threads: $out"
else fail other_thread_count_same_batches_and_losses "rc=$rc: $(tail -2 "$T/t2.log")"; fi

# --- options that cannot change are refused, with both values named ---------------------------------
msg=$("$BIN/t5pretrain" --resume --run-dir "$T/full" --steps 20 --batch 8 --seed 4 2>&1); rc=$?
if [ "$rc" -eq 2 ] && echo "$msg" | grep -q -- "--batch is '8' now but '4' in the checkpoint" \
   && echo "$msg" | grep -q -- "--seed is '4' now but '3' in the checkpoint" && [ "$(wc -l < "$T/full/metrics.jsonl")" -eq 12 ]; then
    pass resume_refuses_changed_options_naming_values
else fail resume_refuses_changed_options_naming_values "rc=$rc: $msg"; fi
msg=$("$BIN/t5pretrain" --resume --run-dir "$T/full" --steps 20 --variant tiny --enc-len 64 2>&1); rc=$?
if [ "$rc" -eq 2 ] && echo "$msg" | grep -q -- "--variant is 'tiny' now" && echo "$msg" | grep -q -- "--enc-len is '64' now but '128'"; then
    pass resume_refuses_changed_variant_and_length
else fail resume_refuses_changed_variant_and_length "rc=$rc: $msg"; fi

# --- --resume needs a checkpoint; a directory with results needs --resume ------------------------------
msg=$("$BIN/t5pretrain" --resume --run-dir "$T/nothing" 2>&1); rc=$?
if [ "$rc" -eq 2 ] && echo "$msg" | grep -q "$T/nothing" && echo "$msg" | grep -qi "checkpoint\|ckpt"; then
    pass resume_without_checkpoint_refused
else fail resume_without_checkpoint_refused "rc=$rc: $msg"; fi
mkdir -p "$T/emptyckpt/ckpt"
msg=$("$BIN/t5pretrain" --resume --run-dir "$T/emptyckpt" 2>&1); rc=$?
if [ "$rc" -eq 2 ] && echo "$msg" | grep -q "no usable checkpoint"; then pass resume_with_empty_ckpt_dir_refused
else fail resume_with_empty_ckpt_dir_refused "rc=$rc: $msg"; fi
mkdir -p "$T/partial"
cp -a "$T/full/ckpt" "$T/partial/ckpt"     # killed before any metrics line or final/: still a run
msg=$("$BIN/t5pretrain" "${BASE[@]}" --steps 2 --run-dir "$T/partial" 2>&1); rc=$?
if [ "$rc" -eq 2 ] && echo "$msg" | grep -q "already holds a run (ckpt/)" && echo "$msg" | grep -q -- "--resume"; then
    pass directory_with_checkpoints_refused_without_resume
else fail directory_with_checkpoints_refused_without_resume "rc=$rc: $msg"; fi

# a run killed inside its first save (metrics.jsonl, an uncommitted step_N.tmp): neither --resume
# nor a fresh start may send the user to the other; both say there is nothing to resume
mkdir -p "$T/first/ckpt/step_00000001.tmp"
head -1 "$T/full/metrics.jsonl" > "$T/first/metrics.jsonl"
msg1=$("$BIN/t5pretrain" --resume --run-dir "$T/first" 2>&1); rc1=$?
msg2=$("$BIN/t5pretrain" "${BASE[@]}" --steps 2 --run-dir "$T/first" 2>&1); rc2=$?
if [ "$rc1" -eq 2 ] && [ "$rc2" -eq 2 ] && echo "$msg1" | grep -q "nothing to resume" && echo "$msg2" | grep -q "nothing to resume" \
   && echo "$msg2" | grep -q "delete $T/first"; then
    pass killed_before_first_checkpoint_says_nothing_to_resume
else fail killed_before_first_checkpoint_says_nothing_to_resume "rc=$rc1/$rc2: $msg1 | $msg2"; fi

# --- a corrupted newest checkpoint: verify names file and tensor; --resume falls back, loudly -----------
cp -a "$T/full" "$T/fb"
shard=$(ls "$T/fb/ckpt/step_00000012/"shard-*.zst | head -1)
size=$(stat -c %s "$shard")
/usr/bin/python3 - "$shard" $((size / 2)) <<'EOF'
import sys
path, at = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(at); b = f.read(1); f.seek(at); f.write(bytes([b[0] ^ 0x40]))
EOF
msg=$("$BIN/t5ckpt" verify "$T/fb/ckpt/step_00000012" 2>&1); rc=$?
if [ "$rc" -ne 0 ] && echo "$msg" | grep -q "$(basename "$shard")" && echo "$msg" | grep -Eq "(param|adafactor_[rcv])/"; then
    pass verify_names_file_and_tensor_of_a_flipped_byte
else fail verify_names_file_and_tensor_of_a_flipped_byte "rc=$rc: $msg"; fi
"$BIN/t5pretrain" --resume --run-dir "$T/fb" --steps 12 >"$T/fb.log" 2>&1; rc=$?
if [ "$rc" -eq 0 ] && grep "WARNING: not resuming from latest" "$T/fb.log" | grep -q "$(basename "$shard")" \
   && grep -q "WARNING: .*using the newest checkpoint that verifies instead: $T/fb/ckpt/step_00000008" "$T/fb.log" \
   && grep -q "resumed at step 8 " "$T/fb.log" && same_metrics exact "$T/full" "$T/fb" && same_weights "$T/full" "$T/fb"; then
    pass corrupted_latest_falls_back_loudly_and_stays_exact
else fail corrupted_latest_falls_back_loudly_and_stays_exact "rc=$rc: $(grep -i "warning\|error\|resumed" "$T/fb.log" | head -5)"; fi

# --- --init-from: a new run from Hugging Face weights, with a fresh optimizer -----------------------------
"$BIN/t5pretrain" "${BASE[@]}" --threads 1 --steps 2 --lr 1e-30 --init-from "$T/full/final" --run-dir "$T/init" >"$T/init.log" 2>&1; rc=$?
"$BIN/t5data" dump-batch --data "$DATA" --spm "$SPM" --batch 4 --seed 3 --step 0 --enc-len 128 --dec-len 32 \
    --out "$T/batch0" >"$T/dump.log" 2>&1
ev=$("$BIN/t5eval" --model "$T/full/final" --batch "$T/batch0" --threads 1 2>"$T/eval.log")
if [ "$rc" -eq 0 ] && /usr/bin/python3 - "$T/init/metrics.jsonl" "$ev" "$T/full/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ev = json.loads(sys.argv[2])
full = [json.loads(l) for l in open(sys.argv[3])]
# a new run: steps and tokens from 0, the schedule's first learning rate (a fresh optimizer)
assert [r["step"] for r in rows] == [1, 2] and rows[0]["tokens"] == 4 * 128, rows
assert rows[0]["lr"] < 1e-20, rows[0]["lr"]
# the weights are the exported ones: the first loss is t5eval's on the same batch
print("init-from ce %.7f, t5eval %.7f; fresh model ce %.4f" % (rows[0]["ce"], ev["loss"], full[0]["ce"]))
assert rows[0]["target_tokens"] == ev["tokens"]
assert abs(rows[0]["ce"] - ev["loss"]) <= 2e-5 * abs(ev["loss"])
assert rows[0]["ce"] < full[0]["ce"] - 0.5
EOF
then pass init_from_hf_weights_fresh_optimizer
else fail init_from_hf_weights_fresh_optimizer "rc=$rc ev=$ev: $(tail -2 "$T/init.log")"; fi
msg=$("$BIN/t5pretrain" "${BASE[@]}" --variant tiny --steps 2 --init-from "$T/full/final" --run-dir "$T/init_bad" 2>&1); rc=$?
if [ "$rc" -eq 2 ] && echo "$msg" | grep -q "init-from" && echo "$msg" | grep -q "t5-efficient-tiny"; then
    pass init_from_other_variant_refused
else fail init_from_other_variant_refused "rc=$rc: $(echo "$msg" | tail -2)"; fi
