"""Shapes-CompBench: a compositional benchmark for the shapes world, modelled on T2I-CompBench.

Categories (:data:`gentron.eval.prompts.COMPBENCH_CATEGORIES`): colour binding, shape binding, size,
counting, spatial relations and complex (three objects with mixed attributes). The video categories
(:data:`gentron.eval.prompts.VIDEO_CATEGORIES`: motion direction, temporal consistency) are a second report of
the same form, :func:`run_video_compbench`, scored by :mod:`gentron.eval.video_eval`'s clip judge.

What makes the numbers trustworthy:

* **fixed, versioned suites** — :func:`gentron.eval.prompts.eval_suite` is deterministic; every report
  carries :data:`~gentron.eval.prompts.SUITE_VERSION` and a fingerprint of the exact prompts;
* **seen vs held-out** — each category is reported on ``train`` prompts (combinations seen in training)
  and on ``heldout`` prompts (combinations never seen) separately;
* **deterministic seeds** — image ``k`` of prompt ``i`` in (category, split) starts from a noise seed that
  depends only on those indices and ``--seed``, never on the batch size or on which categories run;
* **uncertainty** — per-category accuracy with a percentile bootstrap confidence interval over prompts
  (images of one prompt are averaged first, so repeated images do not shrink the interval falsely);
* **chance levels** — what a text-blind model scores (random training scenes scored against the suite);
* **a validated judge** — :func:`validate_judge` checks the detector on ground-truth renders (must score
  high) and on deliberately *wrong* renders of the same prompts (must score low), clean and degraded.

The scorer for "size" lives here (the size classes are 0.28 vs 0.42 of the image side, so the detected
object's bounding box separates them at :data:`SIZE_THRESHOLD`); every other category uses
:func:`gentron.eval.detector.score` unchanged.
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image

from gentron.data.shapes import COLORS, SHAPES, SIZES, render_scene
from gentron.eval.detector import Detection, degrade, detect, random_train_detections
from gentron.eval.detector import score as detector_score
from gentron.eval.prompts import (
    CATEGORY_KIND,
    COMPBENCH_CATEGORIES,
    SUITE_VERSION,
    VIDEO_CATEGORIES,
    EvalPrompt,
    eval_suite,
    suite_fingerprint,
)

SPLIT_NAMES = {"train": "seen", "heldout": "held-out"}
#: Bounding-box side (fraction of the image) separating "small" (0.28) from "large" (0.42) objects.
SIZE_THRESHOLD = (SIZES["small"] + SIZES["large"]) / 2

#: ``sample_fn(prompts, seeds) -> images``: one PIL image per (prompt, seed) pair.
SampleFn = Callable[[list[str], list[int]], list[Image.Image]]


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------


def size_of(det: Detection, resolution: int) -> str:
    """"small" or "large" from the longer side of the detection's bounding box."""
    x0, y0, x1, y1 = det.bbox
    return "large" if max(x1 - x0, y1 - y0) / resolution >= SIZE_THRESHOLD else "small"


def score_prompt(prompt: EvalPrompt, detections: Sequence[Detection], resolution: int) -> dict[str, bool]:
    """Per-criterion verdicts; the key named after ``prompt.category`` is the category's verdict.

    ``size``: the largest object of the prompt's colour exists and has the prompt's size (the size is bound
    to the named object, not to whatever is biggest); ``size_shape`` also requires its shape. Other
    categories: :func:`gentron.eval.detector.score`."""
    if prompt.category != "size":
        return detector_score(prompt, detections)
    target = prompt.scene.objects[0]
    mine = max((d for d in detections if d.color == target.color), key=lambda d: d.area, default=None)
    ok = mine is not None and size_of(mine, resolution) == target.size
    return {"size": ok, "size_shape": ok and mine.shape == target.shape}  # type: ignore[union-attr]


def judge(prompt: EvalPrompt, image: Image.Image) -> tuple[bool, dict[str, bool], list[Detection]]:
    dets = detect(image)
    s = score_prompt(prompt, dets, image.size[0])
    return bool(s[prompt.category]), s, dets


# ------------------------------------------------------------------------------------------------
# Suites, seeds, bootstrap, chance
# ------------------------------------------------------------------------------------------------


