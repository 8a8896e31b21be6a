"""The shapes world: seeded, procedural, captioned images a tiny diffusion transformer can learn on a CPU.

Everything in gentron has to train and evaluate offline on two CPU cores, so this module is the embedded
data set. Its design choices all serve two goals at 32×32 pixels:

* **learnability** — a dark uniform background, flat saturated colours, few and large objects, short
  captions from a handful of templates, and no anti-aliasing (so a sample is "solved" exactly);
* **detectability** — colours far apart in hue and shapes with very different silhouettes (circle, square,
  upward triangle, plus-shaped cross), with gaps between objects, so :mod:`gentron.eval.detector` can read
  an image back programmatically and score a model's samples.

Scenes are resolution independent (centres and sizes are fractions of the image side) and a sample is a
pure function of ``(seed, index, split)``, so a data set index always maps to the same image and caption —
training can be resumed exactly and data can be regenerated at any resolution.

Generalisation is measured on combinations never shown in training: :data:`HELDOUT_COLOR_SHAPE` (colour,
shape) pairs never appear in any training image, and :data:`HELDOUT_SPATIAL` arrangements never appear in
a training scene that states a relation.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
from PIL import Image

# ------------------------------------------------------------------------------------------------
# The vocabulary of the world
# ------------------------------------------------------------------------------------------------

BACKGROUND: tuple[int, int, int] = (20, 20, 20)

#: Saturated colours spread around the hue circle; the closest pair (cyan/blue) is still ~32° apart as
#: seen from the background colour, which is what the detector's colour assignment measures.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (235, 35, 35),
    "yellow": (225, 225, 35),
    "green": (35, 205, 35),
    "cyan": (35, 220, 215),
    "blue": (40, 70, 250),
    "purple": (200, 45, 220),
}

#: Silhouettes that differ strongly even at ~9 px: fill of the bounding box is 1.0 (square), 0.79
#: (circle), 0.5 (triangle, bottom-heavy) and 0.59 (cross, non-convex with empty corners).
SHAPES: list[str] = ["circle", "square", "triangle", "cross"]
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}

#: Side of an object's bounding square as a fraction of the image side. Multi-object scenes always use
#: "small" so that three objects fit with gaps at any resolution.
SIZES: dict[str, float] = {"small": 0.28, "large": 0.42}
MULTI_OBJECT_SIZE = "small"

#: Half-width of the cross's arms relative to its half-side (≈3 px arms for a small cross at 32 px).
CROSS_ARM = 0.36

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
RELATION_PHRASES: dict[str, str] = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}

KINDS: tuple[str, ...] = ("single", "count", "spatial", "complex")
#: Favour what the model must learn: single objects (colour/shape binding) and two-object relations.
DEFAULT_KIND_WEIGHTS: dict[str, float] = {"single": 0.45, "count": 0.15, "spatial": 0.30, "complex": 0.10}
COUNT_WEIGHTS: dict[int, float] = {1: 0.2, 2: 0.4, 3: 0.4}
COMPLEX_RELATION_PROB = 0.3
SPLITS: tuple[str, ...] = ("train", "heldout")

# Geometry, in fractions of the image side.
BORDER = 0.04  # free space between an object's bounding square and the image edge
GAP = 0.10  # free space between the bounding squares of two objects (≥ 3 px at 32 px)
SPATIAL_MIN_SEPARATION = 0.35  # centre distance along the relation's axis in spatial scenes
SPATIAL_MAX_SKEW = 0.5  # |offset across the axis| ≤ this × separation along it
#: Span of a layout grid's centres (``ShapesWorld(layout_grid=N)``): N points per axis from LO to HI. 0.25/0.75
#: keep a large object (radius 0.21) BORDER from the edge, and on a 3-point grid two objects two cells apart.
GRID_LO, GRID_HI = 0.25, 0.75

# ------------------------------------------------------------------------------------------------
# Held-out combinations
# ------------------------------------------------------------------------------------------------

#: Never in a training image. One pair per colour, shapes spread so every colour keeps three training
#: shapes and every shape keeps at least four training colours.
HELDOUT_COLOR_SHAPE: frozenset[tuple[str, str]] = frozenset({
    ("red", "triangle"),
    ("yellow", "cross"),
    ("green", "square"),
    ("cyan", "triangle"),
    ("blue", "cross"),
    ("purple", "circle"),
})

#: Arrangements never stated in training, as normalised ``(colour_a, "left of" | "above", colour_b)``
#: triples ("a red circle to the left of a blue square" and "a blue square to the right of a red circle"
#: both describe ``("red", "left of", "blue")``). Each colour occurs in two; the mirrored arrangements
#: (e.g. blue left of red) stay in training.
HELDOUT_SPATIAL: frozenset[tuple[str, str, str]] = frozenset({
    ("red", "left of", "blue"),
    ("green", "left of", "purple"),
    ("yellow", "left of", "cyan"),
    ("cyan", "above", "red"),
    ("purple", "above", "yellow"),
    ("blue", "above", "green"),
})

TRAIN_COLOR_SHAPE: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLORS for s in SHAPES if (c, s) not in HELDOUT_COLOR_SHAPE
)


def spatial_key(color_a: str, relation: str, color_b: str) -> tuple[str, str, str]:
    """The arrangement ``a relation b`` written as left-of / above, so both phrasings compare equal."""
    if relation == "left of" or relation == "above":
        return (color_a, relation, color_b)
    if relation in ("right of", "below"):
        return (color_b, INVERSE_RELATION[relation], color_a)
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


# ------------------------------------------------------------------------------------------------
# Scenes
# ------------------------------------------------------------------------------------------------


@dataclass
class ShapeObject:
    """One flat-filled object. Positions and sizes are fractions of the image side (resolution free)."""

    color: str
    shape: str
    size: str
    cx: float  # centre, 0 = left edge, 1 = right edge
    cy: float  # centre, 0 = top edge, 1 = bottom edge
    radius: float  # half the side of the object's bounding square

    def radius_px(self, resolution: int) -> float:
        return self.radius * resolution

    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the bounding square in image fractions."""
        return (self.cx - self.radius, self.cy - self.radius, self.cx + self.radius, self.cy + self.radius)

    def describe(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass
class Scene:
    """Objects plus the relation a caption may state: ``(i, relation, j)`` reads "objects[i] relation objects[j]"."""

    objects: list[ShapeObject] = field(default_factory=list)
    relation: Optional[tuple[int, str, int]] = None
    kind: str = "single"

    def color_shape_pairs(self) -> set[tuple[str, str]]:
        return {(o.color, o.shape) for o in self.objects}

    def spatial_key(self) -> Optional[tuple[str, str, str]]:
        if self.relation is None:
            return None
        i, rel, j = self.relation
        return spatial_key(self.objects[i].color, rel, self.objects[j].color)

    def heldout_combos(self) -> set[tuple]:
        """Held-out (colour, shape) pairs and spatial arrangements this scene contains."""
        found: set[tuple] = {p for p in self.color_shape_pairs() if p in HELDOUT_COLOR_SHAPE}
        key = self.spatial_key()
        if key is not None and key in HELDOUT_SPATIAL:
            found.add(key)
        return found


def scene_to_dict(scene: Scene) -> dict[str, Any]:
    """JSON-ready form of a scene (stored beside each image in ``captions.jsonl``)."""
    return {
        "kind": scene.kind,
        "relation": list(scene.relation) if scene.relation is not None else None,
        "objects": [
            {"color": o.color, "shape": o.shape, "size": o.size, "cx": o.cx, "cy": o.cy, "radius": o.radius}
            for o in scene.objects
        ],
    }


def scene_from_dict(d: dict[str, Any]) -> Scene:
    rel = d.get("relation")
    return Scene(
        objects=[ShapeObject(o["color"], o["shape"], o["size"], float(o["cx"]), float(o["cy"]), float(o["radius"]))
                 for o in d["objects"]],
        relation=(int(rel[0]), str(rel[1]), int(rel[2])) if rel is not None else None,
        kind=d.get("kind", "single"),
    )


# ------------------------------------------------------------------------------------------------
# Rasterisation (shared with the detector's shape templates)
# ------------------------------------------------------------------------------------------------


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in the object's own frame: ``u, v ∈ [-1, 1]`` span its bounding square (v points down)."""
    eps = 1e-9
    inside_box = (np.abs(u) <= 1 + eps) & (np.abs(v) <= 1 + eps)
    if shape == "circle":
        return u * u + v * v <= 1 + eps
    if shape == "square":
        return inside_box
    if shape == "triangle":  # apex up, base at the bottom
        return inside_box & (np.abs(u) <= (v + 1) / 2 + eps)
    if shape == "cross":
        return inside_box & ((np.abs(u) <= CROSS_ARM + eps) | (np.abs(v) <= CROSS_ARM + eps))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


#: Sub-samples per pixel side. A pixel is filled when at least half of it is covered: renders stay binary
#: (crisp, exactly readable) without the one-pixel nubs that pixel-centre sampling leaves on small circles.
SUPERSAMPLE = 4


def rasterize(shape: str, cx: float, cy: float, rx: float, ry: float, width: int, height: int) -> np.ndarray:
    """Boolean (height, width) mask of a shape centred at pixel coords (cx, cy) with half-extents (rx, ry)."""
    mask = np.zeros((height, width), dtype=bool)
    x0, x1 = max(0, math.floor(cx - rx) - 1), min(width, math.ceil(cx + rx) + 1)
    y0, y1 = max(0, math.floor(cy - ry) - 1), min(height, math.ceil(cy + ry) + 1)
    if x1 <= x0 or y1 <= y0:
        return mask
    sub = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    xs = (np.arange(x0, x1)[:, None] + sub[None, :]).reshape(-1)
    ys = (np.arange(y0, y1)[:, None] + sub[None, :]).reshape(-1)
    inside = shape_mask(shape, (xs[None, :] - cx) / rx, (ys[:, None] - cy) / ry)
    coverage = inside.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE).mean(axis=(1, 3))
    mask[y0:y1, x0:x1] = coverage >= 0.5
    return mask


