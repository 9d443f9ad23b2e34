#!/usr/bin/env bash
# tests/e2e/t5eval.sh: bin/t5eval on small batches of a tiny model. Checks the JSON line, the
# gradient file against grad_norm, invariances (row permutation, -100 labels, explicit segment
# files, packing two examples into one row), a central finite difference of one gradient entry,
# and the input errors. /usr/bin/python3 + numpy builds batches and reads files independently.
source "$(dirname "$0")/lib.bash"
BIN=${T5_TEST_BIN:-$BIN}   # override for testing binaries built elsewhere
T=$(tmpdir)
trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3
EV=$BIN/t5eval
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

if [ ! -x "$EV" ] || [ ! -x "$BIN/t5ckpt" ]; then fail t5eval_build "bin/t5eval or bin/t5ckpt missing (run make)"; exit 1; fi
if ! $PY -c 'import numpy' 2>/dev/null; then
    fail t5eval_numpy "/usr/bin/python3 with numpy is needed to build test batches"
    exit 1
fi
"$BIN/t5ckpt" init --variant tiny-nl2-dm128 --seed 11 --out "$T/m" 2>"$T/log" || { fail t5eval_init "$(cat "$T/log")"; exit 1; }

cat >"$T/h.py" <<'EOF'
import json, struct, sys, os
import numpy as np
def st_load(p):
    d = open(p, 'rb').read(); n = struct.unpack('<Q', d[:8])[0]; h = json.loads(d[8:8+n])
    h.pop('__metadata__', None)
    return {k: np.frombuffer(d[8+n+e['data_offsets'][0]:8+n+e['data_offsets'][1]], '<f4').reshape(e['shape'])
            for k, e in h.items() if e['dtype'] == 'F32'}, h, n
def st_poke(src, dst, name, flat_index, delta):
    # copy src to dst with one F32 value changed (header untouched)
    d = bytearray(open(src, 'rb').read()); n = struct.unpack('<Q', d[:8])[0]
    e = json.loads(bytes(d[8:8+n]))[name]
    pos = 8 + n + e['data_offsets'][0] + 4 * flat_index
    v = np.frombuffer(bytes(d[pos:pos+4]), '<f4')[0]
    d[pos:pos+4] = np.array([v + delta], '<f4').tobytes()
    open(dst, 'wb').write(d)
    return float(np.float32(v + delta)) - float(v)   # the step actually taken in float32
def save_batch(d, inp, dec, lab, encseg=None, decseg=None, dtype=np.int32):
    os.makedirs(d, exist_ok=True)
    np.save(d + '/input_ids.npy', inp.astype(dtype)); np.save(d + '/decoder_input_ids.npy', dec.astype(dtype))
    np.save(d + '/labels.npy', lab.astype(dtype))
    if encseg is not None: np.save(d + '/encoder_segment_ids.npy', encseg.astype(np.int32))
    if decseg is not None: np.save(d + '/decoder_segment_ids.npy', decseg.astype(np.int32))
def shift(lab):
    dec = np.zeros_like(lab); dec[:, 1:] = np.maximum(lab[:, :-1], 0); return dec
EOF
export PYTHONPATH=$T

