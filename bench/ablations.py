"""What each optimisation buys, measured by switching it off on the same GenTron model (CPU, fp32).

Switched off by patching instances here, so the model code keeps one implementation:
  * fused QKV / KV  → three (two) separate matmuls on row slices of the same weights
  * SDPA            → explicit softmax(QKᵀ/√d + bias)·V
  * cached text K/V → the text tokens are projected in every denoising step
  * batched CFG     → conditional and unconditional branches as two forwards
Interleaved rounds, median.  python bench/ablations.py [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import types

import torch
import torch.nn.functional as F

from gentron.bench import (
    build_gentron,
    cpu_bench_setup,
    demo_bench_config,
    gentron_forward,
    interleaved,
    make_inputs,
    make_train_step,
)
from gentron.models.transformer import Attention


def unfused_forward(self, x, context=None, bias=None, kv=None, math_attention=False, fused=False):
    b, n, d = x.shape
    if self.is_cross:
        q = self._heads(self.q(x))
        if kv is not None:
            k, v = kv
        else:
            wk, wv = self.kv.weight.chunk(2)
            bk, bv = self.kv.bias.chunk(2)
            k, v = self._heads(F.linear(context, wk, bk)), self._heads(F.linear(context, wv, bv))
    else:
        ws, bs = self.qkv.weight.chunk(3), self.qkv.bias.chunk(3)
        q, k, v = (self._heads(F.linear(x, w, bb)) for w, bb in zip(ws, bs))
    if bias is not None:
        bias = bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return self.proj(out.transpose(1, 2).reshape(b, n, d))


def math_forward(self, x, context=None, bias=None, kv=None):
    b, n, d = x.shape
    if self.is_cross:
        q = self._heads(self.q(x))
        k, v = kv if kv is not None else self.project_kv(context)
    else:
        q, k, v = (self._heads(z) for z in self.qkv(x).chunk(3, dim=-1))
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if bias is not None:
        s = s + bias.to(s.dtype)
    out = s.softmax(-1) @ v
    return self.proj(out.transpose(1, 2).reshape(b, n, d))


def patch(model, fn):
    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = types.MethodType(fn, m)
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    cfg = demo_bench_config()
    dev = cpu_bench_setup(cfg, args.threads)
    mode = "cross-attn"
    # training step
    inp = make_inputs(cfg, mode, cfg.batch, dev)
    variants = {
        "gentron (fused + SDPA)": build_gentron(cfg, mode),
        "unfused QKV/KV": patch(build_gentron(cfg, mode), unfused_forward),
        "no SDPA (math attention)": patch(build_gentron(cfg, mode), math_forward),
    }
    steps = {k: make_train_step(m, gentron_forward, inp, dev, "fp32") for k, m in variants.items()}
    for f in steps.values():
        f()
    res = interleaved(steps, 2, args.rounds, dev)
    base = res["gentron (fused + SDPA)"]
    print(f"train step, {cfg.model} {mode}, batch {cfg.batch}, fp32, {torch.get_num_threads()} threads")
    for k, v in res.items():
        print(f"  {k:<28} {cfg.batch / v:7.1f} img/s   ({v / base:.2f}× the time of gentron)")

    # sampling: 20-step loop with CFG, the model call only (scheduler cost is identical)
    model = build_gentron(cfg, mode).eval()
    s = make_inputs(cfg, mode, 2, dev, seed=1)
    x = torch.randn(2, cfg.in_channels, cfg.resolution, cfg.resolution)
    kv = model.precompute_text_kv(s.tokens, s.mask)
    t = torch.tensor([500, 500])

    @torch.no_grad()
    def cached_batched():
        kv_ = model.precompute_text_kv(s.tokens, s.mask)
        for _ in range(cfg.sample_steps):
            model(x, t, pooled_projections=s.pooled, added_cond_kwargs={"text_kv": kv_})

    @torch.no_grad()
    def uncached_batched():
        for _ in range(cfg.sample_steps):
            model(x, t, encoder_hidden_states=s.tokens, encoder_attention_mask=s.mask, pooled_projections=s.pooled)

    @torch.no_grad()
    def cached_two_calls():
        kvs = [model.precompute_text_kv(s.tokens[i : i + 1], s.mask[i : i + 1]) for i in range(2)]
        for _ in range(cfg.sample_steps):
            for i in range(2):
                model(x[i : i + 1], t[:1], pooled_projections=s.pooled[i : i + 1], added_cond_kwargs={"text_kv": kvs[i]})

    fns = {"cached text K/V + batched CFG": cached_batched, "text K/V every step": uncached_batched,
           "CFG as two forwards": cached_two_calls}
    for f in fns.values():
        f()
    res = interleaved(fns, 1, args.rounds, dev)
    base = res["cached text K/V + batched CFG"]
    print(f"sampling, {cfg.sample_steps} denoiser calls with CFG (batch 2), model time per image")
    for k, v in res.items():
        print(f"  {k:<30} {v:.3f} s   ({v / base:.2f}× the time of gentron)")


if __name__ == "__main__":
    main()
