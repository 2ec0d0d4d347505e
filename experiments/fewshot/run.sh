#!/usr/bin/env bash
# The fewshot study: MAML, ANIL, Reptile and CAVIA (configs/fewshot-*.yaml) on 5-way
# 1-shot and 5-shot classification of held-out digit classes (meta-train digits
# 0,1,2,3,4,8 with rotations, meta-test 5,6,7,9), each scored on 600 held-out tasks;
# the two baselines without meta-learning (baselines.py) on the same 600 tasks (the
# runner's held-out tasks of seed 0); `metax compare` over the eight runs; the table
# and bar chart (plot.py). Extra arguments go to every `metax run` (e.g. --set
# train.steps=100 for a quick look; a different seed would score other tasks than the
# baselines').
#
#   bash experiments/fewshot/run.sh runs/fewshot
set -uo pipefail  # one failed run does not stop the others
out=${1:-runs/fewshot}
shift || true
for shots in 1 5; do
  for method in maml anil reptile cavia; do
    metax run "configs/fewshot-$method.yaml" --out "$out/$method-${shots}shot" --no-progress \
      --set task.shots="$shots" --set eval.tasks=600 "$@"
  done
done
python experiments/fewshot/baselines.py --out "$out/baselines" --train-classes 0,1,2,3,4,8 --test-classes 5,6,7,9 \
  --width 64 --shots 1 5 --tasks 600 --run-seed 0
metax compare "$out"/*-1shot "$out"/*-5shot --out "$out"
python experiments/fewshot/plot.py "$out"
