"""Few-shot baselines without meta-learning, scored with the learners' own inner loop.

Two references a meta-learner must beat on held-out tasks (Chen, Liu, Kira, Wang, Huang.
"A Closer Look at Few-shot Classification", ICLR 2019, https://arxiv.org/abs/1904.04232):

- `train_from_scratch`: every task trains a freshly initialised network on its support
  set alone, for a fixed number of optimiser steps, and is scored on its query set.
- `pretrain_classifier` then `finetune_head`: Chen et al.'s "Baseline". A body and a
  linear head are trained as one ordinary classifier over all meta-train classes; each
  held-out task then fits a new linear head on the support features of the fixed body
  (run in evaluation mode) and is scored on its query set.

Both fine-tuning stages run `MetaLearner.eval(..., per_task=True)`, the same inner loop,
query pass and metrics (`acc_outer`, `loss_outer`) as the meta-learners, vmapped over a
batch of tasks.
"""

from typing import Callable, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import optax

from metax.data import Dataset, MetaDataset, check_metabatch
from metax.energy import CrossEntropy, EnergyFunction
from metax.learner.base import MetaLearnerState, Metrics
from metax.learner.maml import ModelAgnosticMetaLearning
from metax.module.anil import AlmostNoInnerLoop, AlmostNoInnerLoopMetaParams, AlmostNoInnerLoopMetaState
from metax.module.base import as_transformed_with_state, linear_head
from metax.module.init import LearnedInit

SampleBatch = Callable[[jax.Array], Dataset]


def _evaluator(module, steps: int, optimizer: optax.GradientTransformation) -> ModelAgnosticMetaLearning:
    # Only `eval` is used: the outer optimiser never runs. set_to_zero, not identity: identity
    # returns the gradient itself, which the constructor's probe rightly reads as ascent.
    return ModelAgnosticMetaLearning(module, None, steps, optimizer, optax.set_to_zero())


def train_from_scratch(
    rng: jax.Array,
    tasks: MetaDataset,
    *,
    network: hk.TransformedWithState,
    steps: int,
    optimizer: optax.GradientTransformation,
    loss_fn: EnergyFunction = CrossEntropy(),
) -> Metrics:
    """Trains a fresh `network` on each task's support set; scores its query set.

    Args:
      rng: one key; each task gets its own initialisation and inner-loop keys from it.
      tasks: a meta-batch, leaves `(tasks, samples, ...)`, integer labels `(tasks, samples)`.
      network: `hk.transform_with_state` (or `hk.transform`) of `f(x, is_training)` ending
        in one logit per class, e.g. `metax.models.mlp_fn([32, 32], ways)`.
      steps: full-batch optimiser steps on the support set (static).
      optimizer: e.g. `optax.adam(1e-2)`, with fresh state per task.
      loss_fn: the training and scoring loss (cross-entropy, which reports `acc`).

    Returns:
      Per-task metrics, each `(tasks,)`: `acc_outer` and `loss_outer` on the query set,
      `loss_inner_init` on the support set before training.

    Example:
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 3))  # 2 tasks, 6 samples, 3 features
      >>> y = jnp.tile(jnp.array([0, 1, 0, 1, 0, 1]), (2, 1))
      >>> tasks = metax.data.MetaDataset(metax.data.Dataset(x, y), metax.data.Dataset(x, y))
      >>> scratch = jax.jit(lambda key, tasks: metax.learner.train_from_scratch(key, tasks,
      ...     network=metax.models.mlp_fn([4], 2), steps=2, optimizer=optax.sgd(0.1)))
      >>> metrics = jax.eval_shape(scratch, jax.random.PRNGKey(1), tasks)  # traced, not compiled
      >>> metrics["acc_outer"].shape  # one query accuracy per task
      (2,)
    """
    check_metabatch(tasks, "tasks")
    learner = _evaluator(LearnedInit(loss_fn, loss_fn, network), steps, optimizer)

    def one_task(rng_task, task):
        rng_init, rng_eval = jax.random.split(rng_task)
        fresh = learner.reset(rng_init, task.train.x)  # new weights for every task
        single = jax.tree_util.tree_map(lambda leaf: leaf[None], task)
        _, metrics = learner.eval(rng_eval, fresh, single, steps, per_task=True)
        return jax.tree_util.tree_map(lambda m: m[0], metrics)

    return jax.vmap(one_task)(jax.random.split(rng, tasks.train.x.shape[0]), tasks)


