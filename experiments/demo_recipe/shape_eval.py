"""Ninth round: shape accuracy of trained runs on more prompts than the demo's 48, held-out and seen, per shape.
Eleventh round: ``--weights ema raw`` also scores the last checkpoint's raw weights (does the EMA lag a short run?).

    python experiments/demo_recipe/shape_eval.py RUN_DIR [RUN_DIR ...] [--num 144] [--weights ema raw]
"""

import argparse
import glob

from safetensors.torch import load_file

from gentron.cli.demo import shape_by_shape
from gentron.cli.main import autocast_for, load_pipeline
from gentron.eval.shapes_eval import evaluate_shapes

ap = argparse.ArgumentParser()
ap.add_argument("runs", nargs="+")
ap.add_argument("--num", type=int, default=144)
ap.add_argument("--weights", nargs="+", choices=("ema", "raw"), default=["ema"])
args = ap.parse_args()
for run in args.runs:
    pipe = load_pipeline(run, "cpu", None)  # the run's exported pipeline: EMA weights
    for weights in [w for w in ("ema", "raw") if w in args.weights]:  # ema first: "raw" overwrites the pipeline's
        if weights == "raw":
            checkpoint = sorted(glob.glob(f"{run}/checkpoints/step_*"))[-1]
            _, unexpected = pipe.transformer.load_state_dict(load_file(f"{checkpoint}/model.safetensors"), strict=False)
            assert not unexpected, unexpected
        line = [run.rstrip("/").rsplit("/", 1)[-1] + ("" if weights == "ema" else " (raw)")]
        for split in ("heldout", "train"):
            with autocast_for("cpu"):
                r = evaluate_shapes(pipe, split=split, n_per_category=args.num, steps=20, guidance=4.0, seed=0,
                                    categories=("shape",))
            per = shape_by_shape(r)
            line.append(f"{split} {r['accuracy']['shape']:.3f} (" + ", ".join(f"{s} {a}/{n}" for s, (a, n) in per.items()) + ")")
        print(" | ".join(line), flush=True)
