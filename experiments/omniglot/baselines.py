"""The Omniglot study's baselines without meta-learning, on the configs' own held-out tasks.

    python experiments/omniglot/baselines.py --config configs/omniglot-anil.yaml \
        --omniglot-runs ../shared/data/omniglot/all_runs.zip --out runs/omniglot/baselines

Reads the task section of `--config` (sources, image size, alphabet split) and, for each
`--episodes WAYSxSHOTS`, draws exactly the held-out tasks `metax run` / `metax eval`
score for that config with `--set eval.task.ways=.. eval.task.shots=.. eval.task.held_out=
<--split>` (`sample_held_out(run_keys(seed).eval_tasks, ...)`), then scores per task:

- `pixel_nn`: the support image nearest in raw pixels (`metax.data.pixel_nearest_neighbour`);
- `scratch`: the config's network (its `model` section, mlp or conv4) trained from
  a fresh initialisation on the support set alone (`metax.learner.train_from_scratch`,
  `--scratch-steps` Adam steps at `--scratch-lr`);
- `finetune` (Chen et al., ICLR 2019): the network's body and a linear head pre-trained as one
  classifier on every meta-train character (rotations as the config's task), then a new
  zero-initialised head fitted per task on the fixed body's support features
  (`metax.learner.pretrain_classifier`, `metax.learner.finetune_head`).

With `--omniglot-runs PATH` the three are also scored on Lake et al.'s 20 runs. Writes
`<out>/metrics.json` (accuracies with 95% intervals per episode type, per-task values,
Lake errors per run, settings, seconds); refuses to overwrite without `--overwrite`.
"""

import argparse
import functools
import sys
import time

import haiku as hk
import jax
import numpy as np
import optax

import metax
from metax.experiment import refuse_overwrite, write_json_atomic
from metax.experiment.loop import run_keys, sample_held_out
from metax.experiment.registry import registry
from metax.experiment.signals import run_study
from metax.experiment.stats import interval


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="an omniglot config: its task section and model channels are used")
    parser.add_argument("--out", required=True)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--task-set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. task.path=[...]")
    parser.add_argument("--split", choices=["valid", "test"], default="test", help="held-out alphabets to score")
    parser.add_argument("--episodes", nargs="+", default=["5x1", "5x5", "20x1", "20x5"], help="WAYSxSHOTS")
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--eval-batch", type=int, default=100, help="the config's eval.batch_size (task draws follow it)")
    parser.add_argument("--omniglot-runs", help="all_runs.zip (or its folder): also score Lake's 20 runs")
    parser.add_argument("--methods", nargs="+", default=["pixel_nn", "scratch", "finetune"])
    parser.add_argument("--scratch-steps", type=int, default=50)
    parser.add_argument("--scratch-lr", type=float, default=1e-2)
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--pretrain-batch", type=int, default=64)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--finetune-lr", type=float, default=1e-1)
    parser.add_argument("--chunk", type=int, default=50, help="tasks per compiled call")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    refuse_overwrite(parser, args.out, args.overwrite)
    return args


def networks(model: dict, ways: int):
    """`(body, network)` of the config's model (mlp or conv4): features without readout,
    and the same body with a `ways` readout."""
    if model["name"] == "mlp":
        hidden = list(model.get("hidden_dims", (40, 40)))
        options = {k: v for k, v in model.items() if k in ("batch_norm", "with_bias")}
        body = lambda x, is_training: metax.models.MultilayerPerceptron(hidden, activate_final=True, **options)(x, is_training)
        full = lambda x, is_training: metax.models.MultilayerPerceptron(hidden + [ways], **options)(x, is_training)
    else:
        options = {k: v for k, v in model.items() if k in ("max_pool", "decay", "batch_norm_policy", "batch_norm_steps")}
        conv = functools.partial(metax.models.Conv4, int(model.get("channels", 32)), **options)
        body = lambda x, is_training: conv()(x, is_training)
        full = lambda x, is_training: conv(readout=ways)(x, is_training)
    return hk.transform_with_state(body), hk.transform_with_state(full)


