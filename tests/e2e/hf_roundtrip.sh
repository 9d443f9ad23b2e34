#!/usr/bin/env bash
# tests/e2e/hf_roundtrip.sh: bin/t5ckpt init/export/import/info/verify and the Hugging Face folder
# format. /usr/bin/python3 + numpy is used only as an independent reader/writer of safetensors.
source "$(dirname "$0")/lib.bash"
BIN=${T5_TEST_BIN:-$BIN}   # override for testing binaries built elsewhere
T=$(tmpdir)
trap 'rm -rf "$T"' EXIT
CK=$BIN/t5ckpt
PY=/usr/bin/python3
VARIANT=tiny-nl2-dm128   # 6M parameters, inner width 256 != d_model 128

if [ ! -x "$CK" ]; then fail hf_build "bin/t5ckpt missing (run make)"; exit 1; fi

# 1. init -> export -> import -> export: byte-identical files
if "$CK" init --variant $VARIANT --seed 5 --out "$T/a" 2>"$T/log" &&
   "$CK" export --model "$T/a" --out "$T/b" 2>>"$T/log" &&
   "$CK" import --hf "$T/b" --out "$T/c" 2>>"$T/log" &&
   "$CK" export --model "$T/c" --out "$T/d" 2>>"$T/log"; then
    if cmp -s "$T/a/model.safetensors" "$T/d/model.safetensors" && cmp -s "$T/a/config.json" "$T/d/config.json" &&
       cmp -s "$T/a/model.safetensors" "$T/b/model.safetensors"; then
        pass hf_roundtrip_identical
    else
        fail hf_roundtrip_identical "files differ after init/export/import/export"
    fi
else
    fail hf_roundtrip_identical "a command failed: $(tail -3 "$T/log")"
fi

# 2. init is a pure function of the seed
"$CK" init --variant $VARIANT --seed 5 --out "$T/a2" 2>/dev/null
"$CK" init --variant $VARIANT --seed 6 --out "$T/a3" 2>/dev/null
if cmp -s "$T/a/model.safetensors" "$T/a2/model.safetensors" && ! cmp -s "$T/a/model.safetensors" "$T/a3/model.safetensors"; then
    pass hf_init_deterministic
else
    fail hf_init_deterministic "same seed must give the same file, another seed another file"
fi

