#!/usr/bin/env bash
# tests/e2e/t5data.sh: bin/t5data on the sample corpus: dump-batch is reproducible and has the
# documented files and shapes, inspect shows sentinels, stats counts documents and pieces, usage
# errors are clear.
source "$(dirname "$0")/lib.bash"
T5DATA=${T5DATA_BIN:-$BIN/t5data}
DATA="$ROOT/data/sample/c4-train.*.json.gz"
SPM=$ROOT/data/sample/spiece.model
TMP=$(tmpdir)
trap 'rm -rf "$TMP"' EXIT
PY=/usr/bin/python3

if [ ! -x "$T5DATA" ]; then fail t5data_built "$T5DATA missing (make all)"; exit 1; fi

# dump-batch twice -> identical files; another step -> different
ok=1
for d in a b; do
    "$T5DATA" dump-batch --data "$DATA" --spm "$SPM" --batch 8 --seed 3 --step 2 --out "$TMP/$d" \
        >"$TMP/dump_$d.log" 2>&1 || ok=0
done
"$T5DATA" dump-batch --data "$DATA" --spm "$SPM" --batch 8 --seed 3 --step 3 --out "$TMP/c" \
    >"$TMP/dump_c.log" 2>&1 || ok=0
if [ $ok = 1 ]; then
    same=1
    for f in input_ids decoder_input_ids labels encoder_segment_ids decoder_segment_ids; do
        cmp -s "$TMP/a/$f.npy" "$TMP/b/$f.npy" || same=0
        [ -f "$TMP/a/$f.npy" ] || same=0
    done
    if [ $same = 1 ]; then pass dump_batch_reproducible; else fail dump_batch_reproducible "files differ or missing"; fi
    if cmp -s "$TMP/a/input_ids.npy" "$TMP/c/input_ids.npy"; then
        fail dump_batch_steps_differ "step 2 and step 3 gave the same batch"
    else pass dump_batch_steps_differ; fi
else
    fail dump_batch_reproducible "t5data dump-batch failed: $(cat "$TMP"/dump_*.log | head -5)"
fi

# shapes and contents checked independently with numpy
if [ $ok = 1 ] && $PY -c "import numpy" 2>/dev/null; then
    if $PY - "$TMP/a" <<'PYEOF'
import sys, numpy as np
d = sys.argv[1]
x = {n: np.load(f"{d}/{n}.npy") for n in ["input_ids", "decoder_input_ids", "labels",
                                         "encoder_segment_ids", "decoder_segment_ids"]}
assert x["input_ids"].shape == (8, 512) and x["input_ids"].dtype == np.int32, x["input_ids"].shape
assert x["labels"].shape == (8, 128) and x["decoder_input_ids"].shape == (8, 128)
lab, dec, ds = x["labels"], x["decoder_input_ids"], x["decoder_segment_ids"]
for r in range(8):
    for t in range(128):
        if ds[r, t] == 0:
            assert lab[r, t] == 0 and dec[r, t] == 0
        elif t == 0 or ds[r, t - 1] != ds[r, t]:
            assert dec[r, t] == 0, (r, t)
        else:
            assert dec[r, t] == lab[r, t - 1], (r, t)
full = sum(1 for r in range(8) if (x["encoder_segment_ids"][r] > 0).sum() == 512
           and (ds[r] > 0).sum() == 114)
assert full >= 6, full
# first target of an example is <extra_id_0> = 32099 for the real spiece (P = 32000) or P + 99
assert all(lab[r, 0] == lab[0, 0] for r in range(8))
assert (lab[:, 0] > 1000).all()
PYEOF
    then pass dump_batch_contents; else fail dump_batch_contents "numpy checks failed"; fi
elif [ $ok = 1 ]; then
    echo "SKIP dump_batch_contents: /usr/bin/python3 with numpy not available (apt-get install python3-numpy)"
fi

# inspect shows sentinels and both sides
if "$T5DATA" inspect --data "$DATA" --spm "$SPM" --batch 2 --rows 1 >"$TMP/inspect.log" 2>&1 \
    && grep -q '<extra_id_0>' "$TMP/inspect.log" && grep -q 'targets' "$TMP/inspect.log"; then
    pass inspect_sentinels
else fail inspect_sentinels "$(head -3 "$TMP/inspect.log")"; fi

