"""Implicit differentiation at the inner loop's end point: CG (iMAML), RBP and T1-T2.

At a minimum params* of the inner loss L_in(params, hparams), the implicit function
theorem gives the meta-gradient of the outer loss L_out(params*, hparams) as

    dL_out/dhparams = d_h L_out - (d_p d_h L_in)^T H^{-1} d_p L_out,   H = d_p^2 L_in,

whatever path the inner optimiser took. The learners below differ only in how they
approximate x = H^{-1} d_p L_out, a `solve(matvec, b)` over Hessian-vector products; no
Hessian is ever materialised.

- `ConjugateGradient`: iMAML, Rajeswaran, Finn, Kakade, Levine, NeurIPS 2019,
  https://arxiv.org/abs/1909.04630 (CG, or GMRES / BiCGSTAB).
- `RecurrentBackpropagation`: Liao et al., ICML 2018, https://arxiv.org/abs/1803.06396
  (a Neumann series).
- `T1T2`: Luketina, Berglund, Greff, Raiko, ICML 2016,
  https://proceedings.mlr.press/v48/luketina16.html (H^{-1} replaced by the identity).
"""

from typing import Any, Optional

import jax
import optax

from metax.learner.base import MetaLearner, _check_positive, _check_steps
from metax.learner.linear_solve import LinearSolve, get_linear_solver, neumann_series, solve_identity
from metax.module.base import MetaModule
from metax.utils import append_keys, tree_add, tree_scale, tree_sub


class ImplicitDifferentiation(MetaLearner):
    """Base of the implicit learners; a subclass supplies only `linear_solve` (or `solve`).

    Args:
      meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer, extra_metrics:
        see `MetaLearner`. Implicit learners take no gradient through the inner loop, so
        they refuse `truncation` and `remat`.

    Raises:
      ValueError: at construction (or at reset, for a module that does not declare its
        `hparams_fields`), if no hparam could receive a meta-gradient: every hparam only
        sets the inner loop's starting point (`check_implicit_compatible`, which also warns
        about such hparams when others learn). Every subclass gets this check.

    Example:
      >>> imaml = metax.module.LearnedInit(metax.energy.SquaredError(), metax.energy.SquaredError(),
      ...     metax.models.mlp_fn([8], 1), reg_strength=1.0, output_dim=1)
      >>> class Exact(metax.learner.ImplicitDifferentiation):  # H^-1 by an exact dense solve
      ...     def linear_solve(self, matvec, b):
      ...         return metax.learner.solve_cg(maxiter=100)(matvec, b)
      >>> Exact(imaml, None, 5, optax.sgd(0.1), optax.adam(1e-3)).end_point_gradient
      True
    """

    end_point_gradient = True
    linear_solve: LinearSolve = staticmethod(solve_identity)

    def hessian_matvec(self, matvec):
        """The operator handed to the solver; a hook for damping and regularisation."""
        return matvec

    def solve(self, matvec, b) -> tuple[Any, dict]:
        """x ~ H^{-1} b and metrics about the solve; by default `linear_solve` and none."""
        return self.linear_solve(matvec, b), {}

    def grad(self, rng, hstate, hparams, metadataset):
        rng_adapt, rng_outer, rng_inner = jax.random.split(rng, 3)
        train, test = metadataset.train, metadataset.test
        state, params, metrics_inner = self.adapt_task(rng_adapt, hstate, hparams, train, self.steps_inner)

        outer = lambda p, h: self.query_energy(rng_outer, state, hstate, p, h, test)
        (_, ((_, new_hstate), metrics_outer)), (grad_params, grad_direct) = jax.value_and_grad(
            outer, argnums=(0, 1), has_aux=True
        )(params, hparams)

        # d_p L_in on the whole support set, as a function of (params, hparams).
        inner_grad = jax.grad(lambda p, h: self.inner_loss(rng_inner, state, hstate, p, h, train)[0])
        _, hvp = jax.linearize(lambda p: inner_grad(p, hparams), params)
        inverse_hvp, metrics_solve = self.solve(self.hessian_matvec(hvp), grad_params)
        _, mixed_vjp = jax.vjp(lambda h: inner_grad(params, h), hparams)
        hgrads = tree_sub(grad_direct, mixed_vjp(inverse_hvp)[0])
        return hgrads, new_hstate, {**append_keys(metrics_outer, "outer"), **metrics_inner, **metrics_solve}


