#!/bin/bash
# usage: probe_steps.sh NAME STEPS [--set k=v ...]
# Trains the demo recipe for a fixed number of steps (so the result does not depend on machine load),
# one thread, on DATA (default: a 10k-image shapes folder), then evaluates 48 held-out prompts/category.
name=$1; steps=$2; shift 2; export OMP_NUM_THREADS=${THREADS:-1}
cd "$(dirname "$0")/../.."
L=experiments/demo_recipe/logs/$name.log
{ echo "== $name $(date +%T) load: $(uptime | sed 's/.*average: //')"; echo "args: $*";
  /usr/bin/time -f "train wall %e s" gentron train src/gentron/configs/demo.yaml --set train.max_minutes=0 \
    --set train.steps=$steps --set train.threads=${THREADS:-1} --set data.path=${DATA:-/tmp/shapes-32-10k} "$@" \
    --out /tmp/runs/$name 2>&1 | tr '\r' '\n' | grep -vE "it/s\]$|s/it\]$|it/s\] *$" | tail -5;
  echo "== eval $(date +%T) load: $(uptime | sed 's/.*average: //')";
  /usr/bin/time -f "eval wall %e s" gentron eval shapes --model /tmp/runs/$name --num ${NUM:-48} ${EVALARGS} \
    --out /tmp/runs/$name/eval.json 2>&1 | tr '\r' '\n' | grep -E "^\||wall" ;
  echo "== end $(date +%T) load: $(uptime | sed 's/.*average: //')"; } > $L 2>&1
