"""The two few-shot baselines without meta-learning, on held-out classes.

    python experiments/fewshot/baselines.py --out runs/fewshot_baselines
    python experiments/fewshot/baselines.py --quick --out /tmp/smoke

For every `--shots` value it draws `--tasks` held-out N-way K-shot tasks from the
meta-test classes and scores, per task, the query accuracy of

- `scratch`: the network trained from a fresh initialisation on the support set alone
  (`metax.learner.train_from_scratch`: `--scratch-steps` Adam steps at `--scratch-lr`);
- `finetune`: Chen et al.'s "Baseline" (ICLR 2019): the network's body and a linear head
  pre-trained as one classifier over all meta-train classes (`--pretrain-steps` Adam
  steps on class-balanced batches), then a new zero-initialised head fitted on the
  support features of the fixed body (`metax.learner.finetune_head`).

It writes `<out>/metrics.json` (settings, class splits, mean accuracy with a 95%
interval per method and shot count, per-task accuracies, the pre-training loss curve)
and refuses to overwrite an earlier run unless given `--overwrite`. Held-out tasks are
drawn as `metax run` draws them (`metax.experiment.loop.sample_held_out`), the same for
every method: with `--run-seed S`, exactly the tasks the runner scores for a `fewshot`
config with `seed: S` (what experiments/fewshot/run.sh uses), so baselines and
meta-learners are scored on the same tasks; otherwise from `PRNGKey(--test-seed)`.
Pre-training runs through `metax.learner.fit`, scoring through the runner's
`HeldOutEvaluator` (`--chunk` tasks per compiled call).
"""

import argparse
import functools
import sys
import time
from typing import Callable, NamedTuple

import haiku as hk
import jax
import numpy as np
import optax
from tqdm import tqdm

import metax
from metax.experiment import HeldOutEvaluator, interval, refuse_overwrite, write_json_atomic
from metax.experiment.args import study_parser
from metax.experiment.signals import run_study

QUICK = dict(tasks=20, scratch_steps=3, pretrain_steps=20, finetune_steps=3, width=8, chunk=10)


def parse_args(argv=None):
    parser = study_parser(__doc__.split("\n\n")[0], "runs/fewshot_baselines")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny network, few steps and tasks")
    data = parser.add_argument_group("data")
    data.add_argument("--source", choices=["digits", "mnist", "npz", "folder"], default="digits")
    data.add_argument("--path", help="the MNIST folder, .npz file or image-folder root (not for digits)")
    data.add_argument("--image-size", type=int, help="resize folder images to this square size")
    data.add_argument("--rotations", action=argparse.BooleanOptionalAction, default=True,
                      help="four classes per class: images turned by 0/90/180/270 degrees")
    data.add_argument("--fractions", type=float, nargs=3, default=(0.6, 0.2, 0.2), metavar=("TRAIN", "VALID", "TEST"))
    data.add_argument("--split-seed", type=int, default=0, help="shuffles the classes before the fractions cut them")
    data.add_argument("--train-classes", help="explicit meta-train labels, e.g. 0,1,2,3,4,8 (overrides --fractions)")
    data.add_argument("--valid-classes", default="")
    data.add_argument("--test-classes", help="explicit meta-test labels, e.g. 5,6,7,9")
    task = parser.add_argument_group("tasks")
    task.add_argument("--ways", type=int, default=5)
    task.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    task.add_argument("--queries", type=int, default=15)
    task.add_argument("--tasks", type=int, default=600, help="held-out tasks per shot count")
    task.add_argument("--test-seed", type=int, default=1)
    task.add_argument("--run-seed", type=int,
                      help="score the held-out tasks `metax run` draws for a config with this seed (and "
                           "eval.batch_size --run-eval-batch) instead of --test-seed's, so the baselines "
                           "and the configs are scored on the same tasks")
    task.add_argument("--run-eval-batch", type=int, default=250, help="the configs' eval.batch_size (see --run-seed)")
    model = parser.add_argument_group("network and training")
    model.add_argument("--network", choices=["mlp", "conv4"], default="mlp")
    model.add_argument("--width", type=int, default=64, help="MLP hidden width (two layers) or Conv4 channels")
    model.add_argument("--scratch-steps", type=int, default=50)
    model.add_argument("--scratch-lr", type=float, default=1e-2)
    model.add_argument("--pretrain-steps", type=int, default=2000)
    model.add_argument("--pretrain-batch", type=int, default=64)
    model.add_argument("--pretrain-lr", type=float, default=1e-3)
    model.add_argument("--finetune-steps", type=int, default=100)
    model.add_argument("--finetune-lr", type=float, default=1e-1)
    model.add_argument("--chunk", type=int, default=100, help="tasks per compiled evaluation call")
    if parser.parse_args(argv).quick:  # quick settings replace the defaults, not explicit flags
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    if (args.train_classes is None) != (args.test_classes is None):
        parser.error("give --train-classes and --test-classes together (or neither, for --fractions)")
    if args.source != "digits" and not args.path:
        parser.error(f"--source {args.source} needs --path")
    refuse_overwrite(parser, args.out, args.overwrite)
    return args, parser


def load(args) -> tuple[np.ndarray, np.ndarray]:
    if args.source == "digits":
        return metax.data.load_digits()
    if args.source == "mnist":
        return metax.data.load_mnist(args.path, "all")
    if args.source == "npz":
        return metax.data.load_labelled_npz(args.path)
    x, y, _ = metax.data.load_image_folder(args.path, size=args.image_size)
    return x, y


