#!/usr/bin/env bash
# The meta_sgd study: MAML, Meta-SGD and per-step learning rates on K-shot sinusoids,
# K = 5, 10, 20, three seeds each, every model scored on 2,000 held-out tasks (50 query
# points) after one adaptation step. Extra arguments go to every `metax run`
# (e.g. --set train.steps=500 for a quick look).
#
#   bash experiments/meta_sgd/run.sh runs/meta_sgd
set -uo pipefail  # one failed study does not stop the others
out=${1:-runs/meta_sgd}
shift || true
for shots in 5 10 20; do
  for method in maml-1step metasgd per-step-lr; do
    metax run "configs/sinusoid-$method.yaml" --seeds 3 --out "$out/$method-$shots" --no-progress \
      --set task.shots_train="$shots" --set task.shots_test="$shots" "$@"
  done
done
metax compare "$out"/*-5 "$out"/*-10 "$out"/*-20 --out "$out"
