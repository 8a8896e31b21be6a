#!/usr/bin/env bash
# Thirteenth round (docs/demo-recipe.md): the demo's train step in one process with all threads vs two single-threaded
# DDP processes on the two halves of each batch (global batch 32 both ways), STEPS fixed steps, two rounds.
#   bash experiments/demo_recipe/ddp_ab.sh WORKDIR [STEPS]
set -u
work=${1:?usage: ddp_ab.sh WORKDIR [STEPS]}
steps=${2:-200}
recipe=$(python -c "from gentron.cli.demo import recipe_path; print(recipe_path())")
common=(--set "data.path=$work/data" --set data.num=2000 --set train.max_minutes=0 --set "train.steps=$steps"
        --set train.checkpoint_every=0 --set train.log_every=25)
for round in 1 2; do
  rm -rf "$work/one" "$work/two"
  gentron train "$recipe" --out "$work/one" "${common[@]}" --set train.threads=0 2>&1 | grep -a "^done"
  torchrun --standalone --nproc_per_node 2 -m gentron train "$recipe" --out "$work/two" "${common[@]}" \
    --set train.threads=1 --set train.batch_size=16 --set train.parallel=ddp 2>&1 | grep -a "^done"
  python - "$work" <<'PY'
import json, sys
for name in ("one", "two"):
    s = json.load(open(f"{sys.argv[1]}/{name}/summary.json"))
    print(f"{name}: {s['steps']} steps in {s['minutes'] * 60:.1f} s, {s['steps'] / (s['minutes'] * 60):.2f} steps/s")
PY
done
