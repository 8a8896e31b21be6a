"""The demo's relations stage alone, exactly as `gentron demo` trains it (same overrides, whitening fit, processes),
with extra --set overrides; prints its steps, minutes and the binding score (binding_score.py) of the result.

    python experiments/demo_recipe/relations_stage_probe.py OUT [--steps 1500] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from gentron.cli import demo
from gentron.train.config import load_config

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=demo.RELATIONS_STEPS)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    args = ap.parse_args()
    out = args.out.absolute()
    sets = [f"data.path={out / 'data'}", "train.device=cpu"]
    cfg = load_config(demo.recipe_path(), sets)
    cfg_rel = load_config(demo.recipe_path(), sets + demo.relations_overrides(out, args.steps) + args.sets)
    processes = demo.demo_processes(0, "cpu", cfg_rel.train.batch_size)
    t0 = time.time()
    summary = demo.train_stage(cfg_rel, out / "relations", demo.StageBudget(t0, 60, 0), "relations probe", processes,
                               whitening=demo.whitening_captions(cfg))
    score = subprocess.run([sys.executable, str(Path(__file__).parent / "binding_score.py"), str(out / "relations")],
                           capture_output=True, text=True).stdout.strip().splitlines()[-1]
    print(f"{' '.join(args.sets) or 'as shipped'}: {summary['steps']} steps in {summary['minutes']:.2f} min "
          f"({processes} processes); binding {score}")