# batch A: 4 rows, encoder 20, decoder 9, some padding, labels padded with 0
$PY - "$T" <<'EOF'
import sys, numpy as np, h
T = sys.argv[1]; rng = np.random.default_rng(1)
B, Le, Ld = 4, 20, 9
inp = rng.integers(2, 32100, (B, Le)); inp[1, 13:] = 0; inp[3, 5:] = 0
lab = rng.integers(2, 32100, (B, Ld)); lab[0, 7:] = 0; lab[2, 3:] = 0
h.save_batch(T + '/A', inp, h.shift(lab), lab)
# A with rows permuted
p = [2, 0, 3, 1]; h.save_batch(T + '/Aperm', inp[p], h.shift(lab)[p], lab[p])
# A with -100 instead of 0 in the labels, as int64 (NumPy default) files
lab100 = np.where(lab == 0, -100, lab); h.save_batch(T + '/A100', inp, h.shift(lab), lab100, dtype=np.int64)
# A with explicit segment files equal to what t5eval derives from the ids
h.save_batch(T + '/Aseg', inp, h.shift(lab), lab, (inp != 0).astype(int), (lab != 0).astype(int))
# packing: examples x (enc 6, dec 4) and y (enc 5, dec 3) in separate rows vs one packed row
x_in, x_lab = rng.integers(2, 32100, 6), rng.integers(2, 32100, 4)
y_in, y_lab = rng.integers(2, 32100, 5), rng.integers(2, 32100, 3)
Le, Ld = 12, 8
sep_in = np.zeros((2, Le), int); sep_lab = np.zeros((2, Ld), int)
sep_in[0, :6] = x_in; sep_in[1, :5] = y_in; sep_lab[0, :4] = x_lab; sep_lab[1, :3] = y_lab
h.save_batch(T + '/sep', sep_in, h.shift(sep_lab), sep_lab)
pk_in = np.zeros((1, Le), int); pk_lab = np.zeros((1, Ld), int); pk_dec = np.zeros((1, Ld), int)
pk_in[0, :6] = x_in; pk_in[0, 6:11] = y_in; pk_lab[0, :4] = x_lab; pk_lab[0, 4:7] = y_lab
pk_dec[0, 1:4] = x_lab[:3]; pk_dec[0, 5:7] = y_lab[:2]   # each segment starts with 0
es = np.zeros((1, Le), int); es[0, :6] = 1; es[0, 6:11] = 2
ds = np.zeros((1, Ld), int); ds[0, :4] = 1; ds[0, 4:7] = 2
h.save_batch(T + '/packed', pk_in, pk_dec, pk_lab, es, ds)
EOF

jget() { $PY -c "import json,sys; print(repr(json.loads(open(sys.argv[1]).read())[sys.argv[2]]))" "$1" "$2"; }
close() { $PY -c "import sys; a,b,t=map(float,sys.argv[1:4]); sys.exit(0 if abs(a-b) <= t*max(abs(a),abs(b),1e-30) else 1)" "$1" "$2" "$3"; }

# 1. the JSON line and the gradient file
"$EV" --model "$T/m" --batch "$T/A" --grads "$T/grads.safetensors" --threads 2 >"$T/A.json" 2>"$T/log"
rc=$?
if [ $rc -eq 0 ] && [ "$(wc -l <"$T/A.json")" -eq 1 ] && $PY - "$T" <<'EOF' 2>"$T/pyerr"
import sys, json, math, numpy as np
T = sys.argv[1]; r = json.loads(open(T + '/A.json').read())
assert set(r) >= {'loss', 'loss_sum', 'tokens', 'grad_norm', 'log_z_squared'}, r
lab = np.load(T + '/A/labels.npy')
assert r['tokens'] == int((lab > 0).sum()), (r['tokens'], (lab > 0).sum())
assert abs(r['loss'] - r['loss_sum'] / r['tokens']) <= 1e-12 * r['loss']
# an untrained model predicts roughly uniformly: loss near ln(V)
assert 0.5 * math.log(32128) < r['loss'] < 2 * math.log(32128), r
assert r['grad_norm'] > 0 and r['log_z_squared'] > 0
EOF
then pass t5eval_json; else fail t5eval_json "rc=$rc $(tail -2 "$T/log") $(tail -2 "$T/pyerr")"; fi