def build_suites(categories: Sequence[str] = COMPBENCH_CATEGORIES, splits: Sequence[str] = ("train", "heldout"),
                 n: int = 32, suite_seed: int = 1234) -> dict[tuple[str, str], list[EvalPrompt]]:
    for cat in categories:
        if cat in VIDEO_CATEGORIES:
            raise ValueError(f"{cat!r} is a video category: evaluate it with gentron.eval.video_eval")
        if cat not in COMPBENCH_CATEGORIES:
            raise ValueError(f"unknown category {cat!r}; expected some of {COMPBENCH_CATEGORIES}")
    return {(cat, split): eval_suite(cat, split=split, n=n, seed=suite_seed) for cat in categories for split in splits}


#: Seed blocks of :func:`noise_seed`: the image categories, then one block shared by the video suites (every
#: video category is scored on the same clips).
SEED_BLOCKS: tuple[str, ...] = COMPBENCH_CATEGORIES + ("video",)


def noise_seed(seed: int, category: str, split: str, prompt_index: int, image_index: int) -> int:
    """Initial-noise seed of one image: a pure function of its coordinates in the benchmark."""
    c = SEED_BLOCKS.index(category)
    s = ("train", "heldout").index(split)
    if not (0 <= prompt_index < 5000 and 0 <= image_index < 100):
        raise ValueError("at most 5000 prompts per suite and 100 images per prompt")
    return int(seed) * 10_000_000 + c * 1_000_000 + s * 500_000 + prompt_index * 100 + image_index


