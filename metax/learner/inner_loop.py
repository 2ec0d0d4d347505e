"""`InnerLoop`: adapting to one task, written once for every learner.

The model's energies (`energy`, `inner_loss`, `query_energy`), the one inner loop
(`descend`, a single `lax.scan` of an optax optimiser, which `adapt` runs on a support
set) and the outer loss (`outer_loss`: adapt from the module's starting params, then
score the query set). `MetaLearner` inherits them; a learner's `grad` is built from them.

The loop is the gradient-based task adaptation of Finn, Abbeel, Levine, "Model-Agnostic
Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017,
https://arxiv.org/abs/1703.03400, with any optax optimiser (or a learned one) in place of
SGD.
"""

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from metax.data import Dataset, MetaDataset, get_batch
from metax.energy import EnergyFunction
from metax.learner import contract
from metax.learner.checks import _check_steps
from metax.learner.reduce import Metrics
from metax.learner.remat import Remat, _check_remat, remat_block_length, scan_in_blocks
from metax.module.base import HParams, HState, Params, State
from metax.utils import append_keys, tree_add


class TaskOutcome(NamedTuple):
    """What adapting to one task leaves behind (all leaves per task).

    Example:
      >>> metax.learner.TaskOutcome._fields
      ('state', 'params', 'hstate')
    """

    state: State  # model state after the query-set forward pass
    params: Params  # adapted params
    hstate: HState  # meta-state after the query-set forward pass


class InnerLoop:
    """Adapting to one task: the energies, the one inner loop and the outer loss.

    `MetaLearner` inherits these methods; they read the learner's `meta_model`,
    `batch_size`, `optim_fn_inner` / `learned_optimizer`, `first_order`, `truncation`,
    `remat` and `extra_metrics` (see `MetaLearner` for their meaning).

    Example:
      >>> learner = metax.learner.ModelAgnosticMetaLearning(meta_model, None, 3, optax.sgd(0.1), optax.adam(1e-3))
      >>> isinstance(learner, metax.learner.InnerLoop)
      True
      >>> hparams, hstate = learner.reset_hparams(jax.random.PRNGKey(0), sample_input)
      >>> task = jax.tree_util.tree_map(lambda leaf: leaf[0], metabatch)
      >>> state, params, metrics = learner.adapt_task(jax.random.PRNGKey(1), hstate, hparams, task.train, 3)
      >>> sorted(metrics)
      ['loss_inner_init', 'nonfinite_inner']
    """

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
