#!/usr/bin/env bash
# End-to-end test of the bf16 precision policy (pretrain/gemm.h): 200 steps of tiny on the bundled
# sample from the same seed (7), once with --precision fp32 and once with --precision bf16, plus a
# third fp32 run with 1 thread instead of 2 (the same arithmetic summed in another order: the
# noise reference of this comparison).
#
# What the checks are, and why (measured on this 2-core AVX512_BF16 machine, 200 steps, tiny;
# every run is deterministic: a rerun is bitwise identical, in fp32 and in bf16):
#   - the first 10 steps agree closely. Step 1 is one forward pass: bf16 changes its loss by
#     0.0003-0.0076% (seeds 7, 1, 2, 3); the mean |relative difference| of the losses of steps
#     1-10 is 0.014-0.035% (fp32 1 vs 2 threads: 0.0007-0.019%). Bounds 0.1% and 0.2%. A gross
#     defect shows here: with the alpha of a product dropped (the tied LM head's d^-1/2) step 1
#     is off by 1046%. A truncating bf16 conversion does NOT show (step 1 0.009%, steps 1-10
#     0.038%, and after 200 steps 0.12% / 0.08% away): tests/unit/test_gemm.c
#     (test_bf16_rounding) checks the rounding and its bias directly.
#   - after ~50 steps the trajectory is chaotic: any perturbation grows until the per-step
#     losses of two runs differ by ~1% at seed 7 (steps 151-200, mean |relative difference|:
#     fp32 1 vs 2 threads 0.92%, fp32 micro-batch 4 vs 8 1.04%, bf16 vs fp32 0.96%; seeds 1-3
#     0.3-0.5% for either). The two figures issue 10 puts a 1% target on -- the mean training
#     loss of steps 151-200 and the validation loss at step 200 -- are single draws of that
#     chaos. |other - fp32| / fp32 at seed 7, mean training loss / validation loss:
#         bf16 (this test)                          0.84% / 1.24%
#         bf16, stochastic rounding (3 bit seeds)   0.09% / 0.84%, 1.13% / 1.27%, 1.08% / 1.17%
#         fp32, 1 thread instead of 2               0.10% / 0.15%
#         fp32, micro-batch 4 instead of 8          0.16% / 0.28%
#         fp32, micro-batch 2 instead of 8          0.70% / 0.90%
#         fp32, micro-batch 1 instead of 8          0.36% / 0.95%
#         fp32, 1 thread and micro-batch 4          1.24% / 1.60%
#     bf16 vs fp32 at seeds 1, 2, 3: 0.02% / 0.28%, 0.06% / 0.31%, 0.15% / 0.17% (on validation
#     bf16 is above, above, below fp32; at seed 7 below); fp32 1 vs 2 threads there: up to
#     0.13% / 0.26%. Two correct bf16 runs (stochastic rounding, other bits) differ from each
#     other by up to 1.04% / 0.44%. Disabling bf16 for one class of product at a time (Linear
#     forward, input gradient, weight gradient, LM head, Q K^T, P V) moves the seed-7
#     validation gap to -0.52%, -0.04%, +0.39%, +0.03%, -0.17%, -0.16%: no class drives it.
#     So the seed-7 validation gap of 1.24% is the trajectory's sensitivity, not a bf16 bias:
#     fp32 runs that only sum in another order land up to 1.60% away, bf16 runs with unbiased
#     (stochastic) rounding 0.84-1.27% away. The noise reference this test runs (1 thread) is
#     one draw of that spread, and a small one at seed 7 (0.15%).
#   - hence two kinds of result for those two figures:
#       * a PASS/FAIL bound: 3% for both, about twice the largest gap measured between two
#         correct runs (1.60%, fp32 against fp32);
#       * issue 10's 1% target, printed on a line "TARGET met" or "TARGET NOT MET" with the
#         figures (at seed 7 the mean training loss meets it, the validation loss does not);
#         not met is not a FAIL, because at 200 steps the figure measures chaos, and the line
#         says so rather than the bound being widened silently.
#   - config.txt records the precision, and the bf16 log names the bf16 GEMM
#   - a forced non-bf16 ISA (ONEDNN_MAX_CPU_ISA=AVX2) makes the default fp32, with the reason

source "$(dirname "$0")/lib.bash"
cd "$ROOT"
T=$(tmpdir)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=2
DATA='data/sample/c4-train.*.json.gz'
VAL='data/sample/c4-validation.*.json.gz'
SPM=data/sample/spiece.model
COMMON=(--variant tiny --data "$DATA" --spm "$SPM" --val-data "$VAL" --eval-every 200
        --eval-batches 4 --batch 8 --enc-len 128 --dec-len 32 --steps 200 --seed 7
        --log-every 50)

