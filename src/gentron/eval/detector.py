"""A programmatic reader of shapes-world images: which coloured shapes are where.

Evaluation of a text-to-image model needs a judge that is exact on clean renders and tolerant of the
slightly off-colour, ragged objects a small diffusion model draws. The pipeline is deliberately simple
and inspectable:

1. **Colour per pixel.** Each palette colour defines a ray from the background colour. A pixel belongs to
   the colour whose ray it is closest to, provided it has gone at least halfway from the background
   towards that colour (dim or blurred edge pixels fall back to background) and lies within
   :data:`MAX_RAY_DISTANCE` of the ray (far-from-palette pixels are rejected). Measuring along rays rather
   than to palette points makes the assignment robust to over/under-saturated samples.
2. **Objects.** Connected components per colour. Pixels a little apart still join (the linking radius
   grows with resolution) so a ragged object cracked by a stray pixel counts once; clean renders keep
   ≥ :data:`gentron.data.shapes.GAP` of the image side between objects, so distinct objects never join.
   Components smaller than :data:`MIN_AREA_FRACTION` of the image are noise.
3. **Shape.** Holes are filled, then the component is compared (IoU) with each shape's template
   rasterised into the component's own bounding box, exactly as the renderer rasterises it; the best
   match wins.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from gentron.data.shapes import COLORS, SHAPES, SPLITS, ShapesWorld, describe, rasterize
from gentron.eval.prompts import CATEGORIES, CATEGORY_KIND, EvalPrompt, eval_suite

#: Largest distance (0–255 RGB units) of a pixel from its colour's ray; the closest palette rays
#: (cyan/blue) are ~150 apart at full intensity.
MAX_RAY_DISTANCE = 90.0
#: A pixel must have travelled this fraction of the way from background to a palette colour.
MIN_RAY_FRACTION = 0.5
#: Components smaller than this fraction of the image are specks (a small shapes-world object is ≥ 3 %).
MIN_AREA_FRACTION = 0.01
#: Centre offset (fraction of the image side) below which no spatial relation holds.
MIN_RELATION_OFFSET = 0.05


@dataclass
class Detection:
    """One object read from an image. Coordinates are fractions of the image side (y points down)."""

    color: str
    shape: str
    cx: float  # centroid of the object's pixels
    cy: float
    area: float  # fraction of the image's pixels
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1/y1 exclusive
    shape_iou: float = 1.0  # IoU with the winning template: low values mean an unsure shape call

    def describe(self) -> str:
        return f"{self.color} {self.shape}"


# ------------------------------------------------------------------------------------------------
# Detection
# ------------------------------------------------------------------------------------------------


def _as_array(image: Union[Image.Image, np.ndarray]) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image array, got shape {arr.shape}")
    return arr.astype(np.float32)


def estimate_background(arr: np.ndarray) -> np.ndarray:
    """Median of the one-pixel frame: shapes-world objects never touch the border."""
    frame = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return np.median(frame, axis=0)


def classify_pixels(arr: np.ndarray, background: np.ndarray,
                    palette: dict[str, tuple[int, int, int]] = COLORS) -> np.ndarray:
    """(H, W) int map: index into ``palette`` per pixel, -1 for background or unrecognised colours."""
    rel = arr - background  # (H, W, 3)
    dirs = np.asarray(list(palette.values()), dtype=np.float32) - background  # (K, 3)
    norms2 = np.maximum((dirs * dirs).sum(axis=1), 1e-6)
    t = rel @ dirs.T / norms2  # (H, W, K): position along each ray, 1 = exactly the palette colour
    perp = rel[..., None, :] - t[..., :, None] * dirs  # (H, W, K, 3)
    dist = np.sqrt((perp * perp).sum(axis=-1))
    dist = np.where(t >= MIN_RAY_FRACTION, dist, np.inf)
    best = dist.argmin(axis=-1)
    ok = np.take_along_axis(dist, best[..., None], axis=-1)[..., 0] <= MAX_RAY_DISTANCE
    return np.where(ok, best, -1)


def _shifted(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """``out[y, x] = a[y + dy, x + dx]`` (``fill`` outside)."""
    h, w = a.shape
    out = np.full_like(a, fill)
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[yd, xd] = a[ys, xs]
    return out


def label_components(labels: np.ndarray, link: int = 1) -> np.ndarray:
    """Component id per pixel (-1 for background); pixels of equal label within Chebyshev ``link`` join.

    Min-label propagation with numpy shifts plus pointer jumping (a pixel's id is the flat index of a
    pixel in its component, so ``id[id]`` is a valid shortcut): no scipy needed, and a handful of sweeps
    suffice at shapes-world sizes."""
    h, w = labels.shape
    big = h * w
    fg = labels >= 0
    comp = np.where(fg, np.arange(big).reshape(h, w), big)
    offsets = [(dy, dx) for dy in range(-link, link + 1) for dx in range(-link, link + 1) if dy or dx]
    same = [(dy, dx, fg & (_shifted(labels, dy, dx, -1) == labels)) for dy, dx in offsets]
    while True:
        new = comp
        for dy, dx, m in same:
            new = np.where(m, np.minimum(new, _shifted(comp, dy, dx, big)), new)
        flat = np.append(new.reshape(-1), big)
        for _ in range(4):  # pointer jumping
            flat = flat[flat]
        new = flat[:-1].reshape(h, w)
        if np.array_equal(new, comp):
            break
        comp = new
    return np.where(fg, comp, -1)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background pixels not 4-connected to the outside become foreground."""
    padded = np.pad(mask, 1)
    outside = np.zeros_like(padded)
    outside[0, :] = outside[-1, :] = outside[:, 0] = outside[:, -1] = True
    free = ~padded
    while True:
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= free
        if np.array_equal(grown, outside):
            break
        outside = grown
    return ~outside[1:-1, 1:-1]


