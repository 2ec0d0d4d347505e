"""`MetaLearner`: the one inner loop, the outer loss and the meta-batch update.

Every learner shares this base. The inner loop (`adapt`) is a single `lax.scan` of an
optax optimiser over the support set; the outer loss adapts from the module's starting
params and scores the query set; `update` vmaps a per-task meta-gradient over the task
axis, averages it and applies the outer optimiser. A learner adds only `grad`, how one
task's meta-gradient is obtained (backprop through `adapt`, implicit at its end point,
a contrastive difference, ...).
"""

import abc
import functools
import operator
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from metax.data import Dataset, MetaDataset, check_metabatch, get_batch
from metax.energy import EnergyFunction
from metax.kernel.base import WithLearnedOptimizer, is_learned_optimizer
from metax.module.base import HParams, HState, MetaModule, Params, State
from metax.utils import append_keys, tree_add, tree_mean_keep_dtype

Metrics = dict[str, jax.Array]


class MetaLearnerState(NamedTuple):
    """The outer loop's state."""

    hparams: HParams  # meta-parameters (pytree of the module's choosing)
    hstate: HState  # meta-state, averaged over the meta-batch after each update
    optim: optax.OptState  # state of `optim_fn_outer`


class TaskOutcome(NamedTuple):
    """What adapting to one task leaves behind (all leaves per task)."""

    state: State  # model state after the query-set forward pass
    params: Params  # adapted params
    hstate: HState  # meta-state after the query-set forward pass


def _check_optimizer(optimizer: Any, argument: str) -> None:
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"{argument} must be an optax.GradientTransformation such as optax.sgd(0.01), "
            f"got {type(optimizer).__name__}."
        )


def _check_steps(steps: Any, argument: str) -> int:
    try:
        steps = operator.index(steps)
    except TypeError:
        raise TypeError(
            f"{argument} must be a Python int (the length of the inner loop), got "
            f"{type(steps).__name__}; under jax.jit mark it static, e.g. "
            "jax.jit(learner.eval, static_argnames='steps')."
        ) from None
    if steps < 0:
        raise ValueError(f"{argument} must be >= 0, got {steps}.")
    return steps