if $PY - "$T" <<'EOF' 2>"$T/pyerr"
import sys, json, numpy as np, h
T = sys.argv[1]; r = json.loads(open(T + '/A.json').read())
g, gh, _ = h.st_load(T + '/grads.safetensors'); w, wh, _ = h.st_load(T + '/m/model.safetensors')
assert set(g) == set(w), set(g) ^ set(w)              # HF names, same set as the weights
for k in w: assert g[k].shape == w[k].shape, k         # HF [out, in] shapes
norm = np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in g.values()))
assert abs(norm - r['grad_norm']) <= 1e-6 * norm, (norm, r['grad_norm'])
# rows of shared.weight for ids that never occur get gradient only through the softmax: nonzero
assert np.abs(g['shared.weight']).sum() > 0
# encoder of padding-only positions: final norm grads finite
assert all(np.isfinite(v).all() for v in g.values())
EOF
then pass t5eval_grads_file_norm; else fail t5eval_grads_file_norm "$(tail -3 "$T/pyerr")"; fi

# 2. invariances
run_loss() { "$EV" --model "$T/m" --batch "$1" --threads 2 2>>"$T/log" | $PY -c "import json,sys; r=json.load(sys.stdin); print(r['$2'])"; }
L_A=$(jget "$T/A.json" loss); S_A=$(jget "$T/A.json" loss_sum)
L_P=$(run_loss "$T/Aperm" loss)
if [ -n "$L_P" ] && close "$L_A" "$L_P" 1e-6; then pass t5eval_row_permutation; else fail t5eval_row_permutation "$L_A vs $L_P"; fi
L_100=$(run_loss "$T/A100" loss)
if [ -n "$L_100" ] && close "$L_A" "$L_100" 0; then pass t5eval_labels_minus100_int64; else fail t5eval_labels_minus100_int64 "$L_A vs $L_100"; fi
L_S=$(run_loss "$T/Aseg" loss)
if [ -n "$L_S" ] && close "$L_A" "$L_S" 0; then pass t5eval_segment_files; else fail t5eval_segment_files "$L_A vs $L_S"; fi
S_sep=$(run_loss "$T/sep" loss_sum); S_pk=$(run_loss "$T/packed" loss_sum)
if [ -n "$S_sep" ] && [ -n "$S_pk" ] && close "$S_sep" "$S_pk" 1e-5; then pass t5eval_packing; else fail t5eval_packing "separate $S_sep vs packed $S_pk"; fi

# 3. central finite difference of d loss / d w for a few entries with large gradients
$PY - "$T" >"$T/fd_plan" <<'EOF'
import sys, numpy as np, h
T = sys.argv[1]; g, _, _ = h.st_load(T + '/grads.safetensors')
for name in ['decoder.final_layer_norm.weight', 'encoder.block.1.layer.0.SelfAttention.v.weight',
             'decoder.block.0.layer.1.EncDecAttention.q.weight']:
    i = int(np.argmax(np.abs(g[name]).ravel())); print(name, i, repr(float(g[name].ravel()[i])))
EOF
fd_ok=1; fd_msg=""
while read -r name idx gval <&3; do
    eps=1e-2
    hp=$($PY -c "import h; print(h.st_poke('$T/m/model.safetensors', '$T/p.safetensors', '$name', $idx, $eps))")
    hm=$($PY -c "import h; print(h.st_poke('$T/m/model.safetensors', '$T/mm.safetensors', '$name', $idx, -$eps))")
    mkdir -p "$T/mp" "$T/mm"; cp "$T/m/config.json" "$T/mp/"; cp "$T/m/config.json" "$T/mm/"
    mv "$T/p.safetensors" "$T/mp/model.safetensors"; mv "$T/mm.safetensors" "$T/mm/model.safetensors"
    Lp=$("$EV" --model "$T/mp" --batch "$T/A" --threads 2 2>>"$T/log" | $PY -c "import json,sys; print(json.load(sys.stdin)['loss'])")
    Lm=$("$EV" --model "$T/mm" --batch "$T/A" --threads 2 2>>"$T/log" | $PY -c "import json,sys; print(json.load(sys.stdin)['loss'])")
    fd=$($PY -c "print(($Lp - $Lm) / ($hp - ($hm)))")
    echo "fd $name[$idx]: analytic $gval numeric $fd (Lp $Lp Lm $Lm)"
    if ! $PY -c "import sys; a,b=$gval,$fd; sys.exit(0 if abs(a-b) <= 0.02*abs(a) + 2e-4 else 1)"; then
        fd_ok=0; fd_msg="$fd_msg $name[$idx] analytic $gval vs numeric $fd;"
    fi
