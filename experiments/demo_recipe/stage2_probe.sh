#!/usr/bin/env bash
# Ninth round (docs/demo-recipe.md): what makes the demo's full-mix stage learn shapes faster?
#
# Continues a demo's relations checkpoint (stage 1) for STEPS full-mix steps with the demo recipe (its lr schedule, wsd
# since session 12, runs over exactly those steps: warm-up = the resumed step), then evaluates 48 held-out prompts per
# category and, for shape and spatial, 48 seen ones.
# A probe that changes the data (e.g. data.kinds_weights) must also point data.path at a folder of its own.
#
#   bash experiments/demo_recipe/stage2_probe.sh DEMO_OUT NAME STEPS [--set KEY=VALUE ...]
#
# DEMO_OUT is a finished `gentron demo --out DEMO_OUT` (its relations checkpoint and mixed data are reused).
set -euo pipefail
demo=${1:?usage: stage2_probe.sh DEMO_OUT NAME STEPS [--set KEY=VALUE ...]}
name=${2:?NAME}
steps=${3:?STEPS}
shift 3
ckpt=$(ls -d "$demo"/relations/checkpoints/step_* | tail -1)
start=$((10#${ckpt##*step_}))
recipe=$(python -c "from gentron.cli.demo import recipe_path; print(recipe_path())")
out="$demo/probes/$name"
rm -rf "$out"
mkdir -p "$out"
gentron train "$recipe" --out "$out" --resume "$ckpt" --set "data.path=$demo/data" \
  --set train.steps=$((start + steps)) --set train.warmup_steps=$start --set train.max_minutes=0 \
  --set train.checkpoint_every=0 "$@" > "$out/train.log" 2>&1
python - "$out" <<'PY'
import json, sys

from gentron.cli.main import autocast_for, load_pipeline
from gentron.eval.shapes_eval import evaluate_shapes

pipe = load_pipeline(sys.argv[1], "cpu", None)
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
tail = rows[-max(1, len(rows) // 5):]
with autocast_for("cpu"):
    held = evaluate_shapes(pipe, split="heldout", n_per_category=48, steps=20, guidance=4.0, seed=0)["accuracy"]
    seen = evaluate_shapes(pipe, split="train", n_per_category=48, steps=20, guidance=4.0, seed=0,
                           categories=("shape", "spatial"))["accuracy"]
print(f"{sys.argv[1].rsplit('/', 1)[-1]}: held-out " + " ".join(f"{k} {v:.3f}" for k, v in held.items())
      + f" | seen shape {seen['shape']:.3f} spatial {seen['spatial']:.3f}"
      + f" | loss (last 20 %) {sum(r['loss'] for r in tail) / len(tail):.4f}")
PY
