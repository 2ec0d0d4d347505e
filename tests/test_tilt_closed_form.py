"""GaussianTilt against numerical normalisation on grids, autodiff and exact draws."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metax.tilt import GaussianTilt, TiltParams, check_schedule, make_levels, validate_params

PARAM_SETS = [
    TiltParams(),
    TiltParams(mu_a=-0.7, sigma_a=0.6, qA=2.5, mu_Q=1.3, alpha=-1.4, sigma_sprime=0.3, d=0.8, mu_eps=0.2, s=-0.5),
    # Negative curvature (Q is convex) stays normalisable for beta < 1/(sigma_a^2 |qA|) = 2.
    TiltParams(mu_a=0.5, sigma_a=1.0, qA=-0.4, mu_Q=-1.0),
]
BETAS = np.array([0.0, 0.3, 1.0, 1.9])


def _grid_moments(x, logp):
    """Mean and variance of exp(logp) normalised on the (uniform, wide) grid x."""
    w = np.exp(logp - logp.max())
    w /= np.trapezoid(w, x)
    mean = np.trapezoid(x * w, x)
    return mean, np.trapezoid((x - mean) ** 2 * w, x)


@pytest.mark.parametrize("params", PARAM_SETS)
def test_action_law_matches_grid_normalisation(params):
    p = params
    x = np.linspace(-40.0, 40.0, 400_001)
    with jax.enable_x64(True):
        tilt = GaussianTilt(p)
        means = np.asarray(tilt.action_mean(jnp.asarray(BETAS)))  # batched over beta
        variances = np.asarray(tilt.action_var(jnp.asarray(BETAS)))
    assert means.dtype == np.float64 and means.shape == BETAS.shape
    for beta, mean, var in zip(BETAS, means, variances):
        logp = -0.5 * (x - p.mu_a) ** 2 / p.sigma_a**2 - beta * 0.5 * p.qA * (x - p.mu_Q) ** 2
        grid_mean, grid_var = _grid_moments(x, logp)
        assert abs(mean - grid_mean) < 1e-6
        assert abs(var - grid_var) < 1e-6


@pytest.mark.parametrize("params", PARAM_SETS[:2])
def test_joint_and_state_marginal_match_2d_grid(params):
    p = params
    beta = 0.8
    with jax.enable_x64(True):
        tilt = GaussianTilt(p)
        cov = np.asarray(tilt.joint_cov(beta))
        mean = np.asarray(tilt.joint_mean(beta))
        ga, gs = np.meshgrid(
            np.linspace(mean[0] - 12 * np.sqrt(cov[0, 0]), mean[0] + 12 * np.sqrt(cov[0, 0]), 1201),
            np.linspace(mean[1] - 12 * np.sqrt(cov[1, 1]), mean[1] + 12 * np.sqrt(cov[1, 1]), 1201),
            indexing="ij",
        )
    c = p.d * p.s + p.mu_eps
    logp = (
        -0.5 * (ga - p.mu_a) ** 2 / p.sigma_a**2
        - beta * 0.5 * p.qA * (ga - p.mu_Q) ** 2
        - 0.5 * (gs - p.alpha * ga - c) ** 2 / p.sigma_sprime**2
    )
    w = np.exp(logp - logp.max())
    w /= w.sum()  # uniform grid: Riemann sums are exact to spectral accuracy here
    m_a, m_s = (w * ga).sum(), (w * gs).sum()
    grid_cov = np.array(
        [[(w * (ga - m_a) ** 2).sum(), (w * (ga - m_a) * (gs - m_s)).sum()],
         [(w * (ga - m_a) * (gs - m_s)).sum(), (w * (gs - m_s) ** 2).sum()]]
    )
    np.testing.assert_allclose(mean, [m_a, m_s], atol=1e-6)
    np.testing.assert_allclose(cov, grid_cov, atol=1e-6)
    with jax.enable_x64(True):
        assert abs(float(tilt.state_mean(beta)) - m_s) < 1e-6
        assert abs(float(tilt.state_var(beta)) - grid_cov[1, 1]) < 1e-6
        # Gibbs conditional a | s' against the grid slice at one s'.
        j = 700
        cond_mean, cond_var = tilt.action_given_state(gs[0, j], beta)
    slice_mean, slice_var = _grid_moments(ga[:, j], logp[:, j])
    assert abs(float(cond_mean) - slice_mean) < 1e-6
    assert abs(float(cond_var) - slice_var) < 1e-6


def test_densities_normalised_and_scores_match_autodiff():
    p = PARAM_SETS[1]
    beta = 1.3
    with jax.enable_x64(True):
        tilt = GaussianTilt(p)
        a = jnp.linspace(-3.0, 3.0, 13)
        s_next = jnp.linspace(-2.0, 2.5, 13)
        auto_a = jax.vmap(jax.grad(tilt.unnormalised_log_target), (0, None))(a, beta)
        np.testing.assert_allclose(tilt.score_tilted_action(a, beta), auto_a, rtol=1e-12)
        # The normalised and unnormalised log targets differ by a constant in a.
        diff = tilt.log_tilted_action(a, beta) - tilt.unnormalised_log_target(a, beta)
        np.testing.assert_allclose(diff, diff[0], atol=1e-12)
        grad_joint = jax.vmap(jax.grad(tilt.log_tilted_joint, argnums=(0, 1)), (0, 0, None))(a, s_next, beta)
        score_joint = tilt.score_tilted_joint(a, s_next, beta)
        np.testing.assert_allclose(score_joint[0], grad_joint[0], rtol=1e-12)
        np.testing.assert_allclose(score_joint[1], grad_joint[1], rtol=1e-12)
        x = jnp.linspace(-30.0, 30.0, 60_001)
        for logpdf in (tilt.log_tilted_action(x, beta), tilt.log_state_marginal(x, beta), tilt.log_base_action(x)):
            assert abs(float(jnp.trapezoid(jnp.exp(logpdf), x)) - 1.0) < 1e-9


def test_methods_batch_over_beta_and_jit():
    tilt = GaussianTilt(TiltParams())
    betas = jnp.array([0.0, 0.5, 1.0])
    cov = tilt.joint_cov(betas)
    assert cov.shape == (3, 2, 2)
    np.testing.assert_allclose(cov[2], [[0.5, 0.5], [0.5, 0.75]], rtol=1e-6)  # by hand for the defaults
    np.testing.assert_allclose(jax.jit(lambda t, b: t.joint_cov(b))(tilt, betas), cov, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(tilt.action_mean)(betas), [0.0, 2 / 3, 1.0], rtol=1e-6)
    draws = tilt.sample_action(jax.random.PRNGKey(0), betas[:, None], (3, 5))
    assert draws.shape == (3, 5)
    # Noising the base adds variance: q_sigma = N(mu_a, sigma_a^2 + sigma^2).
    assert float(tilt.noised(2.0).action_var(0.0)) == pytest.approx(5.0)
    assert float(tilt.noised(0.0).action_mean(1.0)) == pytest.approx(1.0)


def test_exact_joint_sampling_moments():
    p = PARAM_SETS[1]
    tilt = GaussianTilt(p)
    n = 400_000
    a, s_next = tilt.sample_joint(jax.random.PRNGKey(3), 0.7, (n,))
    emp = np.cov(np.stack([np.asarray(a, np.float64), np.asarray(s_next, np.float64)]))
    exact = np.asarray(tilt.joint_cov(0.7), np.float64)
    # Standard error of a covariance entry is about sqrt(var_i var_j / n) < 1e-3 here.
    np.testing.assert_allclose(emp, exact, atol=6 * np.sqrt(exact[1, 1] * exact[0, 0] / n))
    np.testing.assert_allclose([np.mean(a), np.mean(s_next)], np.asarray(tilt.joint_mean(0.7)),
                               atol=6 * np.sqrt(exact[1, 1] / n))


@pytest.mark.parametrize(
    "params, betas, message",
    [
        (TiltParams(sigma_a=0.0), [1.0], "sigma_a must be a positive standard deviation, got 0"),
        (TiltParams(sigma_sprime=-0.5), [1.0], "sigma_sprime must be a positive standard deviation, got -0.5"),
        (TiltParams(qA=-0.6), [2.0], "1 + 2*(-0.6) = -0.2 <= 0; with qA=-0.6 keep beta < 1.66667"),
        (TiltParams(mu_Q=float("nan")), [1.0], "mu_Q must be finite"),
    ],
)
def test_validation_errors_name_the_numbers(params, betas, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_params(params, betas)


def test_negative_qA_is_fine_while_normalisable():
    validate_params(TiltParams(qA=-0.4), [0.0, 1.0, 2.4])  # 1 - 2.4 * 0.4 = 0.04 > 0


def test_schedules_reach_lambda_at_the_clean_level():
    lam = 1.7
    for name, expected in {
        "linear": lambda t, s: lam * t,
        "late_constant": lambda t, s: lam * (t >= 0.5),
        "late_ramp": lambda t, s: lam * np.clip(2 * t - 1, 0, 1),
        "tfg_plus_final_mala": lambda t, s: np.full_like(t, lam),
        "sigma_power": lambda t, s: lam / (1 + s**2 / 0.8**2) ** 2,
    }.items():
        levels = make_levels(name, lam, 8, sigma_a=0.8)
        assert levels.sigma[0] == pytest.approx(1.6) and levels.sigma[-1] == 0.0
        assert levels.beta[-1] == pytest.approx(lam)
        np.testing.assert_allclose(levels.beta, expected(levels.t, levels.sigma), rtol=1e-12)
        assert levels.final_mala == (name == "tfg_plus_final_mala")
    with pytest.raises(ValueError, match="valid schedules: linear, late_constant, late_ramp"):
        check_schedule("cosine")


def test_every_public_name_resolves():
    import metax.tilt

    assert len(metax.tilt.__all__) == len(set(metax.tilt.__all__))
    for name in metax.tilt.__all__:
        assert getattr(metax.tilt, name) is not None, name