def pixel_box(obj: ShapeObject, resolution: int) -> tuple[int, int, int]:
    """(x0, y0, side) of the object's bounding square snapped to whole pixels.

    Snapping (a shift of at most half a pixel) makes every render symmetric within its box: squares are
    exact boxes, circles and crosses have no lopsided one-pixel nubs, and the detector's shape templates
    (rasterised the same way) match clean renders exactly."""
    side = max(2, round(2 * obj.radius * resolution))
    x0 = min(max(0, round(obj.cx * resolution - side / 2)), resolution - side)
    y0 = min(max(0, round(obj.cy * resolution - side / 2)), resolution - side)
    return x0, y0, side


def render_scene(scene: Scene, resolution: int, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Flat colours on a flat background, no anti-aliasing: renders stay crisp and exactly readable."""
    canvas = np.empty((resolution, resolution, 3), dtype=np.uint8)
    canvas[:] = np.asarray(background, dtype=np.uint8)
    for obj in scene.objects:
        x0, y0, side = pixel_box(obj, resolution)
        half = side / 2
        mask = rasterize(obj.shape, x0 + half, y0 + half, half, half, resolution, resolution)
        canvas[mask] = COLORS[obj.color]
    return Image.fromarray(canvas, "RGB")


# ------------------------------------------------------------------------------------------------
# Captions
# ------------------------------------------------------------------------------------------------


def _noun(obj: ShapeObject) -> str:
    return f"a {obj.color} {obj.shape}"


def describe(scene: Scene) -> str:
    """The canonical caption (the phrasing evaluation prompts use); deterministic."""
    objs = scene.objects
    if scene.kind == "single":
        return _noun(objs[0])
    if scene.kind == "count":
        o = objs[0]
        n = len(objs)
        return f"{NUMBER_WORDS[n]} {o.color} {o.shape if n == 1 else PLURALS[o.shape]}"
    if scene.kind == "spatial":
        i, rel, j = scene.relation  # type: ignore[misc]
        return f"{_noun(objs[i])} {RELATION_PHRASES[rel]} {_noun(objs[j])}"
    if scene.kind == "complex":
        if scene.relation is not None:
            i, rel, j = scene.relation
            (k,) = [k for k in range(len(objs)) if k not in (i, j)]
            return f"{_noun(objs[i])} {RELATION_PHRASES[rel]} {_noun(objs[j])}, and {_noun(objs[k])}"
        return f"{_noun(objs[0])}, {_noun(objs[1])} and {_noun(objs[2])}"
    raise ValueError(f"unknown scene kind {scene.kind!r}")


def random_caption(scene: Scene, rng: random.Random) -> str:
    """A caption with light phrasing variety; the canonical form stays the most frequent."""
    objs = scene.objects
    if scene.kind == "single":
        o = objs[0]
        r = rng.random()
        if r < 0.4:
            return _noun(o)
        if r < 0.7:
            return f"a {o.size} {o.color} {o.shape}"
        if r < 0.8:
            return f"one {o.color} {o.shape}"
        return f"{_noun(o)} on a dark background"
    if scene.kind == "count":
        base = describe(scene)
        return base if rng.random() < 0.75 else f"{base} on a dark background"
    if scene.kind == "spatial":
        i, rel, j = scene.relation  # type: ignore[misc]
        if rng.random() < 0.6:
            return describe(scene)
        return f"{_noun(objs[j])} {RELATION_PHRASES[INVERSE_RELATION[rel]]} {_noun(objs[i])}"
    if scene.kind == "complex":
        if scene.relation is not None:
            i, rel, j = scene.relation
            (k,) = [k for k in range(len(objs)) if k not in (i, j)]
            if rng.random() < 0.5:
                i, j, rel = j, i, INVERSE_RELATION[rel]
            return f"{_noun(objs[i])} {RELATION_PHRASES[rel]} {_noun(objs[j])}, and {_noun(objs[k])}"
        order = list(range(len(objs)))
        rng.shuffle(order)
        a, b, c = (objs[t] for t in order)
        return f"{_noun(a)}, {_noun(b)} and {_noun(c)}"
    raise ValueError(f"unknown scene kind {scene.kind!r}")


# ------------------------------------------------------------------------------------------------
# The world
# ------------------------------------------------------------------------------------------------

RngLike = Union[random.Random, np.random.Generator]


def _as_random(rng: RngLike) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, np.random.Generator):
        return random.Random(int(rng.integers(0, 2**63 - 1)))
    raise TypeError(f"expected random.Random or numpy.random.Generator, got {type(rng).__name__}")


def _weighted(rng: random.Random, weights: dict) -> Any:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys], k=1)[0]


def _apart(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Bounding squares (cx, cy, r) separated by at least GAP (Chebyshev distance)."""
    return max(abs(a[0] - b[0]), abs(a[1] - b[1])) >= a[2] + b[2] + GAP


def _relation_holds(a: ShapeObject, relation: str, b: ShapeObject) -> bool:
    """``a relation b`` as :meth:`ShapesWorld._place_pair` guarantees it: separated by at least
    SPATIAL_MIN_SEPARATION along the relation's axis, with the offset across it at most SPATIAL_MAX_SKEW of that."""
    along, across = (b.cx - a.cx, b.cy - a.cy) if relation in ("left of", "right of") else (b.cy - a.cy, b.cx - a.cx)
    if relation in ("right of", "below"):
        along = -along
    return along >= SPATIAL_MIN_SEPARATION and abs(across) <= SPATIAL_MAX_SKEW * along


class ShapesWorld:
    """Samples, captions and renders scenes; ``sample(index)`` is a pure function of (seed, index, split)."""

    def __init__(self, resolution: int = 32, seed: int = 0, kinds_weights: Optional[dict[str, float]] = None,
                 background: tuple[int, int, int] = BACKGROUND, layout_grid: int = 0):
        """``layout_grid=N`` (N ≥ 2) snaps object centres to an N×N grid spanning [GRID_LO, GRID_HI]; 0 places them
        freely. Fewer layouts per caption make the clean image at high noise less of a blur over positions,
        which is where a two-object layout, and so "left of", is decided (docs/demo-recipe.md, seventh round)."""
        if resolution < 8:
            raise ValueError(f"resolution must be at least 8 pixels, got {resolution}")
        if layout_grid == 1 or layout_grid < 0:
            raise ValueError(f"layout_grid must be 0 (free placement) or at least 2 points per axis, got {layout_grid}")
        weights = dict(DEFAULT_KIND_WEIGHTS if kinds_weights is None else kinds_weights)
        unknown = set(weights) - set(KINDS)
        if unknown or not any(w > 0 for w in weights.values()) or any(w < 0 for w in weights.values()):
            raise ValueError(f"kinds_weights must give non-negative weights to kinds in {KINDS}, got {weights}")
        self.resolution = int(resolution)
        self.seed = int(seed)
        self.kinds_weights = {k: float(w) for k, w in weights.items() if w > 0}
        self.background = tuple(int(c) for c in background)
        self.layout_grid = int(layout_grid)

    # -- sampling ---------------------------------------------------------------------------------

    def sample_scene(self, rng: RngLike, split: str = "train", kind: Optional[str] = None) -> Scene:
        """A random scene. ``train`` never contains a held-out combination; ``heldout`` always contains one
        of the kind's own type (a (colour, shape) pair, or for spatial scenes a stated arrangement)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rng = _as_random(rng)
        kind = kind or _weighted(rng, self.kinds_weights)
        propose = {"single": self._single, "count": self._count, "spatial": self._spatial,
                   "complex": self._complex}.get(kind)
        if propose is None:
            raise ValueError(f"unknown scene kind {kind!r}; expected one of {KINDS}")
        for _ in range(1000):
            scene = propose(rng, split)
            if scene is not None and self.layout_grid:
                scene = self._snap_to_grid(scene)
            if scene is not None and self._allowed(scene, split):
                return scene
        raise RuntimeError(f"could not sample a {kind} scene for split {split}")  # pragma: no cover

    @staticmethod
    def _allowed(scene: Scene, split: str) -> bool:
        found = scene.heldout_combos()
        if split == "train":
            return not found
        if scene.kind == "spatial":  # held-out arrangement, with only training (colour, shape) pairs
            return scene.spatial_key() in HELDOUT_SPATIAL and not (scene.color_shape_pairs() & HELDOUT_COLOR_SHAPE)
        return bool(scene.color_shape_pairs() & HELDOUT_COLOR_SHAPE)

    @staticmethod
    def _pair(rng: random.Random, split: str) -> tuple[str, str]:
        pool = sorted(HELDOUT_COLOR_SHAPE) if split == "heldout" else TRAIN_COLOR_SHAPE
        return rng.choice(pool)

    @staticmethod
    def _train_shape(rng: random.Random, color: str) -> str:
        return rng.choice([s for s in SHAPES if (color, s) not in HELDOUT_COLOR_SHAPE])

    def _single(self, rng: random.Random, split: str) -> Scene:
        color, shape = self._pair(rng, split)
        size = rng.choice(list(SIZES))
        r = SIZES[size] / 2
        cx, cy = (rng.uniform(BORDER + r, 1 - BORDER - r) for _ in range(2))
        return Scene([ShapeObject(color, shape, size, cx, cy, r)], None, "single")

    def _count(self, rng: random.Random, split: str) -> Optional[Scene]:
        color, shape = self._pair(rng, split)
        n = _weighted(rng, COUNT_WEIGHTS)
        r = SIZES[MULTI_OBJECT_SIZE] / 2
        centres = self._place_free(rng, [r] * n)
        if centres is None:
            return None
        return Scene([ShapeObject(color, shape, MULTI_OBJECT_SIZE, x, y, r) for x, y in centres], None, "count")

    def _spatial(self, rng: random.Random, split: str) -> Optional[Scene]:
        if split == "heldout":
            a, rel, b = rng.choice(sorted(HELDOUT_SPATIAL))
            if rng.random() < 0.5:  # state it from the other object's side half the time
                a, rel, b = b, INVERSE_RELATION[rel], a
        else:
            a, b = rng.sample(list(COLORS), 2)
            rel = rng.choice(RELATIONS)
        r = SIZES[MULTI_OBJECT_SIZE] / 2
        (xa, ya), (xb, yb) = self._place_pair(rng, r, rel)
        objs = [ShapeObject(a, self._train_shape(rng, a), MULTI_OBJECT_SIZE, xa, ya, r),
                ShapeObject(b, self._train_shape(rng, b), MULTI_OBJECT_SIZE, xb, yb, r)]
        return Scene(objs, (0, rel, 1), "spatial")

    def _complex(self, rng: random.Random, split: str) -> Optional[Scene]:
        colors = rng.sample(list(COLORS), 3)
        shapes = [self._train_shape(rng, c) for c in colors]
        if split == "heldout":  # force one held-out pair in; the other two stay training pairs
            color, shape = self._pair(rng, split)
            if color not in colors:
                colors[rng.randrange(3)] = color
            k = colors.index(color)
            shapes[k] = shape
        r = SIZES[MULTI_OBJECT_SIZE] / 2
        relation = None
        if rng.random() < COMPLEX_RELATION_PROB:
            i, j = rng.sample(range(3), 2)
            relation = (i, rng.choice(RELATIONS), j)
            (xi, yi), (xj, yj) = self._place_pair(rng, r, relation[1])
            rest = self._place_free(rng, [r], fixed=[(xi, yi, r), (xj, yj, r)])
            if rest is None:
                return None
            (k,) = [k for k in range(3) if k not in (i, j)]
            centres: list[tuple[float, float]] = [(0.0, 0.0)] * 3
            centres[i], centres[j], centres[k] = (xi, yi), (xj, yj), rest[0]
        else:
            placed = self._place_free(rng, [r] * 3)
            if placed is None:
                return None
            centres = placed
        objs = [ShapeObject(c, s, MULTI_OBJECT_SIZE, x, y, r) for c, s, (x, y) in zip(colors, shapes, centres)]
        return Scene(objs, relation, "complex")

    # -- placement --------------------------------------------------------------------------------

    def _snap_to_grid(self, scene: Scene) -> Optional[Scene]:
        """The scene with every centre moved to the nearest grid point, or None where that breaks a placement
        rule (objects too close, a stated relation no longer unambiguous); the caller then proposes again."""
        step = (GRID_HI - GRID_LO) / (self.layout_grid - 1)

        def snap(v: float) -> float:
            return GRID_LO + step * min(self.layout_grid - 1, max(0, round((v - GRID_LO) / step)))

        objs = [ShapeObject(o.color, o.shape, o.size, snap(o.cx), snap(o.cy), o.radius) for o in scene.objects]
        boxes = [(o.cx, o.cy, o.radius) for o in objs]
        if not all(_apart(a, b) for k, a in enumerate(boxes) for b in boxes[k + 1:]):
            return None
        if scene.relation is not None and not _relation_holds(objs[scene.relation[0]], scene.relation[1],
                                                               objs[scene.relation[2]]):
            return None
        return Scene(objs, scene.relation, scene.kind)

    @staticmethod
    def _place_free(rng: random.Random, radii: list[float],
                    fixed: Optional[list[tuple[float, float, float]]] = None,
                    tries: int = 200) -> Optional[list[tuple[float, float]]]:
        """Rejection sampling of non-overlapping positions (with GAP) for objects of the given radii."""
        for _ in range(tries):
            placed = list(fixed or [])
            out = []
            for r in radii:
                cand = (rng.uniform(BORDER + r, 1 - BORDER - r), rng.uniform(BORDER + r, 1 - BORDER - r), r)
                if not all(_apart(cand, p) for p in placed):
                    break
                placed.append(cand)
                out.append((cand[0], cand[1]))
            else:
                return out
        return None

    @staticmethod
    def _place_pair(rng: random.Random, r: float, relation: str) -> tuple[tuple[float, float], tuple[float, float]]:
        """Centres of A and B with ``A relation B`` unambiguous: a clear separation along the relation's
        axis that dominates the offset across it."""
        lo, hi = BORDER + r, 1 - BORDER - r
        span = hi - lo
        sep = rng.uniform(max(SPATIAL_MIN_SEPARATION, 2 * r + GAP), span)
        skew = min(SPATIAL_MAX_SKEW * sep, span)
        off = rng.uniform(-skew, skew)
        a_along = rng.uniform(lo, hi - sep)
        a_across = rng.uniform(max(lo, lo - off), min(hi, hi - off))
        first, second = (a_along, a_across), (a_along + sep, a_across + off)  # first has the smaller coord
        if relation in ("right of", "below"):
            first, second = second, first
        if relation in ("left of", "right of"):
            return first, second
        if relation in ("above", "below"):
            return (first[1], first[0]), (second[1], second[0])
        raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")

    # -- rendering and captions -------------------------------------------------------------------

    def render(self, scene: Scene) -> Image.Image:
        return render_scene(scene, self.resolution, self.background)

    def caption(self, scene: Scene, rng: Optional[RngLike] = None) -> str:
        """A caption for the scene; canonical (:func:`describe`) without an rng, varied phrasing with one."""
        if rng is None:
            return describe(scene)
        return random_caption(scene, _as_random(rng))

    def rng_for(self, index: int, split: str = "train") -> random.Random:
        # String seeds are hashed with SHA-512 by `random`, so this is stable across processes and runs.
        return random.Random(f"gentron-shapes:{self.seed}:{split}:{int(index)}")

    def sample(self, index: int, split: str = "train") -> tuple[Image.Image, str, Scene]:
        """Image, caption and scene for data set position ``index``; independent of any other index."""
        rng = self.rng_for(index, split)
        scene = self.sample_scene(rng, split)
        return self.render(scene), self.caption(scene, rng), scene


# ------------------------------------------------------------------------------------------------
# On-disk data sets
# ------------------------------------------------------------------------------------------------


def write_shapes_dataset(out_dir: Union[str, Path], num: int, resolution: int = 32, seed: int = 0,
                         split: str = "train", video: bool = False,
                         kinds_weights: Optional[dict[str, float]] = None, layout_grid: int = 0) -> Path:
    """Write ``images/NNNNNN.png``, ``captions.jsonl`` and ``meta.json`` — the folder-data-set format
    (:class:`gentron.data.folder.ImageCaptionFolder`), so training on generated data exercises the same
    code path as training on user data. ``captions.jsonl`` is written last (atomically), so its presence
    means the data set is complete."""
    if video:
        return write_shapes_video_dataset(out_dir, num, resolution=resolution, seed=seed, split=split)
    world = ShapesWorld(resolution=resolution, seed=seed, kinds_weights=kinds_weights, layout_grid=layout_grid)
    meta = {"generator": "gentron-shapes", "version": 1, "resolution": resolution, "seed": seed, "num": num,
            "split": split, "kinds_weights": world.kinds_weights, "layout_grid": world.layout_grid}

    def write_image(i: int, path: Path) -> tuple[str, dict]:
        image, caption, scene = world.sample(i, split)
        image.save(path, compress_level=1)  # flat images compress well anyway; 4x faster
        return caption, scene_to_dict(scene)

    return _write_captioned_folder(out_dir, num, meta, "images", "png", write_image)


def _write_captioned_folder(out_dir: Union[str, Path], num: int, meta: dict, subdir: str, ext: str,
                            write_item: Callable[[int, Path], tuple[str, dict]]) -> Path:
    """What both writers share: ``meta.json``, numbered ``SUBDIR/NNNNNN.EXT`` files written by
    ``write_item(i, path) -> (caption, scene dict)``, and ``captions.jsonl`` renamed into place last so its
    presence means the data set is complete."""
    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    out = Path(out_dir)
    (out / subdir).mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(num - 1)))
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    tmp = out / "captions.jsonl.tmp"
    with open(tmp, "w") as f:
        for i in range(num):
            rel = f"{subdir}/{i:0{width}d}.{ext}"
            caption, scene = write_item(i, out / rel)
            f.write(json.dumps({"file": rel, "caption": caption, "scene": scene}) + "\n")
    os.replace(tmp, out / "captions.jsonl")
    return out


def load_scenes(root: Union[str, Path]) -> list[tuple[str, str, Scene]]:
    """(file, caption, scene) for every line of a shapes data set's ``captions.jsonl``."""
    out = []
    with open(Path(root) / "captions.jsonl") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                out.append((rec["file"], rec["caption"], scene_from_dict(rec["scene"])))
    return out


# ------------------------------------------------------------------------------------------------
# Video mode: objects moving with constant velocity (GenTron T2V, Sec. 3.3)
# ------------------------------------------------------------------------------------------------

#: Motion directions as unit vectors in image coordinates (y points down) and caption phrases.
MOTIONS: dict[str, tuple[float, float]] = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "up": (0.0, -1.0),
                                           "down": (0.0, 1.0)}
