"""The `gentron` command line: info, data, train, sample, eval, demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

# No model hub at run time, ever: everything loads from local paths.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class UserError(Exception):
    """An error caused by the user's input, printed without a traceback."""


# ------------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------------

PAPER_PARAMS = {"GenTron-XL/2": "930.0M", "GenTron-G/2": "3083.8M"}


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from gentron.models.transformer import MODEL_SIZES, GenTronTransformer, count_parameters, zoo_config

    text_dims = args.text_dim or [4096]

    def count(name: str, cond: str) -> int:
        kw = zoo_config(name, conditioning=cond, text_dims=text_dims if cond != "class" else [],
                        in_channels=args.in_channels, learn_sigma=not args.no_learn_sigma)
        with torch.device("meta"):
            return count_parameters(GenTronTransformer(**kw))

    if args.name:
        n = count(args.name, args.cond)
        cfg = zoo_config(args.name)
        print(f"{args.name} ({args.cond}, text dims {text_dims}): {n:,} parameters ({n / 1e6:.1f}M)")
        print(f"  depth {cfg['depth']}, width {cfg['hidden_size']}, MLP {cfg['mlp_hidden_size']}, "
              f"heads {cfg['num_heads']}, patch {cfg['patch_size']}")
        if args.name in PAPER_PARAMS:
            print(f"  GenTron Table 1 reports {PAPER_PARAMS[args.name]} (see README: parameter counts)")
        return 0
    print(f"gentron model zoo (parameters; text dims {text_dims}, learned sigma, {args.in_channels} channels)")
    header = f"{'name':<16}{'depth':>6}{'width':>7}{'mlp':>7}{'heads':>6}" + "".join(
        f"{m:>15}" for m in ("adaln-zero", "cross-attn", "adaln-single", "class"))
    print(header)
    for size in MODEL_SIZES:
        name = f"GenTron-{size}/2"
        s = MODEL_SIZES[size]
        row = f"{name:<16}{s.depth:>6}{s.hidden_size:>7}{s.mlp_hidden_size:>7}{s.num_heads:>6}"
        for mode in ("adaln-zero", "cross-attn", "adaln-single", "class"):
            row += f"{count(name, mode) / 1e6:>14.1f}M"
        print(row)
    print("patch sizes 1, 2, 4, 8 are available for every size (e.g. GenTron-B/4); "
          "`gentron info NAME --cond MODE --text-dim D` for one model")
    return 0


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


def cmd_data(args: argparse.Namespace) -> int:
    from gentron.data.shapes import write_shapes_dataset

    if args.video:
        from gentron.data.shapes import write_shapes_video_dataset

        if args.layout_grid:
            print("error: --layout-grid is for still images; moving shapes need free positions", file=sys.stderr)
            return 2

        out = write_shapes_video_dataset(Path(args.out), num=args.num, resolution=args.resolution, seed=args.seed,
                                         split=args.split, fmt=args.format)
        print(f"wrote {args.num} moving-shapes clips ({args.format}) with captions to {out}")
        return 0
    out = write_shapes_dataset(Path(args.out), num=args.num, resolution=args.resolution, seed=args.seed,
                               split=args.split, layout_grid=args.layout_grid)
    print(f"wrote {args.num} {'clips' if args.video else 'images'} with captions to {out}")
    return 0


# ------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from gentron.train.config import load_config
    from gentron.train.trainer import Trainer

    sets = list(args.set)
    if getattr(args, "init_from", None):
        sets.append(f"video.init_from={args.init_from}")
    if getattr(args, "init_from_dit", None):
        sets.append(f"model.init_from_dit={args.init_from_dit}")
    cfg = load_config(args.config, sets)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    trainer = Trainer(cfg, out, resume=args.resume)
    trainer.fit()
    return 0


# ------------------------------------------------------------------------------------------------
# sample
# ------------------------------------------------------------------------------------------------


def load_pipeline(path: str, device: str = "auto", sampler: Optional[str] = None):
    """A `GenTronPipeline` from a ``save_pretrained`` folder or a run directory (its EMA export)."""
    import torch

    from gentron.models import offline_load_kwargs
    from gentron.pipelines import GenTronPipeline

    p = Path(path)
    if not p.exists():
        raise UserError(f"model path {p} does not exist")
    if not (p / "model_index.json").is_file():
        if (p / "pipeline" / "model_index.json").is_file():
            p = p / "pipeline"
        else:
            raise UserError(
                f"{p} is neither a gentron pipeline folder (model_index.json) nor a run directory "
                f"(pipeline/model_index.json); train one with `gentron train` first"
            )
    try:
        pipe = GenTronPipeline.from_pretrained(str(p), **offline_load_kwargs())
    except Exception as e:  # noqa: BLE001
        raise UserError(f"could not load pipeline from {p}: {type(e).__name__}: {e}") from e
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    pipe.to(dev)
    if sampler:
        pipe.set_sampler(sampler)
    return pipe


