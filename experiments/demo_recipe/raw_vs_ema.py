"""Eleventh round: shape accuracy (144 prompts per split, per shape) of a run's EMA weights and of its raw weights
(the last checkpoint's model.safetensors), to see whether the EMA lags a short run.

    python experiments/demo_recipe/raw_vs_ema.py RUN_DIR [ema] [raw]
"""

import collections
import glob
import sys

from safetensors.torch import load_file

from gentron.cli.main import autocast_for, load_pipeline
from gentron.eval.shapes_eval import evaluate_shapes

run = sys.argv[1]
pipe = load_pipeline(run, "cpu", None)  # the run's exported pipeline: EMA weights
checkpoint = sorted(glob.glob(f"{run}/checkpoints/step_*"))[-1]
for weights in sys.argv[2:] or ["ema", "raw"]:
    if weights == "raw":
        _, unexpected = pipe.transformer.load_state_dict(load_file(f"{checkpoint}/model.safetensors"), strict=False)
        assert not unexpected, unexpected
    for split in ("heldout", "train"):
        with autocast_for("cpu"):
            r = evaluate_shapes(pipe, split=split, n_per_category=144, steps=20, guidance=4.0, seed=0,
                                categories=("shape",))
        per = collections.defaultdict(lambda: [0, 0])
        for p in r["per_prompt"]:
            counts = per[p["prompt"].split()[-1]]  # the prompt's last word is its shape
            counts[0] += p["correct"]
            counts[1] += 1
        print(weights, checkpoint.rsplit("/", 1)[-1], split, f"{r['accuracy']['shape']:.3f}",
              ", ".join(f"{s} {a}/{n}" for s, (a, n) in sorted(per.items())), flush=True)
