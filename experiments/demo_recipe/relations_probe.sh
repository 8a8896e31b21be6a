#!/usr/bin/env bash
# Eighth round (docs/demo-recipe.md): when does the demo model learn which object goes where?
#
# Trains the demo's relations stage (two-object scenes only, whitened MiniLM tokens, constant lr) in steps of
# STEP, and after each prints the binding score (experiments/demo_recipe/binding_score.py: 0.5 = bag of words,
# 1.0 = every seen both-ways caption drawn on its side) and, at the end, the held-out and seen accuracies.
#
#   bash experiments/demo_recipe/relations_probe.sh OUT [LAST=1500] [STEP=250] [--set KEY=VALUE ...]
#
# Extra --set pairs go to `gentron train` (e.g. --set model.overrides.text_whitening=false for the control).
set -euo pipefail
out=${1:?usage: relations_probe.sh OUT [LAST] [STEP] [--set KEY=VALUE ...]}
last=${2:-1500}
step=${3:-250}
shift $(( $# < 3 ? $# : 3 ))
here=$(cd "$(dirname "$0")" && pwd)
recipe=$(python -c "from gentron.cli.demo import recipe_path; print(recipe_path())")
mapfile -t relations < <(python -c "from gentron.cli.demo import RELATIONS_DATA
for s in RELATIONS_DATA: print('--set'); print(s)")
mkdir -p "$out"
for ((s = step; s <= last; s += step)); do
  gentron train "$recipe" --out "$out/run" --resume auto "${relations[@]}" --set "data.path=$out/data-relations" \
    --set train.steps=$s --set train.max_minutes=0 --set train.checkpoint_every=0 --set train.lr_schedule=constant \
    "$@" > "$out/train_$s.log" 2>&1
  echo "step $s $(python "$here/binding_score.py" "$out/run" 2>/dev/null | tail -1)"
done
python - "$out/run" <<'EOF'
import sys

from gentron.cli.main import autocast_for, load_pipeline
from gentron.eval.shapes_eval import evaluate_shapes

pipe = load_pipeline(sys.argv[1], "cpu", None)
with autocast_for("cpu"):
    for split in ("heldout", "train"):
        r = evaluate_shapes(pipe, split=split, n_per_category=48, steps=20, guidance=4.0, seed=0)
        print(split, {k: round(v, 3) for k, v in r["accuracy"].items()})
EOF
