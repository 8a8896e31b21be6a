"""GenTron ablations on the shapes world, at any scale: train every arm × seed with equal training compute,
then score each run with Shapes-CompBench (seen and held-out prompts).

Studies (GenTron Table 2 / Fig. 4, scaled down):

* ``conditioning`` — adaLN-zero vs cross-attn vs adaLN-single (PixArt-α), MiniLM text, same model size;
* ``text`` — MiniLM (frozen, pretrained) vs scratch (trainable, random init) vs both interleaved
  (GenTron's interleaved cross-attention: block i attends to encoder i mod 2), cross-attn;
* ``size`` — three model sizes at equal steps (depth/width 2/64, 4/128, 6/256; patch 4), cross-attn, MiniLM;
* T2V motion-free guidance (MFG off vs on, p_motion_free and λ_M sweeps) is its own script,
  ``experiments/video_mfg/run.py``: it fine-tunes a demo's image model on moving shapes; ``--study mfg`` here
  only points there.

Equal training compute per arm = the same number of optimizer steps at the same batch size (the same
number of training images). ``--minutes`` is only a safety cap per run; a run that hits it is flagged
``stopped_early`` in its result and in the summary table, because its compute is then *not* equal.

Results go to ``OUT/{study}/{arm}/seed{S}/result.json`` (existing results are skipped, so the script
resumes); ``summarize.py`` turns them into the tables of docs/results.md.

Example (what docs/results.md reports; ``memory.py`` adds each arm's training memory)::

    OMP_NUM_THREADS=1 python experiments/ablations/run.py --study conditioning --seeds 0 1 2 --steps 1000 \\
        --threads 1 --out runs/ablations --eval-num 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MINILM = "{kind: minilm, max_length: 24}"
SCRATCH = "{kind: scratch, max_length: 24}"

#: arm name -> config overrides (on top of BASE)
STUDIES: dict[str, dict[str, list[str]]] = {
    "conditioning": {
        "adaln-zero": ["model.conditioning=adaln-zero", f"text.encoders=[{MINILM}]"],
        "cross-attn": ["model.conditioning=cross-attn", f"text.encoders=[{MINILM}]"],
        "adaln-single": ["model.conditioning=adaln-single", f"text.encoders=[{MINILM}]"],
    },
    "text": {
        "minilm": ["model.conditioning=cross-attn", f"text.encoders=[{MINILM}]"],
        "scratch": ["model.conditioning=cross-attn", f"text.encoders=[{SCRATCH}]"],
        "minilm+scratch": ["model.conditioning=cross-attn", f"text.encoders=[{MINILM}, {SCRATCH}]"],
    },
    "size": {
        "d2-w64": ["model.name=GenTron-T/4", "model.conditioning=cross-attn"],
        "d4-w128": ["model.name=GenTron-T/4", "model.conditioning=cross-attn",
                    "model.overrides={depth: 4, hidden_size: 128, num_heads: 4, mlp_hidden_size: 512}"],
        "d6-w256": ["model.name=GenTron-Demo/4", "model.conditioning=cross-attn"],
    },
}


def base_overrides(args) -> list[str]:
    return [
        f"model.name={args.model}",
        "model.resolution=32",
        "model.in_channels=3",
        f"text.encoders=[{MINILM}]",
        "diffusion.beta_schedule=cosine",
        "diffusion.prediction=sample",
        "diffusion.learn_sigma=false",
        "data.kind=shapes",
        f"data.path={Path(args.out).resolve() / 'data' / f'shapes-32-{args.data_num}'}",
        f"data.num={args.data_num}",
        f"train.steps={args.steps}",
        f"train.max_minutes={args.minutes}",
        f"train.batch_size={args.batch_size}",
        f"train.lr={args.lr}",
        "train.warmup_steps=50",
        "train.ema_decay=0.999",
        "train.caption_dropout=0.1",
        f"train.log_every={max(args.steps // 10, 1)}",
        "train.checkpoint_every=1000000",
        "train.keep_checkpoints=1",
        f"train.precision={args.precision}",
        f"train.threads={args.threads}",
        "sample.steps=10",
        "sample.prompts=[a red circle, a blue square to the left of a green circle]",
    ]


def hardware() -> dict:
    import torch

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "cuda": torch.cuda.is_available()}


def run_arm(study: str, arm: str, seed: int, args) -> dict:
    from gentron.cli.main import load_pipeline
    from gentron.eval.compbench import pipeline_sampler, run_compbench
    from gentron.train.config import load_config
    from gentron.train.trainer import Trainer

    run_dir = Path(args.out) / study / arm / f"seed{seed}"
    result_path = run_dir / "result.json"
    if result_path.is_file() and not args.force:
        print(f"[skip] {result_path} exists")
        return json.loads(result_path.read_text())
    overrides = base_overrides(args) + STUDIES[study][arm] + [f"train.seed={seed}"]
    cfg = load_config(None, overrides)
    t0 = time.time()
    summary = Trainer(cfg, run_dir / "train", show_progress=False).fit()
    train_s = time.time() - t0
    pipe = load_pipeline(str(run_dir / "train"), "cpu", "dpm")
    t1 = time.time()
    report = run_compbench(pipeline_sampler(pipe, steps=args.eval_steps, guidance=args.guidance, batch_size=64),
                           n=args.eval_num, seed=0, bootstrap=1000, validate=False, chance_images=32)
    report.pop("_images")
    report.pop("per_image")
    params = sum(p.numel() for p in pipe.transformer.parameters())
    result = {
        "study": study, "arm": arm, "seed": seed, "overrides": overrides, "params": params,
        "train_steps": summary["steps"], "train_minutes": round(train_s / 60, 2),
        "stopped_early": summary.get("stopped_early"), "final_loss": summary.get("final_loss"),
        "eval_seconds": round(time.time() - t1, 1), "eval_steps": args.eval_steps, "guidance": args.guidance,
        "compbench": {c: {s: r[s]["accuracy"] for s in r} for c, r in report["results"].items()},
        "chance": {c: {s: r[s]["chance"] for s in r} for c, r in report["results"].items()},
        "overall": report["overall"], "eval_prompts_per_suite": args.eval_num,
        "suite_version": report["suite_version"], "hardware": hardware(),
        "command": " ".join([sys.executable.split("/")[-1]] + sys.argv),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1))
    print(f"[done] {study}/{arm}/seed{seed}: {summary['steps']} steps in {train_s / 60:.1f} min, "
          f"overall seen {result['overall']['train']:.3f} held-out {result['overall']['heldout']:.3f}")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, choices=[*STUDIES, "mfg"])
    p.add_argument("--arms", nargs="+", help="subset of the study's arms")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=400, help="optimizer steps per run (equal for every arm)")
    p.add_argument("--minutes", type=float, default=0.0, help="safety cap per run (0 = none); capped runs are flagged")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--model", default="GenTron-T/4", help="model for the conditioning / text studies")
    p.add_argument("--data-num", type=int, default=5000)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--eval-num", type=int, default=16, help="Shapes-CompBench prompts per (category, split)")
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--out", default="runs/ablations")
    p.add_argument("--force", action="store_true", help="re-run arms that already have a result")
    args = p.parse_args(argv)
    if args.study == "mfg":
        print("mfg (T2V motion-free guidance) has its own script: python experiments/video_mfg/run.py --help "
              "(it fine-tunes a `gentron demo` image model on moving shapes). Nothing was run.")
        return 2
    arms = args.arms or list(STUDIES[args.study])
    for seed in args.seeds:  # seed-major: an interrupted sweep still has every arm at the first seeds
        for arm in arms:
            run_arm(args.study, arm, seed, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
