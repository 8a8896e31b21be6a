"""Step cost of `model.overrides.mlp_token_conv` (the depthwise 3×3 conv in each MLP) at the demo's shapes.

The bench's GenTron-vs-diffusers ratio leaves the conv out of both sides (diffusers has no such layer), so this
script measures what the demo's mixed stage pays for it: the same GenTron model built with and without the conv,
interleaved A/B rounds, median train step and sampling-style forward.

    python bench/token_conv_cost.py [--precision bf16] [--threads 1] [--rounds 5]
"""

from __future__ import annotations

import argparse

import torch

from gentron.bench import (
    build_gentron,
    cpu_bench_setup,
    demo_bench_config,
    gentron_forward,
    interleaved,
    make_forward,
    make_inputs,
    make_train_step,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, help="torch threads (default: the recipe's train.threads)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    cfg = demo_bench_config()  # leaves mlp_token_conv out; added back below for one arm
    dev = cpu_bench_setup(cfg, args.threads)
    models = {"plain": build_gentron(cfg, "cross-attn"), "token conv": build_gentron(cfg, "cross-attn", mlp_token_conv=True)}
    for blk in models["token conv"].blocks:  # non-zero, as after training
        torch.nn.init.normal_(blk.mlp.token_conv.weight, std=0.02)

    print(f"GenTron {cfg.model} cross-attn at {cfg.resolution}², {args.precision}, {torch.get_num_threads()} threads")
    for what, make, n in (("train step", make_train_step, cfg.batch), ("sample forward", make_forward, 2)):
        inp = make_inputs(cfg, "cross-attn", n, dev)
        fns = {k: make(m, gentron_forward, inp, dev, args.precision) for k, m in models.items()}
        for f in fns.values():
            f(); f()
        med = interleaved(fns, args.iters, args.rounds, dev)
        print(f"{what:<15} (batch {n}): {1e3 * med['plain']:.1f} ms plain, {1e3 * med['token conv']:.1f} ms with the "
              f"token conv (+{100 * (med['token conv'] / med['plain'] - 1):.1f}%)", flush=True)


if __name__ == "__main__":
    main()
