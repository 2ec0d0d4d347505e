"""MAML on sinusoid regression: meta-train, evaluate on fresh tasks, plot, write metrics.

    python experiments/maml_sinusoid/run.py --out runs/maml_sinusoid

Protocol (Finn et al., 2017, the sinusoid benchmark): 10 support / 10 query points per
task, 5 inner SGD steps with learning rate 0.01, meta-batch 25, an MLP 40-40 and Adam
1e-3 outside. Writes metrics.json, loss_curve.png and predictions.png to --out.
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import metax
from metax.experiment import refuse_overwrite, write_json_atomic


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/maml_sinusoid", help="output folder")
    parser.add_argument("--steps", type=int, default=2000, help="meta-training steps")
    parser.add_argument("--meta-batch-size", type=int, default=25)
    parser.add_argument("--shots", type=int, default=10, help="support and query points per task")
    parser.add_argument("--steps-inner", type=int, default=5)
    parser.add_argument("--lr-inner", type=float, default=0.01)
    parser.add_argument("--lr-outer", type=float, default=1e-3)
    parser.add_argument("--eval-tasks", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing metrics.json in --out")
    args = parser.parse_args(argv)
    for name in ("steps", "meta_batch_size", "shots", "eval_tasks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    refuse_overwrite(parser, args.out, args.overwrite)
    return args


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    meta_model = metax.module.LearnedInit(
        loss_fn_inner=metax.energy.SquaredError(),
        loss_fn_outer=metax.energy.SquaredError(),
        base_learner=metax.models.mlp_fn(hidden_dims=[40, 40], output_dim=1),
        output_dim=1,
    )
    learner = metax.learner.ModelAgnosticMetaLearning(
        meta_model=meta_model,
        batch_size=None,
        steps_inner=args.steps_inner,
        optim_fn_inner=optax.sgd(args.lr_inner),
        optim_fn_outer=optax.adam(args.lr_outer),
        first_order=False,
    )
    sample_task = metax.data.make_task_sampler("sinusoid", args.shots, args.shots)
    rng_data, rng_reset, rng_train, rng_eval = jax.random.split(jax.random.PRNGKey(args.seed), 4)
    stream = metax.data.MetaBatchStream(sample_task, args.meta_batch_size, rng_data, num_batches=args.steps)
    eval_tasks = metax.data.sample_metabatch(jax.random.fold_in(rng_eval, 1), sample_task, args.eval_tasks)

    meta_state = learner.reset(rng_reset, stream.sample_input)
    update = jax.jit(learner.update)
    evaluate = jax.jit(learner.eval, static_argnames="steps")
    before = float(evaluate(rng_eval, meta_state, eval_tasks, args.steps_inner)[1]["loss_outer"])

    curve, start = [], time.time()
    with tqdm(stream, desc="meta-train", unit="step") as bar:
        for step, metabatch in enumerate(bar):
            meta_state, metrics = update(jax.random.fold_in(rng_train, step), meta_state, metabatch)
            curve.append(float(metrics["loss_outer"]) if step % 10 == 0 else curve[-1])
            if step % 50 == 0:
                bar.set_postfix(loss_outer=f"{curve[-1]:.3f}")
    seconds = time.time() - start

    (_, params), metrics = evaluate(rng_eval, meta_state, eval_tasks, args.steps_inner)
    after = float(metrics["loss_outer"])
    print(f"query MSE on {args.eval_tasks} fresh tasks: before meta-training {before:.3f}, after {after:.3f}")

    write_json_atomic(
        os.path.join(args.out, "metrics.json"),
        {
            "config": vars(args),
            "query_mse_before": before,
            "query_mse_after": after,
            "train_seconds": seconds,
            "loss_outer_curve": curve[::10],
        },
    )
    plot(args, meta_state, learner, eval_tasks, params, curve)
    return 0


def plot(args, meta_state, learner, eval_tasks, params, curve):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(np.arange(len(curve)), curve, lw=1)
    ax.set(xlabel="meta-training step", ylabel="query MSE (meta-batch)", yscale="log", title="MAML on sinusoid")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "loss_curve.png"), dpi=120)
    plt.close(fig)

    # One held-out task: its support points, the truth, and the model before/after adapting.
    task = jax.tree_util.tree_map(lambda a: a[0], eval_tasks)
    grid = jnp.linspace(-5, 5, 200)[:, None]
    apply = learner.meta_model.base_learner.apply
    init_pred, _ = apply(meta_state.hparams.base_learner_init, {}, None, grid, False)
    adapted = jax.tree_util.tree_map(lambda a: a[0], params).base_learner
    adapted_pred, _ = apply(adapted, {}, None, grid, False)
    # The truth on the grid follows from the query points' sinusoid fit (exact for this family).
    x_all = jnp.concatenate([task.train.x, task.test.x])[:, 0]
    y_all = jnp.concatenate([task.train.y, task.test.y])[:, 0]
    basis = jnp.stack([jnp.sin(x_all), jnp.cos(x_all)], 1)
    coef = jnp.linalg.lstsq(basis, y_all)[0]
    truth = jnp.stack([jnp.sin(grid[:, 0]), jnp.cos(grid[:, 0])], 1) @ coef

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(grid[:, 0], truth, "k-", lw=1.5, label="task")
    ax.plot(grid[:, 0], init_pred[:, 0], "C0--", label="meta-learned init")
    ax.plot(grid[:, 0], adapted_pred[:, 0], "C1-", label=f"after {args.steps_inner} steps")
    ax.plot(task.train.x[:, 0], task.train.y[:, 0], "k^", label="support")
    ax.set(xlabel="x", ylabel="y", title="held-out task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "predictions.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
