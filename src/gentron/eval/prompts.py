"""Evaluation prompt suites for the shapes world, each prompt paired with the scene it describes.

The scene is the ground truth the detector's :func:`gentron.eval.detector.score` checks an image
against. Suites are deterministic (a fixed seed per position) so reports are comparable across runs, and
balanced: single-object and count prompts cycle through every eligible (colour, shape) pair, spatial
prompts through every eligible arrangement, so a handful of prompts cannot over-represent one combination.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Callable

from gentron.data.shapes import (
    COUNT_WEIGHTS,
    HELDOUT_COLOR_SHAPE,
    HELDOUT_SPATIAL,
    RELATIONS,
    SIZES,
    SPLITS,
    TRAIN_COLOR_SHAPE,
    COLORS,
    Scene,
    ShapesWorld,
    describe,
    spatial_key,
)

CATEGORIES: tuple[str, ...] = ("color", "shape", "count", "spatial", "complex")
#: The scene kind each category is drawn from ("color" and "shape" share the same single-object prompts;
#: "size" prompts are single-object scenes captioned with their size, "a large red circle").
CATEGORY_KIND: dict[str, str] = {
    "color": "single", "shape": "single", "count": "count", "spatial": "spatial", "complex": "complex",
    "size": "single",
}
#: Shapes-CompBench (:mod:`gentron.eval.compbench`): the image categories, modelled on T2I-CompBench
#: (colour / shape binding, size, counting, spatial relations, complex = 3 objects with mixed attributes).
COMPBENCH_CATEGORIES: tuple[str, ...] = ("color", "shape", "size", "count", "spatial", "complex")
#: Video categories of the benchmark, scored by ``gentron.eval.video_eval`` (built separately); listed here
#: so reports and suites have one place to grow into. Not produced by :func:`eval_suite`.
VIDEO_CATEGORIES: tuple[str, ...] = ("motion_direction", "temporal_consistency")
#: Bumped whenever a suite's prompts could change (world vocabulary, sampling or ordering). Reports carry it
#: together with a fingerprint of the exact prompts (:func:`suite_fingerprint`).
SUITE_VERSION = "shapes-compbench-v1"


@dataclass
class EvalPrompt:
    """A prompt, the scene it describes (ground truth for scoring) and the category it is scored in."""

    prompt: str
    scene: Scene
    category: str


def _targets(kind: str, split: str, seed: int) -> list[Callable[[Scene], bool]]:
    """Predicates a suite cycles through, in a seeded order, so combinations are covered evenly."""
    order = random.Random(f"suite-order:{seed}:{split}:{kind}")
    if kind == "single":
        pairs = sorted(HELDOUT_COLOR_SHAPE) if split == "heldout" else list(TRAIN_COLOR_SHAPE)
        order.shuffle(pairs)
        return [lambda s, p=p: (s.objects[0].color, s.objects[0].shape) == p for p in pairs]
    if kind == "size":
        pairs = sorted(HELDOUT_COLOR_SHAPE) if split == "heldout" else list(TRAIN_COLOR_SHAPE)
        combos = list(itertools.product(pairs, sorted(SIZES)))
        order.shuffle(combos)
        return [lambda s, p=p, z=z: (s.objects[0].color, s.objects[0].shape) == p and s.objects[0].size == z
                for p, z in combos]
    if kind == "count":
        pairs = sorted(HELDOUT_COLOR_SHAPE) if split == "heldout" else list(TRAIN_COLOR_SHAPE)
        combos = list(itertools.product(pairs, sorted(COUNT_WEIGHTS)))
        order.shuffle(combos)
        return [lambda s, p=p, k=k: (s.objects[0].color, s.objects[0].shape) == p and len(s.objects) == k
                for p, k in combos]
    if kind == "spatial":
        if split == "heldout":
            keys = sorted(HELDOUT_SPATIAL)
        else:
            keys = sorted({spatial_key(a, r, b) for a in COLORS for b in COLORS if a != b for r in RELATIONS}
                          - HELDOUT_SPATIAL)
        order.shuffle(keys)
        return [lambda s, k=k: s.spatial_key() == k for k in keys]
    return [lambda s: True]


def eval_suite(category: str, split: str = "heldout", n: int = 24, seed: int = 1234) -> list[EvalPrompt]:
    """``n`` prompts of one category. ``split="heldout"`` prompts contain a combination never seen in
    training (a held-out (colour, shape) pair; for "spatial" a held-out arrangement of training pairs);
    ``split="train"`` prompts use only training combinations. Prompts are canonical captions
    (:func:`gentron.data.shapes.describe`), e.g. "a red triangle", "two blue squares",
    "a red circle to the left of a blue square", "a red circle, a blue square and a yellow triangle"."""
    if category not in CATEGORY_KIND:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    kind = CATEGORY_KIND[category]
    world = ShapesWorld(seed=seed)
    targets = _targets("size" if category == "size" else kind, split, seed)
    out = []
    for i in range(n):
        rng = random.Random(f"eval:{seed}:{split}:{kind}:{i}")
        wanted = targets[i % len(targets)]
        for _ in range(10_000):
            scene = world.sample_scene(rng, split, kind)
            if wanted(scene):
                break
        else:  # pragma: no cover - every target is reachable; this guards future edits
            raise RuntimeError(f"could not build a {category} prompt for split {split}")
        text = describe(scene)
        if category == "size":  # "a large red circle": the size phrasing of the training captions
            o = scene.objects[0]
            text = f"a {o.size} {o.color} {o.shape}"
        out.append(EvalPrompt(text, scene, category))
    return out


def suite_fingerprint(prompts: list[EvalPrompt]) -> str:
    """Short SHA-256 of a suite's prompts and ground-truth scenes: equal fingerprints mean identical suites."""
    import hashlib
    import json

    from gentron.data.shapes import scene_to_dict

    blob = json.dumps([[p.category, p.prompt, scene_to_dict(p.scene)] for p in prompts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


__all__ = ["CATEGORIES", "CATEGORY_KIND", "COMPBENCH_CATEGORIES", "VIDEO_CATEGORIES", "SUITE_VERSION", "EvalPrompt",
           "eval_suite", "suite_fingerprint"]