done 3<"$T/fd_plan"
if [ "$(wc -l <"$T/fd_plan")" -eq 3 ] && [ $fd_ok -eq 1 ]; then pass t5eval_finite_difference; else fail t5eval_finite_difference "$fd_msg"; fi

# 4. input errors: exit 1 and a message naming the file
bad_eval() {  # name, python edit on inp/dec/lab (numpy arrays), expected text
    local name=$1 edit=$2 want=$3
    $PY - "$T" "$name" "$edit" <<'EOF'
import sys, numpy as np, h
T, name, edit = sys.argv[1:4]
inp, dec, lab = (np.load(T + '/A/' + f + '.npy') for f in ['input_ids', 'decoder_input_ids', 'labels'])
exec(edit)
h.save_batch(T + '/bad_' + name, inp, dec, lab)
EOF
    "$EV" --model "$T/m" --batch "$T/bad_$name" >"$T/out" 2>"$T/log"
    local rc=$?
    if [ $rc -eq 1 ] && grep -qF -- "$want" "$T/log" && [ ! -s "$T/out" ]; then pass "t5eval_reject_$name"; else
        fail "t5eval_reject_$name" "rc=$rc, wanted '$want' in: $(head -c 300 "$T/log")"; fi
}
bad_eval id_range "inp[2, 3] = 32128" "input_ids.npy[2][3] = 32128 is outside [0, 32128)"
bad_eval neg_id "dec[1, 4] = -5" "decoder_input_ids.npy[1][4] = -5"
bad_eval label_range "lab[0, 0] = 40000" "labels.npy[0][0] = 40000"
bad_eval shape "lab = lab[:, :-1]" "labels.npy has shape [4, 8]"
bad_eval rows "dec = dec[:3]" "decoder_input_ids.npy has shape [3, 9]"
bad_eval no_targets "lab[:] = -100" "no target tokens"
mkdir -p "$T/nolabels"; cp "$T/A/input_ids.npy" "$T/A/decoder_input_ids.npy" "$T/nolabels/"
"$EV" --model "$T/m" --batch "$T/nolabels" >"$T/out" 2>"$T/log"
if [ $? -eq 1 ] && grep -q "nolabels/labels.npy" "$T/log"; then pass t5eval_reject_missing_file; else fail t5eval_reject_missing_file "$(cat "$T/log")"; fi
"$EV" --batch "$T/A" >"$T/out" 2>"$T/log"
if [ $? -eq 2 ] && grep -q -- "--model" "$T/log"; then pass t5eval_usage; else fail t5eval_usage "$(cat "$T/log")"; fi

# 5. the loss against an independent float64 NumPy implementation of the T5 v1.0 forward pass
#    (Hugging Face modeling_t5 semantics; attention restricted to equal non-zero segment ids)
cat >"$T/ref.py" <<'EOF'
import sys, json, math, os, numpy as np, h
T, mdir, bdir = sys.argv[1:4]
cfg = json.load(open(mdir + '/config.json'))
W = {k: v.astype(np.float64) for k, v in h.st_load(mdir + '/model.safetensors')[0].items()}
d, H, K, eps = cfg['d_model'], cfg['num_heads'], cfg['d_kv'], cfg['layer_norm_epsilon']
NB, MD = cfg['relative_attention_num_buckets'], cfg['relative_attention_max_distance']
ld = lambda f: np.load(bdir + '/' + f + '.npy').astype(np.int64)
inp, dec, lab = ld('input_ids'), ld('decoder_input_ids'), ld('labels')
lab = np.where(lab < 0, 0, lab)
es = ld('encoder_segment_ids') if os.path.exists(bdir + '/encoder_segment_ids.npy') else (inp != 0).astype(np.int64)
ds = ld('decoder_segment_ids') if os.path.exists(bdir + '/decoder_segment_ids.npy') else (lab != 0).astype(np.int64)
def bucket(rel, bidir):
    nb, ret = NB, np.zeros_like(rel)
    if bidir:
        nb //= 2; ret += (rel > 0) * nb; n = np.abs(rel)
    else:
        n = -np.minimum(rel, 0)
    me = nb // 2
    large = me + (np.log(np.maximum(n, 1) / me) / math.log(MD / me) * (nb - me)).astype(np.int64)
    return ret + np.where(n < me, n, np.minimum(large, nb - 1))
