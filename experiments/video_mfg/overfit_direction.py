"""Can a T2V model tie the motion word to the direction at all? A memorisation probe.

The demo's T2V stage never learns the motion word (docs/video.md: motion direction at chance in every run). This
probe removes every difficulty but the word: a few clips of the same objects, each moving in each of the four
directions from the same centre, with captions that differ only in the motion phrase. A model that can read the
word memorises them; one that cannot draws the same (or a random) motion for every caption.

    python experiments/video_mfg/overfit_direction.py --out /tmp/odir --steps 300 600 \\
        [--colors red blue] [--set model.overrides.temporal_relative_values=true] [--init-from RUN]

It trains T2V from ``configs/shapes-video-tiny.yaml`` (or from the T2I run given with ``--init-from``) on the clips
only (``video.p_motion_free=0``), then samples every caption from several seeds and scores the clips with the
video evaluation's tracker (``gentron.eval.video_eval.score_clip``). Prints one table row per step count.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]
TRAVEL = 0.36  # fraction of the image side, the middle of the shapes world's range


def write_clips(out: Path, colors: list[str], shape: str, resolution: int) -> list:
    """One clip per (colour, direction), centred so every path stays inside the image; the folder format of
    ``gentron.data.video.VideoCaptionFolder``. Returns the eval prompts (one per clip)."""
    from gentron.data.shapes import MOTIONS, SIZES, ShapeObject, ShapesVideoWorld, VideoScene, describe_video
    from gentron.data.video import write_video
    from gentron.eval.video_eval import VideoPrompt

    world = ShapesVideoWorld(resolution=resolution)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    prompts, rows = [], []
    for color in colors:
        for k, (motion, (dx, dy)) in enumerate(MOTIONS.items()):
            obj = ShapeObject(color, shape, "small", 0.5 - TRAVEL / 2 * dx, 0.5 - TRAVEL / 2 * dy, SIZES["small"] / 2)
            vs = VideoScene([obj], [motion], [TRAVEL], "single")
            name = f"videos/{color}-{motion}.mp4"
            write_video(out / name, world.render(vs), fps=8)
            rows.append({"file": name, "caption": describe_video(vs)})
            prompts.append(VideoPrompt(describe_video(vs), [(color, shape, motion)], "single", vs))
    (out / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return prompts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=[300, 600])
    ap.add_argument("--colors", nargs="+", default=["red"])
    ap.add_argument("--shape", default="circle")
    ap.add_argument("--seeds", type=int, default=4, help="samples per caption")
    ap.add_argument("--init-from", default=None, help="a T2I run to start from (default: from scratch)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "shapes-video-tiny.yaml"))
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--world", type=int, default=0,
                    help="train on this many moving-shapes clips of the shapes world instead (random objects, starts and "
                         "speeds) and score 24 new train-split and 24 held-out prompts: does the word generalise?")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()

    import torch

    from gentron.cli.main import load_pipeline
    from gentron.eval.video_eval import sample_clips, score_clip
    from gentron.train.config import load_config
    from gentron.train.trainer import Trainer

    torch.set_num_threads(max(os.cpu_count() or 1, 1))
    out = Path(args.out)
    if args.world:
        from gentron.eval.video_eval import video_eval_suite

        prompts = video_eval_suite("train", 24) + video_eval_suite("heldout", 24)
        data = ["video.kind=shapes", f"video.path={out / 'world'}", f"video.num={args.world}", "train.batch_size=8"]
        args.seeds = 1
    else:
        prompts = write_clips(out / "clips", args.colors, args.shape, 32)
        data = ["video.kind=folder", f"video.path={out / 'clips'}", f"train.batch_size={len(prompts)}"]
    sets = data + ["video.p_motion_free=0.0", "train.max_minutes=0", "train.checkpoint_every=100000", "train.log_every=50",
            "model.resolution=32", "sample.prompts=[]"]
    if args.init_from:
        sets.append(f"video.init_from={args.init_from}")
    print("| steps | minutes | direction (chance 0.25) | objects that move | moves per caption |")
    print("|---|---|---|---|---|")
    t0 = time.time()
    for steps in args.steps:
        cfg = load_config(args.config if not args.init_from else Path(args.init_from) / "config.yaml",
                          ([] if not args.init_from else ["model.temporal_layers=true", "video.num_frames=8",
                                                           "video.fps=4", "train.lr=1e-3", "train.warmup_steps=5",
                                                           "train.lr_schedule=constant", "train.ema_decay=0.99",
                                                           "train.parallel=none", "train.threads=0"])
                          + sets + [f"train.steps={steps}"] + args.set)
        Trainer(cfg, out / "run", resume="auto", show_progress=False).fit()
        pipe = load_pipeline(str(out / "run"), "cpu", None)
        texts = [p.prompt for p in prompts for _ in range(args.seeds)]
        seeds = [s for _ in prompts for s in range(args.seeds)]
        clips = sample_clips(pipe, texts, seeds, steps=cfg.sample.steps, guidance=args.guidance,
                             num_frames=cfg.video.num_frames)
        scores = [score_clip(p, c) for p, c in zip([p for p in prompts for _ in range(args.seeds)], clips)]
        hit = sum(s["motion_direction"] for s in scores) / len(scores)
        moved = sum(m is not None for s in scores for m in s["moves"]) / sum(len(s["moves"]) for s in scores)
        per = {}
        for p, s in zip(texts, scores):
            per.setdefault(p.split(" moving ")[-1].replace("to the ", ""), []).append(s["moves"][0] or "-")
        per_txt = "; ".join(f"{k}: {' '.join(v)}" for k, v in per.items())
        if args.world:  # 24 train-split then 24 held-out prompts, one seed each
            def rate(rows: list) -> str:
                return f"{sum(s['motion_direction'] for s in rows) / max(len(rows), 1):.3f}"
            single = [s for p, s in zip(prompts, scores) if p.kind == "single"]
            per_txt = f"train split {rate(scores[:24])}, held-out {rate(scores[24:])}, one-object {rate(single)}"
        print(f"| {steps} | {(time.time() - t0) / 60:.1f} | {hit:.3f} | {moved:.2f} | {per_txt} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
