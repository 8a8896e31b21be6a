"""T2V cost of GenTron's temporal attention: per-frame time with vs without `temporal_layers`.

Same GenTron model (demo shapes, cross-attention) built twice, once with a TempSelfAttn in every block;
both run on the same (B, C, T, H, W) video batch (the model without temporal layers runs the frames as
images). Interleaved A/B rounds, median; reports sampling-style forward (no grad) and train step.

    python bench/temporal_overhead.py [--frames 8] [--videos 4] [--rounds 5] [--every 1 2 3] [--dims 32 16]

``--every k`` adds an arm with TempSelfAttn in every k-th block only (``model.temporal_every``); 1 is GenTron's.
``--dims w`` adds an arm with TempSelfAttn in every block at q/k/v width w (``model.temporal_dim``; GenTron's is
the hidden size). ``--conv`` adds an arm with the paper's layer plus ``temporal_conv`` (the 3×3×3 depthwise conv beside
it, not the paper's; docs/video.md).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from gentron.bench import (
    build_gentron,
    cpu_bench_setup,
    demo_bench_config,
    interleaved,
    make_forward,
    make_inputs,
    make_train_step,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--videos", type=int, default=4, help="videos per train batch (4 × 8 frames = demo batch 32)")
    ap.add_argument("--sample-videos", type=int, default=2, help="videos per forward (CFG batch 2)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int)
    ap.add_argument("--every", type=int, nargs="+", default=[1], help="temporal_every values to measure")
    ap.add_argument("--dims", type=int, nargs="*", default=[], help="temporal_dim values to measure (every block)")
    ap.add_argument("--conv", action="store_true", help="also measure TempSelfAttn + temporal_conv in every block")
    ap.add_argument("--model", help="a zoo model instead of the demo's (e.g. GenTron-S/2); drops the recipe's width")
    ap.add_argument("--resolution", type=int, help="input size (default: the demo's 32)")
    args = ap.parse_args()
    cfg = demo_bench_config()
    if args.model:
        cfg = replace(cfg, model=args.model, overrides={k: v for k, v in cfg.overrides.items() if k == "text_whitening"})
    if args.resolution:
        cfg = replace(cfg, resolution=args.resolution)
    dev = cpu_bench_setup(cfg, args.threads)
    models = {"image": build_gentron(cfg, "cross-attn")}
    for k in args.every:
        models[f"every block" if k == 1 else f"every {k}{ {2: 'nd', 3: 'rd'}.get(k, 'th')} block"] = build_gentron(cfg, "cross-attn", temporal_layers=True, temporal_every=k)
    for w in args.dims:
        models[f"every block at width {w}"] = build_gentron(cfg, "cross-attn", temporal_layers=True, temporal_dim=w)
    if args.conv:
        models["every block, with the 3-D conv"] = build_gentron(cfg, "cross-attn", temporal_layers=True, temporal_conv=True)
    for m in models.values():  # non-zero temporal output projections (and convs) so nothing is short-cut
        for blk in m.blocks:
            if blk.temporal_attn is not None:
                torch.nn.init.normal_(blk.temporal_attn.proj.weight, std=0.02)
            if getattr(blk, "temporal_conv", None) is not None:
                torch.nn.init.normal_(blk.temporal_conv.weight, std=0.02)

    def video_inputs(n_videos: int):
        inp = make_inputs(cfg, "cross-attn", n_videos, dev)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n_videos, cfg.in_channels, args.frames, cfg.resolution, cfg.resolution, generator=g)
        return dict(hidden_states=x, timestep=inp.t, encoder_hidden_states=inp.tokens,
                    encoder_attention_mask=inp.mask, pooled_projections=inp.pooled)

    def forward_fn(model, kw):
        return make_forward(model, lambda m, inputs: m(**inputs), kw, dev, args.precision)

    def train_fn(model, kw):
        return make_train_step(model, lambda m, inputs: m(**inputs).sample, kw, dev, args.precision)

    print(f"GenTron {cfg.model} cross-attn, {args.frames} frames at {cfg.resolution}², {args.precision}, "
          f"{torch.get_num_threads()} threads")
    for what, make, n in (("sample forward", forward_fn, args.sample_videos), ("train step", train_fn, args.videos)):
        kw = video_inputs(n)
        fns = {k: make(m, kw) for k, m in models.items()}
        for f in fns.values():
            f(); f()
        med = interleaved(fns, args.iters, args.rounds, dev)
        frames = n * args.frames
        print(f"{what:<15} ({n} videos × {args.frames} frames): per frame {1e3 * med['image'] / frames:.2f} ms without "
              "temporal attention; with TempSelfAttn in " + ", ".join(
                  f"{k}: {1e3 * med[k] / frames:.2f} ms (+{100 * (med[k] / med['image'] - 1):.1f}%)"
                  for k in med if k != "image"), flush=True)


if __name__ == "__main__":
    main()
