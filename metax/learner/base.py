"""`MetaLearner`: the one inner loop, the outer loss and the meta-batch update.

Every learner shares this base. The inner loop (`adapt`) is a single `lax.scan` of an
optax optimiser over the support set; the outer loss adapts from the module's starting
params and scores the query set; `update` vmaps a per-task meta-gradient over the task
axis, averages it and applies the outer optimiser. A learner adds only `grad`, how one
task's meta-gradient is obtained (backprop through `adapt`, implicit at its end point,
a contrastive difference, ...); the `MetaLearner` docstring says how to write one.
"""

import abc
import functools
import math
import operator
import warnings
from typing import Any, Callable, Literal, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metax.data import Dataset, MetaDataset, get_batch
from metax.energy import EnergyFunction
from metax.kernel.base import is_learned_optimizer
from metax.learner import contract
from metax.learner.learned_optimizer import WithLearnedOptimizer
from metax.module.base import HParams, HState, MetaModule, Params, State
from metax.utils import append_keys, tree_add, tree_mean_keep_dtype

Metrics = dict[str, jax.Array]


class MetaLearnerState(NamedTuple):
    """The outer loop's state.

    Example:
      >>> learner = metax.learner.ModelAgnosticMetaLearning(meta_model, None, 1, optax.sgd(0.1), optax.adam(1e-3))
      >>> state = learner.reset(jax.random.PRNGKey(0), sample_input)
      >>> state._fields
      ('hparams', 'hstate', 'optim')
    """

    hparams: HParams  # meta-parameters (pytree of the module's choosing)
    hstate: HState  # meta-state, averaged over the meta-batch after each update
    optim: optax.OptState  # state of `optim_fn_outer`


class TaskOutcome(NamedTuple):
    """What adapting to one task leaves behind (all leaves per task).

    Example:
      >>> metax.learner.TaskOutcome._fields
      ('state', 'params', 'hstate')
    """

    state: State  # model state after the query-set forward pass
    params: Params  # adapted params
    hstate: HState  # meta-state after the query-set forward pass


def _check_optimizer(optimizer: Any, argument: str) -> None:
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"{argument} must be an optax.GradientTransformation such as optax.sgd(0.01), "
            f"got {type(optimizer).__name__}."
        )
    # Probe one step: a descent optimiser moves against a positive gradient. Optimisers
    # that need more than (grads, state, params), e.g. a line search, are not probed.
    params = jnp.zeros((2,), jnp.float32)
    try:
        updates, _ = optimizer.update(jnp.ones_like(params), optimizer.init(params), params)
        step = np.asarray(updates, np.float64)
    except Exception:  # noqa: BLE001 (any failure just means "cannot probe")
        return
    if step.shape == params.shape and np.any(step > 0):
        raise ValueError(
            f"{argument} moves parameters up the gradient (a step of {step[0]:+g} for a gradient "
            "of +1): is its learning rate negative? Pass a positive learning rate, e.g. optax.sgd(0.01)."
        )


def _check_steps(steps: Any, argument: str) -> int:
    if isinstance(steps, bool):
        raise TypeError(f"{argument} must be a Python int, got {steps!r}.")
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


