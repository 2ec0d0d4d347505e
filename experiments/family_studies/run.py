"""Four module x learner pairings meta-trained on the `family` task family.

    python experiments/family_studies/run.py --study all --out runs/family_studies
    python experiments/family_studies/run.py --study cavia_cg --quick --out /tmp/smoke

The `family` tasks mix five kinds of 1-D functions (two-harmonic sums, shallow lines,
rescaled quadratics, sawtooth waves, small sines; x ~ U[-5, 5]), one kind per task with
its id in `info["family"]`. Every study shares one protocol and differs only in the
module (what is adapted per task) and the learner (how the meta-update is obtained):

- `cavia_cg`: CAVIA (a per-task context vector, reset to zero) with implicit
  ConjugateGradient meta-gradients;
- `anil_evosax`: ANIL (a small learned body, a per-task linear head) evolved by Open-ES;
- `compsyn_eqprop`: ComplexSynapse (all weights adapted, pulled toward learned rest
  values by learned per-weight strengths) with equilibrium propagation;
- `gainmod_reptile`: GainMod (per-task gains, shifts and readout) with Reptile.

Each study meta-trains on `--shots` support and query points per task, then scores the
same held-out tasks (`--eval-tasks` fresh tasks, `--eval-query` query points each)
before and after meta-training: mean query MSE after the study's inner loop, with a 95%
interval, overall and per family. Writes `<out>/<study>/metrics.json` and
`<out>/<study>/<study>.png`, and refuses to overwrite an earlier run unless given
`--overwrite`.
"""

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import metax
from metax.experiment import refuse_overwrite, write_json_atomic

SquaredError = metax.energy.SquaredError


class Study(NamedTuple):
    title: str  # module + learner, for plots and tables
    settings: dict  # the default hyperparameters of a full run
    quick: dict  # overrides for --quick (a smoke run of a few seconds)
    build: Callable[[dict], metax.learner.MetaLearner]  # settings -> learner


# -- the four pairings ------------------------------------------------------------------


def feature_body(hidden):
    """An MLP without readout, `(samples, 1) -> (samples, hidden[-1])`, taking GainMod's
    optional per-layer gains and shifts."""

    def body(x, is_training, gain=None, shift=None):
        return metax.models.MultilayerPerceptron(hidden, activate_final=True)(x, is_training, gain=gain, shift=shift)

    return hk.transform_with_state(body)


def build_cavia_cg(s):
    # The context starts at zero in every task (not meta-learned), so every hparam (the
    # network weights) acts through the inner loss and the implicit gradient exists.
    model = metax.module.CAVIA(
        SquaredError(), SquaredError(), metax.models.mlp_fn(s["hidden"], 1), embedding_dim=s["embedding_dim"]
    )
    return metax.learner.ConjugateGradient(
        model, None, s["steps_inner"], s["steps_cg"], optax.sgd(s["lr_inner"]), optax.adam(s["lr_outer"]),
        cg_reg=s["cg_reg"],
    )


def build_anil_evosax(s):
    # The strategy searches over every hparam (body and head init), so the body is small.
    model = metax.module.ANIL(SquaredError(), SquaredError(), body=feature_body(s["hidden"]), output_dim=1)
    kwargs = {"population_size": s["population"], "sigma_init": s["sigma"], "optimizer": optax.adam(s["lr_outer"])}
    return metax.learner.Evosax(model, None, s["steps_inner"], optax.sgd(s["lr_inner"]), (1,), "Open_ES", kwargs)


def build_compsyn_eqprop(s):
    # The learned per-weight pull toward omega anchors the inner solution to the hparams.
    model = metax.module.ComplexSynapse(
        SquaredError(), SquaredError(), metax.models.mlp_fn(s["hidden"], 1), l2_reg=s["l2_reg"], l2_fixed=False
    )
    return metax.learner.EquilibriumPropagation(
        model, None, s["steps_inner"], s["steps_nudged"], optax.sgd(s["lr_inner"]), optax.sgd(s["lr_inner"]),
        optax.adam(s["lr_outer"]), beta=s["beta"],
    )