def decode_noise_seed(value: int) -> tuple[str, str, int, int]:
    """(category, split, prompt_index, image_index) of a :func:`noise_seed` value."""
    rem = int(value) % 10_000_000
    return (SEED_BLOCKS[rem // 1_000_000], ("train", "heldout")[(rem % 1_000_000) // 500_000],
            (rem % 500_000) // 100, rem % 100)


def bootstrap_ci(values: Sequence[float], resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (``values``: one number per prompt)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    a = (1 - level) / 2
    return (float(np.quantile(means, a)), float(np.quantile(means, 1 - a)))


def _train_pool(kind: str, images: int, resolution: int, seed: int) -> tuple:
    return random_train_detections(kind, images, resolution, seed, salt="compbench-chance")


def chance_level(prompts: Sequence[EvalPrompt], resolution: int = 32, images: int = 64, seed: int = 0) -> float:
    """Accuracy of a text-blind model: every prompt scored against renders of random *training* scenes of
    the category's kind, averaged. For held-out spatial / complex prompts this is 0 by construction."""
    if not prompts:
        return float("nan")
    pool = _train_pool(CATEGORY_KIND[prompts[0].category], images, resolution, seed)
    hits = [score_prompt(p, dets, resolution)[p.category] for p in prompts for dets in pool]
    return float(np.mean(hits))


# ------------------------------------------------------------------------------------------------
# Judge validation: ground truth must score high, deliberately wrong renders low
# ------------------------------------------------------------------------------------------------


def wrong_scene(prompt: EvalPrompt, rng: random.Random) -> Any:
    """A render target that contradicts the prompt in exactly the category's attribute (everything else
    as the prompt says), so a judge that passes it is not measuring the category."""
    scene = copy.deepcopy(prompt.scene)
    objs = scene.objects
    cat = prompt.category
    if cat == "color":
        objs[0].color = rng.choice([c for c in COLORS if c != objs[0].color])
    elif cat == "shape":
        objs[0].shape = rng.choice([s for s in SHAPES if s != objs[0].shape])
    elif cat == "size":
        new = "small" if objs[0].size == "large" else "large"
        objs[0].size, objs[0].radius = new, SIZES[new] / 2
        objs[0].cx = min(max(objs[0].cx, 0.04 + objs[0].radius), 0.96 - objs[0].radius)
        objs[0].cy = min(max(objs[0].cy, 0.04 + objs[0].radius), 0.96 - objs[0].radius)
    elif cat == "count":
        if len(objs) > 1:
            del objs[rng.randrange(len(objs))]  # one too few
        else:  # one object asked for: draw a second one of the same kind, away from the first
            o = objs[0]
            twin = copy.deepcopy(o)
            twin.cx, twin.cy = 1 - o.cx, 1 - o.cy
            if abs(twin.cx - o.cx) < 2 * o.radius + 0.1 and abs(twin.cy - o.cy) < 2 * o.radius + 0.1:
                twin.cx = 0.2 if o.cx > 0.5 else 0.8
            objs.append(twin)
    elif cat == "spatial":  # mirror the layout through the centre: "left of" becomes "right of"
        for o in objs:
            o.cx, o.cy = 1 - o.cx, 1 - o.cy
    elif cat == "complex":  # one object gets a wrong shape that no other object already has in its colour
        k = rng.randrange(len(objs))
        objs[k].shape = rng.choice([s for s in SHAPES if s != objs[k].shape])
    else:
        raise ValueError(f"unknown category {cat!r}")
    return scene


def validate_judge(categories: Sequence[str] = COMPBENCH_CATEGORIES, n: int = 48, resolution: int = 32,
                   suite_seed: int = 1234, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per category (both splits pooled): accuracy of the judge on ground-truth renders of the benchmark's
    own prompts (``correct_clean``, ``correct_degraded``) and its pass rate on wrong renders
    (``wrong_clean``, ``wrong_degraded``). A trustworthy judge has the first two near 1, the last two near 0.
    ``degraded`` renders go through :func:`gentron.eval.detector.degrade` (colour jitter, blur, noise)."""
    out: dict[str, dict[str, float]] = {}
    for cat in categories:
        hits = {"correct_clean": [], "correct_degraded": [], "wrong_clean": [], "wrong_degraded": []}
        for split in ("train", "heldout"):
            for i, p in enumerate(eval_suite(cat, split=split, n=n // 2, seed=suite_seed)):
                rng = random.Random(f"validate-judge:{seed}:{cat}:{split}:{i}")
                good = render_scene(p.scene, resolution)
                bad = render_scene(wrong_scene(p, rng), resolution)
                hits["correct_clean"].append(judge(p, good)[0])
                hits["correct_degraded"].append(judge(p, degrade(good, rng))[0])
                hits["wrong_clean"].append(judge(p, bad)[0])
                hits["wrong_degraded"].append(judge(p, degrade(bad, rng))[0])
        out[cat] = {k: float(np.mean(v)) for k, v in hits.items()}
    return out


# ------------------------------------------------------------------------------------------------
# Running the benchmark
# ------------------------------------------------------------------------------------------------


def pipeline_sampler(pipe, steps: int = 20, guidance: float = 4.5, batch_size: int = 32,
                     progress: bool = False) -> SampleFn:
    """A :data:`SampleFn` over a :class:`~gentron.pipelines.GenTronPipeline` (seeded initial latents)."""
    import torch

    def sample(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        cfg = pipe.transformer.config
        size = cfg.sample_size
        images: list[Image.Image] = []
        for start in range(0, len(prompts), batch_size):
            chunk, chunk_seeds = prompts[start:start + batch_size], seeds[start:start + batch_size]
            latents = torch.stack([
                torch.randn((cfg.in_channels, size, size), generator=torch.Generator().manual_seed(s))
                for s in chunk_seeds
            ])
            images.extend(pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, latents=latents,
                               progress=progress).images)
        return images

    return sample


def oracle_sampler(suites: dict[tuple[str, str], list[EvalPrompt]], resolution: int = 32,
                   wrong: bool = False, noisy: bool = False) -> SampleFn:
    """Renders the ground truth (or, with ``wrong=True``, a contradicting scene) of each benchmark prompt:
    the benchmark's upper bound / a negative control. Used by ``gentron eval compbench --oracle``."""
    def sample(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        out = []
        for text, s in zip(prompts, seeds):
            cat, split, i, _ = decode_noise_seed(s)  # the same text can sit in several suites
            p = suites[(cat, split)][i]
            assert p.prompt == text
            rng = random.Random(f"oracle:{s}")
            img = render_scene(wrong_scene(p, rng) if wrong else p.scene, resolution)
            out.append(degrade(img, rng) if noisy else img)
        return out

    return sample


def run_compbench(
    sample_fn: SampleFn,
    categories: Sequence[str] = COMPBENCH_CATEGORIES,
    splits: Sequence[str] = ("train", "heldout"),
    n: int = 32,
    images_per_prompt: int = 1,
    seed: int = 0,
    suite_seed: int = 1234,
    bootstrap: int = 1000,
    chance_images: int = 64,
    validate: bool = True,
    meta: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Score ``sample_fn`` on every (category, split) suite. Returns the report dict (images under
    ``"_images"``, removed by :func:`write_compbench_report`)."""
    t0 = time.time()
    suites = build_suites(categories, splits, n, suite_seed)
    jobs = [(cat, split, i, k, p) for (cat, split), prompts in suites.items()
            for i, p in enumerate(prompts) for k in range(images_per_prompt)]
    images = sample_fn([j[4].prompt for j in jobs], [noise_seed(seed, j[0], j[1], j[2], j[3]) for j in jobs])
    if len(images) != len(jobs):
        raise RuntimeError(f"sampler returned {len(images)} images for {len(jobs)} prompts")
    resolution = images[0].size[0]
    per_image: list[dict[str, Any]] = []
    per_prompt_hits: dict[tuple[str, str], dict[int, list[bool]]] = {key: {} for key in suites}
    for (cat, split, i, k, p), img in zip(jobs, images):
        ok, crit, dets = judge(p, img)
        per_prompt_hits[(cat, split)].setdefault(i, []).append(ok)
        per_image.append({"category": cat, "split": split, "prompt_index": i, "image_index": k, "prompt": p.prompt,
                          "seed": noise_seed(seed, cat, split, i, k), "correct": ok,
                          "criteria": {c: bool(v) for c, v in crit.items()},
                          "detected": [d.describe() for d in dets]})
    results: dict[str, dict[str, Any]] = {}
    for (cat, split), prompts in suites.items():
        results.setdefault(cat, {})[split] = suite_result(
            per_prompt_hits[(cat, split)], cat, split, images_per_prompt, bootstrap,
            chance_level(prompts, resolution, chance_images), suite_fingerprint(prompts))
    report: dict[str, Any] = {
        "benchmark": "shapes-compbench", "suite_version": SUITE_VERSION, "suite_seed": suite_seed,
        "categories": list(categories), "splits": list(splits), "split_names": SPLIT_NAMES,
        "video_categories": {c: "a separate report: gentron eval compbench --video" for c in VIDEO_CATEGORIES},
        "prompts_per_suite": n, "images_per_prompt": images_per_prompt, "seed": seed,
        "bootstrap_resamples": bootstrap, "resolution": resolution, "results": results,
        "overall": {split: float(np.mean([results[c][split]["accuracy"] for c in categories])) for split in splits},
        **(meta or {}),
    }
    if validate:
        report["judge_validation"] = validate_judge(categories, n=48, resolution=resolution, suite_seed=suite_seed)
    report["seconds"] = round(time.time() - t0, 1)
    report["per_image"] = per_image
    report["_images"] = images
    return report


# ------------------------------------------------------------------------------------------------
# Video suites: motion direction and temporal consistency
# ------------------------------------------------------------------------------------------------

#: ``clip_fn(prompts, seeds) -> clips``: one clip (a list of frames) per (prompt, seed) pair.
ClipFn = Callable[[list[str], list[int]], list[list[Image.Image]]]


def video_suite_fingerprint(prompts: Sequence[Any]) -> str:
    """Short SHA-256 of a video suite's prompts and ground-truth objects and motions."""
    import hashlib

    blob = json.dumps([[p.prompt, [list(o) for o in p.objects]] for p in prompts])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def wrong_clip(prompt: Any, category: str, resolution: int = 32, num_frames: int = 8) -> list[Image.Image]:
    """A clip that contradicts the prompt in the category only: for ``motion_direction`` the true clip played
    backwards (every object moves the opposite way, colours and shapes right); for ``temporal_consistency``
    the true clip whose objects change shape half-way (each frame on its own is a correct render of its
    objects' colours and motions)."""
    from gentron.eval.video_eval import ground_truth_clips

    (clip,) = ground_truth_clips([prompt], resolution, num_frames)
    if category == "motion_direction":
        return clip[::-1]
    if category == "temporal_consistency":
        changed = copy.deepcopy(prompt)
        for o in changed.scene.objects:
            o.shape = SHAPES[(SHAPES.index(o.shape) + 1) % len(SHAPES)]
        (other,) = ground_truth_clips([changed], resolution, num_frames)
        return clip[: num_frames // 2] + other[num_frames // 2 :]
    raise ValueError(f"unknown video category {category!r}; expected one of {VIDEO_CATEGORIES}")


def validate_video_judge(n: int = 48, resolution: int = 32, num_frames: int = 8,
                         suite_seed: int = 1234) -> dict[str, dict[str, float]]:
    """Per video category (both splits pooled): the clip judge's accuracy on ground-truth clips of the
    suites' prompts (``correct_clean``, near 1 for a trustworthy judge) and its pass rate on
    :func:`wrong_clip` clips (``wrong_clean``, near 0)."""
    from gentron.eval.video_eval import ground_truth_clips, score_clip, video_eval_suite

    prompts = [p for split in ("train", "heldout") for p in video_eval_suite(split, n // 2, suite_seed, resolution)]
    truth = ground_truth_clips(prompts, resolution, num_frames)
    out = {}
    for cat in VIDEO_CATEGORIES:
        good = [score_clip(p, c)[cat] for p, c in zip(prompts, truth)]
        bad = [score_clip(p, wrong_clip(p, cat, resolution, num_frames))[cat] for p in prompts]
        out[cat] = {"correct_clean": float(np.mean(good)), "wrong_clean": float(np.mean(bad))}
    return out


def video_chance_level(prompts: Sequence[Any], category: str, resolution: int = 32, num_frames: int = 8,
                       clips: int = 32, seed: int = 0) -> float:
    """Accuracy of a text-blind video model: each prompt scored against ground-truth clips of random
    *training* moving-shapes scenes (the same pool for every prompt)."""
    from gentron.data.shapes import ShapesVideoWorld, describe_video
    from gentron.eval.video_eval import VideoPrompt, ground_truth_clips, score_detections

    world = ShapesVideoWorld(resolution=resolution, seed=seed)
    pool_prompts = []
    for i in range(clips):
        vs = world.sample_scene(random.Random(f"compbench-video-chance:{seed}:{i}"), "train")
        pool_prompts.append(VideoPrompt(describe_video(vs), [], vs.kind, vs))
    pool = [[detect(f) for f in clip] for clip in ground_truth_clips(pool_prompts, resolution, num_frames)]
    return float(np.mean([score_detections(p, dets)[category] for p in prompts for dets in pool]))


def run_video_compbench(
    clip_fn: ClipFn,
    splits: Sequence[str] = ("train", "heldout"),
    n: int = 32,
    clips_per_prompt: int = 1,
    seed: int = 0,
    suite_seed: int = 1234,
    bootstrap: int = 1000,
    num_frames: int = 8,
    resolution: int = 32,
    validate: bool = True,
    meta: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """The video half of Shapes-CompBench: motion direction and temporal consistency on seen and held-out
    moving-shapes suites, with bootstrap CIs, text-blind chance and judge validation, in the same report
    form as :func:`run_compbench` (so :func:`format_markdown` and :func:`write_compbench_report` serve both).
    The per-frame image metrics of :mod:`gentron.eval.video_eval` are kept as ``diagnostics``."""
    from gentron.eval.video_eval import score_clip, video_eval_suite

    t0 = time.time()
    suites = {split: video_eval_suite(split, n, suite_seed, resolution) for split in splits}
    jobs = [(split, i, k, p) for split, prompts in suites.items() for i, p in enumerate(prompts)
            for k in range(clips_per_prompt)]
    seeds = [noise_seed(seed, "video", split, i, k) for split, i, k, _ in jobs]
    clips = clip_fn([j[3].prompt for j in jobs], seeds)
    if len(clips) != len(jobs):
        raise RuntimeError(f"sampler returned {len(clips)} clips for {len(jobs)} prompts")
    per_image: list[dict[str, Any]] = []
    hits: dict[tuple[str, str], dict[int, list[float]]] = {}
    for (split, i, k, p), clip, s in zip(jobs, clips, seeds):
        sc = score_clip(p, clip)
        for metric in VIDEO_CATEGORIES + ("frame_color", "frame_shape"):
            hits.setdefault((metric, split), {}).setdefault(i, []).append(float(sc[metric]))
        per_image.append({"category": "video", "split": split, "prompt_index": i, "image_index": k,
                          "prompt": p.prompt, "seed": s, "correct": bool(sc["motion_direction"]),
                          "criteria": {c: bool(sc[c]) for c in VIDEO_CATEGORIES}, "moves": sc["moves"],
                          "frame_color": sc["frame_color"], "frame_shape": sc["frame_shape"]})
    results: dict[str, dict[str, Any]] = {}
    for cat in VIDEO_CATEGORIES:
        for split, prompts in suites.items():
            results.setdefault(cat, {})[split] = suite_result(
                hits[(cat, split)], cat, split, clips_per_prompt, bootstrap,
                video_chance_level(prompts, cat, resolution, num_frames), video_suite_fingerprint(prompts))
    diagnostics = {m: {split: float(np.mean([np.mean(v) for v in hits[(m, split)].values()])) for split in splits}
                   for m in ("frame_color", "frame_shape")}
    report: dict[str, Any] = {
        "benchmark": "shapes-compbench-video", "suite_version": SUITE_VERSION, "suite_seed": suite_seed,
        "categories": list(VIDEO_CATEGORIES), "splits": list(splits), "split_names": SPLIT_NAMES,
        "prompts_per_suite": n, "images_per_prompt": clips_per_prompt, "seed": seed, "num_frames": num_frames,
        "bootstrap_resamples": bootstrap, "resolution": resolution, "results": results,
        "overall": {split: float(np.mean([results[c][split]["accuracy"] for c in VIDEO_CATEGORIES]))
                    for split in splits},
        "diagnostics": diagnostics, **(meta or {}),
    }
    if validate:
        report["judge_validation"] = validate_video_judge(48, resolution, num_frames, suite_seed)
    report["seconds"] = round(time.time() - t0, 1)
    report["per_image"] = per_image
    # Sample grids show each clip as a strip of its frames.
    report["_images"] = [_frame_strip(c) for c in clips]
    return report


def _frame_strip(frames: Sequence[Image.Image]) -> Image.Image:
    w, h = frames[0].size
    strip = Image.new("RGB", (w * len(frames), h))
    for k, f in enumerate(frames):
        strip.paste(f, (k * w, 0))
    return strip


def oracle_clip_sampler(splits: Sequence[str], n: int, suite_seed: int = 1234, resolution: int = 32,
                        num_frames: int = 8, wrong: Optional[str] = None) -> ClipFn:
    """Ground-truth clips of the video suites' prompts, or with ``wrong=CATEGORY`` :func:`wrong_clip` clips:
    the video benchmark's upper bound / a negative control (``gentron eval compbench --video --oracle``)."""
    from gentron.eval.video_eval import ground_truth_clips, video_eval_suite

    suites = {split: video_eval_suite(split, n, suite_seed, resolution) for split in splits}

    def sample(prompts: list[str], seeds: list[int]) -> list[list[Image.Image]]:
        out = []
        for text, s in zip(prompts, seeds):
            _, split, i, _ = decode_noise_seed(s)
            p = suites[split][i]
            assert p.prompt == text
            out.append(wrong_clip(p, wrong, resolution, num_frames) if wrong
                       else ground_truth_clips([p], resolution, num_frames)[0])
        return out

    return sample


def suite_result(hits: dict[int, list], category: str, split: str, per_prompt: int, bootstrap: int, chance: float,
                 fingerprint: str) -> dict[str, Any]:
    """One (category, split) cell of a report from ``hits[prompt_index] = [verdict per image]``: images of a
    prompt are averaged first, then the mean over prompts with its bootstrap interval."""
    rates = [float(np.mean(hits[i])) for i in sorted(hits)]
    lo, hi = bootstrap_ci(rates, bootstrap, seed=hash_seed(category, split))
    return {"accuracy": float(np.mean(rates)), "ci95": [lo, hi], "prompts": len(rates),
            "images": len(rates) * per_prompt, "chance": chance, "suite_fingerprint": fingerprint}


def hash_seed(*parts: str) -> int:
    """A stable small integer from strings (Python's ``hash`` is salted per process)."""
    import hashlib

    return int(hashlib.sha256(":".join(parts).encode()).hexdigest()[:8], 16)


# ------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------


def format_markdown(report: dict[str, Any]) -> str:
    splits = report["splits"]
    video = report["benchmark"] == "shapes-compbench-video"
    lines = [f"# Shapes-CompBench {'video ' if video else ''}report ({report['suite_version']})", ""]
    for key in ("model", "sampler", "steps", "guidance", "motion_guidance", "num_frames"):
        if key in report:
            lines.append(f"- {key}: `{report[key]}`")
    lines += [f"- prompts per suite: {report['prompts_per_suite']}, images per prompt: {report['images_per_prompt']}, "
              f"noise seed: {report['seed']}, suite seed: {report['suite_seed']}, resolution: {report['resolution']}",
              f"- 95% CIs: percentile bootstrap over prompts ({report['bootstrap_resamples']} resamples)", ""]
    head = "| category | " + " | ".join(f"{SPLIT_NAMES[s]} acc [95% CI] | {SPLIT_NAMES[s]} chance" for s in splits) + " |"
    lines += [head, "|---|" + "---|---|" * len(splits)]
    for cat, by_split in report["results"].items():
        cells = []
        for s in splits:
            r = by_split[s]
            cells += [f"{r['accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]", f"{r['chance']:.3f}"]
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{report['overall'][s]:.3f}** | " for s in splits) + " |")
    if video:
        lines += ["", "Per-frame diagnostics (fraction of frames with every prompt colour / every prompt object "
                  "in colour and shape): " + "; ".join(
                      f"{m} " + ", ".join(f"{SPLIT_NAMES[s]} {v[s]:.3f}" for s in splits)
                      for m, v in report["diagnostics"].items()), ""]
    else:
        lines += ["", "Video categories (" + ", ".join(report.get("video_categories", {})) + "): a separate report, "
                  "`gentron eval compbench --video`.", ""]
    if "judge_validation" in report:
        lines += ["## Judge validation", "",
                  "Ground-truth renders of the benchmark prompts must pass; renders that contradict the prompt's "
                  "category attribute must fail. *degraded* = colour jitter + blur + noise.", "",
                  "| category | correct, clean | correct, degraded | wrong, clean | wrong, degraded |",
                  "|---|---|---|---|---|"]
        for cat, v in report["judge_validation"].items():  # video clips have no degraded variant: "—"
            cells = [f"{v[k]:.3f}" if k in v else "—"
                     for k in ("correct_clean", "correct_degraded", "wrong_clean", "wrong_degraded")]
            lines.append(f"| {cat} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_compbench_report(report: dict[str, Any], out_dir: Path, grid_per_suite: int = 8) -> dict[str, Path]:
    """``report.json``, ``report.md`` and one sample grid per split (``samples-{split}.png``; rows are
    categories, or clips as frame strips for the video report; ``+``/``-`` marks the judge's verdict, of motion
    direction for clips) in ``out_dir``."""
    from gentron.pipelines import make_grid

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = report.pop("_images", None)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=1))
    paths["markdown"].write_text(format_markdown(report))
    if images:
        for split in report["splits"]:
            picks, caps = [], []
            for cat in dict.fromkeys(r["category"] for r in report["per_image"]):  # image categories, or "video"
                idx = [i for i, r in enumerate(report["per_image"])
                       if r["category"] == cat and r["split"] == split and r["image_index"] == 0][:grid_per_suite]
                picks += [images[i] for i in idx]
                caps += [("+ " if report["per_image"][i]["correct"] else "- ") + report["per_image"][i]["prompt"]
                         for i in idx]
            if picks:
                path = out_dir / f"samples-{split}.png"
                w, h = picks[0].size  # frame strips of a video report are T frames wide
                make_grid(picks, captions=caps, cols=max(1, grid_per_suite * h // w),
                          scale=max(1, 160 // h)).save(path)
                paths[f"grid_{split}"] = path
    return paths


def export_suites(out_dir: Path, categories: Sequence[str] = COMPBENCH_CATEGORIES, n: int = 32,
                  suite_seed: int = 1234) -> list[Path]:
    """Write each suite as ``{category}_{split}.txt`` (one prompt per line, T2I-CompBench's format) plus
    ``suites.json`` with the ground-truth scenes, version and fingerprints."""
    from gentron.data.shapes import scene_to_dict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, index = [], {"suite_version": SUITE_VERSION, "suite_seed": suite_seed, "suites": {}}
    for (cat, split), prompts in build_suites(categories, ("train", "heldout"), n, suite_seed).items():
        path = out_dir / f"{cat}_{split}.txt"
        path.write_text("".join(p.prompt + "\n" for p in prompts))
        written.append(path)
        index["suites"][f"{cat}_{split}"] = {
            "fingerprint": suite_fingerprint(prompts),
            "prompts": [{"prompt": p.prompt, "scene": scene_to_dict(p.scene)} for p in prompts]}
    (out_dir / "suites.json").write_text(json.dumps(index, indent=1))
    return written


__all__ = [
    "SIZE_THRESHOLD", "score_prompt", "judge", "build_suites", "noise_seed", "bootstrap_ci", "chance_level",
    "wrong_scene", "validate_judge", "pipeline_sampler", "oracle_sampler", "run_compbench", "format_markdown",
    "write_compbench_report", "export_suites",
]
