"""Reptile: move the initialisation toward the weights adapted on each task.

Nichol, Achiam, Schulman. "On First-Order Meta-Learning Algorithms", 2018,
https://arxiv.org/abs/1803.02999.

Each task adapts on its support and query sets together; the meta-gradient of every
initialisation hparam is `init - adapted`, which the outer optimiser applies (with
`optax.sgd(eps)` this is Reptile's `init <- init + eps * (adapted - init)`). Hparams that
are not initialisations (e.g. a body that is meta-learned but not adapted) receive the
partial gradient of the task loss at the adapted params (Reptile) or its sum along the
inner loop (BufferedReptile).
"""

import jax
import jax.numpy as jnp

from metax.data import Dataset
from metax.learner.base import MetaLearner
from metax.module.base import MetaModule
from metax.utils import append_keys, get_field, set_field, tree_sub


def _concatenate(a: Dataset, b: Dataset) -> Dataset:
    return jax.tree_util.tree_map(lambda u, v: jnp.concatenate([u, v], axis=0), a, b)


class Reptile(MetaLearner):
    """Reptile over a module with a learned initialisation (e.g. `LearnedInit`).

    The arguments (`meta_model`, `batch_size`, `steps_inner`, `optim_fn_inner`,
    `optim_fn_outer`, `extra_metrics`, `truncation`, `remat`) are `MetaLearner`'s; Reptile
    takes no gradient through the inner loop, so it refuses truncation and remat.

    Raises:
      ValueError: at construction, if the module has no initialisation to move.

    Example:
      >>> learner = metax.learner.Reptile(meta_model, None, 5, optax.sgd(0.1), optax.sgd(1.0))
      >>> state = learner.reset(jax.random.PRNGKey(0), sample_input)
      >>> list(state.hparams._fields)
      ['base_learner_init']
    """

    accumulate_hgrads = False  # BufferedReptile sums partial hparam gradients

    def check_module(self, meta_model: MetaModule) -> None:
        if not meta_model.init_keys:
            raise ValueError(
                f"{type(self).__name__} moves an initialisation toward adapted weights, but "
                f"{type(meta_model).__name__} has no params that start from an hparam "
                "(its init_keys is empty). Use a module with a learned initialisation "
                "(LearnedInit, ANIL, GainMod, ...) or a gradient-based learner such as MAML."
            )

    def grad(self, rng, hstate, hparams, metadataset):
        rng_reset, rng_loop, rng_partial, rng_outer = jax.random.split(rng, 4)
        dataset = _concatenate(metadataset.train, metadataset.test)
        params, state = self.meta_model.reset_params(rng_reset, hparams, hstate, dataset.x)
        state, adapted, losses, hgrads_sum = self.descend(
            rng_loop, state, params, hparams, self.support_energy(hstate, dataset),
            self.inner_optimizer(hparams), self.steps_inner, accumulate_hgrads=self.accumulate_hgrads,
        )
        hgrads = hgrads_sum if self.accumulate_hgrads else self._partial_grads(
            rng_partial, state, hstate, adapted, hparams, dataset
        )
        for param_key, hparam_key in self.meta_model.init_keys.items():
            displacement = tree_sub(get_field(hparams, hparam_key), get_field(adapted, param_key))
            hgrads = set_field(hgrads, hparam_key, displacement)

        # The query loss after adapting, for logging and the module's hstate.
        state = self.settle_state(jax.random.fold_in(rng_outer, 1), state, hstate, adapted, hparams, dataset)
        _, ((_, hstate), metrics_outer) = self.query_energy(rng_outer, state, hstate, adapted, hparams, metadataset.test)
        metrics_inner = self.inner_metrics(rng_partial, state, hstate, adapted, hparams, dataset, losses)
        return hgrads, hstate, {**append_keys(metrics_outer, "outer"), **metrics_inner}

    def _partial_grads(self, rng, state, hstate, params, hparams, dataset):
        """d inner loss / d hparams at the adapted params, or zeros when every hparam is an
        initialisation (then the displacement overwrites them all and no pass is needed)."""
        init_fields = set(self.meta_model.init_keys.values())
        fields = getattr(hparams, "_fields", None) or tuple(hparams)
        if set(fields) <= init_fields:
            return jax.tree_util.tree_map(jnp.zeros_like, hparams)
        loss_of = lambda h: self.inner_loss(rng, state, hstate, params, h, dataset)[0]
        return jax.grad(loss_of)(hparams)


class BufferedReptile(Reptile):
    """Reptile whose non-initialisation hparams receive the sum of the partial hparam
    gradients accumulated along the inner loop, rather than the gradient at its end.

    Example:
      >>> learner = metax.learner.BufferedReptile(meta_model, None, 5, optax.sgd(0.1), optax.sgd(1.0))
      >>> isinstance(learner, metax.learner.Reptile)
      True
    """

    accumulate_hgrads = True