class ConjugateGradient(ImplicitDifferentiation):
    """iMAML-style implicit gradients with an iterative linear solver.

    Solves `(H / cg_damping + cg_reg * I) x = d_p L_out`; with the defaults this is the
    exact `H x = d_p L_out`.

    Args:
      meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer, extra_metrics:
        see `MetaLearner`.
      steps_cg: solver iterations (a positive int) for a named `linsolver`; None when
        `linsolver` is a function, which sets its own.
      cg_damping: divides the Hessian (metax's convention), > 0.
      cg_reg: Tikhonov term added to the scaled Hessian, >= 0.
      linsolver: "cg", "gmres", "bicgstab", or a function `solve(matvec, b) -> x`.

    Example:
      >>> imaml = metax.module.LearnedInit(metax.energy.SquaredError(), metax.energy.SquaredError(),
      ...     metax.models.mlp_fn([8], 1), reg_strength=1.0, output_dim=1)
      >>> learner = metax.learner.ConjugateGradient(imaml, None, 5, 10, optax.sgd(0.1), optax.adam(1e-3))
      >>> state = learner.reset(jax.random.PRNGKey(0), sample_input)
      >>> type(state).__name__
      'MetaLearnerState'
    """

    def __init__(
        self,
        meta_model: MetaModule,
        batch_size: Optional[int],
        steps_inner: int,
        steps_cg: Optional[int],
        optim_fn_inner: optax.GradientTransformation,
        optim_fn_outer: optax.GradientTransformation,
        cg_damping: float = 1.0,
        cg_reg: float = 0.0,
        linsolver: Any = "cg",
        **options: Any,
    ) -> None:
        super().__init__(meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer, **options)
        self.cg_damping = _check_positive(cg_damping, "cg_damping", "the Hessian is divided by it")
        if isinstance(cg_reg, bool) or not isinstance(cg_reg, (int, float)) or not 0 <= cg_reg < float("inf"):
            raise ValueError(f"cg_reg must be a finite number >= 0 (a Tikhonov term), got {cg_reg!r}.")
        self.cg_reg = float(cg_reg)
        if steps_cg is not None:
            steps_cg = _check_steps(steps_cg, "steps_cg")
            if steps_cg < 1:
                raise ValueError(f"steps_cg must be >= 1 (solver iterations), got {steps_cg}.")
        elif not callable(linsolver):
            raise ValueError(f"steps_cg=None needs a linsolver function; with linsolver={linsolver!r} pass steps_cg, e.g. 10.")
        self.steps_cg = steps_cg
        self.linear_solve = get_linear_solver(linsolver, steps_cg)

    def hessian_matvec(self, matvec):
        return lambda v: tree_add(tree_scale(matvec(v), 1.0 / self.cg_damping), tree_scale(v, self.cg_reg))


class RecurrentBackpropagation(ImplicitDifferentiation):
    """Implicit gradients with H^{-1} from `steps_rbp` terms of a Neumann series of step `alpha`.

    The series converges only for alpha < 2 / (largest eigenvalue of H); the metric
    `neumann_ratio` (the last term's norm over the first's, per task, averaged) says
    whether it did: near 0 when converged, >= 1 when alpha is too large.

    Args:
      meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer, extra_metrics:
        see `MetaLearner`.
      steps_rbp: Neumann terms, an int >= 0.
      alpha: the Neumann step, > 0.

    Example:
      >>> imaml = metax.module.LearnedInit(metax.energy.SquaredError(), metax.energy.SquaredError(),
      ...     metax.models.mlp_fn([8], 1), reg_strength=1.0, output_dim=1)
      >>> learner = metax.learner.RecurrentBackpropagation(imaml, None, 5, 20, optax.sgd(0.1), optax.adam(1e-3), 0.1)
      >>> learner.steps_rbp
      20
    """

    def __init__(
        self,
        meta_model: MetaModule,
        batch_size: Optional[int],
        steps_inner: int,
        steps_rbp: int,
        optim_fn_inner: optax.GradientTransformation,
        optim_fn_outer: optax.GradientTransformation,
        alpha: float,
        **options: Any,
    ) -> None:
        super().__init__(meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer, **options)
        self.steps_rbp = _check_steps(steps_rbp, "steps_rbp")
        self.alpha = _check_positive(alpha, "alpha", "the Neumann step")
        self._series = neumann_series(self.steps_rbp, self.alpha)
        self.linear_solve = lambda matvec, b: self._series(matvec, b)[0]

    def solve(self, matvec, b):
        x, ratio = self._series(matvec, b)
        return x, {"neumann_ratio": ratio}


class T1T2(ImplicitDifferentiation):
    """Implicit gradients with the identity for H^{-1}: d_h L_out - (d_p d_h L_in)^T d_p L_out.

    Same arguments as `MetaLearner`.

    Example:
      >>> imaml = metax.module.LearnedInit(metax.energy.SquaredError(), metax.energy.SquaredError(),
      ...     metax.models.mlp_fn([8], 1), reg_strength=1.0, output_dim=1)
      >>> learner = metax.learner.T1T2(imaml, None, 5, optax.sgd(0.1), optax.adam(1e-3))
      >>> learner.linear_solve is metax.learner.solve_identity
      True
    """