@lru_cache(maxsize=4096)
def _template(shape: str, h: int, w: int) -> np.ndarray:
    return rasterize(shape, w / 2, h / 2, w / 2, h / 2, w, h)


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """Best-matching shape (and its IoU) for a cropped object mask."""
    h, w = mask.shape
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        t = _template(shape, h, w)
        iou = float((mask & t).sum()) / max(float((mask | t).sum()), 1.0)
        if iou > best_iou:
            best, best_iou = shape, iou
    return best, best_iou


def detect(image: Union[Image.Image, np.ndarray], background: Optional[Sequence[float]] = None,
           palette: Optional[dict[str, tuple[int, int, int]]] = None,
           min_area: Optional[float] = None) -> list[Detection]:
    """Objects in an image (PIL or (H, W, 3) uint8 array), largest first.

    ``background`` defaults to the median colour of the image's border; ``min_area`` (fraction of the
    image) defaults to :data:`MIN_AREA_FRACTION`."""
    arr = _as_array(image)
    h, w = arr.shape[:2]
    palette = dict(COLORS if palette is None else palette)
    names = list(palette)
    bg = np.asarray(background, dtype=np.float32) if background is not None else estimate_background(arr)
    labels = classify_pixels(arr, bg, palette)
    link = 1 + int(round(min(h, w) / 32))  # joins cracks of up to link-1 px; clean gaps are ≥ 0.1·side
    comps = label_components(labels, link=link)
    min_pixels = max(3.0, (MIN_AREA_FRACTION if min_area is None else min_area) * h * w)
    out: list[Detection] = []
    ids, counts = np.unique(comps[comps >= 0], return_counts=True)
    for cid, count in zip(ids, counts):
        if count < min_pixels:
            continue
        ys, xs = np.nonzero(comps == cid)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        crop = fill_holes(comps[y0:y1, x0:x1] == cid)
        shape, iou = classify_shape(crop)
        out.append(Detection(
            color=names[int(labels[ys[0], xs[0]])],
            shape=shape,
            cx=float(xs.mean() + 0.5) / w,
            cy=float(ys.mean() + 0.5) / h,
            area=float(count) / (h * w),
            bbox=(x0, y0, x1, y1),
            shape_iou=iou,
        ))
    out.sort(key=lambda d: -d.area)
    return out


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------


def relation_holds(a: Detection, relation: str, b: Detection) -> bool:
    """``a relation b`` between centroids: the offset along the relation's axis points the right way, is at
    least :data:`MIN_RELATION_OFFSET` and exceeds the offset across the axis (so diagonal layouts count
    only for their dominant direction)."""
    dx, dy = b.cx - a.cx, b.cy - a.cy  # from a to b
    along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    return along >= MIN_RELATION_OFFSET and along > abs(across)


def _largest(detections: Sequence[Detection], color: str) -> Optional[Detection]:
    return max((d for d in detections if d.color == color), key=lambda d: d.area, default=None)


