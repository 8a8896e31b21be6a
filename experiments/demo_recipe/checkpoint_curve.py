"""Tenth round: held-out accuracy of a run's intermediate checkpoints (EMA weights), to see how shape and spatial grow
with optimizer steps. The run's final pipeline supplies text encoder, scheduler and buffers (text whitening); each
checkpoint's `ema.safetensors` replaces the transformer's parameters.

    python experiments/demo_recipe/checkpoint_curve.py RUN_DIR [--num 48] [--categories shape spatial]
"""

import argparse
from pathlib import Path

from safetensors.torch import load_file

from gentron.cli.main import autocast_for, load_pipeline
from gentron.eval.shapes_eval import evaluate_shapes

ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("--num", type=int, default=48)
ap.add_argument("--categories", nargs="+", default=["shape", "spatial"])
args = ap.parse_args()
pipe = load_pipeline(args.run, "cpu", None)
params = dict(pipe.transformer.named_parameters())
for ckpt in sorted(Path(args.run, "checkpoints").glob("step_*")):
    ema = load_file(str(ckpt / "ema.safetensors"))
    missing = set(params) - set(ema)
    if missing:
        raise SystemExit(f"{ckpt}: EMA lacks {sorted(missing)[:3]}")
    for name, p in params.items():
        p.data.copy_(ema[name].to(p.dtype))
    with autocast_for("cpu"):
        r = evaluate_shapes(pipe, split="heldout", n_per_category=args.num, steps=20, guidance=4.0, seed=0,
                            categories=tuple(args.categories))
    step = int(ckpt.name.split("_")[1])
    print(f"step {step:6d} " + " ".join(f"{c} {r['accuracy'][c]:.3f}" for c in args.categories), flush=True)