ok=1
for run in fp32:2 bf16:2 fp32:1; do
    p=${run%:*} th=${run#*:}
    name=${p}_t$th
    if ! OMP_NUM_THREADS=$th "$BIN/t5pretrain" "${COMMON[@]}" --threads "$th" --precision "$p" \
            --run-dir "$T/$name" >"$T/$name.log" 2>&1; then
        fail "bf16_train_${name}_runs" "$(tail -5 "$T/$name.log")"; ok=0
    fi
done

if [ "$ok" = 1 ]; then
    if grep -q '^precision *= *fp32' "$T/fp32_t2/config.txt" && grep -q '^precision *= *bf16' "$T/bf16_t2/config.txt"; then
        pass bf16_train_config_records_precision
    else fail bf16_train_config_records_precision "$(grep -i precision "$T"/*/config.txt)"; fi
    if grep -qi 'bf16' "$T/bf16_t2.log" && grep -qi 'onednn' "$T/bf16_t2.log"; then
        pass bf16_train_log_names_bf16_gemm
    else fail bf16_train_log_names_bf16_gemm "$(head -20 "$T/bf16_t2.log")"; fi
    /usr/bin/python3 - "$T/fp32_t2/metrics.jsonl" "$T/bf16_t2/metrics.jsonl" "$T/fp32_t1/metrics.jsonl" <<'EOF' ||
import json, sys
def load(p):
    rows = [json.loads(l) for l in open(p)]
    if [r["step"] for r in rows] != list(range(1, 201)):
        return None
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    if len(val) != 1:
        return None
    return [r["loss"] for r in rows], val[0]
runs = [load(p) for p in sys.argv[1:4]]
if None in runs:
    print("FAIL bf16_train_metrics: steps 1..200 and one validation at step 200 expected")
    sys.exit(0)
(fl, fv), (bl, bv), (nl, nv) = runs
def rel(a, b): return 100.0 * abs(b - a) / a
def mean(x): return sum(x) / len(x)
def early(a, b): return mean([rel(a[i], b[i]) for i in range(10)])
def report(name, cond, msg):
    print("%s %s (%s)" % ("PASS" if cond else "FAIL", name, msg))

if mean(fl[-50:]) < fl[0] - 0.5:
    print("PASS bf16_train_fp32_trains (loss %.4f at step 1, mean %.4f over steps 151-200)" % (fl[0], mean(fl[-50:])))
else:
    print("FAIL bf16_train_fp32_trains: loss %.4f at step 1, mean %.4f over steps 151-200" % (fl[0], mean(fl[-50:])))
s1, e10, n10 = rel(fl[0], bl[0]), early(fl, bl), early(fl, nl)
report("bf16_train_early_steps_agree", s1 <= 0.1 and e10 <= 0.2,
       "step 1 loss differs by %.4f%% (bound 0.1%%); steps 1-10 mean |rel diff| %.4f%% (bound 0.2%%; "
       "fp32 1 vs 2 threads %.4f%%)" % (s1, e10, n10))
gm, gv = rel(mean(fl[-50:]), mean(bl[-50:])), rel(fv, bv)
nm, nv_ = rel(mean(fl[-50:]), mean(nl[-50:])), rel(fv, nv)
print("info: mean training loss of steps 151-200: fp32 %.5f, bf16 %.5f, fp32 1 thread %.5f; "
      "validation loss at step 200: fp32 %.5f, bf16 %.5f, fp32 1 thread %.5f"
      % (mean(fl[-50:]), mean(bl[-50:]), mean(nl[-50:]), fv, bv, nv))
for name, g, n in (("mean_training_loss", gm, nm), ("validation_loss", gv, nv_)):
    report("bf16_train_%s_within_bound" % name, g <= 3.0,
           "bf16 vs fp32 %.3f%%, bound 3%%; noise reference fp32 1 vs 2 threads %.3f%%" % (g, n))
    if g <= 1.0:
        print("TARGET met: bf16_train_%s: bf16 vs fp32 %.3f%% <= 1%% (issue 10's target)" % (name, g))
    else:
        print("TARGET NOT MET: bf16_train_%s: bf16 vs fp32 %.3f%% > 1%% (issue 10's target). "
              "fp32 1 vs 2 threads here %.3f%%; fp32 runs that differ only in summation order "
              "were measured up to 1.60%% apart at this seed. Not a FAIL: after 200 steps the "
              "figure is one draw of a chaotic trajectory (comment at the top of "
              "tests/e2e/bf16_train.sh)" % (name, g, n))
EOF
        fail bf16_train_compare "the comparison script failed"
fi

# default precision without bf16 instructions: fp32, and the log says why
out=$(ONEDNN_MAX_CPU_ISA=AVX2 "$BIN/t5pretrain" --variant tiny-nl2 --data "$DATA" --spm "$SPM" --batch 2 \
      --enc-len 64 --dec-len 16 --steps 1 --threads 1 --run-dir "$T/noisa" 2>&1)
if [ $? -eq 0 ] && grep -q '^precision *= *fp32' "$T/noisa/config.txt" && echo "$out" | grep -q 'fp32: '; then
    pass bf16_train_default_fp32_without_bf16_isa
else fail bf16_train_default_fp32_without_bf16_isa "$(echo "$out" | head -10)"; fi
