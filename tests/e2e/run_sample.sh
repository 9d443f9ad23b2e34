#!/usr/bin/env bash
# tests/e2e/run_sample.sh: jobs/run-sample.sh (what `make run` runs) never deletes what it did not
# create: a bad VARIANT stops before anything is touched, a RUN_DIR that is not a previous
# make-run directory (or holds more than that run) is refused with exit 2, a previous make-run
# directory is replaced.
source "$(dirname "$0")/lib.bash"
T=$(tmpdir)
trap 'rm -rf "$T"' EXIT
RS=$ROOT/jobs/run-sample.sh
if [ ! -x "$BIN/t5pretrain" ]; then fail run_sample_built "bin/t5pretrain missing (make all)"; exit 1; fi
run() { env STEPS=1 BATCH=4 ENC_LEN=64 DEC_LEN=16 "$@" bash "$RS"; }

# a previous make run, then a typo: the directory and its files stay
run RUN_DIR="$T/prev" >"$T/first.log" 2>&1
if [ $? = 0 ] && [ -f "$T/prev/.t5-make-run" ] && [ -f "$T/prev/metrics.jsonl" ] &&
   grep -q '^entry metrics.jsonl$' "$T/prev/.t5-make-run"; then
    pass run_sample_marks_its_run
else fail run_sample_marks_its_run "$(tail -5 "$T/first.log")"; fi
sum_before=$(find "$T/prev" -type f -exec md5sum {} + | sort | md5sum)
run RUN_DIR="$T/prev" VARIANT=tinyy >"$T/typo.log" 2>&1
rc=$?
sum_after=$(find "$T/prev" -type f -exec md5sum {} + | sort | md5sum)
if [ $rc = 2 ] && [ "$sum_before" = "$sum_after" ] && grep -q "tinyy" "$T/typo.log" &&
   grep -q "nothing was changed" "$T/typo.log"; then
    pass run_sample_typo_keeps_previous
else fail run_sample_typo_keeps_previous "exit $rc: $(tail -5 "$T/typo.log")"; fi

# a directory the script did not make: refused, its file kept
mkdir -p "$T/mine" && echo precious >"$T/mine/notes.txt"
run RUN_DIR="$T/mine" >"$T/mine.log" 2>&1
rc=$?
if [ $rc = 2 ] && [ "$(cat "$T/mine/notes.txt")" = precious ] && grep -q HINT "$T/mine.log"; then
    pass run_sample_refuses_foreign_dir
else fail run_sample_refuses_foreign_dir "exit $rc: $(tail -3 "$T/mine.log")"; fi

# a previous make-run directory holding something more: refused, nothing deleted
echo mine >"$T/prev/notes.txt"
run RUN_DIR="$T/prev" >"$T/more.log" 2>&1
rc=$?
if [ $rc = 2 ] && [ -f "$T/prev/notes.txt" ] && [ -f "$T/prev/metrics.jsonl" ] &&
   grep -q "notes.txt" "$T/more.log"; then
    pass run_sample_refuses_extra_files
else fail run_sample_refuses_extra_files "exit $rc: $(tail -3 "$T/more.log")"; fi

# only its own run: replaced by the new one
rm "$T/prev/notes.txt"
run RUN_DIR="$T/prev" >"$T/again.log" 2>&1
rc=$?
if [ $rc = 0 ] && grep -q "replacing the previous make-run directory" "$T/again.log" &&
   [ "$(wc -l <"$T/prev/metrics.jsonl")" -ge 1 ]; then
    pass run_sample_replaces_own_run
else fail run_sample_replaces_own_run "exit $rc: $(tail -5 "$T/again.log")"; fi
