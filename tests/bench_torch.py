#!/usr/bin/python3
"""tests/bench_torch.py: the PyTorch peer of bin/t5bench (optional; run by tests/bench.sh when
`import torch` works, e.g. Debian's python3-torch 1.13).

The same model as t5bench's t5-efficient-small (T5 v1.0: 6+6 layers, d_model 512, d_ff 2048,
8 heads of 64, ReLU FFN, RMS norm without mean, relative position buckets, tied embedding with
the d_model^-0.5 head scale, cross-entropy + 1e-4 z-loss), written directly in torch ops, batch
B x Le / Ld of random token ids, one process with T threads. Times forward, backward and an
optimizer step (torch has no Adafactor: plain SGD, so the step time is a lower bound of what an
Adafactor step would cost), in fp32 and under torch.autocast('cpu', dtype=torch.bfloat16), and
prints one JSON line per precision (step_s medians; fwd/bwd/opt split).

    /usr/bin/python3 tests/bench_torch.py [--batch 8] [--enc-len 512] [--dec-len 114] [--steps 5]
                                 [--threads 2] [--layers 6] [--precisions fp32,bf16]
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F


def buckets(lq, lk, bidirectional, nb=32, maxd=128):
    rel = torch.arange(lk)[None, :] - torch.arange(lq)[:, None]
    n = -rel
    ret = torch.zeros_like(n)
    if bidirectional:
        nb //= 2
        ret += (n < 0).long() * nb
        n = n.abs()
    else:
        n = n.clamp(min=0)
    exact = nb // 2
    large = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(maxd / exact) *
                     (nb - exact)).long()
    large = large.clamp(max=nb - 1)
    return ret + torch.where(n < exact, n, large)


class T5(torch.nn.Module):
    def __init__(s, V=32128, d=512, f=2048, H=8, K=64, el=6, dl=6):
        super().__init__()
        s.d, s.H, s.K = d, H, K
        s.emb = torch.nn.Parameter(torch.randn(V, d))
        lin = lambda o, i: torch.nn.Parameter(torch.randn(o, i) / math.sqrt(i))
        s.enc = torch.nn.ModuleList()
        s.dec = torch.nn.ModuleList()
        for _ in range(el):
            m = torch.nn.Module()
            m.qkv, m.o, m.wi, m.wo = lin(3 * H * K, d), lin(d, H * K), lin(f, d), lin(d, f)
            m.n1, m.n2 = torch.nn.Parameter(torch.ones(d)), torch.nn.Parameter(torch.ones(d))
            s.enc.append(m)
        for _ in range(dl):
            m = torch.nn.Module()
            m.qkv, m.o, m.wi, m.wo = lin(3 * H * K, d), lin(d, H * K), lin(f, d), lin(d, f)
            m.xq, m.xkv, m.xo = lin(H * K, d), lin(2 * H * K, d), lin(d, H * K)
            m.n1, m.n2, m.n3 = (torch.nn.Parameter(torch.ones(d)) for _ in range(3))
            s.dec.append(m)
        s.enc_bias = torch.nn.Parameter(torch.randn(32, H) * 0.1)
        s.dec_bias = torch.nn.Parameter(torch.randn(32, H) * 0.1)
        s.enc_norm = torch.nn.Parameter(torch.ones(d))
        s.dec_norm = torch.nn.Parameter(torch.ones(d))

    @staticmethod
    def rms(x, g):   # statistics in fp32 (as our code and Mesh TF)
        xf = x.float()
        return g * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6))

    def attn(s, q, k, v, bias, mask):
        B, Lq, Lk = q.shape[0], q.shape[1], k.shape[1]
        q = q.view(B, Lq, s.H, s.K).transpose(1, 2)
        k = k.view(B, Lk, s.H, s.K).transpose(1, 2)
        v = v.view(B, Lk, s.H, s.K).transpose(1, 2)
        sc = torch.matmul(q, k.transpose(-1, -2)).float()   # fp32 logits and softmax
        if bias is not None:
            sc = sc + bias
        if mask is not None:
            sc = sc.masked_fill(mask, -1e9)
        p = torch.softmax(sc, -1)
        o = torch.matmul(p.to(v.dtype), v)
        return o.transpose(1, 2).reshape(B, Lq, s.H * s.K)

    def forward(s, ids, dec_ids, labels):
        B, Le = ids.shape
        Ld = dec_ids.shape[1]
        eb = s.enc_bias[buckets(Le, Le, True)].permute(2, 0, 1)[None]
        db = s.dec_bias[buckets(Ld, Ld, False)].permute(2, 0, 1)[None]
        causal = torch.triu(torch.ones(Ld, Ld, dtype=torch.bool), 1)
        x = s.emb[ids]
        for m in s.enc:
            h = s.rms(x, m.n1)
            q, k, v = F.linear(h, m.qkv).split(s.H * s.K, -1)
            x = x + F.linear(s.attn(q, k, v, eb, None), m.o)
            h = s.rms(x, m.n2)
            x = x + F.linear(F.relu(F.linear(h, m.wi)), m.wo)
        e = s.rms(x, s.enc_norm)
        y = s.emb[dec_ids]
        for m in s.dec:
            h = s.rms(y, m.n1)
            q, k, v = F.linear(h, m.qkv).split(s.H * s.K, -1)
            y = y + F.linear(s.attn(q, k, v, db, causal), m.o)
            h = s.rms(y, m.n2)
            k, v = F.linear(e, m.xkv).split(s.H * s.K, -1)
            y = y + F.linear(s.attn(F.linear(h, m.xq), k, v, None, None), m.xo)
            h = s.rms(y, m.n3)
            y = y + F.linear(F.relu(F.linear(h, m.wi)), m.wo)
        y = s.rms(y, s.dec_norm) * s.d ** -0.5
        logits = F.linear(y, s.emb).float()   # fp32 logits, log-softmax, loss
        lz = torch.logsumexp(logits, -1)
        ce = lz - logits.gather(-1, labels[..., None])[..., 0]
        return (ce + 1e-4 * lz * lz).sum() / (B * Ld)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--enc-len", type=int, default=512)
    ap.add_argument("--dec-len", type=int, default=114)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--precisions", default="fp32,bf16")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = T5(el=a.layers, dl=a.layers)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ids = torch.randint(1, 32000, (a.batch, a.enc_len))
    dec = torch.randint(1, 32000, (a.batch, a.dec_len))
    lab = torch.randint(1, 32000, (a.batch, a.dec_len))
    for prec in a.precisions.split(","):
        ts, tf, tb, to = [], [], [], []
        for s in range(a.steps + 1):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=(prec == "bf16")):
                loss = model(ids, dec, lab)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            if s > 0:   # step 0 is the warm-up
                ts.append(t3 - t0); tf.append(t1 - t0); tb.append(t2 - t1); to.append(t3 - t2)
        print(json.dumps({"peer": "pytorch " + torch.__version__, "precision": prec,
                          "threads": a.threads, "B": a.batch, "Le": a.enc_len, "Ld": a.dec_len,
                          "step_s": statistics.median(ts), "step_min_s": min(ts),
                          "fwd_s": statistics.median(tf), "bwd_s": statistics.median(tb),
                          "opt_s": statistics.median(to), "loss": float(loss)}), flush=True)


if __name__ == "__main__":
    main()
