"""`MetaLearner`: the constructor's checks, the input contract and the meta-batch update.

Every learner shares this base. The inner loop (`adapt`) is a single `lax.scan` of an
optax optimiser over the support set; the outer loss adapts from the module's starting
params and scores the query set; both are inherited from `InnerLoop`
(`metax.learner.inner_loop`). `update` vmaps a per-task meta-gradient over the task
axis, averages it and applies the outer optimiser. A learner adds only `grad`, how one
task's meta-gradient is obtained (backprop through `adapt`, implicit at its end point,
a contrastive difference, ...); the `MetaLearner` docstring says how to write one.

The argument checks (`checks`), rematerialisation (`remat`), metric reduction (`reduce`)
and the end-point compatibility check (`end_point`) live in their own modules.
"""

import abc
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metax.data import MetaDataset
from metax.kernel.base import is_learned_optimizer
from metax.learner import contract
from metax.learner.checks import _check_bool, _check_optimizer, _check_positive, _check_steps  # noqa: F401 (learners import them from here)
from metax.learner.end_point import _hparams_fields, check_implicit_compatible  # noqa: F401
from metax.learner.inner_loop import InnerLoop, TaskOutcome  # noqa: F401 (TaskOutcome: re-exported)
from metax.learner.learned_optimizer import WithLearnedOptimizer
from metax.learner.reduce import Metrics, count_nonfinite, reduce_task_metrics
from metax.learner.remat import Remat, _check_remat, remat_block_length, scan_in_blocks  # noqa: F401
from metax.module.base import HParams, HState, MetaModule, Params, State
from metax.utils import tree_mean_keep_dtype


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


class MetaLearner(InnerLoop, abc.ABC):
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
      from the pieces it inherits from `InnerLoop` rather than writing another loop: `adapt_task` (start from
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

      Constructor: take `MetaLearner`'s positional arguments first, in order, then yours,
      then `**options` passed on to `super().__init__` (the base's keyword-only
      `extra_metrics`, `truncation`, `remat`; the registry follows `**options` to them);
      validate your own arguments there (a one-line error naming the argument). A check
      of the module alone goes in `check_module`. An implicit learner needs only its solver: subclass
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
        module = meta_model
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
        self.check_module(module)

    def check_module(self, meta_model: MetaModule) -> None:
        """A hook run at the end of construction with the module the user passed: raise a
        `ValueError` saying why `meta_model` cannot work with this learner. Accepts any."""

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
