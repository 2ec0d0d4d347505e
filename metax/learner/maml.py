"""Model-agnostic meta-learning: backpropagation through the unrolled inner loop.

Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017, https://arxiv.org/abs/1703.03400.

The meta-gradient of one task is d L_outer(adapt(hparams)) / d hparams, differentiated
through every inner step. With `first_order=True` the inner gradients are treated as
constants (FOMAML): for SGD the meta-gradient of a learned initialisation becomes the
outer-loss gradient at the adapted params, while anything the update itself depends on
(e.g. a learned learning rate) still receives its gradient.
"""

from typing import Any, Optional

import jax
import optax

from metax.learner.base import MetaLearner, _check_bool
from metax.module.base import MetaModule


class ModelAgnosticMetaLearning(MetaLearner):
    """MAML (second order by default) over any module.

    Args:
      meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer: see `MetaLearner`.
      first_order: stop gradients through the inner-loop gradients (FOMAML).
      extra_metrics, truncation, remat: see `MetaLearner` (truncated backpropagation
        through the last `truncation` inner steps; `remat="block"` rematerialises blocks
        of about sqrt(steps_inner) steps: memory O(sqrt(K)) instead of O(K)).

    Example:
      >>> learner = metax.learner.ModelAgnosticMetaLearning(meta_model, batch_size=None, steps_inner=5,
      ...     optim_fn_inner=optax.sgd(0.01), optim_fn_outer=optax.adam(1e-3), first_order=False)
      >>> meta_state = learner.reset(jax.random.PRNGKey(0), sample_input)
      >>> meta_state, metrics = jax.jit(learner.update)(rng, meta_state, metabatch)
      >>> bool(jnp.isfinite(metrics["loss_outer"]))
      True
    """

    can_learn_optimizer = True
    gradient_through_inner_loop = True

    def __init__(
        self,
        meta_model: MetaModule,
        batch_size: Optional[int],
        steps_inner: int,
        optim_fn_inner: optax.GradientTransformation,
        optim_fn_outer: optax.GradientTransformation,
        first_order: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer, **options)
        self.first_order = _check_bool(first_order, "first_order")

    def grad(self, rng, hstate, hparams, metadataset):
        grad_fn = jax.grad(self.outer_loss, argnums=2, has_aux=True)
        hgrads, (outcome, metrics) = grad_fn(rng, hstate, hparams, metadataset, self.steps_inner)
        return hgrads, outcome.hstate, metrics


MAML = ModelAgnosticMetaLearning