class Classifier(NamedTuple):
    """A body with a linear head, trained as one ordinary classifier.

    Example:
      >>> metax.learner.Classifier._fields
      ('body', 'head', 'state', 'opt_state')
    """

    body: hk.Params  # the body's weights
    head: hk.Params  # linear readout: w (features, classes), b (classes,)
    state: hk.State  # the body's haiku state (batch-norm statistics)
    opt_state: optax.OptState  # the optimiser's state, to continue training


def init_classifier(
    rng: jax.Array,
    sample_input: jax.Array,
    *,
    body: hk.TransformedWithState,
    num_classes: int,
    optimizer: optax.GradientTransformation,
) -> Classifier:
    """Initial weights of `body` plus a `num_classes`-way linear head.

    Args:
      sample_input: a batch of inputs `(samples, *input_shape)`.
      body: `hk.transform_with_state` (or `hk.transform`) of `f(x, is_training)` returning
        features `(samples, features)`, e.g. an MLP with `activate_final=True`.

    Example:
      >>> body = hk.transform_with_state(lambda x, is_training: metax.models.MultilayerPerceptron([4], activate_final=True)(x, is_training))
      >>> sample_batch = lambda key: metax.data.Dataset(jax.random.normal(key, (8, 3)), jnp.arange(8) % 2)
      >>> clf = metax.learner.init_classifier(jax.random.PRNGKey(0), jnp.zeros((8, 3)), body=body,
      ...     num_classes=2, optimizer=optax.adam(1e-2))
      >>> jax.tree_util.tree_map(jnp.shape, clf.head)
      {'head': {'b': (2,), 'w': (4, 2)}}
    """
    body = as_transformed_with_state(body, "body")
    rng_body, rng_head = jax.random.split(rng)
    weights, state = body.init(rng_body, sample_input, is_training=True)
    features, _ = body.apply(weights, state, rng_body, sample_input, True)
    head = linear_head(num_classes).init(rng_head, features)
    return Classifier(weights, head, state, optimizer.init((weights, head)))


def train_classifier(
    rng: jax.Array,
    classifier: Classifier,
    sample_batch: SampleBatch,
    *,
    body: hk.TransformedWithState,
    steps: int,
    optimizer: optax.GradientTransformation,
) -> tuple[Classifier, jax.Array]:
    """`steps` optimiser steps of softmax cross-entropy on batches from `sample_batch`.

    Pure and jit-able (`steps` static); call it repeatedly to train in chunks.

    Args:
      classifier: from `init_classifier` (or an earlier call), with the same `optimizer`.
      sample_batch: `key -> Dataset(x (batch, ...), y (batch,) int)`, e.g.
        `FewShotSplits.batch_sampler("train", batch_size=...)` over the meta-train classes.

    Returns:
      `(classifier, losses)`: the trained classifier and the loss of every step `(steps,)`.

    Example:
      >>> body = hk.transform_with_state(lambda x, is_training: metax.models.MultilayerPerceptron([4], activate_final=True)(x, is_training))
      >>> sample_batch = lambda key: metax.data.Dataset(jax.random.normal(key, (8, 3)), jnp.arange(8) % 2)
      >>> clf = metax.learner.init_classifier(jax.random.PRNGKey(0), jnp.zeros((8, 3)), body=body,
      ...     num_classes=2, optimizer=optax.adam(1e-2))
      >>> clf, losses = metax.learner.train_classifier(jax.random.PRNGKey(1), clf, sample_batch,
      ...     body=body, steps=3, optimizer=optax.adam(1e-2))
      >>> losses.shape
      (3,)
    """
    body = as_transformed_with_state(body, "body")
    num_classes = classifier.head["head"]["b"].shape[-1]
    head_fn = linear_head(num_classes)

    def loss_of(weights, state, rng_apply, batch):
        body_weights, head_weights = weights
        features, state = body.apply(body_weights, state, rng_apply, batch.x, True)
        logits = head_fn.apply(head_weights, features)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch.y).mean(), state

    def step(carry, rng_step):
        weights, state, opt_state = carry
        rng_batch, rng_apply = jax.random.split(rng_step)
        (loss, state), grads = jax.value_and_grad(loss_of, has_aux=True)(weights, state, rng_apply, sample_batch(rng_batch))
        updates, opt_state = optimizer.update(grads, opt_state, weights)
        return (optax.apply_updates(weights, updates), state, opt_state), loss

    carry = ((classifier.body, classifier.head), classifier.state, classifier.opt_state)
    ((body_weights, head), state, opt_state), losses = jax.lax.scan(step, carry, jax.random.split(rng, steps))
    return Classifier(body_weights, head, state, opt_state), losses


