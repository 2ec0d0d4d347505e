"""Reptile on linear tasks y = a x + b, the Koi quick path (seed 003), in metax.

    python experiments/reptile_linear/run.py --out runs/reptile_linear

Koi samples one task at a time, runs 10 SGD steps (lr 0.01) on 100 points and moves the
initialisation of a 1-1 linear model toward the adapted weights, for 1000 iterations.
Here the same loop is one jitted `Reptile.update` per meta-batch of tasks. The script
prints the model's output on a new task's input before meta-training, after it, and
after a few adaptation steps on that task, and writes metrics.json.
"""

import argparse
import os
import sys

import haiku as hk
import jax
import optax
from tqdm import tqdm

import metax
from metax.experiment import refuse_overwrite, write_json_atomic


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/reptile_linear", help="output folder")
    parser.add_argument("--iterations", type=int, default=1000, help="meta-updates (Koi's num_iterations)")
    parser.add_argument("--meta-batch-size", type=int, default=1, help="tasks per meta-update (Koi: 1)")
    parser.add_argument("--steps-inner", type=int, default=10, help="SGD steps per task (Koi's num_steps)")
    parser.add_argument("--lr-inner", type=float, default=0.01, help="inner SGD step (Koi's step_size)")
    parser.add_argument("--lr-outer", type=float, default=0.1, help="Reptile's interpolation step")
    parser.add_argument("--points", type=int, default=100, help="points per task")
    parser.add_argument("--adapt-steps", type=int, default=5, help="adaptation steps on the new task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    for name in ("iterations", "meta_batch_size", "steps_inner", "points"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    refuse_overwrite(parser, args.out, args.overwrite)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    # A user-defined task distribution is one function: key -> MetaDataset.
    half = args.points // 2
    sample_task = metax.data.make_task_sampler("linear", args.points - half, half)
    model = metax.module.LearnedInit(
        loss_fn_inner=metax.energy.SquaredError(),
        loss_fn_outer=metax.energy.SquaredError(),
        base_learner=hk.transform_with_state(lambda x, is_training: hk.Linear(1)(x)),
        output_dim=1,
    )
    learner = metax.learner.Reptile(
        model, None, args.steps_inner, optax.sgd(args.lr_inner), optax.sgd(args.lr_outer)
    )
    rng = jax.random.PRNGKey(args.seed)
    rng_stream, rng_reset, rng_new, rng_train = jax.random.split(rng, 4)
    stream = metax.data.MetaBatchStream(sample_task, args.meta_batch_size, rng_stream, num_batches=args.iterations)
    meta_state = learner.reset(rng_reset, stream.sample_input)

    new_task = sample_task(rng_new)
    x_probe = new_task.test.x[:1]
    predict = lambda weights: float(model.base_learner.apply(weights, {}, None, x_probe, False)[0][0, 0])
    before = predict(meta_state.hparams.base_learner_init)
    print(f"Output before training: {before:.4f}")

    update = jax.jit(learner.update)
    for step, metabatch in enumerate(tqdm(stream, desc="reptile", unit="it")):
        meta_state, metrics = update(jax.random.fold_in(rng_train, step), meta_state, metabatch)
    after = predict(meta_state.hparams.base_learner_init)
    print(f"Output after training: {after:.4f}")

    params, state = model.reset_params(rng_new, meta_state.hparams, meta_state.hstate, new_task.train.x)
    (_, adapted), _ = learner.adapt(
        rng_new, state, meta_state.hstate, params, meta_state.hparams, new_task.train, args.adapt_steps
    )
    adapted_out = predict(adapted.base_learner)
    target = float(new_task.test.y[0, 0])
    print(f"Output after {args.adapt_steps} adaptation steps: {adapted_out:.4f} (target {target:.4f})")

    weights = meta_state.hparams.base_learner_init["linear"]
    payload = {
        "config": vars(args),
        "probe_x": float(x_probe[0, 0]),
        "probe_target": target,
        "output_before_training": before,
        "output_after_training": after,
        "output_after_adaptation": adapted_out,
        "learned_init": {"slope": float(weights["w"][0, 0]), "offset": float(weights["b"][0])},
        "final_loss_outer": float(metrics["loss_outer"]),
    }
    write_json_atomic(os.path.join(args.out, "metrics.json"), payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
