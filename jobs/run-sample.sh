#!/usr/bin/env bash
# jobs/run-sample.sh: what `make run` does after building. Trains a small T5 on the bundled sample
# corpus (data/sample) with 2 MPI ranks: checkpoints/weights and metrics go to RUN_DIR
# (default run/sample). Override with environment variables:
#   VARIANT (t5-efficient-tiny-nl2)  STEPS (60)  BATCH (8)  RANKS (2)  THREADS (1 per rank)
#   ENC_LEN (512) DEC_LEN (128)  RUN_DIR (run/sample)  EXTRA (more t5pretrain flags)
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
mpi_flags=(--oversubscribe -np "$RANKS")
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
rm -rf "$RUN_DIR"
echo "run: training $VARIANT for $STEPS steps on data/sample with $RANKS MPI ranks -> $RUN_DIR"
mpirun "${mpi_flags[@]}" -x OMP_NUM_THREADS="$THREADS" bin/t5pretrain \
    --variant "$VARIANT" --data 'data/sample/c4-train.*.json.gz' --spm data/sample/spiece.model \
    --val-data 'data/sample/c4-validation.*.json.gz' --eval-every 20 --eval-batches 2 \
    --batch "$BATCH" --steps "$STEPS" --enc-len "$ENC_LEN" --dec-len "$DEC_LEN" \
    --threads "$THREADS" --run-dir "$RUN_DIR" --log-every 5 --save-every 20 ${EXTRA:-}
echo "run: metrics: $RUN_DIR/metrics.jsonl ($(wc -l < "$RUN_DIR/metrics.jsonl") lines); weights: $RUN_DIR/final/"