def _check_bool(value: Any, argument: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{argument} must be True or False, got {value!r}.")
    return bool(value)


def _check_positive(value: Any, argument: str, meaning: str) -> float:
    """A finite float > 0, or a one-line error naming `argument`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{argument} must be a number ({meaning}), got {value!r}.") from None
    if isinstance(value, bool) or not (np.isfinite(number) and number > 0):
        raise ValueError(f"{argument} must be > 0 and finite ({meaning}), got {value!r}.")
    return number


Remat = Union[bool, Literal["block"], int]  # the `remat` option: see `MetaLearner`


def _check_remat(remat: Any, steps_inner: int, length: str = "steps_inner") -> Union[bool, str, int]:
    """`remat` as given (False, True, "block" or a block length in [1, steps_inner]),
    or a one-line error naming it (`length` names the loop's length in the message)."""
    if isinstance(remat, (bool, np.bool_)):
        return bool(remat)
    if isinstance(remat, str):
        if remat != "block":
            raise ValueError(
                f"remat={remat!r} is not an option: use False, True (every step), \"block\" "
                "(blocks of about sqrt(steps_inner) steps) or an int block length."
            )
        return remat
    try:
        block = operator.index(remat)
    except TypeError:
        raise TypeError(
            f"remat must be False, True, \"block\" or an int block length, got {remat!r} "
            f"({type(remat).__name__})."
        ) from None
    if not 1 <= block <= max(steps_inner, 1):
        raise ValueError(
            f"remat={block} (the block length of rematerialisation) must lie in [1, "
            f"{length}={steps_inner}]; use remat=\"block\" for blocks of about "
            f"sqrt({length}) steps."
        )
    return block


def remat_block_length(remat: Union[bool, str, int], steps: int) -> Optional[int]:
    """Steps per checkpointed block of a `steps`-long loop under `remat`: None without
    blocks (False, or True: every step checkpointed alone), ceil(sqrt(steps)) for
    "block", else the given length, capped at `steps`."""
    if isinstance(remat, bool):
        return None
    if remat == "block":
        return max(1, math.ceil(math.sqrt(steps)))
    return max(1, min(remat, steps))


def reduce_task_metrics(metrics: Metrics, axes: Any = 0) -> Metrics:
    """Per-task metrics to meta-batch metrics: `nonfinite_*` counts are summed over `axes`,
    everything else is averaged."""
    return {
        key: jnp.sum(value, axis=axes) if key.startswith("nonfinite_") else jnp.mean(value, axis=axes)
        for key, value in metrics.items()
    }


def count_nonfinite(tree: Any) -> jax.Array:
    """1 if any leaf of `tree` holds a NaN or inf, else 0 (int32)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.int32)
    bad = jnp.stack([jnp.any(~jnp.isfinite(leaf)) for leaf in leaves])
    return jnp.any(bad).astype(jnp.int32)


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
      truncation: meta-gradients flow through the last `truncation` inner steps only
        (truncated backpropagation; 1 <= truncation <= steps_inner). None: every step.
      remat: rematerialise the inner loop in the backward pass (`jax.checkpoint`)
        instead of storing every step's residuals. False: store everything (memory
        linear in the steps K). True: checkpoint each step alone; this saves the
        activations inside a step but still keeps every step's params, which dominate
        in MAML, so memory stays linear in K. "block": checkpoint blocks of
        ceil(sqrt(K)) steps, keeping only the params at block boundaries plus one
        block's residuals at a time: memory O(sqrt(K)) for about one extra forward pass
        of the loop (Chen et al., "Training Deep Nets with Sublinear Memory Cost",
        https://arxiv.org/abs/1604.06174, 2016). An int B: blocks of B steps
        (1 <= B <= steps_inner; the last block takes the K mod B remaining steps).
        Values are unchanged by any choice.
        `truncation` and `remat` act on the backward pass through the inner loop, so only
        learners with `gradient_through_inner_loop` (MAML, LearnedKernel) accept them;
        the others refuse them rather than ignore them.

    Learners keep metax's positional signatures (which add their own arguments among
    these, e.g. `steps_cg`); everything metax did not have is keyword-only, after them,
    and `extra_metrics`, `truncation`, `remat` are keyword-only in every learner.

    Metrics of `update` and `eval`, averaged over the meta-batch's tasks unless noted:
      `loss_outer` (query loss after adaptation, plus any other metric of the outer
      energy with the suffix `_outer`), `loss_inner_init` (support loss before the first
      step), `gradnorm_outer` (norm of the averaged meta-gradient, `update` only), and
      two counts, summed over the meta-batch, that a training loop watches to stop a
      run going bad (NaN in the data, a negative or too large learning rate, a divergent
      linear solve):

      - `nonfinite_inner`: inner losses (over tasks and inner steps; for evolution
        strategies over every population member too) that were NaN or infinite;
      - `nonfinite_outer`: tasks whose query loss or meta-gradient holds a NaN or inf
        (for evolution strategies: members x tasks with a non-finite query loss).

      Both are 0 in a healthy run. They never raise: they are computed inside the
      compiled step, at no extra cost.

    The input contract (`metax.learner.contract`): `reset`, `update`, `eval` and `adapt`
    check what enters them once (at trace time under `jit`): argument kinds and order,
    a non-empty support and query set, floating inputs of equal width in both, targets
    that fit the model's output (each energy's `check_target`: a `(N,)` target against an
    `(N, 1)` output fails instead of broadcasting), and the dtype policy: the
    meta-parameters' dtype is fixed at `reset` (float32 for half-precision inputs) and
    inputs are cast to it.

    Writing a learner:
      Subclass `MetaLearner` and implement `grad(rng, hstate, hparams, metadataset) ->
      (hgrads, hstate, metrics)`, one task's meta-gradient (a tree like `hparams`), its
      new hstate and metrics. `update` vmaps it over the tasks, averages and applies
      `optim_fn_outer`; `eval`, `reset` and the input checks come for free. Build `grad`
      from the pieces here rather than writing another loop: `adapt_task` (start from
      the module's params and run the shared inner loop), `outer_loss` (adapt, then
      score the query set; differentiable in hparams), `query_energy`, `inner_loss`,
      `support_energy` + `descend` (the one `lax.scan`; `return_trajectory=True` gives
      the params after every step, `accumulate_hgrads=True` the summed partial hparam
      gradients). Set the class attributes that describe the learner:

      - `gradient_through_inner_loop = True` if `grad` backpropagates through `adapt`
        (then `truncation` / `remat` apply);
      - `end_point_gradient = True` if `grad` differentiates at the inner loop's end
        point (implicit differentiation, equilibrium propagation): construction then
        runs `check_implicit_compatible`, refusing a module none of whose hparams could
        learn and warning about those that stay fixed;
      - `can_learn_optimizer = True` if the meta-gradient reaches a learned optimiser.

      Constructor: take `MetaLearner`'s arguments first, in order, then yours, then
      `*, extra_metrics=False, truncation=None, remat=False` passed on to
      `super().__init__`; validate your own arguments there (a one-line error naming the
      argument). An implicit learner needs only its solver: subclass
      `ImplicitDifferentiation` and set `linear_solve` (see the README's iMAML example).

    Example:
      >>> learner = metax.learner.ModelAgnosticMetaLearning(meta_model, None, 1, optax.sgd(0.1), optax.adam(1e-3))
      >>> isinstance(learner, metax.learner.MetaLearner)
      True
      >>> state = learner.reset(jax.random.PRNGKey(0), sample_input)
      >>> jax.tree_util.tree_structure(state.hparams) == jax.tree_util.tree_structure(state.optim[0].mu)
      True
    """

    first_order: bool = False  # stop gradients through inner-loop gradients
    can_learn_optimizer: bool = False  # does the meta-gradient pass through inner updates?
    gradient_through_inner_loop: bool = False  # does `grad` backpropagate through `adapt`?
    end_point_gradient: bool = False  # does `grad` differentiate at the inner loop's end point?

    def __init__(
        self,
        meta_model: MetaModule,
        batch_size: Optional[int],
        steps_inner: int,
        optim_fn_inner: optax.GradientTransformation,
        optim_fn_outer: optax.GradientTransformation,
        *,
        extra_metrics: bool = False,
        truncation: Optional[int] = None,
        remat: Remat = False,
    ) -> None:
        name = type(self).__name__
        if not isinstance(meta_model, MetaModule):
            raise TypeError(f"meta_model must be a metax.module.MetaModule, got {type(meta_model).__name__}.")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be None (full batch) or a positive int, got {batch_size!r}.")
        _check_optimizer(optim_fn_outer, "optim_fn_outer")
        self.steps_inner = _check_steps(steps_inner, "steps_inner")
        self.extra_metrics = _check_bool(extra_metrics, "extra_metrics")
        if truncation is not None:
            truncation = _check_steps(truncation, "truncation")
            if not 1 <= truncation <= self.steps_inner:
                raise ValueError(
                    f"truncation={truncation} must lie in [1, steps_inner={self.steps_inner}]; use "
                    "None to backpropagate through every inner step."
                )
        wants_remat = not (isinstance(remat, (bool, np.bool_)) and not remat)
        if (truncation is not None or wants_remat) and not self.gradient_through_inner_loop:
            given = f"truncation={truncation}" if truncation is not None else f"remat={remat!r}"
            why = "" if truncation is not None else ": there is no backward pass through the loop to rematerialise"
            raise ValueError(
                f"{name} takes no gradient through the inner loop, so {given} would change "
                f"nothing{why}; drop it (ModelAgnosticMetaLearning and LearnedKernel use it)."
            )
        self.remat = _check_remat(remat, self.steps_inner)
        self.truncation = truncation
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
        # Learners that differentiate at the end point check the module now if its hparams
        # fields are known, else at reset.
        self._end_point_checked = check_implicit_compatible(self) if self.end_point_gradient else True

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

    # -- the input contract -----------------------------------------------------------------

    def check_metabatch(self, method: str, rng: Any, meta_state: Any, metabatch: Any) -> MetaDataset:
        """Checks `update` / `eval` input (see `metax.learner.contract`) and returns the
        meta-batch cast to the meta-parameters' dtype. Shapes only: free under `jit`."""
        contract.check_learner_arguments(method, rng, meta_state, metabatch, MetaLearnerState)
        contract.check_metabatch_contract(metabatch)
        dtype = contract.float_dtype(meta_state.hparams)
        metabatch = MetaDataset(
            contract.cast_dataset(metabatch.train, dtype), contract.cast_dataset(metabatch.test, dtype)
        )
        self.check_model_fits(meta_state.hstate, meta_state.hparams, metabatch)
        return metabatch

    def check_model_fits(self, hstate: HState, hparams: HParams, metabatch: MetaDataset) -> None:
        """Runs the module abstractly on one task and asks each energy whether the targets
        fit its output (`EnergyFunction.check_target`)."""
        task = jax.tree_util.tree_map(lambda leaf: leaf[0], metabatch)
        for split, loss_fn in (("train", self.meta_model.loss_fn_inner), ("test", self.meta_model.loss_fn_outer)):
            data = getattr(task, split)
            pred = self._output_shape(hstate, hparams, data.x, f"metabatch.{split}.x")
            contract.check_targets(loss_fn, pred, data.y, f"metabatch.{split}.y")

    def _output_shape(self, hstate, hparams, x, argument) -> jax.ShapeDtypeStruct:
        def forward(hstate, hparams, x):
            rng = jax.random.PRNGKey(0)
            params, state = self.meta_model.reset_params(rng, hparams, hstate, x)
            return self.meta_model(rng, state, hstate, params, hparams, x, True)[0]

        try:
            pred = jax.eval_shape(forward, hstate, hparams, x)
        except (TypeError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"the model cannot be applied to {argument} (one task's inputs of shape "
                f"{tuple(jnp.shape(x))}): {first}. Were the meta-parameters built by reset from "
                "inputs of this shape, one task's (samples, *input_shape)?"
            ) from error
        leaves = jax.tree_util.tree_leaves(pred)
        return leaves[0] if len(leaves) == 1 else pred

    def reset_hparams(self, rng: jax.Array, sample_input: Any) -> tuple[HParams, HState]:
        """The module's initial hparams from a checked `sample_input` (dtype policy applied);
        runs the end-point check that construction could not."""
        sample_input = contract.check_sample_input(sample_input)
        hparams, hstate = self.meta_model.reset_hparams(rng, sample_input)
        if not self._end_point_checked:
            check_implicit_compatible(self, hparams)
        return hparams, hstate

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
        remat: Remat = False,
        opt_state: Optional[optax.OptState] = None,
        return_opt_state: bool = False,
        return_trajectory: bool = False,
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
          remat: what the backward pass recomputes instead of storing (see
            `MetaLearner`): False nothing, True each step, "block" blocks of
            ceil(sqrt(steps)) steps, an int B blocks of B steps (1 <= B <= steps).
          opt_state: the optimiser state to continue from (default `optimizer.init(params)`),
            so a trajectory can be run in segments.
          return_opt_state: also return the final optimiser state.
          return_trajectory: also return the params after every step, stacked along a
            leading axis of length `steps` (`trajectory[k]` follows step k + 1; the last
            entry is the returned params).

        Returns:
          `(state, params, losses, hgrads_sum)`: final state and params, the loss before
          each step (shape `(steps,)`), and the summed hparam gradients (or None); then
          the final optimiser state if `return_opt_state`, then the trajectory if
          `return_trajectory`.
        """
        argnums = (2, 3) if accumulate_hgrads else 2
        grad_fn = jax.value_and_grad(energy, argnums=argnums, has_aux=True)

        if truncation is not None and not 1 <= truncation <= steps:
            raise ValueError(
                f"truncation={truncation} must lie in [1, {steps}], the inner loop's length; "
                "use None to backpropagate through every step."
            )
        cut = None if truncation is None or truncation == steps else steps - truncation
        block = remat_block_length(_check_remat(remat, steps, "steps"), steps)

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
            params = optax.apply_updates(params, updates)
            return (state, params, opt_state, hgrads_sum), ((loss, params) if return_trajectory else loss)

        hgrads_sum = jax.tree_util.tree_map(jnp.zeros_like, hparams) if accumulate_hgrads else None
        opt_state = optimizer.init(params) if opt_state is None else opt_state
        carry = (state, params, opt_state, hgrads_sum)
        inputs = (jnp.arange(steps), jax.random.split(rng, steps))
        if block is None:
            body = jax.checkpoint(step) if remat else step
            carry, outputs = jax.lax.scan(body, carry, inputs)
        else:
            carry, outputs = scan_in_blocks(step, carry, inputs, block)
        state, params, opt_state, hgrads_sum = carry
        losses, trajectory = outputs if return_trajectory else (outputs, None)
        result = (state, params, losses, hgrads_sum)
        if return_opt_state:
            result += (opt_state,)
        if return_trajectory:
            result += (trajectory,)
        return result

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

        The learner's `truncation` and `remat` apply here (a loop shorter than
        `truncation` runs untruncated: truncation only cuts gradients; a remat block
        longer than the loop is cut to its length).

        Returns:
          `((state, params), metrics)` with `loss_inner_init` (the loss before the first
          step), `nonfinite_inner` and, with `extra_metrics`, `loss_inner_final` /
          `gradnorm_inner_final`.
        """
        steps = _check_steps(steps, "steps")
        contract.check_dataset(dataset, "dataset")
        dataset = contract.cast_dataset(dataset, contract.float_dtype(hparams))
        num_steps = getattr(self.learned_optimizer, "num_steps", None)
        if num_steps is not None and steps > num_steps:
            raise ValueError(
                f"{type(self.learned_optimizer).__name__} has a schedule of {num_steps} steps but "
                f"the inner loop was asked for {steps}; evaluate with steps <= {num_steps}."
            )
        truncation = self.truncation if self.truncation is not None and self.truncation <= steps else None
        rng_steps, rng_final = jax.random.split(rng)
        energy = self.support_energy(hstate, dataset)
        state, params, losses, _ = self.descend(
            rng_steps, state, params, hparams, energy, self.inner_optimizer(hparams), steps,
            truncation=truncation, remat=self._remat_for(steps),
        )
        state = self.settle_state(jax.random.fold_in(rng_final, 1), state, hstate, params, hparams, dataset)
        return (state, params), self.inner_metrics(rng_final, state, hstate, params, hparams, dataset, losses)

    def _remat_for(self, steps: int) -> Remat:
        """The learner's `remat` for a loop of `steps` (eval may run longer or shorter
        loops than `steps_inner`): an int block is capped at the loop's length."""
        if isinstance(self.remat, bool) or self.remat == "block":
            return self.remat
        return min(self.remat, max(steps, 1))

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
        """`loss_inner_init` and `nonfinite_inner` from the loop's own losses; the final
        ones only on request."""
        metrics = {"loss_inner_init": losses[0]} if losses.shape[0] > 0 else {}
        metrics["nonfinite_inner"] = jnp.sum(~jnp.isfinite(losses)).astype(jnp.int32)
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
        """Initial meta-state from one task's support inputs `(samples, *input_shape)`.

        The meta-parameters take `sample_input`'s float dtype (float32 for half-precision
        inputs, with a warning; integer inputs are refused) and keep it: later inputs are
        cast to it.
        """
        hparams, hstate = self.reset_hparams(rng, sample_input)
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
        metabatch = self.check_metabatch("update", rng, meta_state, metabatch)
        rngs = jax.random.split(rng, metabatch.train.x.shape[0])
        batch_grad = jax.vmap(self.grad, in_axes=(0, None, None, 0))
        hgrads, hstate, metrics = batch_grad(rngs, meta_state.hstate, meta_state.hparams, metabatch)
        bad_task = jax.vmap(count_nonfinite)(hgrads)
        if "loss_outer" in metrics:
            bad_task = bad_task | (~jnp.isfinite(metrics["loss_outer"])).astype(jnp.int32)
        metrics = {**metrics, "nonfinite_outer": bad_task}
        hgrads = jax.tree_util.tree_map(functools.partial(jnp.mean, axis=0), hgrads)
        return self.apply_meta_gradient(meta_state, hgrads, tree_mean_keep_dtype(hstate), metrics)

    def apply_meta_gradient(
        self, meta_state: MetaLearnerState, hgrads: HParams, hstate: HState, task_metrics: Metrics
    ) -> tuple[MetaLearnerState, Metrics]:
        """Applies the outer optimiser to the averaged meta-gradient `hgrads`."""
        updates, optim = self.optim_fn_outer.update(hgrads, meta_state.optim, meta_state.hparams)
        hparams = optax.apply_updates(meta_state.hparams, updates)
        metrics = {**reduce_task_metrics(task_metrics), "gradnorm_outer": optax.tree.norm(hgrads)}
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
          axis) and metrics averaged over tasks (`loss_outer` is the mean query loss;
          the `nonfinite_*` counts are summed), or per task with `per_task=True`.
        """
        steps = _check_steps(steps, "steps")
        metabatch = self.check_metabatch("eval", rng, meta_state, metabatch)
        rngs = jax.random.split(rng, metabatch.train.x.shape[0])
        outer = functools.partial(self.outer_loss, steps_adapt=steps)
        losses, (outcome, metrics) = jax.vmap(outer, in_axes=(0, None, None, 0))(
            rngs, meta_state.hstate, meta_state.hparams, metabatch
        )
        metrics = {**metrics, "nonfinite_outer": (~jnp.isfinite(losses)).astype(jnp.int32)}
        if not per_task:
            metrics = reduce_task_metrics(metrics)
        return (outcome.state, outcome.params), metrics


def scan_in_blocks(step: Callable, carry: Any, inputs: Any, block: int) -> tuple[Any, Any]:
    """`jax.lax.scan(step, carry, inputs)` with the backward pass rematerialised in blocks.

    The steps are cut into `len // block` blocks of `block` steps plus, if `block` does
    not divide the length, a last block of the remaining steps. Each block is one
    `jax.checkpoint`-ed scan, so the backward pass keeps only the carries at block
    boundaries and recomputes one block's forward pass at a time: with B = sqrt(K) the
    memory of a K-step loop is O(sqrt(K)) carries instead of O(K), for about one extra
    forward pass. Values and gradients equal the plain scan's.
    """
    length = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    full, rest = divmod(length, block)
    run_block = jax.checkpoint(lambda carry, xs: jax.lax.scan(step, carry, xs))
    head = jax.tree_util.tree_map(lambda x: x[: full * block].reshape(full, block, *x.shape[1:]), inputs)
    carry, outputs = jax.lax.scan(run_block, carry, head)
    outputs = jax.tree_util.tree_map(lambda y: y.reshape(full * block, *y.shape[2:]), outputs)
    if rest:
        tail = jax.tree_util.tree_map(lambda x: x[full * block :], inputs)
        carry, tail_outputs = run_block(carry, tail)
        outputs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), outputs, tail_outputs)
    return carry, outputs


def _hparams_fields(hparams: Any) -> Optional[tuple[str, ...]]:
    """The fields of an hparams NamedTuple or dict that hold at least one leaf."""
    if isinstance(hparams, tuple) and hasattr(hparams, "_fields"):
        items = hparams._asdict().items()
    elif isinstance(hparams, dict):
        items = hparams.items()
    else:
        return None
    return tuple(key for key, value in items if jax.tree_util.tree_leaves(value))


def check_implicit_compatible(learner: MetaLearner, hparams: Any = None) -> bool:
    """Which hparams can a learner that differentiates at the inner loop's end point learn?

    Such learners (implicit differentiation, equilibrium propagation) see no dependence of
    the end point on an hparam that only sets where the inner loop starts (an entry of
    the module's `init_keys`), unless the inner loss itself pulls toward it
    (`anchors_init`, e.g. iMAML's `reg_strength`): its meta-gradient is exactly zero.
    `MetaLearner.__init__` calls this for learners with `end_point_gradient`, with the
    fields the module declares (`hparams_fields`), and `reset` again with the real
    hparams when the module declares none.

    Returns:
      True if the check could be made (fields known), False if it must wait for `reset`.

    Raises:
      ValueError: if no hparam could receive a meta-gradient, saying what to use instead.

    Warns:
      UserWarning: naming the hparams that stay at their initial values when others learn.
    """
    module = learner.meta_model
    if not module.init_keys or module.anchors_init:
        return True
    fields = module.hparams_fields if hparams is None else _hparams_fields(hparams)
    if fields is None:
        return False
    init_only = set(module.init_keys.values())
    fixed = [field for field in fields if field in init_only]
    learnable = [field for field in fields if field not in init_only]
    name, module_name = type(learner).__name__, type(module).__name__
    if not learnable:
        listed = ", ".join(repr(f) for f in fixed or sorted(init_only))
        raise ValueError(
            f"{name} differentiates at the inner loop's end point, where {module_name}'s hparams "
            f"{listed} have no effect: they only set the optimiser's starting point, so nothing "
            "would learn. Add a pull toward them in the inner loss (e.g. "
            "LearnedInit(..., reg_strength=1.0), iMAML) or use ModelAgnosticMetaLearning, "
            "Reptile or Evosax."
        )
    if fixed:
        warnings.warn(
            f"{name} with {module_name}: hparams {', '.join(repr(f) for f in fixed)} only set the inner "
            f"loop's starting point, so they get no meta-gradient and stay at their initial values; "
            f"{', '.join(repr(f) for f in learnable)} are meta-learned. To learn them too, pass "
            "reg_strength to the module (iMAML) or use ModelAgnosticMetaLearning.",
            UserWarning,
            stacklevel=4,
        )
    return True
