"""Session 14: T2V steps/s of the video demo's stage in one process vs data-parallel processes (docs/video.md).

    python experiments/video_mfg/processes_ab.py DEMO_OUT WORKDIR [--steps 40] [--rounds 2]
"""
import argparse
import time
from pathlib import Path

from gentron.cli.demo import StageBudget, train_stage, video_demo_overrides
from gentron.train.config import load_config

if __name__ == "__main__":  # the stages spawn processes
    ap = argparse.ArgumentParser()
    ap.add_argument("demo_out", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    base = args.demo_out / "run"
    cfg = load_config(base / "config.yaml", video_demo_overrides(args.work, 0) + [
        f"video.init_from={base}", f"train.steps={args.steps}", "train.max_minutes=0"])
    for rnd in range(args.rounds):
        for n in (1, 2):
            t = time.time()
            s = train_stage(cfg, args.work / f"p{n}", StageBudget(time.time(), 100, 0), "t2v", n)
            print(f"round {rnd}, {n} process(es): {s['steps']} steps in {s['minutes'] * 60:.1f} s of training "
                  f"({time.time() - t:.1f} s with start-up), {s['steps'] / (s['minutes'] * 60):.2f} steps/s", flush=True)
