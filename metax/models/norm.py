"""Batch normalisation with an explicit policy for the inner loop and the query pass.

In meta-learning a network meets two kinds of batches: the support set, in training
mode (`is_training=True`, every inner step), and the query set, in evaluation mode
(`is_training=False`, the learner's `query_energy`). What the query pass normalises
with decides whether the prediction for one query example depends on the other query
examples (transduction). Bronskill, Gordon, Requeima, Nowozin, Turner. "TaskNorm:
Rethinking Batch Normalization for Meta-Learning", ICML 2020,
https://arxiv.org/abs/2003.03284, compare the choices; metax names four:

- `"running"` (haiku's `hk.BatchNorm`): training passes normalise with the batch's own
  statistics and fold them into exponential moving averages; the query pass uses the
  averages. The averages are model state, which every module carries as meta-state, so
  they run across tasks and meta-batches.
- `"support"` (MetaBN in Bronskill et al.): training passes normalise with the batch's
  statistics and store them; the query pass normalises with the stored statistics of
  the last training pass, which the learner makes on the whole support set with the
  adapted weights (`MetaLearner.settle_state`). Nothing of other tasks is used.
- `"per_step"` (Antoniou, Edwards, Storkey. "How to train your MAML", ICLR 2019,
  https://arxiv.org/abs/1810.09502, per-step batch-norm running statistics): one set of
  running statistics per inner step. The `t`-th training pass of a task (counted in the
  state from 0) normalises with its batch's statistics and updates slot `t`; the query
  pass normalises with the slot of the task's last training pass, i.e. the statistics of
  networks adapted for as many steps, averaged over earlier tasks, and marks the task as
  ended, so that the next training pass (the next task's first) counts from 0 again.
  Passes past `steps` share the last slot. MAML++'s per-step learned scales and offsets
  are not included.
- `"transductive"` (the reference MAML code of Finn et al. 2017): every pass, the query
  pass included, normalises with its own batch's statistics. The query predictions then
  depend on the whole query set; choose it knowingly. It keeps no state.

No policy lets the query set change the statistics (an evaluation-mode pass leaves them
alone), so the query set never reaches the support adaptation of this or later tasks.
"""

from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

BATCH_NORM_POLICIES = ("running", "support", "per_step", "transductive")


def check_batch_norm_policy(policy: str, steps: Optional[int]) -> None:
    """Raises unless `policy` is known and `steps` is given exactly when it is "per_step".

    Raises:
      ValueError: naming `batch_norm_policy` / `batch_norm_steps` and what to pass.
    """
    if policy not in BATCH_NORM_POLICIES:
        raise ValueError(
            f"batch_norm_policy must be one of {list(BATCH_NORM_POLICIES)}, got {policy!r} "
            "(see metax.models.norm for what each uses in the inner loop and the query pass)."
        )
    if policy == "per_step":
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(
                "batch_norm_policy='per_step' keeps running statistics for each inner step, so it "
                f"needs batch_norm_steps, the number of inner steps (an int >= 0); got {steps!r}."
            )
    elif steps is not None:
        raise ValueError(
            f"batch_norm_steps={steps} applies only to batch_norm_policy='per_step', not {policy!r}; "
            "leave it out."
        )


