"""Equilibrium propagation for meta-learning: a contrast of two inner-loop end points.

Zucchet, Schug, von Oswald, Zhao, Sacramento. "A contrastive rule for meta-learning",
NeurIPS 2022, https://arxiv.org/abs/2104.01677 (contrastive meta-learning, CML).

With the total energy F_beta(params, hparams) = L_inner(support) + beta * L_outer(query),
the free phase minimises F_0 (the ordinary inner loop) and the nudged phase continues
from that solution on F_beta with its own optimiser and step count. The meta-gradient is

    (dF_beta/dhparams at the nudged solution - dF_0/dhparams at the free solution) / beta,

which tends to the implicit gradient as beta -> 0 with error O(beta). The symmetric
variant nudges by +beta and -beta from the same free solution and divides by 2 beta, for
an O(beta^2) error.
"""

from typing import Any, Optional

import jax
import optax

from metax.learner.base import MetaLearner, _check_optimizer, _check_positive, _check_steps
from metax.module.base import MetaModule
from metax.utils import append_keys, tree_scale, tree_sub


class EquilibriumPropagation(MetaLearner):
    """Contrastive meta-learning with one nudged phase.

    Args:
      meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer, extra_metrics:
        see `MetaLearner` (no gradient flows through the inner loop: no truncation/remat).
      steps_nudged: inner steps of the nudged phase, >= 1.
      optim_fn_nudged: optax optimiser of the nudged phase.
      beta: nudging strength, > 0.

    Raises:
      ValueError: at construction, for beta <= 0, or a module none of whose hparams could
        learn: all act only through the inner loop's starting point (their contrast would
        be zero); a warning names such hparams when others learn.

    Example:
      >>> imaml = metax.module.LearnedInit(metax.energy.SquaredError(), metax.energy.SquaredError(),
      ...     metax.models.mlp_fn([8], 1), reg_strength=1.0, output_dim=1)
      >>> learner = metax.learner.EquilibriumPropagation(
      ...     imaml, None, 5, 5, optax.sgd(0.1), optax.sgd(0.1), optax.adam(1e-3), 0.1)
      >>> learner.beta, learner.steps_nudged
      (0.1, 5)
    """

    end_point_gradient = True

    def __init__(
        self,
        meta_model: MetaModule,
        batch_size: Optional[int],
        steps_inner: int,
        steps_nudged: int,
        optim_fn_inner: optax.GradientTransformation,
        optim_fn_nudged: optax.GradientTransformation,
        optim_fn_outer: optax.GradientTransformation,
        beta: float,
        **options: Any,
    ) -> None:
        self.beta = _check_positive(beta, "beta", "the nudging strength")
        super().__init__(meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer, **options)
        self.steps_nudged = _check_steps(steps_nudged, "steps_nudged")
        if self.steps_nudged < 1:
            raise ValueError(f"steps_nudged must be a positive int (the nudged phase's steps), got {steps_nudged!r}.")
        _check_optimizer(optim_fn_nudged, "optim_fn_nudged")
        self.optim_fn_nudged = optim_fn_nudged

    def nudges(self) -> tuple[float, float]:
        """The two energies contrasted: F_beta against the free phase F_0."""
        return self.beta, 0.0

    def grad(self, rng, hstate, hparams, metadataset):
        rng_free, rng_outer, rng_nudge, rng_partial = jax.random.split(rng, 4)
        train, test = metadataset.train, metadataset.test
        state, free, metrics_inner = self.adapt_task(rng_free, hstate, hparams, train, self.steps_inner)
        _, ((_, new_hstate), metrics_outer) = self.query_energy(rng_outer, state, hstate, free, hparams, test)

        def total_energy(beta):
            support = self.support_energy(hstate, train)

            def energy(rng, state, params, hparams):
                rng_in, rng_out = jax.random.split(rng)
                loss_in, (state_in, metrics) = support(rng_in, state, params, hparams)
                loss_out = self.query_energy(rng_out, state, hstate, params, hparams, test)[0]
                return loss_in + beta * loss_out, (state_in, metrics)

            return energy

        def partial_grad(beta, params):
            # dF_beta/dhparams on the whole support set (no minibatch) at fixed params.
            def value(h):
                loss_in = self.inner_loss(rng_partial, state, hstate, params, h, train)[0]
                return loss_in + beta * self.query_energy(rng_partial, state, hstate, params, h, test)[0]

            return jax.grad(value)(hparams)

        def end_point(beta):
            if beta == 0.0:
                return free
            _, nudged, _, _ = self.descend(
                jax.random.fold_in(rng_nudge, int(beta > 0)), state, free, hparams,
                total_energy(beta), self.optim_fn_nudged, self.steps_nudged,
            )
            return nudged

        beta_a, beta_b = self.nudges()
        contrast = tree_sub(partial_grad(beta_a, end_point(beta_a)), partial_grad(beta_b, end_point(beta_b)))
        hgrads = tree_scale(contrast, 1.0 / (beta_a - beta_b))
        return hgrads, new_hstate, {**append_keys(metrics_outer, "outer"), **metrics_inner}


class SymmetricEquilibriumPropagation(EquilibriumPropagation):
    """Nudges by +beta and -beta from the same free solution: O(beta^2) bias.

    Example:
      >>> imaml = metax.module.LearnedInit(metax.energy.SquaredError(), metax.energy.SquaredError(),
      ...     metax.models.mlp_fn([8], 1), reg_strength=1.0, output_dim=1)
      >>> learner = metax.learner.SymmetricEquilibriumPropagation(
      ...     imaml, None, 5, 5, optax.sgd(0.1), optax.sgd(0.1), optax.adam(1e-3), 0.1)
      >>> isinstance(learner, metax.learner.EquilibriumPropagation)
      True
    """

    def nudges(self) -> tuple[float, float]:
        return self.beta, -self.beta