def pos_in_seg(seg):
    p = np.zeros_like(seg)
    for b in range(seg.shape[0]):
        c = 0
        for t in range(seg.shape[1]):
            if t > 0 and seg[b, t] != seg[b, t - 1]: c = 0
            p[b, t] = c; c += 1
    return p
def rms(x, g): return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g
def attn(x, mem, pre, bias, mask):
    B, Lq, _ = x.shape; Lk = mem.shape[1]
    q = (x @ W[pre + 'q.weight'].T).reshape(B, Lq, H, K).transpose(0, 2, 1, 3)
    k = (mem @ W[pre + 'k.weight'].T).reshape(B, Lk, H, K).transpose(0, 2, 1, 3)
    v = (mem @ W[pre + 'v.weight'].T).reshape(B, Lk, H, K).transpose(0, 2, 1, 3)
    s = q @ k.transpose(0, 1, 3, 2)                       # no 1/sqrt(k) in T5
    if bias is not None: s = s + bias
    s = np.where(mask[:, None], s, -1e30)
    s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
    return (s @ v).transpose(0, 2, 1, 3).reshape(B, Lq, H * K) @ W[pre + 'o.weight'].T
def relbias(table, pq, pk, bidir):                        # [B, H, Lq, Lk]
    return table[bucket(pk[:, None, :] - pq[:, :, None], bidir)].transpose(0, 3, 1, 2)
def ffn(x, pre):
    return np.maximum(x @ W[pre + 'wi.weight'].T, 0) @ W[pre + 'wo.weight'].T
E = W['shared.weight']
ep, dp = pos_in_seg(es), pos_in_seg(ds)
emask = (es[:, :, None] == es[:, None, :]) & (es[:, None, :] != 0)
x = E[inp]
eb = relbias(W['encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'], ep, ep, True)
for l in range(cfg['num_layers']):
    p = 'encoder.block.%d.layer.' % l
    x = x + attn(rms(x, W[p + '0.layer_norm.weight']), rms(x, W[p + '0.layer_norm.weight']), p + '0.SelfAttention.', eb, emask)
    x = x + ffn(rms(x, W[p + '1.layer_norm.weight']), p + '1.DenseReluDense.')
enc = rms(x, W['encoder.final_layer_norm.weight'])
Ld = dec.shape[1]
causal = np.tril(np.ones((Ld, Ld), bool))[None]
dmask = (ds[:, :, None] == ds[:, None, :]) & (ds[:, None, :] != 0) & causal
cmask = (ds[:, :, None] == es[:, None, :]) & (es[:, None, :] != 0)
y = E[dec]
db = relbias(W['decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'], dp, dp, False)
for l in range(cfg['num_decoder_layers']):
    p = 'decoder.block.%d.layer.' % l
    hh = rms(y, W[p + '0.layer_norm.weight']); y = y + attn(hh, hh, p + '0.SelfAttention.', db, dmask)
    y = y + attn(rms(y, W[p + '1.layer_norm.weight']), enc, p + '1.EncDecAttention.', None, cmask)
    y = y + ffn(rms(y, W[p + '2.layer_norm.weight']), p + '2.DenseReluDense.')