def build_gainmod_reptile(s):
    model = metax.module.GainMod(
        SquaredError(), SquaredError(), body=feature_body(s["hidden"]), hidden_dims=s["hidden"], output_dim=1,
        adapt_head=True,
    )
    return metax.learner.Reptile(model, None, s["steps_inner"], optax.sgd(s["lr_inner"]), optax.adam(s["lr_outer"]))


STUDIES = {
    "cavia_cg": Study(
        "CAVIA + ConjugateGradient",
        {
            "hidden": [40, 40], "embedding_dim": 4, "steps": 5000, "meta_batch_size": 25,
            "steps_inner": 20, "lr_inner": 0.3, "lr_outer": 1e-3, "steps_cg": 5, "cg_reg": 1.0,
        },
        {"steps": 200, "meta_batch_size": 8},
        build_cavia_cg,
    ),
    "anil_evosax": Study(
        "ANIL + Evosax (Open-ES)",
        {
            "hidden": [16, 16], "steps": 6000, "meta_batch_size": 16, "steps_inner": 10,
            "lr_inner": 0.03, "lr_outer": 0.01, "population": 32, "sigma": 0.05,
        },
        {"steps": 200, "meta_batch_size": 8, "population": 16},
        build_anil_evosax,
    ),
    "compsyn_eqprop": Study(
        "ComplexSynapse + EquilibriumPropagation",
        {
            "hidden": [40, 40], "steps": 3000, "meta_batch_size": 25, "steps_inner": 50,
            "lr_inner": 0.005, "lr_outer": 1e-3, "steps_nudged": 20, "beta": 0.1, "l2_reg": 0.01,
        },
        {"steps": 200, "meta_batch_size": 8, "steps_inner": 20, "steps_nudged": 10},
        build_compsyn_eqprop,
    ),
    "gainmod_reptile": Study(
        "GainMod + Reptile",
        {
            "hidden": [40, 40], "steps": 10000, "meta_batch_size": 25, "steps_inner": 20,
            "lr_inner": 0.01, "lr_outer": 1e-3,
        },
        {"steps": 200, "meta_batch_size": 8},
        build_gainmod_reptile,
    ),
}

