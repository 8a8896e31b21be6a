"""The demo's mixed stage alone, as `gentron demo` trains it (the recipe, its processes), resumed from a finished
demo's relations checkpoint for a fixed number of steps (the wsd decay over their last quarter), with extra --set
overrides; then colour and spatial on 48 held-out prompts and shape on 144 held-out and 144 seen prompts, per shape.

    python experiments/demo_recipe/mix_stage_probe.py DEMO_OUT NAME [--steps 2500] [--set KEY=VALUE ...]

A probe that changes the data (e.g. data.kinds_weights) gets a data folder of its own (DEMO_OUT/probes/NAME-data).
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

from gentron.cli import demo
from gentron.train.config import load_config

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("demo_out", type=Path)
    ap.add_argument("name")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    args = ap.parse_args()
    out = args.demo_out.absolute()
    ckpt = sorted(glob.glob(str(out / "relations" / "checkpoints" / "step_*")))[-1]
    start = int(ckpt.rsplit("_", 1)[-1])
    own_data = any(s.startswith("data.") for s in args.sets)
    data = out / "probes" / f"{args.name}-data" if own_data else out / "data"
    run = out / "probes" / args.name
    # train_stage sets max_minutes from its StageBudget (600 min here), so the steps end the run and set the decay
    sets = [f"data.path={data}", "train.device=cpu", f"train.steps={start + args.steps}",
            f"train.warmup_steps={start}", "train.checkpoint_every=0"] + args.sets
    cfg = load_config(demo.recipe_path(), sets)
    processes = demo.demo_processes(0, "cpu", cfg.train.batch_size)
    t0 = time.time()
    summary = demo.train_stage(cfg, run, demo.StageBudget(t0, 600, 0), f"mix probe {args.name}", processes, resume=ckpt)

    from gentron.cli.main import autocast_for, load_pipeline
    from gentron.eval.shapes_eval import evaluate_shapes

    pipe = load_pipeline(str(run), "cpu", None)
    with autocast_for("cpu"):
        held = evaluate_shapes(pipe, split="heldout", n_per_category=48, steps=20, guidance=4.0, seed=0,
                               categories=("color", "spatial"))["accuracy"]
        shape = {split: evaluate_shapes(pipe, split=split, n_per_category=144, steps=20, guidance=4.0, seed=0,
                                        categories=("shape",)) for split in ("heldout", "train")}
    per = {split: ", ".join(f"{s} {a}/{n}" for s, (a, n) in demo.shape_by_shape(r).items())
           for split, r in shape.items()}
    print(f"RESULT {args.name} ({' '.join(args.sets) or 'as shipped'}): {summary['steps'] - start} steps in "
          f"{summary['minutes']:.2f} min | colour {held['color']:.3f} spatial {held['spatial']:.3f} | shape held-out "
          f"{shape['heldout']['accuracy']['shape']:.3f} ({per['heldout']}) | seen "
          f"{shape['train']['accuracy']['shape']:.3f} ({per['train']})", flush=True)
