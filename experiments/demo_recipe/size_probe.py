"""Nineteenth round: which sizes of a shape the demo model fails to draw. Samples "a [small|large] COLOUR SHAPE" for
every colour (8 seeds each; held-out colours included) and counts what the detector reads.

    python experiments/demo_recipe/size_probe.py RUN_DIR [--shapes cross square triangle]
"""

import argparse
from collections import Counter

import numpy as np
import torch

from gentron.cli.main import autocast_for, load_pipeline
from gentron.data.shapes import COLORS
from gentron.eval.detector import detect

ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("--shapes", nargs="+", default=["cross", "square", "triangle"])
args = ap.parse_args()
pipe = load_pipeline(args.run, "cpu", None)
for size in ("", "small ", "large "):
    for shape in args.shapes:
        read = Counter()
        with autocast_for("cpu"):
            for color in COLORS:
                out = pipe([f"a {size}{color} {shape}"] * 8, num_inference_steps=20, guidance_scale=4.0,
                           generator=torch.Generator().manual_seed(1))
                for image in out.images:
                    found = detect(np.asarray(image))
                    read[found[0].shape if found else None] += 1
        print(f"{size or 'unsized '}{shape}: {read[shape]}/{sum(read.values())} read as {dict(read)}", flush=True)