MOTION_PHRASES: dict[str, str] = {"right": "moving to the right", "left": "moving to the left",
                                  "up": "moving up", "down": "moving down"}
VIDEO_KINDS: tuple[str, ...] = ("single", "pair")
DEFAULT_VIDEO_KIND_WEIGHTS: dict[str, float] = {"single": 0.7, "pair": 0.3}
#: Source clips: 16 frames at 8 fps (2 s); the data loader samples T frames at a target fps from them.
VIDEO_SOURCE_FPS = 8
VIDEO_SOURCE_FRAMES = 16
#: Distance travelled over the whole clip, as a fraction of the image side.
VIDEO_TRAVEL = (0.30, 0.42)


@dataclass
class VideoScene:
    """Objects at time 0 plus one motion per object; positions at time ``s ∈ [0, 1]`` (fraction of the
    clip) are ``centre + s · travel · direction`` — constant velocity, resolution and frame-rate free."""

    objects: list[ShapeObject] = field(default_factory=list)
    motions: list[str] = field(default_factory=list)
    travel: list[float] = field(default_factory=list)
    kind: str = "single"

    def at(self, s: float) -> Scene:
        objs = []
        for o, m, d in zip(self.objects, self.motions, self.travel):
            dx, dy = MOTIONS[m]
            objs.append(ShapeObject(o.color, o.shape, o.size, o.cx + s * d * dx, o.cy + s * d * dy, o.radius))
        return Scene(objs, None, "single" if len(objs) == 1 else "count")

    def color_shape_pairs(self) -> set[tuple[str, str]]:
        return {(o.color, o.shape) for o in self.objects}

    def heldout_combos(self) -> set[tuple]:
        return {p for p in self.color_shape_pairs() if p in HELDOUT_COLOR_SHAPE}


