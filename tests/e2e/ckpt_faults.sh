#!/usr/bin/env bash
# tests/e2e/ckpt_faults.sh: sharded checkpoints across processes and on a full disk, and bin/t5ckpt
# on checkpoints.
#   1. build/tests/test_ckpt under mpirun -np 2 (two writers, different splits, one rank failing,
#      background save next to collectives, faults in each shard)
#   2. disk full: a 4 MiB tmpfs mounted here (root only; SKIP line otherwise): save fails with a
#      clear error, the previous checkpoint loads, the next save commits; 1 and 2 ranks; and the
#      same under a 1 MiB file-size limit (EFBIG instead of ENOSPC)
#   2c. SIGKILL of the whole job at random instants of a save loop, 1 and 2 ranks: resumes exactly
#   3. t5ckpt info/verify/export on a 2-writer checkpoint of a real model: export equals the weights
#      written directly (byte for byte, tokenizer files included), verifies and loads in t5eval;
#      existing output folders refused without --force
#   4. damaged checkpoints through t5ckpt: each error names the file, export writes nothing
source "$(dirname "$0")/lib.bash"
BIN=${T5_TEST_BIN:-$BIN}
TB=$ROOT/build/tests/test_ckpt
CK=$BIN/t5ckpt
T=$(tmpdir)
MNT=
cleanup() {
    if [ -n "$MNT" ] && mountpoint -q "$MNT"; then umount "$MNT"; fi
    rm -rf "$T"
}
trap cleanup EXIT
SPM=$ROOT/data/sample/spiece.model
VARIANT=tiny-nl2-dm128
MPIRUN="mpirun --oversubscribe -np 2"

if [ ! -x "$TB" ] || [ ! -x "$CK" ]; then fail ckpt_build "build/tests/test_ckpt or bin/t5ckpt missing (run make all unit-tests)"; exit 1; fi

# 1. two ranks: test_ckpt prints PASS/FAIL lines from rank 0 (a test fails if it failed on any rank)
$MPIRUN "$TB" >"$T/mpi.log" 2>&1
rc=$?
grep -E '^(PASS|FAIL) ' "$T/mpi.log" | sed 's/^\(PASS\|FAIL\) /\1 mpi2_/'
if [ $rc -ne 0 ] || ! grep -q '^PASS ' "$T/mpi.log"; then fail ckpt_mpi2_exit "rc=$rc: $(grep -v '^PASS' "$T/mpi.log" | tail -5)"; fi

# 2. disk full on a small tmpfs
if [ "$(id -u)" = 0 ]; then
    MNT=$T/full
    mkdir -p "$MNT"
    if mount -t tmpfs -o size=4m tmpfs "$MNT" 2>"$T/mount.err"; then
        for np in 1 2; do
            mkdir -p "$MNT/np$np"
            if [ $np = 1 ]; then cmd=("$TB"); else cmd=($MPIRUN "$TB"); fi
            T5_CKPT_FULL_DIR=$MNT/np$np "${cmd[@]}" >"$T/full$np.log" 2>&1
            rc=$?
            grep -E '^(PASS|FAIL) ' "$T/full$np.log" | sed "s/^\(PASS\|FAIL\) /\1 np${np}_/"
            grep -E '^  (disk full|hf disk full):' "$T/full$np.log" | head -2
            if [ $rc -ne 0 ] || ! grep -q '^PASS ' "$T/full$np.log"; then fail "ckpt_disk_full_np$np" "rc=$rc: $(tail -5 "$T/full$np.log")"; fi
            rm -rf "${MNT:?}/np$np"
        done
        umount "$MNT" && MNT=
    else
        fail ckpt_disk_full_mount "mount -t tmpfs failed: $(cat "$T/mount.err")"
    fi
else
    echo "SKIP ckpt_disk_full: mounting a tmpfs needs root"
fi

# 2b. a file-size limit (RLIMIT_FSIZE as `ulimit -f` sets it, after MPI_Init; no root needed):
#     writes past 1 MiB fail with EFBIG
mkdir -p "$T/ulimit"
T5_CKPT_FULL_DIR=$T/ulimit T5_CKPT_FSIZE_LIMIT=1048576 "$TB" >"$T/ulimit.log" 2>&1
rc=$?
grep -E '^(PASS|FAIL) ' "$T/ulimit.log" | sed 's/^\(PASS\|FAIL\) /\1 ulimit_/'
grep -E '^  disk full:' "$T/ulimit.log" | head -1
if [ $rc -ne 0 ] || ! grep -q '^PASS ' "$T/ulimit.log"; then fail ckpt_file_size_limit "rc=$rc: $(tail -5 "$T/ulimit.log")"; fi