def make_splits(args) -> metax.data.FewShotSplits:
    """The source's classes split by `--train-classes` / `--test-classes` or `--fractions`."""
    x, y = load(args)
    if args.train_classes is not None:
        classes = {"train": labels(args.train_classes), "valid": labels(args.valid_classes), "test": labels(args.test_classes)}
        return metax.data.FewShotSplits(x, y, classes=classes, rotations=args.rotations)
    return metax.data.FewShotSplits(x, y, fractions=args.fractions, seed=args.split_seed, rotations=args.rotations)


def labels(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


def networks(args, ways: int):
    """`(body, network)`: features without readout, and the same body with a `ways` readout."""
    if args.network == "mlp":
        body = lambda x, is_training: metax.models.MultilayerPerceptron([args.width] * 2, activate_final=True)(x, is_training)
        full = lambda x, is_training: metax.models.MultilayerPerceptron([args.width] * 2 + [ways])(x, is_training)
    else:
        body = lambda x, is_training: metax.models.Conv4(args.width)(x, is_training)
        full = lambda x, is_training: metax.models.Conv4(args.width, readout=ways)(x, is_training)
    return hk.transform_with_state(body), hk.transform_with_state(full)


def pretrain(args, splits, body, progress):
    """`(classifier, losses)`: the body and head trained as one classifier on the
    meta-train classes, one `train_classifier` step per `fit` step."""
    optimizer = optax.adam(args.pretrain_lr)
    sample_batch = splits.batch_sampler("train", batch_size=args.pretrain_batch)
    rng = jax.random.PRNGKey(args.seed)
    classifier = metax.learner.init_classifier(
        rng, jax.jit(sample_batch)(rng).x, body=body, num_classes=splits.num_classes("train"), optimizer=optimizer
    )

    def step(classifier, key, sample_batch):
        classifier, losses = metax.learner.train_classifier(key, classifier, sample_batch, body=body, steps=1, optimizer=optimizer)
        return classifier, losses[0]

    with tqdm(total=args.pretrain_steps, desc="pre-train", disable=not progress) as bar:
        classifier, losses = metax.learner.fit(step, classifier, rng, args.pretrain_steps, sample_batch, first=1, chunk=100, progress=bar)
    return classifier, losses.tolist()


def held_out_tasks(args, splits, shots: int) -> metax.data.MetaDataset:
    """The `args.tasks` held-out tasks, drawn as `metax run` draws them in batches of
    `--run-eval-batch`: with `--run-seed`, exactly the tasks the runner scores for a config
    with that seed; otherwise from `PRNGKey(--test-seed)`."""
    sampler = splits.sampler("test", ways=args.ways, shots=shots, queries=args.queries)
    loop = metax.experiment.loop
    key = jax.random.PRNGKey(args.test_seed) if args.run_seed is None else loop.run_keys(args.run_seed).eval_tasks
    return loop.sample_held_out(key, sampler, args.tasks, args.run_eval_batch)


class Scored(NamedTuple):
    """A baseline `fn(rng, tasks, classifier) -> per-task metrics` with `MetaLearner.eval`'s
    signature, so the runner's `HeldOutEvaluator` batches and keys it like a meta-learner."""

    fn: Callable

    def eval(self, rng, classifier, tasks, steps, per_task):
        return classifier, self.fn(rng, tasks, classifier)


def evaluate(args, splits, classifier, body, network, shots, progress):
    """Per-task query accuracies of both baselines on the held-out tasks."""
    tasks = held_out_tasks(args, splits, shots)
    scratch = functools.partial(
        metax.learner.train_from_scratch, network=network, steps=args.scratch_steps, optimizer=optax.adam(args.scratch_lr)
    )
    finetune = functools.partial(
        metax.learner.finetune_head, body=body, ways=args.ways, steps=args.finetune_steps,
        optimizer=optax.adam(args.finetune_lr),
    )
    baselines = {"scratch": lambda rng, tasks, _: scratch(rng, tasks), "finetune": finetune}
    key = jax.random.PRNGKey(args.seed + 1)
    accuracy = {}
    for name, fn in tqdm(baselines.items(), desc=f"{args.ways}-way {shots}-shot", disable=not progress):
        evaluator = HeldOutEvaluator(Scored(fn), tasks, steps=0, key=key, batch_size=args.chunk)
        accuracy[name] = evaluator(classifier)["acc_outer"].tolist()
    return accuracy


def main(argv=None) -> dict:
    args, _ = parse_args(argv)
    progress = sys.stderr.isatty() or not args.quick
    splits = make_splits(args)
    body, network = networks(args, args.ways)
    start = time.time()
    classifier, losses = pretrain(args, splits, body, progress)
    results = {}
    for shots in args.shots:
        accuracy = evaluate(args, splits, classifier, body, network, shots, progress)
        results[f"{args.ways}way_{shots}shot"] = entries = {}
        for method, acc in accuracy.items():
            entry = interval(acc)
            entries[method] = {"acc_mean": entry["mean"], "acc_ci95": entry["ci95"], "acc_per_task": acc}
            print(f"{args.ways}-way {shots}-shot {method:>8}: {100 * entry['mean']:.1f} +- {100 * entry['ci95']:.1f} %")
    metrics = {
        "settings": {key: value for key, value in vars(args).items() if key not in ("out", "overwrite")},
        "splits": {split: list(splits.labels[split]) for split in metax.data.SPLITS},
        "num_classes": {split: splits.num_classes(split) for split in metax.data.SPLITS},
        "results": results,
        "pretrain_loss": losses,
        "seconds": time.time() - start,
    }
    write_json_atomic(f"{args.out}/metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    sys.exit(run_study(main, "experiments/fewshot/baselines.py"))
