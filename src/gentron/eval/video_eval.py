"""`gentron eval shapes --video`: moving-shapes clips read back with the image detector.

Per clip (T frames), with the detector of :mod:`gentron.eval.detector` run on every frame:

* **motion_direction** — each prompt object is tracked by the centroid of the largest detection of its
  colour; the displacement from its first to its last detected frame must point the captioned way (dominant
  axis, at least :data:`MIN_TRAVEL` of the image side). A clip is correct when every object moves right.
  Each per-prompt entry keeps the ``moves`` it read and the ``paths`` (first and last centroid, image fractions), so
  a report shows where a wrong move started, e.g. on the side its motion word names.
* **temporal_consistency** — every prompt object is found in every frame and its shape call never changes
  (the colour is the tracking key), and the number of detected objects is constant.
* **frame_color** — per-frame colour accuracy: the fraction of frames in which every prompt colour is found.
* **frame_shape** — per-frame image accuracy: the fraction of frames in which every prompt object is found
  with its colour *and* shape (the image detector's criterion).
* **overall** — motion direction, consistency and every frame correct.

Two chance levels for motion direction (``report["chance"]``):

* ``motion_direction`` — a model that moves every object, each in a random direction the world could caption (one of
  4 for one object, one of the 12 ordered pairs of different directions for two): 1/4 or 1/12 per prompt, averaged
  over the suite.
* ``motion_direction_caption_blind`` — these very clips scored against every caption the world could give their
  prompt's objects, averaged: what the model's own motions score if the motion words are ignored. A still clip
  scores 0 under every caption, so accuracy above this level is what reading the words adds.

Validated on ground-truth clips (rendered and sampled exactly as the data loader does): all ≥ 0.99.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from gentron.data.shapes import MOTIONS, VIDEO_SOURCE_FPS, ShapesVideoWorld, VideoScene, describe_video
from gentron.eval.detector import detect

MIN_TRAVEL = 0.08  # fraction of the image side a tracked object must move for a direction call
VIDEO_METRICS: tuple[str, ...] = ("motion_direction", "temporal_consistency", "frame_color", "frame_shape", "overall")


@dataclass
class VideoPrompt:
    prompt: str
    objects: list[tuple[str, str, str]]  # (colour, shape, motion)
    kind: str
    scene: Optional[VideoScene] = None


def video_eval_suite(split: str = "heldout", n: int = 24, seed: int = 1234, resolution: int = 32) -> list[VideoPrompt]:
    """``n`` prompts from the moving-shapes world (its own seed, so not the training clips)."""
    world = ShapesVideoWorld(resolution=resolution, seed=seed)
    out = []
    for i in range(n):
        vs = world.sample_scene(world.rng_for(i, split), split)
        out.append(VideoPrompt(describe_video(vs), [(o.color, o.shape, m) for o, m in zip(vs.objects, vs.motions)],
                               vs.kind, vs))
    return out


def direction_of(dx: float, dy: float) -> Optional[str]:
    """The motion word of a displacement (y down), or None when it is too small or diagonal."""
    if max(abs(dx), abs(dy)) < MIN_TRAVEL:
        return None
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    if abs(dy) > abs(dx):
        return "down" if dy > 0 else "up"
    return None


def score_clip(prompt: VideoPrompt, frames: Sequence[Image.Image]) -> dict[str, Any]:
    return score_detections(prompt, [detect(f) for f in frames])


def score_detections(prompt: VideoPrompt, dets: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """:func:`score_clip` on a clip's per-frame detections (so one clip's detections can be scored against
    many prompts, as the chance level does)."""
    t = len(dets)
    motion_ok, consistent = True, True
    color_hits, frame_hits = np.ones(t, dtype=bool), np.ones(t, dtype=bool)
    moves, paths = [], []
    for color, shape, motion in prompt.objects:
        track = [max((d for d in fd if d.color == color), key=lambda d: d.area, default=None) for fd in dets]
        found = [k for k, d in enumerate(track) if d is not None]
        color_hits &= np.array([d is not None for d in track])
        frame_hits &= np.array([d is not None and d.shape == shape for d in track])
        if len(found) < 2:
            motion_ok, consistent = False, False
            moves.append(None)
            paths.append(None)
            continue
        a, b = track[found[0]], track[found[-1]]
        got = direction_of(b.cx - a.cx, b.cy - a.cy)
        moves.append(got)
        paths.append([[round(a.cx, 3), round(a.cy, 3)], [round(b.cx, 3), round(b.cy, 3)]])
        motion_ok &= got == motion
        shapes = Counter(track[k].shape for k in found)
        consistent &= len(found) == t and len(shapes) == 1
    consistent &= len({len(fd) for fd in dets}) == 1
    frame_acc = float(frame_hits.mean())
    return {
        "motion_direction": bool(motion_ok),
        "temporal_consistency": bool(consistent),
        "frame_color": float(color_hits.mean()),
        "frame_shape": frame_acc,
        "overall": bool(motion_ok and consistent and frame_acc == 1.0),
        "moves": moves,
        "paths": paths,
        "detected": [[d.describe() for d in fd] for fd in dets],
    }


def motion_captions(prompt: VideoPrompt) -> list[tuple[str, ...]]:
    """Every motion assignment the world could caption this prompt's objects with: the 4 directions for one
    object, the ordered pairs of different directions for two (:class:`ShapesVideoWorld` never moves two objects
    the same way)."""
    k = len(prompt.objects)
    return [a for a in itertools.product(MOTIONS, repeat=k) if len(set(a)) == k]


def caption_blind_motion(prompt: VideoPrompt, moves: Sequence[Optional[str]]) -> float:
    """The share of :func:`motion_captions` that a clip's tracked moves match: its motion-direction score when the
    caption's motion words are ignored (0 for a still clip, 1/4 for one object moving clearly any way)."""
    options = motion_captions(prompt)
    return sum(tuple(moves) == a for a in options) / len(options)


