"""Motion-free guidance ablation (GenTron Sec. 3.3.2, Fig. 8) on moving shapes, at equal training steps.

Each arm fine-tunes the same T2I model (a `gentron demo` run) to T2V with the demo's video recipe
(`gentron.cli.demo.video_demo_overrides`) for a fixed number of steps, changing only the motion-free
probability ``video.p_motion_free`` (0 = no motion-free mask and no image samples: "MFG off" in training).
Every arm is then evaluated on the same held-out moving-shapes prompts at each λ_M of the sweep
(λ_M = 1 is plain CFG with motion on, the only meaningful value for a model trained without the mask).

    python experiments/video_mfg/run.py --demo-out demo-out --steps 1000 --p-motion-free 0 0.5 \\
        --seeds 0 --out runs/mfg

Results: ``OUT/p{P}/seed{S}/result.json`` (existing ones are skipped), and markdown tables on stdout: one row
per arm and λ_M, then the mean ± std over seeds.

Several step counts (``--steps 1000 2000 3000``) train each arm once, resuming its own checkpoint, and evaluate
it at each count (``result-{N}.json``): accuracy against training steps at the cost of the longest run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_arm(args, p: float, seed: int, steps: int) -> dict:
    from gentron.cli.demo import MOTION_GUIDANCE_SWEEP, video_demo_overrides
    from gentron.cli.main import load_pipeline
    from gentron.eval.video_eval import evaluate_video_shapes
    from gentron.train.config import load_config
    from gentron.train.trainer import Trainer

    run_dir = Path(args.out) / f"p{p:g}" / f"seed{seed}"
    result_file = run_dir / ("result.json" if len(args.steps) == 1 else f"result-{steps}.json")
    if result_file.is_file():
        return json.loads(result_file.read_text())
    demo = Path(args.demo_out)
    sets = video_demo_overrides(demo, 0) + [
        f"video.init_from={demo / 'run'}", f"video.p_motion_free={p}", "train.max_minutes=0",
        f"train.steps={steps}", f"train.seed={seed}", f"train.threads={args.threads}"] + args.set
    cfg = load_config(demo / "run" / "config.yaml", sets)
    t0 = time.time()
    # "auto" continues this arm's newest checkpoint when an earlier step count trained it (exact resume)
    summary = Trainer(cfg, run_dir / "train", resume="auto", show_progress=False).fit()
    pipe = load_pipeline(str(run_dir / "train"), "cpu", None)
    sweep = args.motion_guidance or (MOTION_GUIDANCE_SWEEP if p > 0 else (1.0,))
    acc = {}
    for lam in sweep:
        rep = evaluate_video_shapes(pipe, split="heldout", n=args.eval_num, steps=cfg.sample.steps,
                                    guidance=cfg.sample.guidance, motion_guidance=lam,
                                    num_frames=cfg.video.num_frames, seed=cfg.sample.seed)
        acc[str(lam)] = {**rep["accuracy"], **motion_breakdown(rep["per_prompt"])}
    result = {"p_motion_free": p, "seed": seed, "steps": summary["steps"], "train_minutes": summary["minutes"],
              "minutes_total": (time.time() - t0) / 60, "accuracy_by_motion_guidance": acc,
              "eval_prompts": args.eval_num, "command": " ".join(sys.argv)}
    result_file.write_text(json.dumps(result, indent=1))
    return result


def motion_breakdown(per_prompt: list[dict]) -> dict[str, float]:
    """Motion direction on one-object prompts (no binding of a direction to an object needed), and how
    often the tracked objects move at all (a move of any direction is ``moves`` not None)."""
    single = [r for r in per_prompt if r["kind"] == "single"]
    moves = [m for r in per_prompt for m in r["moves"]]
    return {"motion_single": sum(r["motion_direction"] for r in single) / max(len(single), 1),
            "moved": sum(m is not None for m in moves) / max(len(moves), 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-out", required=True, help="a `gentron demo` output folder (uses DIR/run, DIR/video-data)")
    ap.add_argument("--steps", type=int, nargs="+", required=True, help="one or more step counts (see above)")
    ap.add_argument("--p-motion-free", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--eval-num", type=int, default=24)
    ap.add_argument("--motion-guidance", type=float, nargs="+", default=None,
                    help="λ_M values to evaluate (default: the demo's sweep; 1.0 only for p_motion_free = 0)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="runs/mfg")
    ap.add_argument("--set", action="append", default=[], help="extra config override (repeatable), as gentron train")
    args = ap.parse_args(argv)
    results = [run_arm(args, p, s, n) for s in args.seeds for p in args.p_motion_free for n in sorted(args.steps)]
    keys = ("motion_direction", "temporal_consistency", "frame_color", "frame_shape")
    if all("motion_single" in a for r in results for a in r["accuracy_by_motion_guidance"].values()):
        keys += ("motion_single", "moved")
    print("| p_motion_free | seed | steps | λ_M | " + " | ".join(keys) + " |")
    print("|---|---|---|---|" + "---|" * len(keys))
    for r in results:
        for lam, acc in r["accuracy_by_motion_guidance"].items():
            print(f"| {r['p_motion_free']:g} | {r['seed']} | {r['steps']} | {lam} | "
                  + " | ".join(f"{acc[k]:.3f}" for k in keys) + " |")
    print_seed_means(results, keys)
    return 0


def print_seed_means(results: list[dict], keys: tuple[str, ...]) -> None:
    """Mean ± sample std over seeds for each (p_motion_free, steps, λ_M)."""
    import statistics

    groups: dict[tuple[float, int, str], list[dict]] = {}
    for r in results:
        for lam, acc in r["accuracy_by_motion_guidance"].items():
            groups.setdefault((r["p_motion_free"], r["steps"], lam), []).append(acc)
    print("\n| p_motion_free | steps | λ_M | seeds | " + " | ".join(keys) + " |")
    print("|---|---|---|---|" + "---|" * len(keys))
    for (p, steps, lam), accs in sorted(groups.items()):
        cells = []
        for k in keys:
            v = [a[k] for a in accs]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.3f} ± {sd:.3f}")
        print(f"| {p:g} | {steps} | {lam} | {len(accs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