# stats: one pass; documents equal the number of lines (the sample has no bad records), pieces
# are at least tokens / 568, and one short piece per 128-document group
if "$T5DATA" stats --data "$DATA" --spm "$SPM" >"$TMP/stats.log" 2>&1; then
    lines=$(zcat $DATA | wc -l)
    docs=$(sed -n 's/^documents=\([0-9]*\).*/\1/p' "$TMP/stats.log")
    tokens=$(sed -n 's/^tokens=\([0-9]*\).*/\1/p' "$TMP/stats.log")
    pieces=$(sed -n 's/^pieces=\([0-9]*\).*/\1/p' "$TMP/stats.log")
    short=$(sed -n 's/.* short=\([0-9]*\).*/\1/p' "$TMP/stats.log")
    groups=$(( (docs + 127) / 128 ))
    if [ -n "$docs" ] && [ "$docs" = "$lines" ] && [ "$pieces" -ge $(( tokens / 568 )) ] \
        && [ "$pieces" -le $(( tokens / 568 + groups )) ] && [ "$short" -le "$groups" ] \
        && grep -q 'bad records:.*total=0' "$TMP/stats.log"; then
        pass stats_counts
    else fail stats_counts "docs=$docs lines=$lines tokens=$tokens pieces=$pieces short=$short: $(cat "$TMP/stats.log")"; fi
else fail stats_counts "$(head -3 "$TMP/stats.log")"; fi

# usage errors
"$T5DATA" --help >"$TMP/help.log" 2>&1 && grep -q dump-batch "$TMP/help.log" && pass help || fail help
"$T5DATA" frobnicate --data x --spm y >"$TMP/u1.log" 2>&1
[ $? = 2 ] && grep -q "unknown command" "$TMP/u1.log" && pass usage_unknown_command || fail usage_unknown_command "$(cat "$TMP/u1.log")"
"$T5DATA" stats --data "$TMP/nothing-*.json.gz" --spm "$SPM" >"$TMP/u2.log" 2>&1
[ $? != 0 ] && grep -q "nothing-" "$TMP/u2.log" && pass usage_no_match || fail usage_no_match "$(cat "$TMP/u2.log")"
"$T5DATA" dump-batch --data "$DATA" --spm "$SPM" --step -1 --out "$TMP/x" >"$TMP/u3.log" 2>&1
[ $? = 2 ] && grep -q "step" "$TMP/u3.log" && pass usage_bad_number || fail usage_bad_number "$(cat "$TMP/u3.log")"

# bench: a short run reports speed and a peak RSS far below the 200 MB per-rank budget; and a
# global batch of 128 streams (128 open readers on one rank) also stays below it
if "$T5DATA" bench --data "$DATA" --spm "$SPM" --seconds 1 >"$TMP/bench.log" 2>&1; then
    tps=$(sed -n 's/.*tokens\/s=\([0-9]*\).*/\1/p' "$TMP/bench.log" | head -1)
    rss=$(sed -n 's/^peak_rss_MB=\([0-9]*\).*/\1/p' "$TMP/bench.log")
    if [ -n "$tps" ] && [ "$tps" -gt 0 ] && [ -n "$rss" ] && [ "$rss" -lt 200 ]; then pass bench
    else fail bench "$(cat "$TMP/bench.log")"; fi
else fail bench "$(head -3 "$TMP/bench.log")"; fi
if /usr/bin/time -f 'maxrss_kb=%M' "$T5DATA" dump-batch --data "$DATA" --spm "$SPM" --batch 128 \
    --step 1 --out "$TMP/b128" >"$TMP/b128.log" 2>&1; then
    kb=$(sed -n 's/^maxrss_kb=\([0-9]*\).*/\1/p' "$TMP/b128.log")
    if [ -n "$kb" ] && [ "$kb" -lt 204800 ]; then pass memory_128_streams
    else fail memory_128_streams "peak RSS ${kb:-?} kB: $(tail -2 "$TMP/b128.log")"; fi
else fail memory_128_streams "$(tail -3 "$TMP/b128.log")"; fi