def motion_chance(prompts: Sequence[VideoPrompt]) -> float:
    """Motion-direction accuracy of a model that moves every object in a random captionable direction."""
    return float(np.mean([1.0 / len(motion_captions(p)) for p in prompts])) if prompts else 1.0 / len(MOTIONS)


def summarize(prompts: Sequence[VideoPrompt], clips: Sequence[Sequence[Image.Image]]) -> dict[str, Any]:
    """Mean scores over the clips, per-prompt scores, and the two motion chance levels (module docstring)."""
    per = []
    sums = {k: 0.0 for k in VIDEO_METRICS}
    blind = 0.0
    for p, clip in zip(prompts, clips):
        s = score_clip(p, clip)
        for k in VIDEO_METRICS:
            sums[k] += float(s[k])
        b = caption_blind_motion(p, s["moves"])
        blind += b
        per.append({"prompt": p.prompt, "kind": p.kind, **{k: s[k] for k in VIDEO_METRICS}, "moves": s["moves"],
                    "paths": s["paths"], "motion_caption_blind": b})
    n = max(len(per), 1)
    chance = {"motion_direction": motion_chance(list(prompts)[:len(per)]), "motion_direction_caption_blind": blind / n}
    return {"accuracy": {k: v / n for k, v in sums.items()}, "chance": chance, "per_prompt": per, "num_clips": len(per)}


def ground_truth_clips(prompts: Sequence[VideoPrompt], resolution: int = 32, num_frames: int = 8, fps: float = 4.0,
                       via_file: Optional[str] = None) -> list[list[Image.Image]]:
    """Renders of the prompts' scenes sampled as the data loader samples a 16-frame, 8-fps source
    (optionally written to and decoded from a video file of type ``via_file``: mp4, gif or webm)."""
    import tempfile
    from pathlib import Path

    from gentron.data.video import load_clip, sample_frame_indices, write_video

    world = ShapesVideoWorld(resolution=resolution)
    idx = sample_frame_indices(world.num_frames, VIDEO_SOURCE_FPS, num_frames, fps)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, p in enumerate(prompts):
            frames = world.render(p.scene)
            if via_file:
                path = write_video(Path(tmp) / f"{i}.{via_file}", frames, fps=VIDEO_SOURCE_FPS)
                out.append(load_clip(path, num_frames, fps, resolution))
            else:
                out.append([frames[k] for k in idx])
    return out


def validate_video_eval(n: int = 100, split: str = "heldout", seed: int = 1234, via_file: Optional[str] = None,
                        resolution: int = 32) -> dict[str, float]:
    """Accuracy of the metrics on ground-truth clips (should all be ≥ 0.99)."""
    prompts = video_eval_suite(split, n, seed, resolution)
    return summarize(prompts, ground_truth_clips(prompts, resolution, via_file=via_file))["accuracy"]


def evaluate_video_shapes(pipe, split: str = "heldout", n: int = 32, steps: int = 20, guidance: float = 4.5,
                          motion_guidance: float = 1.0, num_frames: int = 8, seed: int = 0, batch_size: int = 16,
                          progress: bool = False) -> dict[str, Any]:
    """Sample ``n`` moving-shapes prompts with a T2V pipeline and score the clips."""
    prompts = video_eval_suite(split, n, resolution=pipe.transformer.config.sample_size)
    clips = sample_clips(pipe, [p.prompt for p in prompts], [seed + i for i in range(len(prompts))], steps, guidance,
                         motion_guidance, num_frames, batch_size, progress)
    report = summarize(prompts, clips)
    report.update(split=split, steps=steps, guidance=guidance, motion_guidance=motion_guidance,
                  num_frames=num_frames, seed=seed,
                  sampler=type(pipe.scheduler).__name__)
    report["_clips"] = clips
    return report


def sample_clips(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int = 20, guidance: float = 4.5,
                 motion_guidance: float = 1.0, num_frames: int = 8, batch_size: int = 16,
                 progress: bool = False) -> list[list[Image.Image]]:
    """One clip per (prompt, seed); clip ``i`` starts from the noise of ``seeds[i]`` whatever the batch size."""
    cfg = pipe.transformer.config
    clips: list[list[Image.Image]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        latents = torch.stack([
            torch.randn((cfg.in_channels, num_frames, cfg.sample_size, cfg.sample_size),
                        generator=torch.Generator().manual_seed(int(s)))
            for s in seeds[start : start + batch_size]
        ])
        out = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, latents=latents,
                   num_frames=num_frames, motion_guidance_scale=motion_guidance, progress=progress)
        clips.extend(out.images)
    return clips


def format_video_table(report: dict[str, Any]) -> str:
    lines = ["| metric | value |", "|---|---|"]
    names = {"motion_direction": "motion direction accuracy", "temporal_consistency": "temporal consistency",
             "frame_color": "per-frame colour accuracy", "frame_shape": "per-frame image accuracy (colour and shape)",
             "overall": "all of the above"}
    for k in VIDEO_METRICS:
        lines.append(f"| {names[k]} | {report['accuracy'][k]:.3f} |")
    chance = report.get("chance", {})
    if "motion_direction" in chance:
        lines.append(f"| (chance, motion direction: random directions) | {chance['motion_direction']:.3f} |")
    if "motion_direction_caption_blind" in chance:
        lines.append("| (chance, motion direction: these clips, motion words ignored) | "
                     f"{chance['motion_direction_caption_blind']:.3f} |")
    return "\n".join(lines)
