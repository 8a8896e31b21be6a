"""Does a trained model use the caption's word order? (docs/demo-recipe.md, fifth round)

For every seen colour pair that training shows in both layouts (24 pairs, 4 relations each), the model's x0
prediction at timestep t from pure noise is reduced to the centroid of each colour's mass (pixels weighted by how
far they go from the background towards that colour). The score is the fraction of captions whose subject lies on
the captioned side of the object: 0.5 means the word order is ignored (a bag of words), 1.0 a perfect binding.

    OMP_NUM_THREADS=1 python experiments/demo_recipe/binding_score.py RUN_DIR
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import torch

from gentron.cli.main import load_pipeline
from gentron.data.shapes import BACKGROUND, COLORS, HELDOUT_SPATIAL, RELATION_PHRASES, spatial_key


def seen_both_ways(a: str, b: str, relation: str) -> bool:
    key = spatial_key(a, relation, b)
    return key not in HELDOUT_SPATIAL and (key[2], key[1], key[0]) not in HELDOUT_SPATIAL


def centroid(img: torch.Tensor, color: str) -> tuple[float, float]:
    """Mass centroid (x, y) in pixels of one palette colour in an (H, W, 3) image in [-1, 1]."""
    bg = torch.tensor(BACKGROUND, dtype=torch.float32) / 127.5 - 1
    d = torch.tensor(COLORS[color], dtype=torch.float32) / 127.5 - 1 - bg
    w = ((img - bg) @ d / d.dot(d)).clamp(0, 1)
    ys, xs = torch.meshgrid(torch.arange(img.shape[0]) * 1.0, torch.arange(img.shape[1]) * 1.0, indexing="ij")
    mass = w.sum().clamp_min(1e-6)
    return float((w * xs).sum() / mass), float((w * ys).sum() / mass)


def main(run: str, noises: int = 2) -> None:
    torch.set_num_threads(1)
    pipe = load_pipeline(run, "cpu", None)
    model = pipe.transformer.eval()
    cases = [(a, phrase, b) for a, b in itertools.permutations(COLORS, 2) for rel, phrase in RELATION_PHRASES.items()
             if seen_both_ways(a, b, rel)]
    e = pipe.text_encoders[0].encode([f"a {a} circle {phrase} a {b} square" for a, phrase, b in cases])
    g = torch.Generator().manual_seed(0)
    size = model.config.sample_size
    report = []
    for t in (950, 900, 800):
        margins = []
        for _ in range(noises):
            x = torch.randn(len(cases), model.config.in_channels, size, size, generator=g)
            with torch.no_grad():
                out = model(x, torch.full((len(cases),), t), encoder_hidden_states=e.tokens.float(),
                            encoder_attention_mask=e.mask, pooled_projections=e.pooled.float()).sample
            for img, (a, phrase, b) in zip(out.permute(0, 2, 3, 1), cases):
                (xa, ya), (xb, yb) = centroid(img, a), centroid(img, b)
                margins.append({"to the left of": xb - xa, "to the right of": xa - xb,
                                "above": yb - ya, "below": ya - yb}[phrase])
        m = np.array(margins)
        report.append(f"t={t}: right {(m > 0).mean():.2f} margin {m.mean():+.2f}px")
    print(run, "  ".join(report))


if __name__ == "__main__":
    main(sys.argv[1])
