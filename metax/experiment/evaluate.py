"""`metax eval` and `metax plot`: scoring a run's newest checkpoint on held-out tasks
(or on Lake et al.'s Omniglot one-shot runs) and drawing its plots."""

import os

from metax.experiment.errors import ConfigError


def _draw_plots(run_dir: str) -> list[str]:
    """Draws a run folder's plots from its newest checkpoint; returns their paths."""
    from metax.experiment import plots
    from metax.experiment.loop import sample_held_out

    config, experiment, meta_state, record, keys = _open_run(run_dir)
    tasks = max(config.eval.plot_tasks, 1)
    held_out = sample_held_out(keys.eval_tasks, experiment.eval_task.sample_task, max(tasks, 2), max(tasks, 2))
    return plots.plot_run(run_dir, learner=experiment.learner, meta_state=meta_state, held_out=held_out,
                          steps=experiment.eval_steps, key=keys.eval_adapt, num_tasks=config.eval.plot_tasks)


def _open_run(run_dir: str, overrides=()):
    from metax.experiment.run import open_run

    run = open_run(run_dir, overrides)
    return run.config, run.experiment, run.meta_state, run.record, run.keys


def command_eval(args) -> int:
    from metax.experiment.io import write_json_atomic
    from metax.experiment.loop import HeldOutEvaluator, sample_held_out
    from metax.experiment.stats import format_interval, interval, markdown_table

    for name in ("tasks", "steps"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "tasks" else 0):
            raise ConfigError(f"--{name} must be >= {2 if name == 'tasks' else 0}, got {value}.")
    config, experiment, meta_state, record, keys = _open_run(args.run_dir, args.overrides)
    if args.omniglot_runs:
        return _eval_omniglot_runs(args, config, experiment, meta_state, record, keys)
    num_tasks = args.tasks or config.eval.tasks
    steps = experiment.eval_steps if args.steps is None else args.steps
    held_out = sample_held_out(keys.eval_tasks, experiment.eval_task.sample_task, num_tasks, config.eval.batch_size)
    per_task = HeldOutEvaluator(experiment.learner, held_out, steps, keys.eval_adapt, config.eval.batch_size)(meta_state)
    results = {metric: interval(values) for metric, values in per_task.items()}
    rows = [[metric, format_interval(entry), entry["n"]] for metric, entry in results.items()]
    print(f"{args.run_dir} at meta-step {record['step']}, {steps} adaptation steps:")
    print(markdown_table(["metric", "mean ± 95% CI", "tasks"], rows))
    tag = _override_tag(args.overrides)
    path = os.path.join(args.run_dir, "evals", f"tasks-{num_tasks}_steps-{steps}_step-{record['step']}{tag}.json")
    write_json_atomic(path, {"step": record["step"], "tasks": num_tasks, "adaptation_steps": steps, "metrics": results,
                             "overrides": list(args.overrides)})
    print(f"written {path}")
    return 0


def _override_tag(overrides) -> str:
    """A file-name suffix that tells evaluations with different `--set` values apart."""
    if not overrides:
        return ""
    text = "_".join(o.removeprefix("eval.").removeprefix("task.") for o in overrides)
    return "_" + "".join(c if c.isalnum() or c in "=-." else "-" for c in text)[:80]


def _eval_omniglot_runs(args, config, experiment, meta_state, record, keys) -> int:
    """`metax eval RUN --omniglot-runs PATH`: Lake et al.'s 20 within-alphabet 20-way 1-shot
    runs, each adapted from the run's meta-learned state exactly like a held-out task."""
    import numpy as np

    import metax
    from metax.experiment.io import write_json_atomic
    from metax.experiment.loop import HeldOutEvaluator
    from metax.experiment.stats import markdown_table

    if experiment.task.loss != "cross_entropy" or experiment.output_dim < metax.data.omniglot_runs.RUN_WAYS:
        raise ConfigError(
            f"--omniglot-runs scores 20-way classification, but {args.run_dir} was trained for "
            f"{experiment.output_dim} outputs ({experiment.task.loss}); train with task.ways >= 20."
        )
    size = int(config.task.get("image_size") or experiment.input_shape[0])
    if experiment.input_shape[:2] != (size, size) or experiment.input_shape[-1] != 1:
        raise ConfigError(f"--omniglot-runs needs a run on square one-channel images; {args.run_dir} takes {experiment.input_shape}.")
    try:
        runs = metax.data.load_lake_runs(args.omniglot_runs, size=size)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"--omniglot-runs: {error}") from error
    steps = experiment.eval_steps if args.steps is None else args.steps
    per_task = HeldOutEvaluator(experiment.learner, runs.tasks, steps, keys.eval_adapt, len(runs.names))(meta_state)
    score = metax.data.lake_score(1.0 - per_task["acc_outer"])
    rows = [[name, f"{100 * e:.0f}"] for name, e in zip(runs.names, score.per_run)]
    print(f"{args.run_dir} at meta-step {record['step']}, {steps} adaptation steps, Lake's {len(runs.names)} one-shot runs:")
    print(markdown_table(["run", "error %"], rows))
    print(f"mean error {100 * score.mean:.1f} ± {100 * score.ci95:.1f} % (95% interval over runs); published: "
          + ", ".join(f"{k} {v}" for k, v in metax.data.PUBLISHED_LAKE_ERRORS.items()))
    path = os.path.join(args.run_dir, "evals", f"omniglot-runs_steps-{steps}_step-{record['step']}.json")
    write_json_atomic(path, {
        "step": record["step"], "adaptation_steps": steps, "runs": list(runs.names),
        "error_per_run": score.per_run.tolist(), "error_mean": score.mean, "error_ci95": score.ci95,
        "source": os.path.abspath(args.omniglot_runs),
    })
    print(f"written {path}")
    return 0


def command_plot(args) -> int:
    paths = _draw_plots(args.run_dir)
    print("\n".join(paths) if paths else "nothing to plot yet")
    return 0