def describe_video(vs: VideoScene) -> str:
    """The canonical video caption, e.g. "a red circle moving to the right"."""
    parts = [f"{_noun(o)} {MOTION_PHRASES[m]}" for o, m in zip(vs.objects, vs.motions)]
    return " and ".join(parts)


def video_scene_to_dict(vs: VideoScene) -> dict[str, Any]:
    d = scene_to_dict(Scene(vs.objects, None, vs.kind))
    d.update(motions=list(vs.motions), travel=list(vs.travel))
    return d


def video_scene_from_dict(d: dict[str, Any]) -> VideoScene:
    sc = scene_from_dict({**d, "relation": None})
    return VideoScene(sc.objects, [str(m) for m in d["motions"]], [float(t) for t in d["travel"]],
                      d.get("kind", "single"))


class ShapesVideoWorld:
    """Moving-shapes clips; ``sample(index)`` is a pure function of (seed, index, split).

    ``train`` never shows a held-out (colour, shape) pair (:data:`HELDOUT_COLOR_SHAPE`); ``heldout``
    always contains one, exactly as the image world."""

    def __init__(self, resolution: int = 32, seed: int = 0, num_frames: int = VIDEO_SOURCE_FRAMES,
                 kinds_weights: Optional[dict[str, float]] = None, background: tuple[int, int, int] = BACKGROUND):
        if resolution < 8:
            raise ValueError(f"resolution must be at least 8 pixels, got {resolution}")
        if num_frames < 2:
            raise ValueError(f"num_frames must be at least 2, got {num_frames}")
        weights = dict(DEFAULT_VIDEO_KIND_WEIGHTS if kinds_weights is None else kinds_weights)
        if set(weights) - set(VIDEO_KINDS) or not any(w > 0 for w in weights.values()):
            raise ValueError(f"video kinds_weights must weight kinds in {VIDEO_KINDS}, got {weights}")
        self.resolution, self.seed, self.num_frames = int(resolution), int(seed), int(num_frames)
        self.kinds_weights = {k: float(w) for k, w in weights.items() if w > 0}
        self.background = tuple(int(c) for c in background)

    def rng_for(self, index: int, split: str = "train") -> random.Random:
        return random.Random(f"gentron-shapes-video:{self.seed}:{split}:{int(index)}")

    def _object(self, rng: random.Random, color: str, shape: str, size: str) -> tuple[ShapeObject, str, float]:
        r = SIZES[size] / 2
        motion = rng.choice(list(MOTIONS))
        travel = rng.uniform(*VIDEO_TRAVEL)
        dx, dy = MOTIONS[motion]
        lo, hi = BORDER + r, 1 - BORDER - r

        def start(d: float) -> float:  # the whole path stays inside the image
            if d > 0:
                return rng.uniform(lo, hi - travel)
            if d < 0:
                return rng.uniform(lo + travel, hi)
            return rng.uniform(lo, hi)

        return ShapeObject(color, shape, size, start(dx), start(dy), r), motion, travel

    def sample_scene(self, rng: RngLike, split: str = "train", kind: Optional[str] = None) -> VideoScene:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rng = _as_random(rng)
        kind = kind or _weighted(rng, self.kinds_weights)
        if kind not in VIDEO_KINDS:
            raise ValueError(f"unknown video kind {kind!r}; expected one of {VIDEO_KINDS}")
        for _ in range(1000):
            if kind == "single":
                color, shape = ShapesWorld._pair(rng, split)
                o, m, d = self._object(rng, color, shape, rng.choice(list(SIZES)))
                vs = VideoScene([o], [m], [d], "single")
            else:
                c1, s1 = ShapesWorld._pair(rng, split)
                c2 = rng.choice([c for c in COLORS if c != c1])
                a = self._object(rng, c1, s1, MULTI_OBJECT_SIZE)
                b = self._object(rng, c2, ShapesWorld._train_shape(rng, c2), MULTI_OBJECT_SIZE)
                if a[1] == b[1]:
                    continue  # two objects move in different directions
                if rng.random() < 0.5:
                    a, b = b, a
                vs = VideoScene([a[0], b[0]], [a[1], b[1]], [a[2], b[2]], "pair")
                if not all(_apart(*((o.cx, o.cy, o.radius) for o in vs.at(k / 8).objects)) for k in range(9)):
                    continue
            found = vs.heldout_combos()
            if (split == "train" and not found) or (split == "heldout" and found):
                return vs
        raise RuntimeError(f"could not sample a {kind} video scene for split {split}")  # pragma: no cover

    def frame_times(self) -> list[float]:
        return [k / (self.num_frames - 1) for k in range(self.num_frames)]

    def render(self, vs: VideoScene) -> list[Image.Image]:
        return [render_scene(vs.at(s), self.resolution, self.background) for s in self.frame_times()]

    def caption(self, vs: VideoScene) -> str:
        return describe_video(vs)

    def sample(self, index: int, split: str = "train") -> tuple[list[Image.Image], str, VideoScene]:
        rng = self.rng_for(index, split)
        vs = self.sample_scene(rng, split)
        return self.render(vs), self.caption(vs), vs


