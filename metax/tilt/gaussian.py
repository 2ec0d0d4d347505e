"""Closed-form Gaussian tilt of a 1-D linear-Gaussian policy/dynamics model.

The toy model behind inference-time mirror descent (seed 004):

- base policy       q(a | s)      = N(mu_a, sigma_a^2)
- dynamics          q(s' | a, s)  = N(alpha a + d s + mu_eps, sigma_s'^2)
- value surrogate   Q(a)          = -0.5 qA (a - mu_Q)^2
- mirror-descent target  pi_beta(a | s) ∝ q(a | s) exp(beta Q(a)).

Multiplying two Gaussians in `a` gives a Gaussian with

    tau_beta = 1 / sigma_a^2 + beta qA                      (precision)
    m_beta   = (mu_a / sigma_a^2 + beta qA mu_Q) / tau_beta  (mean)

and because the tilt touches only `a`, the next-state conditional is unchanged:
pi_beta(s' | a, s) = q(s' | a, s) ("conditional invariance"). The tilted joint over
(a, s') is therefore Gaussian and so is its state marginal,

    s' ~ N(alpha m_beta + c, alpha^2 / tau_beta + sigma_s'^2),   c = d s + mu_eps.

Every method below broadcasts over `beta` (and over the sample arrays), so one
`GaussianTilt` answers questions for a whole batch of tilt strengths at once. The
object is a NamedTuple of floats, i.e. a pytree: it can be passed through `jax.jit`
and `jax.vmap` as an ordinary argument.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

Array = jax.Array
_LOG_2PI = math.log(2.0 * math.pi)


class TiltParams(NamedTuple):
    """Parameters of the toy model (all scalars).

    Attributes:
      mu_a: mean of the base policy q(a|s).
      sigma_a: standard deviation of q(a|s); must be positive.
      qA: curvature of Q(a) = -0.5 qA (a - mu_Q)^2; may be negative as long as the
        tilted precision 1/sigma_a^2 + beta qA stays positive.
      mu_Q: maximiser of Q (for qA > 0).
      alpha: action gain of the dynamics.
      sigma_sprime: standard deviation of q(s'|a,s); must be positive.
      d: state gain of the dynamics.
      mu_eps: dynamics offset.
      s: the current state the policy is conditioned on.

    Example:
      >>> params = metax.tilt.TiltParams(sigma_a=0.5, qA=2.0)
      >>> params.mu_a, params.sigma_a, params.qA, params.mu_Q
      (0.0, 0.5, 2.0, 2.0)
      >>> float(metax.tilt.GaussianTilt(params).action_var(1.0))  # 1 / (1/0.5^2 + 1 * 2)
      0.1666...
    """

    mu_a: float = 0.0
    sigma_a: float = 1.0
    qA: float = 1.0
    mu_Q: float = 2.0
    alpha: float = 1.0
    sigma_sprime: float = 0.5
    d: float = 0.5
    mu_eps: float = 0.0
    s: float = 1.0


def validate_params(params: TiltParams, betas: Sequence[float] | ArrayLike = ()) -> None:
    """Raises `ValueError` with the offending numbers if the model is ill-posed.

    Checks that every parameter is finite, that both standard deviations are positive
    and that the tilted precision 1/sigma_a^2 + beta qA is positive for every beta in
    `betas` (otherwise pi_beta is not normalisable).

    Example:
      >>> metax.tilt.validate_params(metax.tilt.TiltParams(), betas=[0.0, 5.0])  # fine: no output
      >>> try:
      ...     metax.tilt.validate_params(metax.tilt.TiltParams(qA=-0.5), betas=[1.0, 3.0])
      ... except ValueError as error:
      ...     print(error)
      tilted target is not normalisable: precision 1/sigma_a^2 + beta*qA = 1 + 3*(-0.5) = -0.5 <= 0; with qA=-0.5 keep beta < 2
    """
    for name, value in params._asdict().items():
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} must be finite, got {value}")
    for name in ("sigma_a", "sigma_sprime"):
        value = float(getattr(params, name))
        if value <= 0.0:
            raise ValueError(f"{name} must be a positive standard deviation, got {value:g}")
    check_normalisable(1.0 / float(params.sigma_a) ** 2, float(params.qA), betas)


def check_normalisable(
    base_precision: float, qA: float, betas: Sequence[float] | ArrayLike, base_label: str = "1/sigma_a^2"
) -> None:
    """Raises `ValueError` if base_precision + beta qA <= 0 for some beta in `betas`.

    `base_label` names the base precision in the message (e.g. a noisy level's).

    Example:
      >>> metax.tilt.check_normalisable(1.0, -0.5, [0.0, 1.0])  # 1 - 0.5 > 0: fine
      >>> try:
      ...     metax.tilt.check_normalisable(1.0, -0.5, [1.0, 4.0])
      ... except ValueError as error:
      ...     print(error)
      tilted target is not normalisable: precision 1/sigma_a^2 + beta*qA = 1 + 4*(-0.5) = -1 <= 0; with qA=-0.5 keep beta < 2
    """
    for beta in np.ravel(np.asarray(betas, dtype=np.float64)):
        if not math.isfinite(beta):
            raise ValueError(f"beta must be finite, got {beta}")
        tau = base_precision + beta * qA
        if not tau > 0.0:
            hint = f"; with qA={qA:g} keep beta < {base_precision / -qA:g}" if qA < 0 and beta > 0 else ""
            raise ValueError(
                f"tilted target is not normalisable: precision {base_label} + beta*qA = "
                f"{base_precision:g} + {beta:g}*({qA:g}) = {tau:g} <= 0{hint}"
            )


def _normal_logpdf(x: ArrayLike, mean: ArrayLike, var: ArrayLike) -> Array:
    return -0.5 * (_LOG_2PI + jnp.log(var) + (x - mean) ** 2 / var)


class GaussianTilt(NamedTuple):
    """Exact laws of the tilted toy model; every method broadcasts over `beta`.

    Example:
      >>> tilt = GaussianTilt(TiltParams(mu_a=0.0, sigma_a=1.0, qA=1.0, mu_Q=2.0))
      >>> float(tilt.action_mean(1.0)), float(tilt.action_var(1.0))
      (1.0, 0.5)
    """

    params: TiltParams

    # -- the pieces ----------------------------------------------------------------
    @property
    def state_offset(self) -> Array:
        """c = d s + mu_eps, the action-independent part of the dynamics mean."""
        p = self.params
        return jnp.asarray(p.d * p.s + p.mu_eps)

    def value(self, a: ArrayLike) -> Array:
        """Q(a) = -0.5 qA (a - mu_Q)^2, elementwise."""
        p = self.params
        return -0.5 * p.qA * (jnp.asarray(a) - p.mu_Q) ** 2

    def value_grad(self, a: ArrayLike) -> Array:
        """dQ/da = -qA (a - mu_Q), elementwise."""
        p = self.params
        return -p.qA * (jnp.asarray(a) - p.mu_Q)

    def noised(self, sigma: ArrayLike) -> "GaussianTilt":
        """The model whose base policy is q convolved with N(0, sigma^2).

        This is the base a diffusion policy sees at noise level `sigma`
        (variance-exploding corruption); `sigma = 0` returns the clean model.
        """
        p = self.params
        return GaussianTilt(p._replace(sigma_a=jnp.sqrt(p.sigma_a**2 + jnp.asarray(sigma) ** 2)))

    # -- action marginal -------------------------------------------------------------
    def action_precision(self, beta: ArrayLike) -> Array:
        """tau_beta = 1/sigma_a^2 + beta qA; shape of `beta`."""
        p = self.params
        return 1.0 / p.sigma_a**2 + jnp.asarray(beta) * p.qA

    def action_mean(self, beta: ArrayLike) -> Array:
        """m_beta = (mu_a/sigma_a^2 + beta qA mu_Q) / tau_beta; shape of `beta`."""
        p = self.params
        beta = jnp.asarray(beta)
        return (p.mu_a / p.sigma_a**2 + beta * p.qA * p.mu_Q) / self.action_precision(beta)

    def action_var(self, beta: ArrayLike) -> Array:
        """1 / tau_beta; shape of `beta`."""
        return 1.0 / self.action_precision(beta)

    def log_base_action(self, a: ArrayLike) -> Array:
        """log q(a|s), elementwise."""
        p = self.params
        return _normal_logpdf(a, p.mu_a, p.sigma_a**2)

    def score_base_action(self, a: ArrayLike) -> Array:
        """d/da log q(a|s) = -(a - mu_a)/sigma_a^2."""
        p = self.params
        return -(jnp.asarray(a) - p.mu_a) / p.sigma_a**2

    def log_tilted_action(self, a: ArrayLike, beta: ArrayLike) -> Array:
        """Normalised log pi_beta(a|s); broadcasts `a` against `beta`."""
        return _normal_logpdf(a, self.action_mean(beta), self.action_var(beta))

    def unnormalised_log_target(self, a: ArrayLike, beta: ArrayLike) -> Array:
        """log q(a|s) + beta Q(a): what a sampler may evaluate (no closed form used)."""
        return self.log_base_action(a) + jnp.asarray(beta) * self.value(a)

    def score_tilted_action(self, a: ArrayLike, beta: ArrayLike) -> Array:
        """Product-of-experts score d/da log q(a|s) + beta dQ/da."""
        return self.score_base_action(a) + jnp.asarray(beta) * self.value_grad(a)

    # -- dynamics, joint and state marginal -----------------------------------------
    def log_dynamics(self, s_next: ArrayLike, a: ArrayLike) -> Array:
        """log q(s'|a,s), elementwise."""
        p = self.params
        mean = p.alpha * jnp.asarray(a) + self.state_offset
        return _normal_logpdf(s_next, mean, p.sigma_sprime**2)

    def score_dynamics(self, s_next: ArrayLike, a: ArrayLike) -> tuple[Array, Array]:
        """(d/da, d/ds') of log q(s'|a,s)."""
        p = self.params
        resid = (jnp.asarray(s_next) - p.alpha * jnp.asarray(a) - self.state_offset) / p.sigma_sprime**2
        return p.alpha * resid, -resid

    def log_tilted_joint(self, a: ArrayLike, s_next: ArrayLike, beta: ArrayLike) -> Array:
        """Normalised log pi_beta(a, s'|s) = log pi_beta(a|s) + log q(s'|a,s)."""
        return self.log_tilted_action(a, beta) + self.log_dynamics(s_next, a)

    def score_tilted_joint(self, a: ArrayLike, s_next: ArrayLike, beta: ArrayLike) -> tuple[Array, Array]:
        """(d/da, d/ds') of log pi_beta(a, s'|s), built from the PoE action score."""
        da, ds = self.score_dynamics(s_next, a)
        return self.score_tilted_action(a, beta) + da, ds

    def state_mean(self, beta: ArrayLike) -> Array:
        """Mean of the tilted state marginal, alpha m_beta + c; shape of `beta`."""
        return self.params.alpha * self.action_mean(beta) + self.state_offset

    def state_var(self, beta: ArrayLike) -> Array:
        """Variance of the tilted state marginal, alpha^2/tau_beta + sigma_s'^2."""
        p = self.params
        return p.alpha**2 * self.action_var(beta) + p.sigma_sprime**2

    def log_state_marginal(self, s_next: ArrayLike, beta: ArrayLike) -> Array:
        """log pi_beta(s'|s) = log of the integral over a of the tilted joint."""
        return _normal_logpdf(s_next, self.state_mean(beta), self.state_var(beta))

    def joint_mean(self, beta: ArrayLike) -> Array:
        """Mean of (a, s'); shape `beta.shape + (2,)`."""
        return jnp.stack([self.action_mean(beta), self.state_mean(beta)], axis=-1)

    def joint_cov(self, beta: ArrayLike) -> Array:
        """Covariance of (a, s'); shape `beta.shape + (2, 2)`."""
        v = self.action_var(beta)
        alpha = self.params.alpha
        row0 = jnp.stack([v, alpha * v], axis=-1)
        row1 = jnp.stack([alpha * v, self.state_var(beta)], axis=-1)
        return jnp.stack([row0, row1], axis=-2)

    def action_given_state(self, s_next: ArrayLike, beta: ArrayLike) -> tuple[Array, Array]:
        """Mean and variance of pi_beta(a | s', s), the Gibbs conditional for `a`.

        a | s' ∝ pi_beta(a|s) q(s'|a,s): precision tau_beta + alpha^2/sigma_s'^2.
        """
        p = self.params
        tau = self.action_precision(beta)
        prec = tau + p.alpha**2 / p.sigma_sprime**2
        lin = tau * self.action_mean(beta) + p.alpha * (jnp.asarray(s_next) - self.state_offset) / p.sigma_sprime**2
        return lin / prec, 1.0 / prec

    # -- exact sampling ----------------------------------------------------------------
    def sample_base_action(self, key: Array, shape: tuple[int, ...] = ()) -> Array:
        """Draws a ~ q(a|s) with the given shape."""
        p = self.params
        return p.mu_a + p.sigma_a * jax.random.normal(key, shape)

    def sample_action(self, key: Array, beta: ArrayLike, shape: tuple[int, ...] | None = None) -> Array:
        """Draws a ~ pi_beta(a|s). `shape` must broadcast with `beta` (default: its shape).

        E.g. `beta` of shape (B, 1) and `shape=(B, n)` gives n draws per tilt strength.
        """
        beta = jnp.asarray(beta)
        shape = beta.shape if shape is None else shape
        z = jax.random.normal(key, shape)
        return self.action_mean(beta) + jnp.sqrt(self.action_var(beta)) * z

    def sample_next_state(self, key: Array, a: ArrayLike) -> Array:
        """Draws s' ~ q(s'|a,s) for every entry of `a` (the exact state refresh)."""
        p = self.params
        a = jnp.asarray(a)
        return p.alpha * a + self.state_offset + p.sigma_sprime * jax.random.normal(key, a.shape)

    def sample_joint(
        self, key: Array, beta: ArrayLike, shape: tuple[int, ...] | None = None
    ) -> tuple[Array, Array]:
        """Draws (a, s') ~ pi_beta(a, s'|s); `shape` as in `sample_action`."""
        key_a, key_s = jax.random.split(key)
        a = self.sample_action(key_a, beta, shape)
        return a, self.sample_next_state(key_s, a)
