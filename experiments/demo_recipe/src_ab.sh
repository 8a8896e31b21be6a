#!/usr/bin/env bash
# A/B of two source trees (e.g. a copy of src/ before and after a change) on the demo's training step, as the demo
# runs it on a 2-core CPU: two single-threaded DDP processes, 16 samples each (global batch 32), STEPS fixed steps,
# two rounds, alternating. Prints steps/s and the final loss of each (equal losses: the change kept the numbers).
#   bash experiments/demo_recipe/src_ab.sh SRC_A SRC_B WORKDIR [STEPS]
set -u
src_a=${1:?usage: src_ab.sh SRC_A SRC_B WORKDIR [STEPS]}; src_b=${2:?}; work=${3:?}; steps=${4:-300}
mkdir -p "$work"
recipe=$(python -c "from gentron.cli.demo import recipe_path; print(recipe_path())")
common=(--set "data.path=$work/data" --set data.num=2000 --set train.max_minutes=0 --set "train.steps=$steps"
        --set train.checkpoint_every=0 --set train.log_every=25 --set train.threads=1 --set train.batch_size=16
        --set train.parallel=ddp)
for round in 1 2; do
  for arm in a b; do
    src=$src_a; [ "$arm" = b ] && src=$src_b
    rm -rf "$work/$arm"
    PYTHONPATH=$src torchrun --standalone --nproc_per_node 2 -m gentron train "$recipe" --out "$work/$arm" \
      "${common[@]}" > "$work/$arm.log" 2>&1 || { echo "arm $arm failed: $work/$arm.log"; exit 1; }
    python - "$work/$arm/summary.json" "$arm ($src)" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]}: {s['steps']} steps, {s['steps'] / (s['minutes'] * 60):.2f} steps/s, final loss {s['final_loss']!r}")
PY
  done
done