# Flags that override a study's defaults when given (None: the study's own value).
OVERRIDES = ("steps", "meta_batch_size", "steps_inner", "lr_inner", "lr_outer")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=(*STUDIES, "all"), default="all")
    parser.add_argument("--out", default="runs/family_studies", help="output folder; a study writes to <out>/<study>")
    parser.add_argument("--steps", type=int, help="meta-training steps (default: per study)")
    parser.add_argument("--meta-batch-size", type=int, help="tasks per meta-update (default: per study)")
    parser.add_argument("--steps-inner", type=int, help="inner steps, in training and evaluation (default: per study)")
    parser.add_argument("--lr-inner", type=float, help="inner SGD learning rate (default: per study)")
    parser.add_argument(
        "--lr-outer", type=float, help="outer Adam learning rate, Open-ES's for anil_evosax (default: per study)"
    )
    parser.add_argument("--shots", type=int, default=10, help="support and query points per training task")
    parser.add_argument("--eval-tasks", type=int, help="held-out tasks (default 500, --quick 64)")
    parser.add_argument("--eval-query", type=int, default=50, help="query points per held-out task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke settings (a few seconds per study)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing metrics.json files")
    args = parser.parse_args(argv)
    if args.eval_tasks is None:
        args.eval_tasks = 64 if args.quick else 500
    for name in ("steps", "meta_batch_size", "steps_inner", "shots", "eval_query"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.eval_tasks < 2:
        parser.error(f"--eval-tasks must be >= 2 (for an interval), got {args.eval_tasks}")
    for name in ("lr_inner", "lr_outer"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {value}")
    args.studies = list(STUDIES) if args.study == "all" else [args.study]
    for name in args.studies:
        refuse_overwrite(parser, os.path.join(args.out, name), args.overwrite)
    return args


def settings_for(name, args):
    """The study's defaults, then --quick's, then any flag given on the command line."""
    study = STUDIES[name]
    settings = {**study.settings, **(study.quick if args.quick else {})}
    settings.update({key: getattr(args, key) for key in OVERRIDES if getattr(args, key) is not None})
    return settings


# -- one study: train, score, write ----------------------------------------------------------


def interval(values):
    """Mean and half-width of a 95% normal interval (1.96 standard errors)."""
    values = np.asarray(values, dtype=np.float64)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": float(values.mean()), "ci95": float(half)}


def run_study(name, args):
    settings = settings_for(name, args)
    learner = STUDIES[name].build(settings)
    start = time.time()

    rng_data, rng_reset, rng_train, rng_eval = jax.random.split(jax.random.PRNGKey(args.seed), 4)
    train_tasks = metax.data.make_task_sampler("family", args.shots, args.shots)
    stream = metax.data.MetaBatchStream(
        train_tasks, settings["meta_batch_size"], rng_data, num_batches=settings["steps"]
    )
    # The same held-out tasks for every study with this seed.
    eval_sampler = metax.data.make_task_sampler("family", args.shots, args.eval_query)
    # Jitted: sampling `family` op by op would compile each primitive separately (seconds).
    sample_held_out = jax.jit(
        functools.partial(metax.data.sample_metabatch, sample_task=eval_sampler, meta_batch_size=args.eval_tasks)
    )
    held_out = sample_held_out(jax.random.fold_in(rng_eval, 1))
    families = np.asarray(held_out.test.info["family"][:, 0])
    # A reference without meta-learning: predict every query point by the support mean.
    support_mean = held_out.train.y.mean(axis=(1, 2), keepdims=True)
    baseline = np.asarray(jnp.mean(jnp.square(held_out.test.y - support_mean), axis=(1, 2)))

    score = jax.jit(
        jax.vmap(functools.partial(learner.outer_loss, steps_adapt=settings["steps_inner"]), in_axes=(0, None, None, 0))
    )
    eval_rngs = jax.random.split(rng_eval, args.eval_tasks)

    def evaluate(meta_state):
        losses, (outcome, _) = score(eval_rngs, meta_state.hstate, meta_state.hparams, held_out)
        return np.asarray(losses), outcome

    meta_state = learner.reset(rng_reset, stream.batch(0).train.x[0])  # one task's support inputs
    before, _ = evaluate(meta_state)

    update = jax.jit(learner.update)
    curve, train_start = [], time.time()
    with tqdm(stream, desc=name, unit="step", total=settings["steps"]) as bar:
        for step, metabatch in enumerate(bar):
            meta_state, metrics = update(jax.random.fold_in(rng_train, step), meta_state, metabatch)
            curve.append(metrics["loss_outer"])
            if step % 50 == 0:
                bar.set_postfix(loss_outer=f"{float(curve[-1]):.3f}")
    curve = np.asarray(jnp.stack(curve), dtype=np.float64)
    train_seconds = time.time() - train_start

    after, outcome = evaluate(meta_state)
    per_family = {}
    for index, family in enumerate(metax.data.FAMILY_NAMES):
        mask = families == index
        per_family[family] = {
            "tasks": int(mask.sum()),
            "before": interval(before[mask]),
            "after": interval(after[mask]),
            "support_mean_baseline": interval(baseline[mask]),
        }
    payload = {
        "study": name,
        "title": STUDIES[name].title,
        "config": {
            **{key: value for key, value in vars(args).items() if key not in ("studies", *OVERRIDES)},
            "study": name,
            "settings": settings,
        },
        "loss_outer_curve": curve.tolist(),
        "held_out": {
            "tasks": args.eval_tasks,
            "query_points": args.eval_query,
            "steps_adapt": settings["steps_inner"],
            "before": interval(before),
            "after": interval(after),
            "improvement": interval(before - after),  # paired over the same tasks
            "support_mean_baseline": interval(baseline),
            "per_family": per_family,
        },
        "train_seconds": train_seconds,
        "wall_seconds": time.time() - start,
    }
    out = os.path.join(args.out, name)
    os.makedirs(out, exist_ok=True)
    write_json_atomic(os.path.join(out, "metrics.json"), payload)
    context = getattr(outcome.params, "context", None)  # CAVIA: the adapted context of each task
    plot(payload, os.path.join(out, f"{name}.png"), families, None if context is None else np.asarray(context))
    return payload


def main(argv=None) -> int:
    args = parse_args(argv)
    results = {name: run_study(name, args) for name in args.studies}
    print(table(results))
    return 0


def table(results):
    """A markdown table of the held-out query MSE per study: overall, then per family."""
    names = metax.data.FAMILY_NAMES
    lines = [
        "| study | before | after | support-mean baseline | " + " | ".join(names) + " | train s |",
        "|---" * (5 + len(names)) + "|",
    ]
    for payload in results.values():
        held = payload["held_out"]
        keys = ("before", "after", "support_mean_baseline")
        cells = [f"{held[key]['mean']:.3f} ± {held[key]['ci95']:.3f}" for key in keys]
        for family in names:
            entry = held["per_family"][family]
            cells.append(f"{entry['before']['mean']:.3f} → {entry['after']['mean']:.3f}")
        lines.append(f"| {payload['title']} | " + " | ".join(cells) + f" | {payload['train_seconds']:.0f} |")
    return "\n".join(lines)


# -- the picture -------------------------------------------------------------------------------


def plot(payload, path, families, contexts):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if contexts is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.6))

    curve = np.asarray(payload["loss_outer_curve"])
    # A running median: robust to the rare meta-batch (or ES member) whose inner loop diverges.
    window = max(1, len(curve) // 50)
    windows = np.lib.stride_tricks.sliding_window_view(curve, window)
    axes[0].plot(np.arange(len(curve)), curve, lw=0.5, alpha=0.4, color="C0")
    axes[0].plot(np.arange(len(windows)) + window - 1, np.median(windows, axis=1), lw=1.5, color="C0")
    axes[0].set(xlabel="meta-training step", ylabel="query MSE (meta-batch)", yscale="log",
                title=f"learning curve (running median of {window})")

    names = list(metax.data.FAMILY_NAMES)
    held = payload["held_out"]
    xs = np.arange(len(names) + 1)
    bars = (("before", "before meta-training", "C7"), ("after", "after meta-training", "C1"),
            ("support_mean_baseline", "support-mean baseline", "C0"))
    for offset, (key, label, color) in zip((-0.27, 0.0, 0.27), bars):
        entries = [held["per_family"][f][key] for f in names] + [held[key]]
        axes[1].bar(xs + offset, [e["mean"] for e in entries], 0.27, yerr=[e["ci95"] for e in entries],
                    color=color, capsize=2, label=label)
    axes[1].set_xticks(xs, names + ["all"], rotation=30, fontsize=8)
    axes[1].set(ylabel=f"held-out query MSE ({held['steps_adapt']} inner steps)", yscale="log",
                title=f"{held['tasks']} held-out tasks")
    top = max(e["mean"] + e["ci95"] for key in ("before", "after", "support_mean_baseline")
              for e in [held[key]] + [held["per_family"][f][key] for f in names])
    if np.isfinite(top) and top > 0:
        axes[1].set_ylim(top=top * 5)  # headroom for the legend on the log axis
    axes[1].legend(fontsize=7, loc="upper center", ncol=2)

    if contexts is not None:
        scatter_contexts(axes[2], contexts, families, names)

    fig.suptitle(payload["title"] + " on family")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scatter_contexts(ax, contexts, families, names):
    """The adapted contexts `(tasks, embedding_dim)` on their first two principal axes."""
    ax.set_title("adapted contexts (held-out tasks)")
    finite = np.all(np.isfinite(contexts), axis=1)
    if finite.sum() < 3 or contexts.shape[1] < 2:
        ax.text(0.5, 0.5, "too few finite contexts", ha="center", transform=ax.transAxes)
        return
    centred = contexts[finite] - contexts[finite].mean(axis=0)
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ directions[:2].T
    explained = singular[:2] ** 2 / max(float(np.sum(singular**2)), 1e-12)
    for index, family in enumerate(names):
        mask = families[finite] == index
        ax.scatter(coords[mask, 0], coords[mask, 1], s=8, alpha=0.7, label=family)
    ax.set(xlabel=f"PC 1 ({explained[0]:.0%} of variance)", ylabel=f"PC 2 ({explained[1]:.0%})")
    ax.legend(fontsize=7, markerscale=1.5)


if __name__ == "__main__":
    sys.exit(main())
