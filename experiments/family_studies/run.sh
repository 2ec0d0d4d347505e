#!/usr/bin/env bash
# Four module x learner pairings on the `family` tasks, plus MAML as the reference, each
# scored on the same 500 held-out tasks (50 query points) before and after
# meta-training, overall and per function family. Extra arguments go to every `metax run`.
#
#   bash experiments/family_studies/run.sh runs/family_studies
set -uo pipefail  # one failed study does not stop the others
out=${1:-runs/family_studies}
shift || true
for study in cavia-cg anil-evosax compsyn-eqprop gainmod-reptile maml; do
  metax run "configs/family-$study.yaml" --out "$out/$study" --no-progress "$@"
done
metax compare "$out"/cavia-cg "$out"/anil-evosax "$out"/compsyn-eqprop "$out"/gainmod-reptile "$out"/maml --out "$out"
python experiments/family_studies/contexts.py "$out/cavia-cg"
