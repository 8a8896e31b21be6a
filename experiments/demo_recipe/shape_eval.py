"""Ninth round: shape accuracy of trained runs on more prompts than the demo's 48, held-out and seen, per shape.

    python experiments/demo_recipe/shape_eval.py RUN_DIR [RUN_DIR ...] [--num 144]
"""

import argparse
import collections

from gentron.cli.main import autocast_for, load_pipeline
from gentron.eval.shapes_eval import evaluate_shapes

ap = argparse.ArgumentParser()
ap.add_argument("runs", nargs="+")
ap.add_argument("--num", type=int, default=144)
args = ap.parse_args()
for run in args.runs:
    pipe = load_pipeline(run, "cpu", None)
    line = [run.rstrip("/").rsplit("/", 1)[-1]]
    for split in ("heldout", "train"):
        with autocast_for("cpu"):
            r = evaluate_shapes(pipe, split=split, n_per_category=args.num, steps=20, guidance=4.0, seed=0,
                                categories=("shape",))
        per = collections.defaultdict(lambda: [0, 0])
        for p in r["per_prompt"]:
            counts = per[p["prompt"].split()[-1]]  # the prompt's last word is its shape
            counts[0] += p["correct"]
            counts[1] += 1
        line.append(f"{split} {r['accuracy']['shape']:.3f} (" + ", ".join(f"{s} {a}/{n}" for s, (a, n) in sorted(per.items())) + ")")
    print(" | ".join(line), flush=True)
