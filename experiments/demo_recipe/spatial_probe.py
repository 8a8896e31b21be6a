"""Does the diffusion model learn "left of / right of" at all, and under which training signal?

Trains the demo recipe (``src/gentron/configs/demo.yaml``) for a fixed number of steps with the given
``--set`` overrides, then scores only the spatial category on seen and held-out arrangements, and splits the
score into "both objects drawn" and "relation right given both drawn" (the binding itself).

    OMP_NUM_THREADS=1 python experiments/demo_recipe/spatial_probe.py NAME STEPS [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("steps", type=int)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--num", type=int, default=48)
    ap.add_argument("--out", default="/tmp/runs")
    ap.add_argument("--eval-only", action="store_true")
    args = ap.parse_args()

    import torch

    from gentron.cli.main import load_pipeline
    from gentron.eval.shapes_eval import evaluate_shapes
    from gentron.train.config import load_config
    from gentron.train.trainer import Trainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    run = Path(args.out) / args.name
    t0 = time.time()
    if not args.eval_only:
        cfg = load_config("src/gentron/configs/demo.yaml", ["train.max_minutes=0", f"train.steps={args.steps}",
                                                           "train.threads=1", *args.set])
        summary = Trainer(cfg, run, show_progress=False).fit()
        print(f"trained {summary['steps']} steps in {summary['minutes']:.1f} min", flush=True)
    pipe = load_pipeline(str(run), "cpu", None)
    result = {"name": args.name, "steps": args.steps, "sets": args.set}
    for split in ("train", "heldout"):
        rep = evaluate_shapes(pipe, split=split, n_per_category=args.num, guidance=4.0, categories=("spatial",))
        rows = rep["per_prompt"]
        both = [p for p in rows if p["criteria"]["objects"]]
        right = [p for p in both if p["criteria"]["spatial"]]
        result[split] = {"spatial": rep["accuracy"]["spatial"], "both_drawn": len(both) / len(rows),
                         "relation_given_both": len(right) / max(1, len(both)), "n": len(rows)}
        print(f"{args.name} {split:8s} spatial {rep['accuracy']['spatial']:.3f}  both drawn {len(both)}/{len(rows)}"
              f"  relation right {len(right)}/{len(both)}", flush=True)
    result["minutes_total"] = (time.time() - t0) / 60
    (run / "spatial_probe.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