def score(prompt: EvalPrompt, detections: Sequence[Detection]) -> dict[str, bool]:
    """Per-criterion correctness of an image's detections for an evaluation prompt.

    The key named after ``prompt.category`` is the category's verdict; other keys are diagnostics.

    * ``color`` / ``shape`` (single-object prompts): the most prominent (largest) detected object has the
      prompt's colour / shape. Both keys are returned for either category.
    * ``count``: the number of objects of the prompt's colour equals the prompt's number. Shape is *not*
      required — counting is judged separately from shape drawing, which ``shape`` already measures —
      but ``count_shape`` also requires every such object to have the prompt's shape.
    * ``spatial``: the largest object of each prompt colour is found (colours in spatial prompts are
      distinct; ``objects`` reports just this) and the relation holds between their centroids (see
      :func:`relation_holds`). Shapes are not judged.
    * ``complex``: every prompt object is matched one-to-one by a detection of the same colour *and*
      shape (extra objects are allowed). A stated relation is reported separately as ``relation``.
    """
    scene = prompt.scene
    cat = prompt.category
    if cat in ("color", "shape"):
        target = scene.objects[0]
        top = max(detections, key=lambda d: d.area, default=None)
        return {"color": top is not None and top.color == target.color,
                "shape": top is not None and top.shape == target.shape}
    if cat == "count":
        target = scene.objects[0]
        same = [d for d in detections if d.color == target.color]
        n_ok = len(same) == len(scene.objects)
        return {"count": n_ok, "count_shape": n_ok and all(d.shape == target.shape for d in same)}
    if cat == "spatial":
        if scene.relation is None:
            raise ValueError(f"spatial prompt without a relation: {prompt.prompt!r}")
        i, rel, j = scene.relation
        a, b = _largest(detections, scene.objects[i].color), _largest(detections, scene.objects[j].color)
        present = a is not None and b is not None
        return {"objects": present, "spatial": present and relation_holds(a, rel, b)}  # type: ignore[arg-type]
    if cat == "complex":
        wanted = Counter((o.color, o.shape) for o in scene.objects)
        have = Counter((d.color, d.shape) for d in detections)
        out = {"complex": all(have[k] >= n for k, n in wanted.items())}
        if scene.relation is not None:
            i, rel, j = scene.relation
            a, b = _largest(detections, scene.objects[i].color), _largest(detections, scene.objects[j].color)
            out["relation"] = a is not None and b is not None and relation_holds(a, rel, b)
        return out
    raise ValueError(f"unknown category {cat!r}; expected one of {CATEGORIES}")


# ------------------------------------------------------------------------------------------------
# Chance levels and detector validation
# ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def random_train_detections(kind: str, count: int, resolution: int, seed: int, salt: str = "chance") -> tuple:
    """Detections on renders of random *training* scenes of one kind: what a text-blind model draws
    (the basis of chance levels). ``salt`` keeps independent uses on independent scene draws."""
    world = ShapesWorld(resolution=resolution, seed=seed)
    out = []
    for i in range(count):
        scene = world.sample_scene(random.Random(f"{salt}:{seed}:{kind}:{i}"), "train", kind)
        out.append(tuple(detect(world.render(scene))))
    return tuple(out)


def chance_levels(split: str = "heldout", n: int = 24, seed: int = 1234, resolution: int = 32,
                  images: int = 64, image_seed: int = 0) -> dict[str, float]:
    """What a model that ignores the text would score: each prompt of each suite
    (``eval_suite(category, split, n, seed)``) is scored against ``images`` renders of random *training*
    scenes of the category's kind, and the verdicts are averaged. Deterministic (cached per arguments).

    For held-out suites, spatial and complex chance is 0 by construction: training scenes of those kinds
    never contain a held-out arrangement or (colour, shape) pair. Given both colours drawn correctly, a
    random placement satisfies one stated relation about a quarter of the time."""
    out = {}
    for cat in CATEGORIES:
        pool = random_train_detections(CATEGORY_KIND[cat], images, resolution, image_seed)
        suite = eval_suite(cat, split=split, n=n, seed=seed)
        hits = [score(p, dets)[cat] for p in suite for dets in pool]
        out[cat] = sum(hits) / max(len(hits), 1)
    return out


def degrade(image: Image.Image, rng: random.Random, noise: float = 12.0, blur: float = 0.6,
            color_jitter: float = 0.12) -> Image.Image:
    """A clean render made to look like a model sample: per-channel gain jitter, blur and pixel noise."""
    from PIL import ImageFilter

    arr = np.asarray(image, dtype=np.float32)
    gains = np.array([1 + rng.uniform(-color_jitter, color_jitter) for _ in range(3)], dtype=np.float32)
    arr = arr * gains
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img, dtype=np.float32)
    nrng = np.random.default_rng(rng.randrange(2**32))
    arr = arr + nrng.normal(0, noise, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "RGB")


def validate_detector(resolution: int = 32, n: int = 500, seed: int = 0, noisy: bool = False) -> dict[str, float]:
    """Per-category accuracy of detect+score on ground truth: ``n`` scenes per category (half training,
    half held-out), rendered, read back and scored against their own canonical captions. Clean renders
    should score ≥ 0.99; ``noisy=True`` applies :func:`degrade` first (robustness to model samples)."""
    world = ShapesWorld(resolution=resolution, seed=seed)
    acc = {}
    for cat in CATEGORIES:
        kind = CATEGORY_KIND[cat]
        hits = 0
        for i in range(n):
            rng = random.Random(f"validate:{seed}:{kind}:{i}")
            scene = world.sample_scene(rng, SPLITS[i % 2], kind)
            image = world.render(scene)
            if noisy:
                image = degrade(image, rng)
            hits += bool(score(EvalPrompt(describe(scene), scene, cat), detect(image))[cat])
        acc[cat] = hits / n
    return acc


__all__ = [
    "Detection", "detect", "score", "relation_holds", "chance_levels", "validate_detector", "degrade",
    "classify_pixels", "classify_shape", "label_components", "estimate_background",
]
