#!/usr/bin/env bash
# The Omniglot study (experiments/omniglot/README.md). Stages, in order (the two train
# stages may run side by side):
#
#   bash experiments/omniglot/run.sh OUT train-maml    # MAML, seeds 0 and 1 (the headline learner)
#   bash experiments/omniglot/run.sh OUT train-others  # first-order MAML, Reptile, ANIL, Meta-SGD
#   bash experiments/omniglot/run.sh OUT baselines     # pixel NN, scratch, pre-train + fine-tune
#   bash experiments/omniglot/run.sh OUT score         # test alphabets and Lake's runs, once, at the end
#   bash experiments/omniglot/run.sh OUT report        # results.md / results.json and the figures
#   bash experiments/omniglot/run.sh OUT all           # all of the above, one after another
#
# Data: the configs read ../shared/data/omniglot/ relative to the working directory;
# OMNIGLOT_DIR=/path/to/folder (holding the two background zips and all_runs.zip) reads
# them from elsewhere. Meta-training scores the validation alphabet (Balinese) only; the
# test alphabets (Korean, Tagalog) and Lake's 20 runs are scored in the `score` stage.
set -uo pipefail
out=${1:?usage: run.sh OUT STAGE}
stage=${2:-all}
repo=$(cd "$(dirname "$0")/../.." && pwd)
data=${OMNIGLOT_DIR:-../shared/data/omniglot}
paths=(--set "task.path=[$data/images_background_small1.zip, $data/images_background_small2.zip]")
[ -z "${OMNIGLOT_DIR:-}" ] && paths=()
others="fomaml reptile anil metasgd"

train_maml() {
  metax run "$repo/configs/omniglot-maml.yaml" --out "$out/maml" --seeds 2 --no-progress "${paths[@]}"
}
train_others() {
  for learner in $others; do
    metax run "$repo/configs/omniglot-$learner.yaml" --out "$out/$learner" --no-progress "${paths[@]}"
  done
}
baselines() {
  python "$repo/experiments/omniglot/baselines.py" --config "$repo/configs/omniglot-maml.yaml" "${paths[@]/#--set/--task-set}" \
    --omniglot-runs "$data/all_runs.zip" --out "$out/baselines" --tasks 600
}
score() {  # SCORE_RUNS="maml/seed-0 anil" scores only those; an evaluation already written is skipped
  local runs=${SCORE_RUNS:-maml/seed-0 maml/seed-1 $others}
  for name in $runs; do
    run="$out/$name"
    for episode in 5x1 5x5 20x1 20x5; do
      ways=${episode%x*} shots=${episode#*x}
      ls "$run"/evals/tasks-600_*held-out=test-ways=$ways-shots=$shots-*.json >/dev/null 2>&1 && continue
      metax eval "$run" --tasks 600 --set eval.task.held_out=test --set eval.task.ways="$ways" \
        --set eval.task.shots="$shots" --set eval.batch_size=100
    done
    ls "$run"/evals/omniglot-runs_*.json >/dev/null 2>&1 || metax eval "$run" --omniglot-runs "$data/all_runs.zip"
  done
}
report() {
  python "$repo/experiments/omniglot/report.py" "$out" --omniglot-runs "$data/all_runs.zip"
}
case $stage in
  train-maml) train_maml ;;
  train-others) train_others ;;
  baselines) baselines ;;
  score) score ;;
  report) report ;;
  all) train_maml; train_others; baselines; score; report ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