# 2c. SIGKILL at random instants of a save loop (1 and 2 ranks): latest always resumes with that
#     step's exact contents, every committed step verifies; the next run cleans up and goes on
for np in 1 2; do
    CR=$T/crash$np
    first=1 worst=0 kills=0
    for i in 1 2 3 4 5 6; do
        if [ $np = 1 ]; then "$TB" --save-loop "$CR" $first >"$T/loop.log" 2>&1 &
        else setsid $MPIRUN "$TB" --save-loop "$CR" $first >"$T/loop.log" 2>&1 & fi
        pid=$!
        sleep "0.$(( (RANDOM % 9) + 1 ))$(( RANDOM % 10 ))"
        # the whole job at once, as when a node dies: mpirun and its ranks share the session $pid
        if [ $np = 1 ]; then kill -9 $pid; else pkill -9 -s $pid; fi
        wait $pid 2>/dev/null
        while [ $np = 2 ] && pgrep -s $pid >/dev/null; do sleep 0.1; done
        kills=$((kills + 1))
        "$TB" --check-run "$CR" >"$T/check.log" 2>&1
        rc=$?
        if [ $rc -ne 0 ]; then worst=1; fail "ckpt_kill9_np${np}_$i" "$(cat "$T/check.log")"; fi
        s=$(ls "$CR/ckpt" 2>/dev/null | grep -E '^step_[0-9]+$' | sort | tail -1 | sed 's/step_0*//')
        first=$(( ${s:-0} + 1 ))
    done
    [ $worst = 0 ] && pass "ckpt_kill9_np${np} ($kills kills mid-save, resumed each time)"
done

# 3. t5ckpt on a checkpoint written by two ranks
RUN=$T/run
if $MPIRUN "$TB" --write-model "$RUN" $VARIANT "$SPM" 40 >"$T/w.log" 2>&1; then
    pass ckpt_write_model_2ranks
else
    fail ckpt_write_model_2ranks "$(tail -5 "$T/w.log")"; exit 1
fi
STEP=$RUN/ckpt/step_00000040
"$CK" info "$RUN" >"$T/info" 2>"$T/info.err"
if [ $? -eq 0 ] && grep -qx $'step\t40' "$T/info" && grep -qx $'tokens\t40000' "$T/info" &&
   grep -qx $'variant\tt5-efficient-tiny-nl2-dm128' "$T/info" && grep -qx $'data\tdata/sample/c4-train.*' "$T/info" &&
   grep -qx $'writers\t2' "$T/info" && grep -q "^ratio" "$T/info"; then
    pass ckpt_cli_info
else
    fail ckpt_cli_info "$(cat "$T/info" "$T/info.err")"
fi
check ckpt_cli_verify "$CK" verify "$STEP"
"$CK" export --model "$STEP" --out "$T/hf" 2>"$T/log"
if [ $? -eq 0 ] && diff -r "$T/hf" "$RUN/ref" >"$T/diff" 2>&1 && [ -f "$T/hf/spiece.model" ] &&
   [ -f "$T/hf/tokenizer_config.json" ] && [ -f "$T/hf/special_tokens_map.json" ]; then
    pass ckpt_cli_export_identical
else
    fail ckpt_cli_export_identical "$(cat "$T/log") $(head -3 "$T/diff")"
fi
check ckpt_cli_export_verifies "$CK" verify "$T/hf"
if "$BIN/t5eval" --model "$T/hf" --data "$ROOT/data/sample/c4-validation.*" --spm "$T/hf/spiece.model" \
        --batches 1 --batch-size 2 >"$T/eval" 2>"$T/eval.err" && grep -q '"loss"' "$T/eval"; then
    pass ckpt_cli_export_t5eval
else
    fail ckpt_cli_export_t5eval "$(tail -3 "$T/eval.err")"
fi
if /usr/bin/python3 - "$T/hf" <<'EOF' 2>"$T/pyerr"
import json, sys
d = sys.argv[1]
tc = json.load(open(d + '/tokenizer_config.json')); sm = json.load(open(d + '/special_tokens_map.json'))
assert tc['tokenizer_class'] == 'T5Tokenizer' and tc['extra_ids'] == 100, tc
assert tc['additional_special_tokens'] == ['<extra_id_%d>' % i for i in range(100)]
assert sm['eos_token'] == '</s>' and sm['pad_token'] == '<pad>' and sm['unk_token'] == '<unk>'
EOF
then pass ckpt_cli_tokenizer_files; else fail ckpt_cli_tokenizer_files "$(tail -2 "$T/pyerr")"; fi
cmp -s "$T/hf/spiece.model" "$SPM" && pass ckpt_cli_spiece_copied || fail ckpt_cli_spiece_copied "spiece.model differs from $SPM"

