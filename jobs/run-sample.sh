#!/usr/bin/env bash
# jobs/run-sample.sh: what `make run` does after building. Trains a small T5 on the bundled sample
# corpus (data/sample) with 2 MPI ranks: checkpoints/weights and metrics go to RUN_DIR
# (default run/sample). Override with environment variables:
#   VARIANT (t5-efficient-tiny-nl2)  STEPS (60)  BATCH (8)  RANKS (2)  THREADS (1 per rank)
#   ENC_LEN (512) DEC_LEN (128)  RUN_DIR (run/sample)  EXTRA (more t5pretrain flags)
#
# Nothing saved is lost:
#   1. the options are checked first (bin/t5pretrain --dry-run with the same options and ranks);
#      a typo stops here, exit 2, and nothing on disk has changed
#   2. RUN_DIR is reused only if it is a previous `make run` directory (it holds the marker
#      file .t5-make-run written by this script) that holds nothing but that run's own files
#      (the marker lists them), or an empty directory; anything else: exit 2 with a hint, nothing
#      deleted
set -eu
cd "$(dirname "$0")/.."
VARIANT=${VARIANT:-t5-efficient-tiny-nl2}
STEPS=${STEPS:-60}
BATCH=${BATCH:-8}
RANKS=${RANKS:-2}
THREADS=${THREADS:-1}
RUN_DIR=${RUN_DIR:-run/sample}
ENC_LEN=${ENC_LEN:-512}
DEC_LEN=${DEC_LEN:-128}
MARKER=.t5-make-run
mpi_flags=(--oversubscribe -np "$RANKS")
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
train_flags=(--variant "$VARIANT" --data 'data/sample/c4-train.*.json.gz'
             --spm data/sample/spiece.model --val-data 'data/sample/c4-validation.*.json.gz'
             --eval-every 20 --eval-batches 2 --batch "$BATCH" --steps "$STEPS"
             --enc-len "$ENC_LEN" --dec-len "$DEC_LEN" --threads "$THREADS"
             --log-every 5 --save-every 20)
# shellcheck disable=SC2206  # EXTRA is a list of flags, split on spaces on purpose
extra=(${EXTRA:-})
t5pretrain() {  # t5pretrain RUN_DIR [more flags]: the trainer under mpirun with the run's options
    local dir=$1; shift
    mpirun "${mpi_flags[@]}" -x OMP_NUM_THREADS="$THREADS" bin/t5pretrain "${train_flags[@]}" \
        ${extra[@]+"${extra[@]}"} --run-dir "$dir" "$@"
}

# 1. check the options before touching anything (the dry run gets a scratch --run-dir: the
#    trainer refuses a directory that already holds a run)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/t5run-check.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
check_log=$scratch/dry-run.log
if ! t5pretrain "$scratch/run" --dry-run >"$check_log" 2>&1; then
    grep -E 'error|HINT|fatal' "$check_log" | head -5 >&2 || tail -5 "$check_log" >&2
    echo "run: the options above are not valid; nothing was changed (RUN_DIR=$RUN_DIR untouched)" >&2
    echo "HINT: fix VARIANT/BATCH/STEPS/EXTRA (bin/t5pretrain --help, --list-variants) and run again" >&2
    exit 2
fi

# 2. RUN_DIR: new, empty, or a previous make-run directory holding only its own run
refuse() {
    echo "run: refusing to use RUN_DIR=$RUN_DIR: $1; nothing was deleted" >&2
    echo "HINT: choose a new directory (RUN_DIR=run/NAME make run) or move this one away yourself" >&2
    exit 2
}
if [ -L "$RUN_DIR" ]; then refuse "it is a symbolic link"; fi
if [ -e "$RUN_DIR" ] && [ ! -d "$RUN_DIR" ]; then refuse "it exists and is not a directory"; fi
if [ -d "$RUN_DIR" ] && [ -n "$(ls -A "$RUN_DIR")" ]; then
    if [ ! -f "$RUN_DIR/$MARKER" ]; then
        refuse "it is not empty and was not made by 'make run' (no $MARKER file in it; a run/sample from before make run marked its runs counts as yours: move it away)"
    fi
    if grep -q '^entry ' "$RUN_DIR/$MARKER"; then   # the previous run finished: compare
        while IFS= read -r e; do
            [ "$e" = "$MARKER" ] && continue
            grep -qxF "entry $e" "$RUN_DIR/$MARKER" || refuse "it holds '$e', which the previous make run did not write"
        done < <(ls -A "$RUN_DIR")
    fi
    echo "run: replacing the previous make-run directory $RUN_DIR"
    rm -rf "$RUN_DIR"
fi
mkdir -p "$RUN_DIR"
{ echo "made by jobs/run-sample.sh (make run) on $(date -u +%Y-%m-%dT%H:%M:%SZ); the next make run"
  echo "with the same RUN_DIR replaces this directory if it holds only the entries listed below"; } \
    >"$RUN_DIR/$MARKER"

echo "run: training $VARIANT for $STEPS steps on data/sample with $RANKS MPI ranks -> $RUN_DIR"
t5pretrain "$RUN_DIR"
ls -A "$RUN_DIR" | grep -vxF "$MARKER" | sed 's/^/entry /' >>"$RUN_DIR/$MARKER"
echo "run: metrics: $RUN_DIR/metrics.jsonl ($(wc -l < "$RUN_DIR/metrics.jsonl") lines); weights: $RUN_DIR/final/"