def pretrain_classifier(
    rng: jax.Array,
    sample_batch: SampleBatch,
    *,
    body: hk.TransformedWithState,
    num_classes: int,
    steps: int,
    optimizer: optax.GradientTransformation,
) -> tuple[Classifier, jax.Array]:
    """`init_classifier` on a first batch, then `train_classifier` for `steps` steps.

    Example:
      >>> body = hk.transform_with_state(lambda x, is_training: metax.models.MultilayerPerceptron([4], activate_final=True)(x, is_training))
      >>> sample_batch = lambda key: metax.data.Dataset(jax.random.normal(key, (8, 3)), jnp.arange(8) % 2)
      >>> clf, losses = metax.learner.pretrain_classifier(jax.random.PRNGKey(0), sample_batch,
      ...     body=body, num_classes=2, steps=3, optimizer=optax.adam(1e-2))
      >>> isinstance(clf, metax.learner.Classifier), losses.shape
      (True, (3,))
    """
    rng_init, rng_train = jax.random.split(rng)
    sample_input = sample_batch(rng_init).x
    classifier = init_classifier(rng_init, sample_input, body=body, num_classes=num_classes, optimizer=optimizer)
    return train_classifier(rng_train, classifier, sample_batch, body=body, steps=steps, optimizer=optimizer)


def _frozen(body: hk.TransformedWithState) -> hk.TransformedWithState:
    """`body` that always runs in evaluation mode (fixed batch-norm statistics)."""
    return hk.TransformedWithState(
        init=body.init, apply=lambda params, state, rng, x, is_training: body.apply(params, state, rng, x, False)
    )


def finetune_head(
    rng: jax.Array,
    tasks: MetaDataset,
    classifier: Classifier,
    *,
    body: hk.TransformedWithState,
    ways: int,
    steps: int,
    optimizer: optax.GradientTransformation,
    loss_fn: EnergyFunction = CrossEntropy(),
) -> Metrics:
    """Fits a new `ways`-way linear head per task on the fixed body's support features.

    The head starts at zero (a convex problem: softmax regression on fixed features), the
    body runs in evaluation mode and is never updated; the pre-trained head is dropped.

    Args:
      tasks: a meta-batch of held-out tasks.
      classifier: the pre-trained body (`pretrain_classifier`).
      body: the body it was trained with.
      ways: classes per task (the new head's width).
      steps: full-batch optimiser steps on the support set (static).
      optimizer: e.g. `optax.adam(1e-2)`, fresh per task.

    Returns:
      Per-task metrics, each `(tasks,)`: `acc_outer`, `loss_outer`, `loss_inner_init`.

    Example:
      >>> body = hk.transform_with_state(lambda x, is_training: metax.models.MultilayerPerceptron([4], activate_final=True)(x, is_training))
      >>> sample_batch = lambda key: metax.data.Dataset(jax.random.normal(key, (8, 3)), jnp.arange(8) % 2)
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 3))  # 2 tasks, 6 samples, 3 features
      >>> y = jnp.tile(jnp.array([0, 1, 0, 1, 0, 1]), (2, 1))
      >>> tasks = metax.data.MetaDataset(metax.data.Dataset(x, y), metax.data.Dataset(x, y))
      >>> clf, _ = jax.eval_shape(lambda key: metax.learner.pretrain_classifier(key, sample_batch,
      ...     body=body, num_classes=2, steps=1, optimizer=optax.adam(1e-2)), jax.random.PRNGKey(0))
      >>> finetune = jax.jit(lambda key, tasks, clf: metax.learner.finetune_head(key, tasks, clf,
      ...     body=body, ways=2, steps=2, optimizer=optax.sgd(0.1)))
      >>> metrics = jax.eval_shape(finetune, jax.random.PRNGKey(1), tasks, clf)  # traced, not compiled
      >>> metrics["acc_outer"].shape
      (2,)
    """
    check_metabatch(tasks, "tasks")
    body = as_transformed_with_state(body, "body")
    module = AlmostNoInnerLoop(loss_fn, loss_fn, _frozen(body), output_dim=ways)
    learner = _evaluator(module, steps, optimizer)
    sample_input = tasks.train.x[0]
    features, _ = jax.eval_shape(
        lambda x: body.apply(classifier.body, classifier.state, None, x, False), sample_input
    )
    head_shapes = jax.eval_shape(lambda: module.head.init(jax.random.PRNGKey(0), jnp.zeros(features.shape, features.dtype)))
    head_init = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), head_shapes)
    meta_state = MetaLearnerState(
        hparams=AlmostNoInnerLoopMetaParams(classifier.body, head_init),
        hstate=AlmostNoInnerLoopMetaState(classifier.state),
        optim=None,
    )
    _, metrics = learner.eval(rng, meta_state, tasks, steps, per_task=True)
    return metrics
