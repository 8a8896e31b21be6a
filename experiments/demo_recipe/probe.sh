#!/bin/bash
# usage: probe.sh NAME MINUTES [--set k=v ...]   -> trains on /tmp/shapes-32, evals 48/category held-out
name=$1; mins=$2; shift 2; export OMP_NUM_THREADS=1
cd /work/main
L=experiments/demo_recipe/logs/$name.log
{ echo "== $name $(date +%T) load: $(uptime | sed 's/.*average: //')"; echo "args: $*";
  /usr/bin/time -f "train wall %e s" gentron train src/gentron/configs/demo.yaml --set train.max_minutes=$mins --set data.path=/tmp/shapes-32 "$@" --out /tmp/runs/$name 2>&1 | tr '\r' '\n' | grep -vE "it/s\]$|s/it\]$|it/s\] *$" ;
  echo "== eval $(date +%T) load: $(uptime | sed 's/.*average: //')";
  /usr/bin/time -f "eval wall %e s" gentron eval shapes --model /tmp/runs/$name --num ${NUM:-48} ${EVALARGS} 2>&1 | tr '\r' '\n' | grep -vE "it/s\]$|s/it\]$" | tail -15;
  echo "== end $(date +%T) load: $(uptime | sed 's/.*average: //')"; } > $L 2>&1