# 3. info: parameter count equals docs/t5-recipe.md section 2.5's formula (computed here from config.json)
"$CK" info "$T/a" >"$T/info" 2>&1
want=$($PY -c "
import json; c=json.load(open('$T/a/config.json'))
d,f,h,k,el,dl,V=c['d_model'],c['d_ff'],c['num_heads'],c['d_kv'],c['num_layers'],c['num_decoder_layers'],c['vocab_size']
I=h*k; print(V*d + el*(4*d*I+2*d*f+2*d)+32*h+d + dl*(8*d*I+2*d*f+3*d)+32*h+d)" 2>/dev/null)
got=$(awk -F'\t' '$1=="params"{print $2}' "$T/info")
ntens=$(awk -F'\t' '$1=="tensors"{print $2}' "$T/info")
# tensors: shared + enc (4+1+2+1 per layer, +bias, +final) + dec (4+1+4+1+2+1 per layer, +bias, +final)
if [ -n "$want" ] && [ "$got" = "$want" ] && [ "$ntens" = $((1 + 2*8 + 2 + 2*13 + 2)) ]; then
    pass hf_info_counts
else
    fail hf_info_counts "params '$got' vs formula '$want', tensors '$ntens'"
fi
check hf_verify "$CK" verify "$T/a"

# 4. config problems (no numpy needed)
mkdir -p "$T/cfgbad"
cp "$T/a/model.safetensors" "$T/cfgbad/"
sed 's/"feed_forward_proj": "relu"/"feed_forward_proj": "gated-silu"/' "$T/a/config.json" >"$T/cfgbad/config.json"
"$CK" info "$T/cfgbad" >"$T/log" 2>&1
if [ $? -eq 1 ] && grep -q "gated-silu" "$T/log"; then pass hf_reject_ffn; else fail hf_reject_ffn "$(cat "$T/log")"; fi
sed 's/"d_model": 128/"d_model": 64/' "$T/a/config.json" >"$T/cfgbad/config.json"
"$CK" info "$T/cfgbad" >"$T/log" 2>&1
if [ $? -eq 1 ] && grep -q "shared.weight' has shape \[32128, 128\] but config.json implies \[32128, 64\]" "$T/log"; then
    pass hf_reject_config_mismatch
else
    fail hf_reject_config_mismatch "$(cat "$T/log")"
fi
# HF defaults for absent keys: the published t5-efficient configs have no tie_word_embeddings
# and no relative_attention_max_distance
grep -v -e tie_word_embeddings -e relative_attention_max_distance -e '"feed_forward_proj"' "$T/a/config.json" >"$T/cfgbad/config.json"
if "$CK" export --model "$T/cfgbad" --out "$T/defaults" 2>"$T/log" && cmp -s "$T/defaults/config.json" "$T/a/config.json"; then
    pass hf_config_defaults
else
    fail hf_config_defaults "$(cat "$T/log")"
fi
"$CK" import --hf "$T/nonexistent" --out "$T/x" >"$T/log" 2>&1
if [ $? -eq 1 ] && grep -q "nonexistent/config.json" "$T/log"; then pass hf_reject_missing_dir; else fail hf_reject_missing_dir "$(cat "$T/log")"; fi
"$CK" export --model "$T/a" >"$T/log" 2>&1
if [ $? -eq 2 ] && grep -q -- "--out" "$T/log"; then pass hf_usage_error; else fail hf_usage_error "$(cat "$T/log")"; fi


# The rest uses numpy as an independent safetensors reader/writer. Without it each of those
# checks is reported as skipped by name (tests/run.sh counts SKIP lines; CI fails on skips).
if ! $PY -c 'import numpy' 2>/dev/null; then
    for name in hf_python_reads_ours hf_import_half_precision hf_import_sharded \
                hf_import_tied_mismatch_warns hf_reject_missing hf_reject_unknown hf_reject_shape \
                hf_reject_shape2 hf_reject_dtype hf_v11_gated_untied; do
        echo "SKIP $name: /usr/bin/python3 with numpy not available (apt-get install python3-numpy)"
    done
    exit 0
fi

# Python helper: read/write safetensors independently of our code.
cat >"$T/st.py" <<'EOF'
import json, struct, sys, os
import numpy as np
DT = {'F32': np.dtype('<f4'), 'F16': np.dtype('<f2'), 'I32': np.dtype('<i4')}
def load(p):
    d = open(p, 'rb').read(); n = struct.unpack('<Q', d[:8])[0]; h = json.loads(d[8:8+n])
    meta = h.pop('__metadata__', None); out = {}
    for k, e in h.items():
        b, E = e['data_offsets']; raw = d[8+n+b:8+n+E]
        if e['dtype'] == 'BF16':
            a = (np.frombuffer(raw, '<u2').astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, DT[e['dtype']])
        out[k] = (e['dtype'], a.reshape(e['shape']))
    return out, meta
def save(p, tensors, header_extra=None):
    # tensors: list of (name, dtype, array as stored)
    h, blob, off = {'__metadata__': {'format': 'pt'}}, b'', 0
    for name, dt, a in tensors:
        if dt == 'BF16':
            by = (np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16).astype('<u2').tobytes()
        else:
            by = np.ascontiguousarray(a).astype(DT[dt]).tobytes()
        h[name] = {'dtype': dt, 'shape': list(a.shape), 'data_offsets': [off, off + len(by)]}
        off += len(by); blob += by
    if header_extra: header_extra(h)
    hj = json.dumps(h).encode(); hj += b' ' * ((8 - len(hj) % 8) % 8)
    open(p, 'wb').write(struct.pack('<Q', len(hj)) + hj + blob)
EOF

# 5. what we write is a valid safetensors file for an independent reader; names/shapes as HF
if $PY - "$T" <<'EOF' 2>"$T/pyerr"
import sys; sys.path.insert(0, sys.argv[1]); import st, json
T = sys.argv[1]
t, meta = st.load(T + '/a/model.safetensors')
c = json.load(open(T + '/a/config.json'))
d, f, h, I = c['d_model'], c['d_ff'], c['num_heads'], c['num_heads'] * c['d_kv']
assert meta == {'format': 'pt'}, meta
assert t['shared.weight'][1].shape == (c['vocab_size'], d)
assert t['encoder.block.0.layer.0.SelfAttention.q.weight'][1].shape == (I, d)
assert t['encoder.block.1.layer.0.SelfAttention.o.weight'][1].shape == (d, I)
assert t['decoder.block.0.layer.1.EncDecAttention.k.weight'][1].shape == (I, d)
assert t['decoder.block.1.layer.2.DenseReluDense.wi.weight'][1].shape == (f, d)
assert t['decoder.block.1.layer.2.DenseReluDense.wo.weight'][1].shape == (d, f)
assert t['encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'][1].shape == (32, h)
assert 'lm_head.weight' not in t and 'encoder.embed_tokens.weight' not in t
assert all(dt == 'F32' for dt, _ in t.values())
assert (t['decoder.final_layer_norm.weight'][1] == 1).all()
for k in ['tie_word_embeddings', 'is_encoder_decoder']: assert c[k] is True
assert c['architectures'] == ['T5ForConditionalGeneration'] and c['model_type'] == 't5'
EOF
then pass hf_python_reads_ours; else fail hf_python_reads_ours "$(tail -2 "$T/pyerr")"; fi

# 6. import converts bf16/f16, drops tied duplicates, reads a sharded folder; values as numpy says
mkdir -p "$T/hf16" "$T/shard"
if $PY - "$T" <<'EOF' 2>"$T/pyerr"
import sys, json, shutil; sys.path.insert(0, sys.argv[1]); import st
import numpy as np
T = sys.argv[1]
t, _ = st.load(T + '/a/model.safetensors')
names = list(t)
lst = []
for i, n in enumerate(names):
    dt = ['F32', 'F16', 'BF16'][i % 3]
    lst.append((n, dt, t[n][1]))
sh = t['shared.weight'][1]
lst += [('encoder.embed_tokens.weight', 'F32', sh), ('lm_head.weight', 'F32', sh)]
st.save(T + '/hf16/model.safetensors', lst)
shutil.copy(T + '/a/config.json', T + '/hf16/config.json')
# expected f32 values after conversion, computed by numpy
exp = []
for n, dt, a in lst[:len(names)]:
    if dt == 'F16': a = a.astype(np.float16).astype(np.float32)
    if dt == 'BF16': a = (a.astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
    exp.append((n, 'F32', a))
st.save(T + '/expected.safetensors', exp)
# sharded copy of the original: two files + index
half = len(names) // 2
st.save(T + '/shard/model-00001-of-00002.safetensors', [(n, 'F32', t[n][1]) for n in names[:half]])
st.save(T + '/shard/model-00002-of-00002.safetensors', [(n, 'F32', t[n][1]) for n in names[half:]])
wm = {n: 'model-0000%d-of-00002.safetensors' % (1 if i < half else 2) for i, n in enumerate(names)}
json.dump({'metadata': {}, 'weight_map': wm}, open(T + '/shard/model.safetensors.index.json', 'w'))
shutil.copy(T + '/a/config.json', T + '/shard/config.json')
EOF
then
    "$CK" import --hf "$T/hf16" --out "$T/i16" 2>"$T/log"
    rc1=$?
    "$CK" import --hf "$T/shard" --out "$T/ish" 2>>"$T/log"
    rc2=$?
    if [ $rc1 -eq 0 ] && $PY - "$T" <<'EOF' 2>"$T/pyerr"
import sys; sys.path.insert(0, sys.argv[1]); import st, numpy as np
T = sys.argv[1]
got, _ = st.load(T + '/i16/model.safetensors'); exp, _ = st.load(T + '/expected.safetensors')
assert set(got) == set(exp), set(got) ^ set(exp)
for n in exp:
    assert got[n][0] == 'F32' and np.array_equal(got[n][1], exp[n][1]), n
EOF
    then pass hf_import_half_precision; else fail hf_import_half_precision "rc=$rc1 $(tail -2 "$T/log") $(tail -2 "$T/pyerr")"; fi
    if [ $rc2 -eq 0 ] && cmp -s "$T/ish/model.safetensors" "$T/a/model.safetensors"; then
        pass hf_import_sharded
    else
        fail hf_import_sharded "rc=$rc2 $(tail -2 "$T/log")"
    fi
else
    fail hf_import_half_precision "python setup failed: $(tail -2 "$T/pyerr")"
fi

# 7. a tied duplicate that differs from shared.weight: warning naming it, shared.weight wins
$PY - "$T" <<'EOF' 2>"$T/pyerr"
import sys, shutil, os; sys.path.insert(0, sys.argv[1]); import st
T = sys.argv[1]; os.makedirs(T + '/tdiff', exist_ok=True)
t, _ = st.load(T + '/a/model.safetensors')
lst = [(n, 'F32', a) for n, (dt, a) in t.items()]
lst.append(('decoder.embed_tokens.weight', 'F32', t['shared.weight'][1] * 2))
st.save(T + '/tdiff/model.safetensors', lst); shutil.copy(T + '/a/config.json', T + '/tdiff/config.json')
EOF
"$CK" import --hf "$T/tdiff" --out "$T/itd" 2>"$T/log"
if [ $? -eq 0 ] && grep -q "decoder.embed_tokens.weight" "$T/log" && grep -q warning "$T/log" &&
   cmp -s "$T/itd/model.safetensors" "$T/a/model.safetensors"; then
    pass hf_import_tied_mismatch_warns
else
    fail hf_import_tied_mismatch_warns "$(tail -2 "$T/log")"
fi

# 8. bad folders fail with a message naming the problem tensor (and no output folder)
bad_case() {  # name, python edit of the tensor list L (list of [name, dtype, array]), expected text
    local name=$1 edit=$2 want=$3
    mkdir -p "$T/$name"
    $PY - "$T" "$name" "$edit" <<'EOF' 2>"$T/pyerr"
import sys, shutil; sys.path.insert(0, sys.argv[1]); import st, numpy as np
T, name, edit = sys.argv[1], sys.argv[2], sys.argv[3]
t, _ = st.load(T + '/a/model.safetensors')
L = [[n, 'F32', a] for n, (dt, a) in t.items()]
exec(edit)
st.save(T + '/' + name + '/model.safetensors', [tuple(x) for x in L])
shutil.copy(T + '/a/config.json', T + '/' + name + '/config.json')
EOF
    "$CK" import --hf "$T/$name" --out "$T/out_$name" >"$T/log" 2>&1
    local rc=$?
    if [ $rc -eq 1 ] && grep -qF -- "$want" "$T/log" && [ ! -e "$T/out_$name/model.safetensors" ]; then
        pass "hf_reject_$name"
    else
        fail "hf_reject_$name" "rc=$rc, wanted '$want' in: $(head -c 300 "$T/log")"
    fi
}
bad_case missing "L = [x for x in L if x[0] != 'decoder.block.1.layer.2.layer_norm.weight']" \
    "'decoder.block.1.layer.2.layer_norm.weight'"
bad_case unknown "L.append(['encoder.block.7.layer.0.SelfAttention.q.weight', 'F32', L[1][2]])" \
    "unknown tensor 'encoder.block.7.layer.0.SelfAttention.q.weight'"
bad_case shape "L[1][2] = L[1][2].T.copy()" "'encoder.block.0.layer.0.SelfAttention.q.weight' has shape [128, 256] but config.json implies [256, 128]"
bad_case shape2 "L[2][2] = L[2][2][:-1]" "'encoder.block.0.layer.0.SelfAttention.k.weight' has shape [255, 128]"
bad_case dtype "L[3][1] = 'I32'; L[3][2] = L[3][2].astype(np.int32)" "'encoder.block.0.layer.0.SelfAttention.v.weight' has dtype I32"

# 9. a T5 v1.1 folder (gated-gelu, untied lm_head, HF also stores both embed_tokens copies):
#    import keeps wi_0/wi_1/lm_head, drops the embed_tokens duplicates, and round-trips exactly
mkdir -p "$T/v11"
if $PY - "$T" <<'EOF' 2>"$T/pyerr"
import sys, json; sys.path.insert(0, sys.argv[1]); import st, numpy as np
T = sys.argv[1]
t, _ = st.load(T + '/a/model.safetensors')
rng = np.random.default_rng(0); L = []
for n, (dt, a) in t.items():
    if n.endswith('DenseReluDense.wi.weight'):
        L.append((n.replace('wi.weight', 'wi_0.weight'), 'F32', a))
        L.append((n.replace('wi.weight', 'wi_1.weight'), 'F32', rng.standard_normal(a.shape).astype(np.float32)))
    else:
        L.append((n, 'F32', a))
sh = t['shared.weight'][1]
L += [('lm_head.weight', 'F32', rng.standard_normal(sh.shape).astype(np.float32)),
      ('encoder.embed_tokens.weight', 'F32', sh), ('decoder.embed_tokens.weight', 'F32', sh)]
st.save(T + '/v11/model.safetensors', L)
c = json.load(open(T + '/a/config.json')); c['feed_forward_proj'] = 'gated-gelu'; c['tie_word_embeddings'] = False
json.dump(c, open(T + '/v11/config.json', 'w'))
want = {n: a for n, _, a in L if 'embed_tokens' not in n}
st.save(T + '/v11_expected.safetensors', [(n, 'F32', a) for n, a in want.items()])
EOF
then
    "$CK" import --hf "$T/v11" --out "$T/v11i" 2>"$T/log" && "$CK" export --model "$T/v11i" --out "$T/v11e" 2>>"$T/log"
    rc=$?
    if [ $rc -eq 0 ] && cmp -s "$T/v11i/model.safetensors" "$T/v11e/model.safetensors" &&
       grep -q '"feed_forward_proj": "gated-gelu"' "$T/v11e/config.json" && grep -q '"tie_word_embeddings": false' "$T/v11e/config.json" &&
       $PY - "$T" <<'EOF' 2>"$T/pyerr"
import sys; sys.path.insert(0, sys.argv[1]); import st, numpy as np
T = sys.argv[1]
got, _ = st.load(T + '/v11i/model.safetensors'); exp, _ = st.load(T + '/v11_expected.safetensors')
assert set(got) == set(exp), set(got) ^ set(exp)
for n in exp: assert np.array_equal(got[n][1], exp[n][1]), n
EOF
    then pass hf_v11_gated_untied; else fail hf_v11_gated_untied "rc=$rc $(tail -2 "$T/log") $(tail -2 "$T/pyerr")"; fi
else
    fail hf_v11_gated_untied "python setup: $(tail -2 "$T/pyerr")"
fi