def score_tasks(args, tasks, ways, body, full, classifier):
    """Per-task query accuracy of each method on a meta-batch of tasks (numpy arrays)."""
    out = {m: [] for m in args.methods}
    scratch = jax.jit(functools.partial(
        metax.learner.train_from_scratch, network=full, steps=args.scratch_steps, optimizer=optax.adam(args.scratch_lr)))
    finetune = jax.jit(functools.partial(
        metax.learner.finetune_head, body=body, ways=ways, steps=args.finetune_steps, optimizer=optax.adam(args.finetune_lr)))
    count = tasks.train.x.shape[0]
    for start in range(0, count, args.chunk):
        part = jax.tree_util.tree_map(lambda a: a[start : start + args.chunk], tasks)
        key = jax.random.fold_in(jax.random.PRNGKey(args.seed + 1), start)
        if "pixel_nn" in out:
            predicted = metax.data.pixel_nearest_neighbour(part)
            out["pixel_nn"] += (predicted == np.asarray(part.test.y)).mean(axis=1).tolist()
        if "scratch" in out:
            out["scratch"] += np.asarray(scratch(key, part)["acc_outer"]).tolist()
        if "finetune" in out:
            out["finetune"] += np.asarray(finetune(key, part, classifier)["acc_outer"]).tolist()
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = metax.experiment.load_config(args.config, args.task_set)
    task_builder = registry("tasks").get("omniglot").target
    task_args = {k: v for k, v in config.task.items() if k != "name"}
    start = time.time()
    results, lake = {}, {}
    classifier = None
    pretrain_losses = []
    body = None
    if "finetune" in args.methods:  # pre-train once on the meta-train characters
        train_spec = task_builder("train", **task_args)
        data = metax.data.load_omniglot(list(task_args["path"]), size=int(task_args.get("image_size", 28)))
        classes = metax.data.alphabet_classes(
            data, test=task_args.get("test_alphabets"), valid=list(task_args.get("valid_alphabets", ())))
        rotations = task_args.get("rotations", "train") != "none"
        splits = metax.data.FewShotSplits(data.x, data.y, classes=classes, rotations=rotations)
        body, _ = networks(config.model, 2)
        sample_batch = splits.batch_sampler("train", batch_size=args.pretrain_batch)
        train = jax.jit(lambda key, fn: metax.learner.pretrain_classifier(
            key, fn, body=body, num_classes=splits.num_classes("train"), steps=args.pretrain_steps,
            optimizer=optax.adam(args.pretrain_lr)))
        classifier, losses = train(jax.random.PRNGKey(args.seed), sample_batch)
        pretrain_losses = np.asarray(losses)[:: max(1, args.pretrain_steps // 100)].tolist()
        del train_spec
        print(f"pre-trained {args.pretrain_steps} steps: loss {float(losses[0]):.3f} -> {float(losses[-1]):.3f}", flush=True)
    for episode in args.episodes:
        ways, shots = (int(v) for v in episode.lower().split("x"))
        spec = task_builder("test", **{**task_args, **config.eval.task, "ways": ways, "shots": shots, "held_out": args.split})
        tasks = jax.device_get(sample_held_out(run_keys(config.seed).eval_tasks, spec.sample_task, args.tasks, args.eval_batch))
        body, full = networks(config.model, ways)
        accuracy = score_tasks(args, tasks, ways, body, full, classifier)
        results[f"{ways}way_{shots}shot"] = {m: {**interval(a), "per_task": a} for m, a in accuracy.items()}
        for m, a in accuracy.items():
            entry = interval(a)
            print(f"{args.split} {ways}-way {shots}-shot {m:>8}: {100 * entry['mean']:.1f} ± {100 * entry['ci95']:.1f} %", flush=True)
    if args.omniglot_runs:
        runs = metax.data.load_lake_runs(args.omniglot_runs, size=int(task_args.get("image_size", 28)))
        body, full = networks(config.model, 20)
        accuracy = score_tasks(args, runs.tasks, 20, body, full, classifier)
        for m, a in accuracy.items():
            score = metax.data.lake_score(1.0 - np.asarray(a))
            lake[m] = {"error_mean": score.mean, "error_ci95": score.ci95, "error_per_run": score.per_run.tolist()}
            print(f"Lake's 20 runs {m:>8}: error {100 * score.mean:.1f} ± {100 * score.ci95:.1f} %", flush=True)
    metrics = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "overwrite")},
        "task": task_args, "model": config.model, "results": results, "lake_runs": lake,
        "pretrain_loss": pretrain_losses, "seconds": time.time() - start,
    }
    write_json_atomic(f"{args.out}/metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    sys.exit(run_study(main, "experiments/omniglot/baselines.py"))