class BatchNorm(hk.Module):
    """Batch normalisation over all axes but the last, with a meta-learning `policy`.

    Args:
      create_scale, create_offset: learn a per-channel scale / offset (else they may be
        passed at call time, e.g. as the gains and shifts of a modulating module).
      policy: what training passes and the query pass normalise with: "running",
        "support", "per_step" or "transductive" (see the module docstring).
      steps: the number of inner steps, for "per_step" (it keeps `steps + 1` slots: the
        statistics after 0, 1, ..., `steps` updates).
      decay: the moving averages' decay ("running" and "per_step").
      eps: added to the variance.

    State (haiku state, as the `name/~/...` entries of the network's state):
      "running": `mean_ema` and `var_ema` (`hk.ExponentialMovingAverage`, as in
      `hk.BatchNorm`); "support": `mean` and `var` of the last training batch, shape
      `(1, ..., channels)`; "per_step": `mean`, `var` (zero-started averages, shape
      `(steps + 1, 1, ..., channels)`), `weight` (their debiasing weights `1 - decay^n`,
      `(steps + 1,)`), `step` (training passes in the current task, int32) and `ended`
      (int32, 1 after a query pass: the next training pass starts a task);
      "transductive": none.

    Example:
      >>> norm = hk.transform_with_state(lambda x, train: metax.models.BatchNorm(True, True, policy="support")(x, train))
      >>> x = jnp.array([[1.0, 10.0], [3.0, 30.0]])
      >>> params, state = norm.init(None, x, True)
      >>> out, state = norm.apply(params, state, None, x, True)
      >>> out.round(3)
      Array([[-1., -1.],
             [ 1.,  1.]], dtype=float32)
      >>> state["batch_norm"]["mean"], state["batch_norm"]["var"]
      (Array([[ 2., 20.]], dtype=float32), Array([[  1., 100.]], dtype=float32))
    """

    def __init__(
        self,
        create_scale: bool,
        create_offset: bool,
        policy: str = "running",
        steps: Optional[int] = None,
        decay: float = 0.9,
        eps: float = 1e-5,
        name: Optional[str] = None,
    ) -> None:
        check_batch_norm_policy(policy, steps)
        super().__init__(name=name)
        self.create_scale = create_scale
        self.create_offset = create_offset
        self.policy = policy
        self.steps = steps
        self.decay = decay
        self.eps = eps
        if policy == "running":  # built here so their state is named `name/~/mean_ema`, as in hk.BatchNorm
            self.mean_ema = hk.ExponentialMovingAverage(decay, name="mean_ema")
            self.var_ema = hk.ExponentialMovingAverage(decay, name="var_ema")

    def __call__(
        self,
        inputs: jax.Array,
        is_training: bool,
        scale: Optional[jax.Array] = None,
        offset: Optional[jax.Array] = None,
    ) -> jax.Array:
        """Normalises `inputs` `(..., channels)` per channel; see the class docstring."""
        axes = tuple(range(inputs.ndim - 1))
        stats_shape = (1,) * (inputs.ndim - 1) + (inputs.shape[-1],)
        if is_training or self.policy == "transductive":
            mean = jnp.mean(inputs, axes, keepdims=True)
            var = jnp.mean(jnp.square(inputs - mean), axes, keepdims=True)
            if is_training:
                self._record(mean, var, stats_shape)
        else:
            mean, var = self._recall(stats_shape, inputs.dtype)
        if self.create_scale:
            scale = hk.get_parameter("scale", stats_shape, inputs.dtype, jnp.ones)
        if self.create_offset:
            offset = hk.get_parameter("offset", stats_shape, inputs.dtype, jnp.zeros)
        out = (inputs - mean) * jax.lax.rsqrt(var + self.eps)
        if scale is not None:
            out = out * scale
        return out if offset is None else out + offset

    # -- state per policy ------------------------------------------------------------------

    def _record(self, mean: jax.Array, var: jax.Array, shape: tuple[int, ...]) -> None:
        if self.policy == "running":
            self.mean_ema(mean)
            self.var_ema(var)
        elif self.policy == "support":
            hk.get_state("mean", shape, mean.dtype, jnp.zeros)
            hk.get_state("var", shape, var.dtype, jnp.ones)
            hk.set_state("mean", mean)
            hk.set_state("var", var)
        elif self.policy == "per_step":
            means, variances, weights, step, ended = self._slots(shape, mean.dtype)
            step = jnp.where(ended > 0, 0, step)  # the first pass after a query pass starts a task
            slot = jnp.minimum(step, self.steps)
            blend = lambda table, value: table.at[slot].set(self.decay * table[slot] + (1 - self.decay) * value)
            hk.set_state("mean", blend(means, mean))
            hk.set_state("var", blend(variances, var))
            hk.set_state("weight", blend(weights, jnp.ones((), weights.dtype)))
            hk.set_state("step", step + 1)
            hk.set_state("ended", jnp.zeros_like(ended))

    def _recall(self, shape: tuple[int, ...], dtype) -> tuple[jax.Array, jax.Array]:
        if self.policy == "running":
            return self.mean_ema.average.astype(dtype), self.var_ema.average.astype(dtype)
        if self.policy == "support":
            mean = hk.get_state("mean", shape, dtype, jnp.zeros)
            var = hk.get_state("var", shape, dtype, jnp.ones)
            return mean, var
        means, variances, weights, step, ended = self._slots(shape, dtype)
        slot = jnp.clip(step - 1, 0, self.steps)  # the task's last training pass
        hk.set_state("ended", jnp.ones_like(ended))  # the query pass ends the task
        seen = weights[slot] > 0
        mean = jnp.where(seen, means[slot] / jnp.where(seen, weights[slot], 1), 0)
        var = jnp.where(seen, variances[slot] / jnp.where(seen, weights[slot], 1), 1)
        return mean.astype(dtype), var.astype(dtype)

    def _slots(self, shape, dtype):
        slots = self.steps + 1
        means = hk.get_state("mean", (slots,) + shape, dtype, jnp.zeros)
        variances = hk.get_state("var", (slots,) + shape, dtype, jnp.zeros)
        weights = hk.get_state("weight", (slots,), dtype, jnp.zeros)
        step = hk.get_state("step", (), jnp.int32, jnp.zeros)
        ended = hk.get_state("ended", (), jnp.int32, jnp.zeros)
        return means, variances, weights, step, ended
