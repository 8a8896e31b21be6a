"""``gentron eval`` subcommands for benchmarks and standard metrics.

:func:`add_eval_parsers` registers ``compbench``, ``fid``, ``clip-score``, ``t2i-compbench`` and
``shapes-features`` on the ``gentron eval`` sub-parser (``gentron.cli.main`` calls it). Everything loads
from local paths; nothing is downloaded. Documented in docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Optional

SAMPLERS = ["dpm", "ddim", "ddpm", "sa"]


def _main():
    # diffusers 0.42 loads a pipeline's custom components only from modules already imported
    import gentron.models.transformer  # noqa: F401
    from gentron.cli import main as m  # late import: gentron.cli.main imports this module

    return m


def _add_sampling_args(e: argparse.ArgumentParser, model_required: bool = False, seed: int = 0) -> None:
    e.add_argument("--model", required=model_required, help="pipeline folder or run directory")
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--guidance", type=float, default=4.5)
    e.add_argument("--seed", type=int, default=seed)
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--sampler", choices=SAMPLERS)
    e.add_argument("--device", default="auto")


def _generate(pipe, prompts: list[str], seed: int, steps: int, guidance: float, batch_size: int):
    """One image per prompt; prompt ``i`` starts from noise seed ``seed + i`` (batch-size independent)."""
    import torch

    cfg = pipe.transformer.config
    images = []
    with _main().autocast_for(str(pipe.device)):
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            latents = torch.stack([
                torch.randn((cfg.in_channels, cfg.sample_size, cfg.sample_size),
                            generator=torch.Generator().manual_seed(seed + start + i)) for i in range(len(chunk))])
            images.extend(pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, latents=latents,
                               progress=False).images)
    return images


def _write_json(path: Optional[str], obj: dict) -> None:
    text = json.dumps(obj, indent=1)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        print(f"wrote {path}")


# ------------------------------------------------------------------------------------------------
# compbench
# ------------------------------------------------------------------------------------------------


def cmd_compbench(args: argparse.Namespace) -> int:
    from gentron.eval import compbench as cb

    m = _main()
    if args.video:
        return _cmd_video_compbench(cb, m, args)
    categories = args.categories or list(cb.COMPBENCH_CATEGORIES)
    if args.export_suites:
        files = cb.export_suites(Path(args.export_suites), categories, args.num, args.suite_seed)
        print(f"wrote {len(files)} prompt files and suites.json to {args.export_suites}")
        if not (args.model or args.oracle):
            return 0
    if bool(args.model) == bool(args.oracle):
        raise m.UserError("give exactly one of --model DIR or --oracle {clean,noisy,wrong}")
    meta = {"steps": args.steps, "guidance": args.guidance}
    if args.oracle:
        suites = cb.build_suites(categories, args.splits, args.num, args.suite_seed)
        sample_fn = cb.oracle_sampler(suites, args.resolution, wrong=args.oracle == "wrong",
                                      noisy=args.oracle == "noisy")
        meta = {"model": f"oracle ({args.oracle} ground-truth renders)"}
        ctx = contextlib.nullcontext()
    else:
        pipe = m.load_pipeline(args.model, args.device, args.sampler)
        sample_fn = cb.pipeline_sampler(pipe, args.steps, args.guidance, args.batch_size)
        meta.update(model=str(args.model), sampler=type(pipe.scheduler).__name__)
        ctx = m.autocast_for(str(pipe.device))
    with ctx:
        report = _run_cb(cb, sample_fn, categories, args, meta)
    paths = cb.write_compbench_report(report, Path(args.out))
    print(cb.format_markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_video_compbench(cb, m, args: argparse.Namespace) -> int:
    """``compbench --video``: motion direction and temporal consistency of a T2V model (or an oracle)."""
    if bool(args.model) == bool(args.oracle):
        raise m.UserError("give exactly one of --model DIR or --oracle {clean,wrong}")
    if args.categories or args.export_suites or args.oracle == "noisy":
        raise m.UserError("--video scores both video categories on clips: --categories, --export-suites and "
                          "--oracle noisy are for the image benchmark")
    if args.oracle:
        wrong = "motion_direction" if args.oracle == "wrong" else None
        clip_fn = cb.oracle_clip_sampler(args.splits, args.num, args.suite_seed, args.resolution, args.frames, wrong)
        meta, resolution = {"model": f"oracle ({args.oracle} ground-truth clips)"}, args.resolution
        ctx = contextlib.nullcontext()
    else:
        from gentron.eval.video_eval import sample_clips

        pipe = m.load_pipeline(args.model, args.device, args.sampler)
        if not getattr(pipe.transformer.config, "temporal_layers", False):
            raise m.UserError(f"{args.model} is an image model (no temporal layers); --video needs a T2V model")

        def clip_fn(prompts: list[str], seeds: list[int]):
            return sample_clips(pipe, prompts, seeds, args.steps, args.guidance, args.motion_guidance, args.frames,
                                args.batch_size)

        meta = {"model": str(args.model), "sampler": type(pipe.scheduler).__name__, "steps": args.steps,
                "guidance": args.guidance, "motion_guidance": args.motion_guidance}
        resolution, ctx = pipe.transformer.config.sample_size, m.autocast_for(str(pipe.device))
    with ctx:
        report = cb.run_video_compbench(
            clip_fn, splits=args.splits, n=args.num, clips_per_prompt=args.images_per_prompt, seed=args.seed,
            suite_seed=args.suite_seed, bootstrap=args.bootstrap, num_frames=args.frames, resolution=resolution,
            validate=not args.no_validate, meta=meta)
    paths = cb.write_compbench_report(report, Path(args.out))
    print(cb.format_markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _run_cb(cb, sample_fn, categories, args, meta):
    return cb.run_compbench(sample_fn, categories=categories, splits=args.splits, n=args.num,
                            images_per_prompt=args.images_per_prompt, seed=args.seed, suite_seed=args.suite_seed,
                            bootstrap=args.bootstrap, validate=not args.no_validate, meta=meta)


# ------------------------------------------------------------------------------------------------
# fid
# ------------------------------------------------------------------------------------------------


def _prompts_for(args, real_dir: Optional[Path], n: int) -> list[str]:
    from gentron.eval.fid import read_captions

    m = _main()
    if args.prompts:
        texts = [ln.split("\t")[0].strip() for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
    else:
        caps = read_captions(real_dir) if real_dir is not None else None
        if caps is None:
            raise m.UserError("no prompts: pass --prompts FILE (one per line) or a --real/--images folder "
                              "with captions.jsonl")
        texts = [c for _, c in caps]
    if not texts:
        raise m.UserError("the prompt list is empty")
    return [texts[i % len(texts)] for i in range(n)]


def cmd_fid(args: argparse.Namespace) -> int:
    from gentron.eval import fid as F

    m = _main()
    if bool(args.inception_weights) == bool(args.shapes_features):
        raise m.UserError("give exactly one of --inception-weights FILE or --shapes-features FILE")
    if bool(args.model) == bool(args.fake):
        raise m.UserError("give exactly one of --model DIR (generate) or --fake DIR (existing images)")
    real_dir = Path(args.real)
    real_files = F.list_images(real_dir, args.num)
    info: dict = {}
    if args.inception_weights:
        extractor = F.load_inception(args.inception_weights, dims=args.dims, resize=args.resize)
        info.update(features=f"inception-v3 pool {args.dims}", weights=str(args.inception_weights), resize=args.resize,
                    antialias=args.resize == "antialias")
    else:
        from gentron.eval.features import load_shapes_features

        extractor, finfo = load_shapes_features(args.shapes_features)
        info.update(features="gentron shapes features (shapes-FID)", weights=str(args.shapes_features),
                    features_fingerprint=finfo.get("fingerprint"))
    n = len(real_files)
    if args.fake:
        fake = list(F.load_images(F.list_images(args.fake, n)))
        info["fake"] = str(args.fake)
    else:
        pipe = m.load_pipeline(args.model, args.device, args.sampler)
        prompts = _prompts_for(args, real_dir, n)
        fake = _generate(pipe, prompts, args.seed, args.steps, args.guidance, args.batch_size)
        info.update(model=str(args.model), steps=args.steps, guidance=args.guidance, seed=args.seed,
                    sampler=type(pipe.scheduler).__name__)
        if args.save_samples:
            out = Path(args.save_samples)
            out.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(fake):
                im.save(out / f"{i:06d}.png")
    size = fake[0].size[0] if args.shapes_features else None
    result = F.compute_fid(F.load_images(real_files, size), fake, extractor, args.batch_size, args.backend)
    result.update(info, real=str(real_dir))
    print(f"{'shapes-FID' if args.shapes_features else 'FID'}: {result['fid']:.4f} "
          f"({result['num_real']} real / {result['num_fake']} generated, backend {result['backend']})")
    _write_json(args.out, result)
    return 0


# ------------------------------------------------------------------------------------------------
# clip-score
# ------------------------------------------------------------------------------------------------


def cmd_clip_score(args: argparse.Namespace) -> int:
    from gentron.eval.clip_score import clip_score
    from gentron.eval.fid import list_images, load_images, read_captions

    m = _main()
    if bool(args.model) == bool(args.images):
        raise m.UserError("give exactly one of --model DIR (generate) or --images DIR (existing images)")
    if args.images:
        caps = read_captions(args.images)
        if caps is not None and not args.prompts:
            caps = caps[:args.num] if args.num else caps
            images = list(load_images([Path(args.images) / f for f, _ in caps]))
            prompts = [c for _, c in caps]
        else:
            files = list_images(args.images, args.num)
            prompts = _prompts_for(args, None, len(files))
            images = list(load_images(files))
    else:
        if not args.prompts:
            raise m.UserError("--prompts FILE is required with --model")
        n = args.num or len([ln for ln in Path(args.prompts).read_text().splitlines() if ln.strip()])
        prompts = _prompts_for(args, None, n)
        pipe = m.load_pipeline(args.model, args.device, args.sampler)
        images = _generate(pipe, prompts, args.seed, args.steps, args.guidance, args.batch_size)
    result = clip_score(images, prompts, args.clip, batch_size=args.batch_size)
    print(f"CLIP-Score: {result['clip_score']:.3f} over {result['num']} image-caption pairs ({args.clip})")
    _write_json(args.out, result)
    return 0


# ------------------------------------------------------------------------------------------------
# t2i-compbench
# ------------------------------------------------------------------------------------------------


def cmd_t2i_compbench(args: argparse.Namespace) -> int:
    from gentron.eval.t2i_compbench import pipeline_prompt_sampler, sample_t2i_compbench

    m = _main()
    pipe = m.load_pipeline(args.model, args.device, args.sampler)
    fn = pipeline_prompt_sampler(pipe, args.steps, args.guidance, args.height, args.width, args.batch_size)
    with m.autocast_for(str(pipe.device)):
        counts = sample_t2i_compbench(fn, args.prompts, args.out, args.images_per_prompt, args.seed,
                                      args.categories, args.limit)
    print(f"wrote {sum(counts.values())} images to {args.out} ({args.out}/README.txt: how to score them)")
    return 0


# ------------------------------------------------------------------------------------------------
# shapes-features
# ------------------------------------------------------------------------------------------------


def cmd_shapes_features(args: argparse.Namespace) -> int:
    from gentron.eval.features import train_shapes_features

    _, info = train_shapes_features(args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                                    max_minutes=args.max_minutes)
    print(f"wrote {args.out}: {info['steps']} steps in {info['seconds']} s, validation accuracy "
          + ", ".join(f"{k} {v:.3f}" for k, v in info["val_accuracy"].items()))
    return 0


# ------------------------------------------------------------------------------------------------


def add_eval_parsers(esub) -> None:
    """Register the subcommands on ``gentron eval``'s sub-parsers (``esub = eval_parser.add_subparsers()``)."""
    from gentron.eval.fid import FEATURE_DIMS, RESIZE_MODES
    from gentron.eval.prompts import COMPBENCH_CATEGORIES

    e = esub.add_parser("compbench", help="Shapes-CompBench: per-category accuracy with CIs, seen vs held-out",
                        description="Shapes-CompBench (docs/evaluation.md): sample fixed prompt suites, judge them "
                                    "with the detector, report accuracy, bootstrap CIs and chance levels.")
    _add_sampling_args(e)
    e.add_argument("--oracle", choices=["clean", "noisy", "wrong"],
                   help="score ground-truth renders instead of a model (sanity check / negative control)")
    e.add_argument("--out", default="compbench", help="output folder (report.json, report.md, samples-*.png)")
    e.add_argument("--num", type=int, default=32, help="prompts per (category, split) suite")
    e.add_argument("--images-per-prompt", type=int, default=1)
    e.add_argument("--categories", nargs="+", choices=list(COMPBENCH_CATEGORIES))
    e.add_argument("--splits", nargs="+", default=["train", "heldout"], choices=["train", "heldout"])
    e.add_argument("--suite-seed", type=int, default=1234, help="which fixed suite (keep the default to compare)")
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    e.add_argument("--resolution", type=int, default=32, help="render size for --oracle")
    e.add_argument("--no-validate", action="store_true", help="skip the judge validation section")
    e.add_argument("--export-suites", metavar="DIR", help="also write the prompt suites as text files + suites.json")
    e.add_argument("--video", action="store_true",
                   help="the video categories (motion direction, temporal consistency) of a T2V model")
    e.add_argument("--frames", type=int, default=8, help="frames per clip (--video)")
    e.add_argument("--motion-guidance", type=float, default=1.0, help="λ_M, GenTron Eq. 6 (--video)")
    e.set_defaults(func=cmd_compbench)

    e = esub.add_parser("fid", help="FID (local Inception weights) or shapes-FID (self-trained features)")
    _add_sampling_args(e)
    e.add_argument("--fake", help="folder of already generated images (instead of --model)")
    e.add_argument("--real", required=True, help="folder of reference images (captions.jsonl gives the prompts)")
    e.add_argument("--inception-weights", help="pt_inception-2015-12-05 weights (.pth / .safetensors)")
    e.add_argument("--shapes-features", help="feature file from `gentron eval shapes-features`")
    e.add_argument("--prompts", help="prompt file, one per line (default: the --real folder's captions.jsonl)")
    e.add_argument("--num", type=int, help="use the first N real images and generate N (default: all)")
    e.add_argument("--dims", type=int, default=2048, choices=list(FEATURE_DIMS))
    e.add_argument("--resize", default="tf1", choices=list(RESIZE_MODES),
                   help="tf1 (default) matches published FIDs; antialias = torchmetrics' default")
    e.add_argument("--backend", default="auto", choices=["auto", "torchmetrics", "torch"])
    e.add_argument("--save-samples", metavar="DIR", help="also save the generated images")
    e.add_argument("--out", help="write the result as JSON")
    e.set_defaults(func=cmd_fid)

    e = esub.add_parser("clip-score", help="CLIP-Score (100 x clipped cosine) with a local CLIP folder")
    _add_sampling_args(e)
    e.add_argument("--clip", required=True, help="local CLIP folder (CLIPModel + CLIPProcessor)")
    e.add_argument("--images", help="folder of images (captions.jsonl, or --prompts in sorted file order)")
    e.add_argument("--prompts", help="prompt file, one per line")
    e.add_argument("--num", type=int, help="number of images / prompts")
    e.add_argument("--out", help="write the result as JSON")
    e.set_defaults(func=cmd_clip_score)

    e = esub.add_parser("t2i-compbench", help="sample T2I-CompBench prompt files into its official folder layout")
    _add_sampling_args(e, model_required=True, seed=42)
    e.add_argument("--prompts", required=True, help="T2I-CompBench examples/dataset/ folder (or one *_val.txt)")
    e.add_argument("--out", required=True)
    e.add_argument("--images-per-prompt", type=int, default=10)
    e.add_argument("--categories", nargs="+", help="e.g. color shape spatial (default: every *_val.txt)")
    e.add_argument("--limit", type=int, help="first N prompts per file (smoke runs)")
    e.add_argument("--height", type=int)
    e.add_argument("--width", type=int)
    e.set_defaults(func=cmd_t2i_compbench)

    e = esub.add_parser("shapes-features", help="train the shapes-world feature extractor used by shapes-FID")
    e.add_argument("--out", required=True, help="output .pt file")
    e.add_argument("--steps", type=int, default=800)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--max-minutes", type=float, default=0.0)
    e.set_defaults(func=cmd_shapes_features)


__all__ = ["add_eval_parsers"]