# damaged shards: a cut .json.gz delivers exactly its complete lines (counted here by python's
# streaming zlib) and is counted as damaged; a bad CRC is reported as corrupt; both name the file
SHARD=$ROOT/data/sample/c4-train.00000-of-00004.json.gz
size=$(stat -c %s "$SHARD")
for pct in 5 50 99; do
    head -c $((size * pct / 100)) "$SHARD" >"$TMP/cut$pct.json.gz"
    want=$($PY -c "import zlib,sys; print(zlib.decompressobj(31).decompress(open(sys.argv[1],'rb').read()).count(b'\n'))" "$TMP/cut$pct.json.gz")
    "$T5DATA" stats --data "$TMP/cut$pct.json.gz" --spm "$SPM" >"$TMP/cut.log" 2>&1
    docs=$(sed -n 's/^documents=\([0-9]*\) .*/\1/p' "$TMP/cut.log")
    if [ -n "$want" ] && [ "$docs" = "$want" ] && grep -q '^damaged_files=1$' "$TMP/cut.log" &&
       grep -q " truncated=1 corrupt=0 " "$TMP/cut.log" &&
       grep -q "^c4: $TMP/cut$pct.json.gz:.*(truncated).*compressed byte" "$TMP/cut.log"; then
        pass "stats_cut_${pct}pct"
    else fail "stats_cut_${pct}pct" "documents '$docs', complete lines '$want': $(cat "$TMP/cut.log")"; fi
done
$PY - "$SHARD" "$TMP/crc.json.gz" <<'PYEOF'
import sys
b = bytearray(open(sys.argv[1], 'rb').read()); b[-8] ^= 1; open(sys.argv[2], 'wb').write(b)
PYEOF
want=$(zcat "$SHARD" | wc -l)
"$T5DATA" stats --data "$TMP/crc.json.gz" --spm "$SPM" >"$TMP/crc.log" 2>&1
docs=$(sed -n 's/^documents=\([0-9]*\) .*/\1/p' "$TMP/crc.log")
if [ "$docs" = "$want" ] && grep -q " corrupt=1 " "$TMP/crc.log" && grep -q '^damaged_files=1$' "$TMP/crc.log" &&
   grep -q "^c4: $TMP/crc.json.gz:.*(corrupt).*incorrect data check" "$TMP/crc.log"; then
    pass stats_bad_crc
else fail stats_bad_crc "documents '$docs' of $want: $(cat "$TMP/crc.log")"; fi

# files with no valid record: named, an error before any work (dump-batch), and stats exits 1
: >"$TMP/empty.json.gz"
"$T5DATA" dump-batch --data "$DATA,$TMP/empty.json.gz" --spm "$SPM" --batch 8 --out "$TMP/e" >"$TMP/e.log" 2>&1
rc=$?
if [ $rc = 1 ] && grep -q "$TMP/empty.json.gz: empty" "$TMP/e.log" && grep -q HINT "$TMP/e.log" && [ ! -e "$TMP/e" ]; then
    pass empty_shard_refused
else fail empty_shard_refused "exit $rc: $(cat "$TMP/e.log")"; fi
"$T5DATA" stats --data "$ROOT/data/sample/*" --spm "$SPM" >"$TMP/all.log" 2>&1
rc=$?
if [ $rc = 1 ] && grep -q "data/sample/build.sh: not C4 JSON Lines" "$TMP/all.log" &&
   grep -q "data/sample/spiece.model: not C4 JSON Lines" "$TMP/all.log" &&
   grep -q "^files_without_records=" "$TMP/all.log"; then
    pass non_c4_files_named
else fail non_c4_files_named "exit $rc: $(head -c 1500 "$TMP/all.log")"; fi

# a cursor restore deep in a gzip shard starts at the reader's last seek point and reaches the
# same document as reading from the start, much faster (tests/bench_cursor.sh at a small size;
# run it without MB for the ~110 MB measurement)
if [ -f "$ROOT/build/libt5.a" ]; then
    out=$(MB=12 REPS=1 bash "$ROOT/tests/bench_cursor.sh" 2>&1)
    rc=$?
    slow=$(sed -n 's/.*from the start \([0-9.]*\) s, from the seek point.*/\1/p' <<<"$out")
    fast=$(sed -n 's/.*from the seek point \([0-9.]*\) s (same document).*/\1/p' <<<"$out")
    if [ $rc = 0 ] && [ -n "$fast" ] && [ -n "$slow" ] && awk -v f="$fast" -v s="$slow" 'BEGIN{exit !(f < s / 5)}'; then
        pass cursor_seek_restore
        grep "restore to" <<<"$out" | sed 's/^ */  /'
    else fail cursor_seek_restore "exit $rc: $out"; fi
else fail cursor_seek_restore "build/libt5.a missing (make unit-tests)"; fi
