"""Regularisers that couple adapted params to meta-learned hparams.

`key_map` says which params field is pulled toward which hparams field; fields are read
by name from NamedTuples or dicts, and the values may be any matching pytrees.
"""

from typing import Mapping, Union

import jax
import jax.numpy as jnp

from metax.energy.base import EnergyFunction
from metax.utils import get_field


def _tree_sum(tree) -> jax.Array:
    return sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(tree))


def _tree_size(tree) -> int:
    return sum(jnp.size(leaf) for leaf in jax.tree_util.tree_leaves(tree))


class _TreeRegularizer(EnergyFunction):
    def __init__(self, reduction: str) -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"A regulariser reduces to a scalar: reduction must be 'sum' or 'mean', got {reduction!r}.")
        super().__init__(reduction)

    def _reduce_tree(self, tree) -> jax.Array:
        total = _tree_sum(tree)
        return total / _tree_size(tree) if self.reduction == "mean" else total


class iMAML(_TreeRegularizer):  # noqa: N801 (the paper's name)
    """Proximal pull toward meta-learned values, (reg_strength / 2) * ||params - omega||^2.

    Rajeswaran, Finn, Kakade, Levine. "Meta-Learning with Implicit Gradients", NeurIPS
    2019, https://arxiv.org/abs/1909.04630.

    Args:
      reg_strength: lambda, the strength of the pull.
      key_map: `{params_field: hparams_field}`, e.g. `{"base_learner": "base_learner_init"}`.
      reduction: "sum" (the paper's form) or "mean" (divides by the number of params).

    Example:
      >>> pull = metax.energy.iMAML(2.0, key_map={"w": "w_init"})
      >>> loss, _ = pull(None, None, None, {"w": jnp.array([1.0, 1.0])}, {"w_init": jnp.zeros(2)}, None, None)
      >>> float(loss)  # (2 / 2) * (1 + 1)
      2.0
    """

    def __init__(self, reg_strength: float, key_map: Mapping[str, str], reduction: str = "sum") -> None:
        super().__init__(reduction)
        if reg_strength < 0:
            raise ValueError(f"reg_strength must be >= 0, got {reg_strength}.")
        self.reg_strength = reg_strength
        self.key_map = dict(key_map)

    def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
        sq = [
            jax.tree_util.tree_map(lambda p, o: jnp.square(p - o), get_field(params, p_key), get_field(hparams, h_key))
            for p_key, h_key in self.key_map.items()
        ]
        loss = 0.5 * self.reg_strength * self._reduce_tree(sq)
        return loss, {"loss_reg": loss}


class LearnedL2(_TreeRegularizer):
    """Per-parameter learned pull, (1/2) * sum exp(log_lambda) * (params - omega)^2.

    The complex-synapse regulariser of contrastive meta-learning: Zucchet, Schug, von
    Oswald, Zhao, Sacramento. "A contrastive rule for meta-learning", NeurIPS 2022,
    https://arxiv.org/abs/2104.01677.

    Args:
      key_map: `{params_field: {"omega": hparams_field, "log_lambda": hparams_field}}`;
        a plain string in place of the dict names `log_lambda` and centres at zero.

    Example:
      >>> pull = metax.energy.LearnedL2({"w": {"omega": "w_centre", "log_lambda": "w_log_strength"}})
      >>> hparams = {"w_centre": jnp.zeros(2), "w_log_strength": jnp.zeros(2)}  # strength exp(0) = 1
      >>> loss, _ = pull(None, None, None, {"w": jnp.array([1.0, 3.0])}, hparams, None, None)
      >>> float(loss)  # (1 + 9) / 2
      5.0
    """

    def __init__(self, key_map: Mapping[str, Union[str, Mapping[str, str]]], reduction: str = "sum") -> None:
        super().__init__(reduction)
        self.key_map = dict(key_map)

    def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
        terms = []
        for p_key, h_keys in self.key_map.items():
            param = get_field(params, p_key)
            if isinstance(h_keys, str):
                omega = jax.tree_util.tree_map(jnp.zeros_like, param)
                log_lambda = get_field(hparams, h_keys)
            else:
                omega = get_field(hparams, h_keys["omega"])
                log_lambda = get_field(hparams, h_keys["log_lambda"])
            terms.append(
                jax.tree_util.tree_map(lambda p, o, ll: jnp.exp(ll) * jnp.square(p - o), param, omega, log_lambda)
            )
        loss = 0.5 * self._reduce_tree(terms)
        return loss, {"loss_reg": loss}