# refusing to overwrite: export, import, init; --force replaces
before=$(md5sum "$T/hf/model.safetensors")
for cmd in "export --model $STEP --out $T/hf" "import --hf $RUN/ref --out $T/hf" "init --variant $VARIANT --seed 9 --out $T/hf"; do
    name=ckpt_cli_refuse_$(echo "$cmd" | cut -d' ' -f1)
    "$CK" $cmd >"$T/log" 2>&1
    rc=$?
    if [ $rc -eq 1 ] && grep -q "already exists" "$T/log" && grep -q -- "--force" "$T/log" &&
       [ "$(md5sum "$T/hf/model.safetensors")" = "$before" ]; then
        pass "$name"
    else
        fail "$name" "rc=$rc $(cat "$T/log")"
    fi
done
if "$CK" init --variant $VARIANT --seed 9 --out "$T/hf" --force 2>"$T/log" && [ "$(md5sum "$T/hf/model.safetensors")" != "$before" ] &&
   [ ! -e "$T/hf/spiece.model" ] && ! ls -d "$T"/hf.tmp-* >/dev/null 2>&1; then
    pass ckpt_cli_force_replaces
else
    fail ckpt_cli_force_replaces "$(cat "$T/log")"
fi

# 4. damaged checkpoints through t5ckpt (a copy of the step each time)
damaged() {  # name, shell edit run in the copy's directory, text the error must contain
    local name=$1 edit=$2 want=$3
    rm -rf "$T/dmg" "$T/dmg_out"
    cp -r "$STEP" "$T/dmg"
    (cd "$T/dmg" && eval "$edit")
    "$CK" verify "$T/dmg" >"$T/log" 2>&1
    local rv=$?
    "$CK" export --model "$T/dmg" --out "$T/dmg_out" >>"$T/log" 2>&1
    local re=$?
    if [ $rv -eq 1 ] && [ $re -eq 1 ] && grep -qF -- "$want" "$T/log" && [ ! -e "$T/dmg_out" ] &&
       ! ls -d "$T"/dmg_out.tmp-* >/dev/null 2>&1; then
        pass "ckpt_cli_$name"
    else
        fail "ckpt_cli_$name" "verify rc=$rv export rc=$re, wanted '$want' in: $(head -c 400 "$T/log")"
    fi
}
flip() {  # file, offset: invert one byte
    /usr/bin/python3 -c "
import sys; p, o = sys.argv[1], int(sys.argv[2]); d = bytearray(open(p, 'rb').read()); o = o % len(d); d[o] ^= 0xFF; open(p, 'wb').write(d)" "$1" "$2"
}
damaged flip_shard0_header 'flip shard-00000-of-00002.zst 5' "shard-00000-of-00002.zst"
damaged flip_shard1_middle 'flip shard-00001-of-00002.zst 5000000' "shard-00001-of-00002.zst"
damaged flip_shard1_last 'flip shard-00001-of-00002.zst -1' "shard-00001-of-00002.zst"
damaged flip_manifest 'flip manifest.json 300' "manifest.json: checksum mismatch"
damaged truncated_shard 'truncate -s 1000000 shard-00000-of-00002.zst' "shard-00000-of-00002.zst: 1000000 bytes but the manifest says"
damaged truncated_manifest 'truncate -s 5000 manifest.json' "manifest.json: truncated or damaged"
damaged missing_shard 'rm shard-00001-of-00002.zst' "shard-00001-of-00002.zst: No such file or directory"
damaged missing_manifest 'rm manifest.json' "manifest.json"
# a manifest from another variant's checkpoint
$MPIRUN "$TB" --write-model "$T/other" tiny-nl4-dm128 "$SPM" 40 >"$T/w2.log" 2>&1 || fail ckpt_write_other "$(tail -3 "$T/w2.log")"
damaged foreign_manifest "cp '$T/other/ckpt/step_00000040/manifest.json' manifest.json" "shard-0000"
# a run whose latest names a missing step
mkdir -p "$T/run2/ckpt" && echo step_00000099 >"$T/run2/ckpt/latest"
"$CK" info "$T/run2" >"$T/log" 2>&1
if [ $? -eq 1 ] && grep -q "step_00000099, which does not exist" "$T/log"; then pass ckpt_cli_latest_missing; else fail ckpt_cli_latest_missing "$(cat "$T/log")"; fi
exit 0
