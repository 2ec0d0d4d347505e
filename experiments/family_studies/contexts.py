"""The adapted CAVIA contexts of held-out `family` tasks on their first two principal axes.

    python experiments/family_studies/contexts.py runs/family_studies/cavia-cg

Reopens a finished CAVIA run, adapts its context on 500 held-out tasks and writes
`contexts.png` into the run folder: does the 4-d context separate the function families?
"""

import argparse
import os
import sys

import jax
import numpy as np

import metax
from metax.experiment.plots import pyplot, save_figure
from metax.experiment.signals import run_study


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder of configs/family-cavia-cg.yaml")
    args = parser.parse_args(argv)
    try:
        run = metax.experiment.open_run(args.run_dir)
    except metax.experiment.ConfigError as error:
        parser.error(str(error))
    if run.config.module["name"] != "cavia" or run.config.task["name"] != "family":
        parser.error(f"{args.run_dir} is a {run.config.module['name']} run on {run.config.task['name']}; give a CAVIA run on family.")
    tasks = metax.experiment.loop.sample_held_out(
        run.keys.eval_tasks, run.experiment.eval_task.sample_task, run.config.eval.tasks, run.config.eval.batch_size
    )
    evaluate = jax.jit(lambda key, state, batch: run.experiment.learner.eval(key, state, batch, run.experiment.eval_steps))
    (_, params), _ = evaluate(run.keys.eval_adapt, run.meta_state, tasks)
    contexts = np.asarray(params.context)
    families = np.asarray(tasks.test.info["family"][:, 0])
    path = os.path.join(args.run_dir, "contexts.png")
    plot(contexts, families, path)
    print(path)
    return 0


def plot(contexts, families, path):
    plt = pyplot()
    finite = np.all(np.isfinite(contexts), axis=1)
    centred = contexts[finite] - contexts[finite].mean(axis=0)
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ directions[:2].T
    explained = singular[:2] ** 2 / max(float(np.sum(singular**2)), 1e-12)
    fig, ax = plt.subplots(figsize=(4.8, 4))
    for index, family in enumerate(metax.data.FAMILY_NAMES):
        mask = families[finite] == index
        ax.scatter(coords[mask, 0], coords[mask, 1], s=8, alpha=0.7, label=family)
    ax.set(xlabel=f"PC 1 ({explained[0]:.0%} of variance)", ylabel=f"PC 2 ({explained[1]:.0%})",
           title="adapted CAVIA contexts, held-out tasks")
    ax.legend(fontsize=7, markerscale=1.5)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(run_study(main, "experiments/family_studies/contexts.py"))