y = rms(y, W['decoder.final_layer_norm.weight']) * d ** -0.5    # tied head: d^-0.5 rescale
logits = y @ E.T
mx = logits.max(-1, keepdims=True)
logz = (mx + np.log(np.exp(logits - mx).sum(-1, keepdims=True)))[..., 0]
ce = logz - np.take_along_axis(logits, lab[..., None], -1)[..., 0]
m = lab != 0
print(json.dumps({'loss': float(ce[m].sum() / m.sum()), 'loss_sum': float(ce[m].sum()),
                  'tokens': int(m.sum()), 'log_z_squared': float((logz[m] ** 2).sum() / m.sum())}))
EOF
for b in A packed; do
    "$EV" --model "$T/m" --batch "$T/$b" --threads 2 >"$T/ev_$b.json" 2>>"$T/log"
    if $PY "$T/ref.py" "$T" "$T/m" "$T/$b" >"$T/ref_$b.json" 2>"$T/pyerr" && $PY - "$T/ev_$b.json" "$T/ref_$b.json" <<'EOF'
import sys, json
a, r = (json.loads(open(p).read()) for p in sys.argv[1:3])
print('t5eval', a, '\nnumpy ', r)
assert a['tokens'] == r['tokens']
assert abs(a['loss'] - r['loss']) <= 2e-6 * abs(r['loss']), 'loss'
assert abs(a['log_z_squared'] - r['log_z_squared']) <= 1e-5 * abs(r['log_z_squared']), 'log_z_squared'
EOF
    then pass "t5eval_numpy_reference_$b"; else fail "t5eval_numpy_reference_$b" "$(tail -2 "$T/pyerr")"; fi
done

# 6. validation mode (--data): equals the sum over the same batches dumped by t5data dump-batch
VAL=$ROOT/data/sample/c4-validation.00000-of-00001.json.gz SPM=$ROOT/data/sample/spiece.model
if [ -x "$BIN/t5data" ] && [ -f "$VAL" ] && [ -f "$SPM" ]; then
    opts=(--spm "$SPM" --seed 3 --enc-len 64 --dec-len 16)
    "$EV" --model "$T/m" --data "$VAL" --batches 3 --batch-size 2 "${opts[@]}" >"$T/val.json" 2>"$T/log"
    rc=$?
    for s in 0 1 2; do
        "$BIN/t5data" dump-batch --data "$VAL" --batch 2 --step $s --out "$T/dump$s" "${opts[@]}" >/dev/null 2>>"$T/log" &&
        "$EV" --model "$T/m" --batch "$T/dump$s" >"$T/dump$s.json" 2>>"$T/log"
    done
    if [ $rc -eq 0 ] && $PY - "$T" <<'EOF' 2>"$T/pyerr"
import sys, json
T = sys.argv[1]; v = json.loads(open(T + '/val.json').read())
parts = [json.loads(open(T + '/dump%d.json' % s).read()) for s in range(3)]
S = sum(p['loss_sum'] for p in parts); N = sum(p['tokens'] for p in parts)
assert v['batches'] == 3 and v['tokens'] == N, (v, N)
assert abs(v['loss_sum'] - S) <= 1e-9 * S, (v['loss_sum'], S)
assert abs(v['neg_log_perplexity'] + S / N) <= 1e-9 * S / N
EOF
    then pass t5eval_validation_mode; else fail t5eval_validation_mode "rc=$rc $(tail -2 "$T/log") $(tail -2 "$T/pyerr")"; fi
else
    fail t5eval_validation_mode "needs bin/t5data and data/sample (run make)"
fi
"$EV" --model "$T/m" --data "$VAL" --batches 1 >"$T/out" 2>"$T/log"
if [ $? -eq 2 ] && grep -q -- "--spm" "$T/log"; then pass t5eval_validation_usage; else fail t5eval_validation_usage "$(cat "$T/log")"; fi
