"""Can the demo model learn a two-object layout where it is decided, at high noise? (docs/demo-recipe.md, 7th round)

``train`` trains the demo recipe with every training timestep drawn from [T_LO, 1000) (the patch below replaces
the trainer's draw; uniform over the range), usually on spatial-only shapes data. ``read`` loads a run and
prints, for a few captions from pure noise, how far apart the x0 prediction puts the two colours (centroid of
each colour's mass, in pixels; for "a left of b" a positive dx means b is right of a, as captioned).
The captions include the red/blue pair, whose only horizontal training layout is blue left of red, as a
control that memorising alone can pass. ``bounds`` gives the loss floors at t = T for a spatial-only data set: the
MSE of the best caption-blind prediction (the mean image), of the best bag-of-words prediction (the mean image
per colour pair and axis) and of the best prediction that knows the arrangement (per ordered pair and axis).

    OMP_NUM_THREADS=1 python experiments/demo_recipe/high_noise_probe.py train H2 800 \
        --set data.path=/tmp/sp-g3 --set 'data.kinds_weights={spatial: 1.0}' --set data.layout_grid=3
    OMP_NUM_THREADS=1 python experiments/demo_recipe/high_noise_probe.py read /tmp/runs/H2
    python experiments/demo_recipe/high_noise_probe.py bounds /tmp/sp-g3
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

CONTROLS = [("blue", "to the left of", "red"), ("red", "to the right of", "blue"), ("red", "to the left of", "blue"),
            ("purple", "to the left of", "green"), ("green", "to the left of", "purple"), ("red", "above", "blue"),
            ("blue", "above", "red")]


def train(name: str, steps: int, sets: list[str], t_lo: int, out: str) -> None:
    from gentron.diffusion.gaussian import GaussianDiffusion
    from gentron.train.config import load_config
    from gentron.train.trainer import Trainer

    def high_noise(self, batch, generator=None, device=None):
        draw_on = generator.device if generator is not None else (device or torch.device("cpu"))
        t = torch.randint(t_lo, self.num_timesteps, (batch,), generator=generator, device=draw_on)
        return t.to(device) if device is not None else t

    GaussianDiffusion.sample_timesteps = high_noise  # this probe only: every draw from [t_lo, T)
    torch.set_num_threads(1)
    cfg = load_config("src/gentron/configs/demo.yaml",
                      ["train.max_minutes=0", f"train.steps={steps}", "train.threads=1", *sets])
    summary = Trainer(cfg, Path(out) / name, show_progress=False).fit()
    print(f"trained {summary['steps']} steps in {summary['minutes']:.1f} min")


def read(run: str) -> None:
    from binding_score import centroid

    from gentron.cli.main import load_pipeline

    torch.set_num_threads(1)
    pipe = load_pipeline(run, "cpu", None)
    model = pipe.transformer.eval()
    e = pipe.text_encoders[0].encode([f"a {a} circle {p} a {b} square" for a, p, b in CONTROLS])
    g = torch.Generator().manual_seed(0)
    size = model.config.sample_size
    for t in (999, 950, 900, 700):
        x = torch.randn(len(CONTROLS), model.config.in_channels, size, size, generator=g)
        with torch.no_grad():
            out = model(x, torch.full((len(CONTROLS),), t), encoder_hidden_states=e.tokens.float(),
                        encoder_attention_mask=e.mask, pooled_projections=e.pooled.float()).sample
        row = []
        for img, (a, p, b) in zip(out.permute(0, 2, 3, 1), CONTROLS):
            (xa, ya), (xb, yb) = centroid(img, a), centroid(img, b)
            row.append(f"{a} {p} {b}: dx {xb - xa:+.1f} dy {yb - ya:+.1f}")
        print(f"t={t}  " + " | ".join(row))


def bounds(root: str) -> None:
    import json
    from collections import defaultdict

    import numpy as np
    from PIL import Image

    recs = [json.loads(line) for line in open(Path(root) / "captions.jsonl")]
    x = np.stack([np.asarray(Image.open(Path(root) / r["file"]), dtype=np.float32) / 127.5 - 1 for r in recs])

    def arrangement(r, ordered: bool):
        i, rel, j = r["scene"]["relation"]
        a, b = r["scene"]["objects"][i]["color"], r["scene"]["objects"][j]["color"]
        if rel in ("right of", "below"):
            a, b = b, a
        axis = "horizontal" if rel in ("left of", "right of") else "vertical"
        return (a, b, axis) if ordered else (frozenset((a, b)), axis)

    keys = {"caption-blind": lambda r: 0, "bag of words": lambda r: arrangement(r, False),
            "arrangement": lambda r: arrangement(r, True)}
    for name, key in keys.items():
        groups = defaultdict(list)
        for k, r in enumerate(recs):
            groups[key(r)].append(k)
        sse = sum(((x[g] - x[g].mean(0)) ** 2).sum() for g in groups.values())
        print(f"{name:14s} MSE floor at t=T: {sse / x.size:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("name")
    t.add_argument("steps", type=int)
    t.add_argument("--set", action="append", default=[])
    t.add_argument("--t-lo", type=int, default=930)
    t.add_argument("--out", default="/tmp/runs")
    r = sub.add_parser("read")
    r.add_argument("run")
    b = sub.add_parser("bounds")
    b.add_argument("data")
    args = ap.parse_args()
    if args.cmd == "train":
        train(args.name, args.steps, args.set, args.t_lo, args.out)
    elif args.cmd == "read":
        read(args.run)
    else:
        bounds(args.data)


if __name__ == "__main__":
    main()
