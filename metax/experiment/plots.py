"""Plots of a run folder: learning curves, adapted fits (1-D regression), comparisons."""

import os
from typing import Any, Optional, Sequence

import numpy as np

from metax.experiment.writers import read_jsonl
from metax.utils.io import atomic_write, json_float


def pyplot():
    """`matplotlib.pyplot` on the file-only Agg backend (no display needed), imported on
    first use so that runs without plots never load matplotlib.

    Example:
      >>> from metax.experiment.plots import pyplot
      >>> pyplot().get_backend().lower()
      'agg'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str, dpi: int = 120) -> str:
    """Writes `fig` to `path` atomically (format from the extension, png by default),
    closes it and returns `path`: an interrupted save never leaves half an image.

    Example:
      >>> import os, tempfile
      >>> from metax.experiment.plots import pyplot, save_figure
      >>> fig, ax = pyplot().subplots()
      >>> path = save_figure(fig, os.path.join(tempfile.mkdtemp(), "line.png"), dpi=50)
      >>> os.path.getsize(path) > 0, pyplot().fignum_exists(fig.number)
      (True, False)
    """
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, dpi=dpi, format=os.path.splitext(path)[1][1:] or "png")
    pyplot().close(fig)
    return path


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array([r["step"] for r in rows if key in r], dtype=float)
    values = np.array([json_float(r[key]) for r in rows if key in r], dtype=float)  # null: non-finite
    return steps, values


def plot_learning_curves(out: str) -> Optional[str]:
    """`learning_curves.png`: the meta-batch loss per step (with a running median) and the
    held-out metrics with their 95% intervals at every evaluation."""
    rows = read_jsonl(os.path.join(out, "metrics.jsonl"))
    evals = read_jsonl(os.path.join(out, "eval.jsonl"))
    if not rows and not evals:
        return None
    plt = pyplot()
    metrics = [m for m in ("loss_outer", "acc_outer") if evals and m in evals[-1]] or ["loss_outer"]
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4.6 * (len(metrics) + 1), 3.5))
    steps, values = _series(rows, "loss_outer")
    ax = axes[0]
    if len(values):
        ax.plot(steps, values, lw=0.5, alpha=0.35, color="C0", label="meta-batch")
        window = max(1, len(values) // 50)
        if window > 1:
            finite = np.where(np.isfinite(values), values, np.nan)
            windows = np.lib.stride_tricks.sliding_window_view(finite, window)
            ax.plot(steps[window - 1:], np.nanmedian(windows, axis=1), lw=1.5, color="C0", label=f"running median of {window}")
        positive = values[np.isfinite(values)]
        if positive.size and positive.min() > 0:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax.set(xlabel="meta-step", ylabel="query loss (training meta-batch)", title="training")
    for ax, metric in zip(axes[1:], metrics):
        e_steps, e_values = _series(evals, metric)
        _, e_half = _series(evals, f"{metric}_ci95")
        if len(e_values):
            half = e_half if len(e_half) == len(e_values) else np.zeros_like(e_values)
            ax.errorbar(e_steps, e_values, yerr=np.nan_to_num(half), marker="o", ms=3, capsize=2, color="C1")
        ax.set(xlabel="meta-step", ylabel=f"held-out {metric} (95% CI)", title="held-out tasks")
    fig.tight_layout()
    path = save_figure(fig, os.path.join(out, "learning_curves.png"))
    return path


def plot_fits(out: str, learner: Any, meta_state: Any, held_out: Any, steps: int, key: Any, num_tasks: int = 4) -> Optional[str]:
    """`fits.png` for 1-D regression: on a few held-out tasks, the support and query points,
    the prediction of the meta-learned starting point and after `steps` adaptation steps."""
    import jax
    import jax.numpy as jnp

    x = held_out.train.x
    if x.ndim != 3 or x.shape[-1] != 1 or held_out.train.y.ndim != 3 or held_out.train.y.shape[-1] != 1 or num_tasks < 1:
        return None
    num_tasks = min(num_tasks, x.shape[0])
    tasks = jax.tree_util.tree_map(lambda leaf: leaf[:num_tasks], held_out)
    lo = float(jnp.minimum(tasks.train.x.min(), tasks.test.x.min()))
    hi = float(jnp.maximum(tasks.train.x.max(), tasks.test.x.max()))
    grid = jnp.linspace(lo, hi, 200, dtype=x.dtype)[:, None]
    model = learner.meta_model

    @jax.jit
    def curves(key, meta_state, tasks):
        """Predictions on the grid from each task's starting params and after adapting."""
        (state, params), _ = learner.eval(key, meta_state, tasks, steps)

        def predict(state, params):
            return model(key, state, meta_state.hstate, params, meta_state.hparams, grid, False)[0][:, 0]

        def start(task_x):
            params, state = model.reset_params(key, meta_state.hparams, meta_state.hstate, task_x)
            return predict(state, params)

        return jax.vmap(start)(tasks.train.x), jax.vmap(predict)(state, params)

    before, after = curves(key, meta_state, tasks)
    plt = pyplot()
    fig, axes = plt.subplots(1, num_tasks, figsize=(3.4 * num_tasks, 3.0), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.plot(tasks.test.x[i, :, 0], tasks.test.y[i, :, 0], ".", color="0.6", ms=4, label="query")
        ax.plot(grid[:, 0], before[i], "--", color="C0", lw=1, label="before adaptation")
        ax.plot(grid[:, 0], after[i], "-", color="C1", lw=1.5, label=f"after {steps} steps")
        ax.plot(tasks.train.x[i, :, 0], tasks.train.y[i, :, 0], "k^", ms=5, label="support")
        ax.set(title=f"held-out task {i}", xlabel="x")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = save_figure(fig, os.path.join(out, "fits.png"))
    return path


def plot_run(out: str, *, learner: Any = None, meta_state: Any = None, held_out: Any = None, steps: int = 0,
             key: Any = None, num_tasks: int = 4) -> list[str]:
    """Every plot of a run folder; the fit plot needs the trained learner and its tasks."""
    paths = [plot_learning_curves(out)]
    if learner is not None:
        paths.append(plot_fits(out, learner, meta_state, held_out, steps, key, num_tasks))
    return [p for p in paths if p]


def plot_comparison(groups: Sequence[dict], metric: str, path: str) -> str:
    """Bars with 95% intervals per run group, the seed means as dots."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(groups) + 1.5), 3.6))
    xs = np.arange(len(groups))
    means = [g[metric]["mean"] for g in groups]
    halves = [np.nan_to_num(g[metric]["ci95"]) for g in groups]
    ax.bar(xs, means, 0.6, yerr=halves, capsize=3, color="C0", alpha=0.8)
    for x, group in zip(xs, groups):
        seeds = group.get("seed_means", {}).get(metric, [])
        ax.plot([x] * len(seeds), seeds, "k.", ms=4)
    ax.set_xticks(xs, [g["label"] for g in groups], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=f"held-out {metric} (95% CI)", title="comparison (dots: seed means)")
    fig.tight_layout()
    save_figure(fig, path)
    return path