def autocast_for(device: str):
    import contextlib

    import torch

    from gentron.train.trainer import resolve_autocast

    dt = resolve_autocast("auto", torch.device(device))
    if dt is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dt)


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from gentron.pipelines import make_grid

    pipe = load_pipeline(args.model, args.device, args.sampler)
    g = torch.Generator().manual_seed(args.seed)
    if args.frames > 1:
        return _sample_video(pipe, args, g)
    with autocast_for(str(pipe.device)):
        images = pipe(args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                      guidance_scale=4.5 if args.guidance is None else args.guidance, num_images_per_prompt=args.num, generator=g,
                      height=args.height, width=args.width).images
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img = images[0] if len(images) == 1 else make_grid(images, scale=1)
    img.save(out)
    print(f"wrote {out} ({len(images)} image{'s' if len(images) > 1 else ''})")
    return 0


def _sample_video(pipe, args: argparse.Namespace, generator) -> int:
    """``sample --frames T``: .mp4 / .gif / .webm clip(s), or a frames-grid .png (one row per clip)."""
    from gentron.data.video import write_video
    from gentron.pipelines import make_grid

    if not pipe.transformer.config.temporal_layers:
        raise UserError(f"{args.model} is an image model (no temporal layers); --frames needs a T2V model")
    with autocast_for(str(pipe.device)):
        clips = pipe(args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                     guidance_scale=args.guidance, num_images_per_prompt=args.num, generator=generator,
                     height=args.height, width=args.width, num_frames=args.frames,
                     motion_guidance_scale=args.motion_guidance).images
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ext = out.suffix.lower()
    if ext in (".png", ".jpg", ".jpeg"):
        make_grid([f for clip in clips for f in clip], cols=args.frames).save(out)
        print(f"wrote {out} (frames grid: {len(clips)} clip(s) × {args.frames} frames)")
        return 0
    if ext not in (".mp4", ".gif", ".webm"):
        raise UserError(f"--out must end in .mp4, .gif, .webm or .png (frames grid), got {out.name}")
    scale = max(1, 128 // max(clips[0][0].size))  # tiny models: upscale (nearest) so the clip is viewable
    paths = []
    for i, clip in enumerate(clips):
        frames = [f.resize((f.width * scale, f.height * scale), 0) for f in clip]
        path = out if len(clips) == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        paths.append(write_video(path, frames, fps=args.fps))
    make_grid([f for clip in clips for f in clip], cols=args.frames).save(out.with_suffix(".png"))
    print(f"wrote {', '.join(map(str, paths))} ({args.frames} frames at {args.fps:g} fps) "
          f"and the frames grid {out.with_suffix('.png')}")
    return 0


# ------------------------------------------------------------------------------------------------
# eval
# ------------------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from gentron.eval.shapes_eval import evaluate_shapes, write_report

    if getattr(args, "video", False):
        return _eval_video(args)
    pipe = load_pipeline(args.model, args.device, args.sampler)
    with autocast_for(str(pipe.device)):
        report = evaluate_shapes(pipe, split=args.split, n_per_category=args.num, steps=args.steps,
                                 guidance=args.guidance, seed=args.seed)
    out = Path(args.out)
    write_report(report, out)
    print(format_accuracy_table(report))
    print(f"wrote {out}")
    return 0


def _eval_video(args: argparse.Namespace) -> int:
    import json

    from gentron.eval.video_eval import evaluate_video_shapes, format_video_table
    from gentron.pipelines import make_grid

    pipe = load_pipeline(args.model, args.device, args.sampler)
    if not pipe.transformer.config.temporal_layers:
        raise UserError(f"{args.model} is an image model (no temporal layers); --video needs a T2V model")
    with autocast_for(str(pipe.device)):
        report = evaluate_video_shapes(pipe, split=args.split, n=args.num, steps=args.steps, guidance=args.guidance,
                                       motion_guidance=args.motion_guidance, num_frames=args.frames, seed=args.seed)
    clips = report.pop("_clips")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    make_grid([f for c in clips[:16] for f in c], cols=args.frames).save(out.with_suffix(".png"))
    print(format_video_table(report))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def format_accuracy_table(report: dict) -> str:
    lines = ["| category | accuracy | chance |", "|---|---|---|"]
    for k, v in report["accuracy"].items():
        lines.append(f"| {k} | {v:.3f} | {report['chance'].get(k, float('nan')):.3f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from gentron.cli.demo import run_demo

    if getattr(args, "video", False):
        from gentron.cli.demo import run_video_demo

        run_video_demo(Path(args.out), minutes=args.minutes, device=args.device, overrides=args.set,
                       init_from=args.init_from, processes=args.processes)
        return 0
    run_demo(Path(args.out), minutes=args.minutes, device=args.device, overrides=args.set,
             relations_steps=args.relations_steps, processes=args.processes)
    return 0


# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    import gentron

    p = argparse.ArgumentParser(prog="gentron", description="GenTron / PixArt-α diffusion transformers")
    p.add_argument("--version", action="version", version=f"gentron {gentron.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="model zoo and parameter counts")
    s.add_argument("name", nargs="?", help="zoo name, e.g. GenTron-XL/2 (omit for the whole table)")
    s.add_argument("--cond", default="cross-attn", choices=["adaln-zero", "cross-attn", "adaln-single", "class"])
    s.add_argument("--text-dim", type=int, action="append", help="token width of each text encoder (repeatable)")
    s.add_argument("--in-channels", type=int, default=4)
    s.add_argument("--no-learn-sigma", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("data", help="generate data sets")
    dsub = s.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("shapes", help="write the shapes world to disk (images + captions.jsonl)")
    d.add_argument("--out", required=True)
    d.add_argument("--num", type=int, default=10000)
    d.add_argument("--resolution", type=int, default=32)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--split", default="train", choices=["train", "heldout"])
    d.add_argument("--layout-grid", type=int, default=0, metavar="N",
                   help="object centres on an N x N grid (0 = free placement; the demo uses 3)")
    d.add_argument("--video", action="store_true", help="moving-shapes clips (videos/ + captions.jsonl)")
    d.add_argument("--format", default="mp4", choices=["mp4", "gif", "webm"], help="video file type (--video)")
    d.set_defaults(func=cmd_data)

    s = sub.add_parser("train", help="train from a YAML config")
    s.add_argument("config")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    s.add_argument("--out", help="run directory (default runs/CONFIG_NAME)")
    s.add_argument("--resume", help="'auto' (newest complete checkpoint in the run dir) or a checkpoint path")
    s.add_argument("--init-from", metavar="MODEL_DIR",
                   help="start from the weights of a trained run/pipeline: a lower-resolution one (progressive "
                        "resolution; positions are recomputed) or, for T2V, a T2I one (new temporal layers start at zero)")
    s.add_argument("--init-from-dit", metavar="DIT_CKPT",
                   help="PixArt-α re-parameterised init from an official DiT class checkpoint (.pt/.pth/.safetensors)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="sample images from a pipeline folder or run dir")
    s.add_argument("--model", required=True)
    s.add_argument("--prompt", required=True)
    s.add_argument("--negative-prompt")
    s.add_argument("--num", type=int, default=1)
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--guidance", type=float, default=None,
                   help="CFG scale (λ_T for videos); default 4.5 for images, 7.5 with --frames > 1")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sampler", choices=["dpm", "ddim", "ddpm", "sa"])
    s.add_argument("--height", type=int)
    s.add_argument("--width", type=int)
    s.add_argument("--device", default="auto")
    s.add_argument("--frames", type=int, default=1, help="> 1: sample a video clip (T2V model)")
    s.add_argument("--motion-guidance", type=float, default=1.0,
                   help="λ_M of motion-free guidance (GenTron Eq. 6); 1 = plain CFG, useful range 1.0-1.3")
    s.add_argument("--fps", type=float, default=4.0, help="frame rate of the written clip")
    s.add_argument("--out", required=True, help="image .png; with --frames: .mp4, .gif, .webm or a frames-grid .png")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("eval", help="evaluate a model")
    esub = s.add_subparsers(dest="eval_command", required=True)
    e = esub.add_parser("shapes", help="shapes-world accuracy on held-out prompts")
    e.add_argument("--model", required=True)
    e.add_argument("--out", default="report.json")
    e.add_argument("--split", default="heldout", choices=["heldout", "train"])
    e.add_argument("--num", type=int, default=32, help="prompts per category")
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--guidance", type=float, default=4.5)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--sampler", choices=["dpm", "ddim", "ddpm", "sa"])
    e.add_argument("--device", default="auto")
    e.add_argument("--video", action="store_true",
                   help="T2V: motion-direction accuracy, temporal consistency, per-frame image accuracy")
    e.add_argument("--frames", type=int, default=8)
    e.add_argument("--motion-guidance", type=float, default=1.0)
    e.set_defaults(func=cmd_eval)

    from gentron.models.convert import add_convert_parser

    add_convert_parser(sub)
    from gentron.data.cache import add_cache_parser

    add_cache_parser(sub)
    from gentron.eval.cli import add_eval_parsers

    add_eval_parsers(esub)  # fid, clip-score, t2i-compbench, compbench
    from gentron.bench import add_bench_parser

    add_bench_parser(sub)

    s = sub.add_parser("demo", help="generate data, train, sample and evaluate on the shapes world")
    s.add_argument("--out", default="demo-out")
    s.add_argument("--minutes", type=float, default=None, help="training budget (default: the recipe's)")
    s.add_argument("--device", default="auto")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    s.add_argument("--relations-steps", type=int, default=None, metavar="N",
                   help="steps of the first stage, on two-object scenes only (default 1500; 0 = one stage on the full mix)")
    s.add_argument("--processes", type=int, default=0, metavar="N",
                   help="training processes (data-parallel, one thread each; default: one per CPU core, 1 on a GPU)")
    s.add_argument("--video", action="store_true",
                   help="T2V demo: continue the image demo in --out (run first if missing) as a T2V model on moving "
                        "shapes; --minutes is then this stage's budget (default 15)")
    s.add_argument("--init-from", metavar="T2I_RUN_DIR", help="--video: start from this T2I run instead of OUT/run")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from gentron.train.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError, FileNotFoundError, ValueError) as e:
        if os.environ.get("GENTRON_DEBUG"):
            raise
        print(f"gentron {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