class MetaLearner(abc.ABC):
    """Base class of all meta-learning algorithms.

    Args:
      meta_model: the `MetaModule` whose hparams are meta-learned.
      batch_size: support samples per inner step; None uses the whole support set
        (full-batch gradient descent).
      steps_inner: inner-loop steps during meta-training.
      optim_fn_inner: optax optimiser of the inner loop (fresh state per task), or a
        learned optimiser (`metax.kernel`: `init(rng, params) -> theta`,
        `optimizer(theta) -> optax.GradientTransformation`) whose theta is then
        meta-learned in `hparams.optimizer`, for learners with `can_learn_optimizer`.
      optim_fn_outer: optax optimiser applied to the averaged meta-gradient.
      extra_metrics: also report the inner loss and gradient norm after the last inner
        step (`loss_inner_final`, `gradnorm_inner_final`), at the price of one more
        forward/backward pass per task. The initial inner loss is always reported: the
        loop computes it anyway.
    """

    first_order: bool = False  # stop gradients through inner-loop gradients
    can_learn_optimizer: bool = False  # does the meta-gradient pass through inner updates?

    def __init__(
        self,
        meta_model: MetaModule,
        batch_size: Optional[int],
        steps_inner: int,
        optim_fn_inner: optax.GradientTransformation,
        optim_fn_outer: optax.GradientTransformation,
        *,
        extra_metrics: bool = False,
    ) -> None:
        if not isinstance(meta_model, MetaModule):
            raise TypeError(f"meta_model must be a metax.module.MetaModule, got {type(meta_model).__name__}.")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be None (full batch) or a positive int, got {batch_size!r}.")
        _check_optimizer(optim_fn_outer, "optim_fn_outer")
        self.steps_inner = _check_steps(steps_inner, "steps_inner")
        self.learned_optimizer = None
        if is_learned_optimizer(optim_fn_inner):
            self._check_learnable(optim_fn_inner)
            self.learned_optimizer = optim_fn_inner
            meta_model = WithLearnedOptimizer(meta_model, optim_fn_inner)
        else:
            _check_optimizer(optim_fn_inner, "optim_fn_inner")
        self.meta_model = meta_model
        self.batch_size = batch_size
        self.optim_fn_inner = optim_fn_inner
        self.optim_fn_outer = optim_fn_outer
        self.extra_metrics = extra_metrics

    # -- the model's energies, written once ---------------------------------------------

    def energy(
        self,
        loss_fn: EnergyFunction,
        rng: jax.Array,
        state: State,
        hstate: HState,
        params: Params,
        hparams: HParams,
        dataset: Dataset,
        is_training: bool,
    ) -> tuple[jax.Array, tuple[tuple[State, HState], Metrics]]:
        """Applies the module to `dataset.x` and scores it with `loss_fn`."""
        rng_pred, rng_loss = jax.random.split(rng)
        pred, (state, hstate) = self.meta_model(rng_pred, state, hstate, params, hparams, dataset.x, is_training)
        loss, metrics = loss_fn(rng_loss, pred, dataset.y, params, hparams, state, hstate, dataset.info)
        return loss, ((state, hstate), metrics)

    def inner_loss(self, rng, state, hstate, params, hparams, batch):
        """The module's inner energy on a support batch (training mode)."""
        return self.energy(self.meta_model.loss_fn_inner, rng, state, hstate, params, hparams, batch, True)

    # -- the one inner loop -----------------------------------------------------------------

    def _check_learnable(self, learned_optimizer: Any) -> None:
        name = type(learned_optimizer).__name__
        if not self.can_learn_optimizer:
            raise ValueError(
                f"{type(self).__name__} cannot learn the inner optimiser {name}: its "
                "meta-gradient does not pass through the inner updates, so the optimiser's "
                "parameters would never change. Use ModelAgnosticMetaLearning (first_order=True "
                "works too) or Evosax, or pass a plain optax optimiser."
            )
        num_steps = getattr(learned_optimizer, "num_steps", None)
        if num_steps is not None and num_steps < self.steps_inner:
            raise ValueError(
                f"{name} has a per-step schedule of num_steps={num_steps}, shorter than "
                f"steps_inner={self.steps_inner}; make num_steps >= steps_inner."
            )

    def inner_optimizer(self, hparams: HParams) -> optax.GradientTransformation:
        """The optimiser `adapt` runs: `optim_fn_inner`, or the learned optimiser built
        from the theta that travels in `hparams.optimizer`."""
        if self.learned_optimizer is None:
            return self.optim_fn_inner
        return self.learned_optimizer.optimizer(hparams.optimizer)

    def support_energy(self, hstate: HState, dataset: Dataset) -> Callable:
        """`energy(rng, state, params, hparams) -> (loss, (state, metrics))` on `dataset`,
        drawing a minibatch of `batch_size` samples per call when `batch_size` is set."""

        def energy(rng, state, params, hparams):
            rng_batch, rng_loss = jax.random.split(rng)
            batch = dataset if self.batch_size is None else get_batch(rng_batch, dataset, self.batch_size)
            loss, ((state, _), metrics) = self.inner_loss(rng_loss, state, hstate, params, hparams, batch)
            return loss, (state, metrics)

        return energy

    def descend(
        self,
        rng: jax.Array,
        state: State,
        params: Params,
        hparams: HParams,
        energy: Callable,
        optimizer: optax.GradientTransformation,
        steps: int,
        *,
        accumulate_hgrads: bool = False,
        truncation: Optional[int] = None,
        remat: bool = False,
        opt_state: Optional[optax.OptState] = None,
        return_opt_state: bool = False,
    ) -> tuple:
        """The inner loop: `steps` optimiser steps on `energy`, as one `lax.scan`.

        Every learner's inner optimisation runs here: `adapt` on the support loss,
        equilibrium propagation's nudged phase on its nudged energy, BufferedReptile with
        `accumulate_hgrads`, which also sums the partial gradients of `energy` with
        respect to `hparams` over the steps.

        Args:
          energy: `energy(rng, state, params, hparams) -> (loss, (state, metrics))`.
          truncation: if set, meta-gradients flow only through the last `truncation`
            steps (truncated backpropagation through the loop).
          remat: recompute each step's activations in the backward pass instead of
            storing them (`jax.checkpoint`): memory O(1) in the steps for ~1 extra
            forward pass.
          opt_state: the optimiser state to continue from (default `optimizer.init(params)`),
            so a trajectory can be run in segments.
          return_opt_state: also return the final optimiser state, as a fifth element.

        Returns:
          `(state, params, losses, hgrads_sum)`: final state and params, the loss before
          each step (shape `(steps,)`), and the summed hparam gradients (or None).
        """
        argnums = (2, 3) if accumulate_hgrads else 2
        grad_fn = jax.value_and_grad(energy, argnums=argnums, has_aux=True)

        if truncation is not None and not 1 <= truncation <= steps:
            raise ValueError(
                f"truncation={truncation} must lie in [1, {steps}], the inner loop's length; "
                "use None to backpropagate through every step."
            )
        cut = None if truncation is None or truncation == steps else steps - truncation

        def step(carry, inputs):
            index, rng_step = inputs
            if cut is not None:
                # Gradients reach the carry only from the last `truncation` steps.
                carry = jax.lax.cond(index == cut, jax.lax.stop_gradient, lambda c: c, carry)
            state, params, opt_state, hgrads_sum = carry
            (loss, (state, _)), grads = grad_fn(rng_step, state, params, hparams)
            if accumulate_hgrads:
                grads, hgrads = grads
                hgrads_sum = tree_add(hgrads_sum, hgrads)
            if self.first_order:
                grads = jax.lax.stop_gradient(grads)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (state, optax.apply_updates(params, updates), opt_state, hgrads_sum), loss

        hgrads_sum = jax.tree_util.tree_map(jnp.zeros_like, hparams) if accumulate_hgrads else None
        opt_state = optimizer.init(params) if opt_state is None else opt_state
        body = jax.checkpoint(step) if remat else step
        inputs = (jnp.arange(steps), jax.random.split(rng, steps))
        (state, params, opt_state, hgrads_sum), losses = jax.lax.scan(
            body, (state, params, opt_state, hgrads_sum), inputs
        )
        if return_opt_state:
            return state, params, losses, hgrads_sum, opt_state
        return state, params, losses, hgrads_sum

    def adapt(
        self,
        rng: jax.Array,
        state: State,
        hstate: HState,
        params: Params,
        hparams: HParams,
        dataset: Dataset,
        steps: int,
    ) -> tuple[tuple[State, Params], Metrics]:
        """Runs `steps` inner-optimiser steps on `dataset` (one task's support set).

        Returns:
          `((state, params), metrics)` with `loss_inner_init` (the loss before the first
          step) and, with `extra_metrics`, `loss_inner_final` / `gradnorm_inner_final`.
        """
        steps = _check_steps(steps, "steps")
        num_steps = getattr(self.learned_optimizer, "num_steps", None)
        if num_steps is not None and steps > num_steps:
            raise ValueError(
                f"{type(self.learned_optimizer).__name__} has a schedule of {num_steps} steps but "
                f"the inner loop was asked for {steps}; evaluate with steps <= {num_steps}."
            )
        rng_steps, rng_final = jax.random.split(rng)
        energy = self.support_energy(hstate, dataset)
        state, params, losses, _ = self.descend(
            rng_steps, state, params, hparams, energy, self.inner_optimizer(hparams), steps
        )
        state = self.settle_state(jax.random.fold_in(rng_final, 1), state, hstate, params, hparams, dataset)
        return (state, params), self.inner_metrics(rng_final, state, hstate, params, hparams, dataset, losses)

    def settle_state(
        self, rng: jax.Array, state: State, hstate: HState, params: Params, hparams: HParams, dataset: Dataset
    ) -> State:
        """The model state after one training-mode pass of the adapted `params` over the
        whole support set `dataset`, which the query pass then reads.

        The inner loop's last pass ran before the last update; this one records batch norm
        statistics of the adapted network: the support statistics the "support" policy
        normalises the query with, one more sample of the "running" averages, the
        "per_step" slot of `steps` updates (`metax.models.norm`). For a network without
        state it computes nothing that is used, and `jit` removes it.
        """
        _, ((state, _), _) = self.inner_loss(rng, state, hstate, params, hparams, dataset)
        return state

    def inner_metrics(self, rng, state, hstate, params, hparams, dataset, losses) -> Metrics:
        """`loss_inner_init` from the loop's own losses; the final ones only on request."""
        metrics = {"loss_inner_init": losses[0]} if losses.shape[0] > 0 else {}
        if self.extra_metrics:
            grad_fn = jax.value_and_grad(self.inner_loss, argnums=3, has_aux=True)
            (loss, _), grads = grad_fn(rng, state, hstate, params, hparams, dataset)
            metrics["loss_inner_final"] = loss
            metrics["gradnorm_inner_final"] = optax.tree.norm(grads)
        return metrics

    # -- the outer loss -----------------------------------------------------------------

    def adapt_task(
        self, rng: jax.Array, hstate: HState, hparams: HParams, dataset: Dataset, steps: int
    ) -> tuple[State, Params, Metrics]:
        """Starts from the module's params for this task and adapts them on `dataset`."""
        rng_reset, rng_adapt = jax.random.split(rng)
        params, state = self.meta_model.reset_params(rng_reset, hparams, hstate, dataset.x)
        (state, params), metrics = self.adapt(rng_adapt, state, hstate, params, hparams, dataset, steps)
        return state, params, metrics

    def query_energy(
        self, rng: jax.Array, state: State, hstate: HState, params: Params, hparams: HParams, dataset: Dataset
    ) -> tuple[jax.Array, tuple[tuple[State, HState], Metrics]]:
        """The outer loss on a query set. It runs with `is_training=False`: batch norm
        normalises with what its policy keeps in the state (`metax.models.norm`), not with
        the query batch, unless the network was built with the "transductive" policy."""
        return self.energy(self.meta_model.loss_fn_outer, rng, state, hstate, params, hparams, dataset, False)

    def outer_loss(
        self,
        rng: jax.Array,
        hstate: HState,
        hparams: HParams,
        metadataset: MetaDataset,
        steps_adapt: int,
    ) -> tuple[jax.Array, tuple[TaskOutcome, Metrics]]:
        """One task: adapt on `train`, score on `test`; differentiable in `hparams`."""
        rng_adapt, rng_outer = jax.random.split(rng)
        state, params, metrics_inner = self.adapt_task(rng_adapt, hstate, hparams, metadataset.train, steps_adapt)
        loss, ((state, hstate), metrics_outer) = self.query_energy(
            rng_outer, state, hstate, params, hparams, metadataset.test
        )
        metrics = {**append_keys(metrics_outer, "outer"), **metrics_inner}
        return loss, (TaskOutcome(state, params, hstate), metrics)

    # -- the outer loop -------------------------------------------------------------------

    def reset(self, rng: jax.Array, sample_input: jax.Array) -> MetaLearnerState:
        """Initial meta-state from one task's support inputs `(samples, *input_shape)`."""
        hparams, hstate = self.meta_model.reset_hparams(rng, sample_input)
        return MetaLearnerState(hparams=hparams, hstate=hstate, optim=self.optim_fn_outer.init(hparams))

    @abc.abstractmethod
    def grad(
        self, rng: jax.Array, hstate: HState, hparams: HParams, metadataset: MetaDataset
    ) -> tuple[HParams, HState, Metrics]:
        """One task's meta-gradient (same tree as hparams), its new hstate and metrics."""

    def update(
        self, rng: jax.Array, meta_state: MetaLearnerState, metabatch: MetaDataset
    ) -> tuple[MetaLearnerState, Metrics]:
        """One outer step on a meta-batch (leaves `(tasks, samples, ...)`); jit-able."""
        check_metabatch(metabatch)
        rngs = jax.random.split(rng, metabatch.train.x.shape[0])
        batch_grad = jax.vmap(self.grad, in_axes=(0, None, None, 0))
        hgrads, hstate, metrics = batch_grad(rngs, meta_state.hstate, meta_state.hparams, metabatch)
        hgrads = jax.tree_util.tree_map(functools.partial(jnp.mean, axis=0), hgrads)
        return self.apply_meta_gradient(meta_state, hgrads, tree_mean_keep_dtype(hstate), metrics)

    def apply_meta_gradient(
        self, meta_state: MetaLearnerState, hgrads: HParams, hstate: HState, task_metrics: Metrics
    ) -> tuple[MetaLearnerState, Metrics]:
        """Applies the outer optimiser to the averaged meta-gradient `hgrads`."""
        updates, optim = self.optim_fn_outer.update(hgrads, meta_state.optim, meta_state.hparams)
        hparams = optax.apply_updates(meta_state.hparams, updates)
        metrics = {
            **jax.tree_util.tree_map(functools.partial(jnp.mean, axis=0), task_metrics),
            "gradnorm_outer": optax.tree.norm(hgrads),
        }
        return MetaLearnerState(hparams=hparams, hstate=hstate, optim=optim), metrics

    def eval(
        self,
        rng: jax.Array,
        meta_state: MetaLearnerState,
        metabatch: MetaDataset,
        steps: int,
        *,
        per_task: bool = False,
    ) -> tuple[tuple[State, Params], Metrics]:
        """Adapts to every task of `metabatch` for `steps` steps and scores the query sets.

        `steps` sets the loop length, so under `jax.jit` it must be static:
        `jax.jit(learner.eval, static_argnames=("steps", "per_task"))`.

        Args:
          per_task: return every metric per task (leading task axis) instead of its mean,
            e.g. for intervals over held-out tasks.

        Returns:
          `((state, params), metrics)`: per-task adapted state and params (leading task
          axis) and metrics averaged over tasks (`loss_outer` is the mean query loss), or
          per task with `per_task=True`.
        """
        check_metabatch(metabatch)
        steps = _check_steps(steps, "steps")
        rngs = jax.random.split(rng, metabatch.train.x.shape[0])
        outer = functools.partial(self.outer_loss, steps_adapt=steps)
        _, (outcome, metrics) = jax.vmap(outer, in_axes=(0, None, None, 0))(
            rngs, meta_state.hstate, meta_state.hparams, metabatch
        )
        if not per_task:
            metrics = jax.tree_util.tree_map(functools.partial(jnp.mean, axis=0), metrics)
        return (outcome.state, outcome.params), metrics


def check_implicit_compatible(learner: MetaLearner) -> None:
    """Refuses modules with hparams that act only through the inner loop's starting point.

    Learners that differentiate at the inner loop's end point (implicit, equilibrium
    propagation) see no dependence of that end point on an initialisation unless the
    inner loss itself pulls toward it, so such hparams would silently never learn.

    Raises:
      ValueError: naming the hparams and what to use instead.
    """
    module = learner.meta_model
    if module.init_keys and not module.anchors_init:
        fields = ", ".join(repr(h) for h in module.init_keys.values())
        raise ValueError(
            f"{type(learner).__name__} differentiates at the inner loop's end point, where "
            f"{type(module).__name__}'s hparams {fields} have no effect: they only set the "
            "optimiser's starting point. Add a pull toward them in the inner loss (e.g. "
            "LearnedInit(..., reg_strength=1.0), iMAML) or use ModelAgnosticMetaLearning, "
            "Reptile or Evosax."
        )