def write_shapes_video_dataset(out_dir: Union[str, Path], num: int, resolution: int = 32, seed: int = 0,
                               split: str = "train", fmt: str = "mp4", fps: int = VIDEO_SOURCE_FPS,
                               num_frames: int = VIDEO_SOURCE_FRAMES) -> Path:
    """Write ``videos/NNNNNN.{mp4,gif,webm}`` + ``captions.jsonl`` (``file``, ``caption``, ``scene``) +
    ``meta.json``: the video-folder format of :class:`gentron.data.video.VideoCaptionFolder`. MP4s are
    lossless H.264 (RGB), so decoded frames equal the renders exactly."""
    from gentron.data.video import write_video

    world = ShapesVideoWorld(resolution=resolution, seed=seed, num_frames=num_frames)
    meta = {"generator": "gentron-shapes-video", "version": 1, "resolution": resolution, "seed": seed,
            "num": num, "split": split, "fps": fps, "num_frames": num_frames, "format": fmt}

    def write_clip(i: int, path: Path) -> tuple[str, dict]:
        frames, caption, vs = world.sample(i, split)
        write_video(path, frames, fps=fps)
        return caption, video_scene_to_dict(vs)

    return _write_captioned_folder(out_dir, num, meta, "videos", fmt, write_clip)


__all__ = [
    "MOTIONS", "MOTION_PHRASES", "VideoScene", "ShapesVideoWorld", "describe_video", "video_scene_to_dict",
    "video_scene_from_dict", "write_shapes_video_dataset",
    "BACKGROUND", "COLORS", "SHAPES", "PLURALS", "SIZES", "RELATIONS", "KINDS", "DEFAULT_KIND_WEIGHTS",
    "HELDOUT_COLOR_SHAPE", "HELDOUT_SPATIAL", "TRAIN_COLOR_SHAPE", "ShapeObject", "Scene", "ShapesWorld",
    "describe", "random_caption", "render_scene", "rasterize", "pixel_box", "shape_mask", "spatial_key", "scene_to_dict",
    "scene_from_dict", "write_shapes_dataset", "load_scenes",
]
