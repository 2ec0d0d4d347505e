"""Host-side diagnostics of tilt samples against the closed form (numpy / scipy).

- `histogram_kl`: KL(P_hat || P) between the (weighted) histogram P_hat of samples and
  the bin masses P of the exact Gaussian marginal, on `bins` equal bins spanning
  mean ± 5 sd (outliers fall into the edge bins, whose exact masses include the
  tails). Even exact samples give about (bins_with_mass - 1) / (2 n) from sampling
  noise, so compare against `kl_noise_floor`.
- `conditional_ks`: KS test of s' for the pairs with |a - a0| < window against the
  analytic N(alpha a0 + d s + mu_eps, sigma_s'^2) (conditional invariance).
- `residual_ks`: the same law tested on every pair, through the standardised
  residual (s' - alpha a - c) / sigma_s' ~ N(0, 1).
- `autocorrelation`, `integrated_autocorr_time`, `effective_sample_size` of chains
  (Geyer's initial positive sequence estimator), `importance_ess` of weights.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .gaussian import GaussianTilt

KL_SPAN_SD = 5.0


def histogram_kl(
    samples: ArrayLike, mean: float, var: float, bins: int, weights: ArrayLike | None = None
) -> float:
    """KL(histogram of `samples` || N(mean, var) binned alike); see module doc.

    Args:
      samples: (n,) draws.
      mean, var: the exact Gaussian marginal.
      bins: number of bins on mean ± 5 sd.
      weights: optional (n,) non-negative sample weights (importance sampling).
    """
    sd = float(np.sqrt(var))
    edges = np.linspace(mean - KL_SPAN_SD * sd, mean + KL_SPAN_SD * sd, int(bins) + 1)
    x = np.clip(np.asarray(samples, dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(x, edges, weights=None if weights is None else np.asarray(weights, np.float64))
    p_hat = counts / counts.sum()
    from scipy import stats  # imported when used: scipy.stats takes a second to import

    cdf = stats.norm.cdf(edges, mean, sd)
    cdf[0], cdf[-1] = 0.0, 1.0
    p = np.diff(cdf)
    mask = p_hat > 0
    return float(np.sum(p_hat[mask] * np.log(p_hat[mask] / p[mask])))


def marginal_kls(
    tilt: GaussianTilt, beta: float, actions: ArrayLike, states: ArrayLike, bins: int, weights: ArrayLike | None = None
) -> tuple[float, float]:
    """(action KL, state KL) of samples against the exact tilted marginals."""
    action_kl = histogram_kl(actions, float(tilt.action_mean(beta)), float(tilt.action_var(beta)), bins, weights)
    state_kl = histogram_kl(states, float(tilt.state_mean(beta)), float(tilt.state_var(beta)), bins, weights)
    return action_kl, state_kl


def kl_noise_floor(n: int, bins: int, runs: int = 20, seed: int = 0) -> float:
    """Mean `histogram_kl` of n exact N(0, 1) draws: the KL of a perfect sampler."""
    rng = np.random.default_rng(seed)
    return float(np.mean([histogram_kl(rng.standard_normal(n), 0.0, 1.0, bins) for _ in range(runs)]))


class KSResult(NamedTuple):
    """Outcome of a one-sample KS test: sample size, statistic and p-value."""

    n: int
    statistic: float
    p_value: float


def conditional_ks(tilt: GaussianTilt, actions: ArrayLike, states: ArrayLike, a0: float, window: float) -> KSResult:
    """KS test of s' | a in (a0 - window, a0 + window) against q(s'|a0, s)."""
    a, s_next = np.asarray(actions, np.float64), np.asarray(states, np.float64)
    sel = s_next[np.abs(a - a0) < window]
    if sel.size == 0:
        return KSResult(0, float("nan"), float("nan"))
    p = tilt.params
    loc = float(p.alpha * a0 + tilt.state_offset)
    from scipy import stats

    res = stats.kstest(sel, "norm", args=(loc, float(p.sigma_sprime)))
    return KSResult(int(sel.size), float(res.statistic), float(res.pvalue))


def residual_ks(tilt: GaussianTilt, actions: ArrayLike, states: ArrayLike) -> KSResult:
    """KS test of (s' - alpha a - c) / sigma_s' against N(0, 1) over all pairs."""
    p = tilt.params
    a, s_next = np.asarray(actions, np.float64), np.asarray(states, np.float64)
    z = (s_next - p.alpha * a - float(tilt.state_offset)) / p.sigma_sprime
    from scipy import stats

    res = stats.kstest(z, "norm")
    return KSResult(int(z.size), float(res.statistic), float(res.pvalue))


def autocorrelation(trace: ArrayLike, max_lag: int | None = None) -> np.ndarray:
    """Autocorrelation of chains at lags 0..max_lag, pooled over chains.

    Args:
      trace: (n_chains, T) chain values. Centred on the pooled mean, so chains stuck
        in different places show up as correlation that does not decay.
      max_lag: largest lag (default T - 1).

    Returns:
      (max_lag + 1,) autocorrelations, the first equal to 1.
    """
    x = np.asarray(trace, np.float64)
    x = x - x.mean()
    T = x.shape[1]
    max_lag = T - 1 if max_lag is None else min(int(max_lag), T - 1)
    f = np.fft.rfft(x, n=2 * T, axis=1)
    acov = np.fft.irfft(f * np.conj(f), axis=1)[:, : max_lag + 1].mean(axis=0) / T
    return acov / acov[0]


def integrated_autocorr_time(trace: ArrayLike) -> float:
    """tau = 1 + 2 sum_k rho_k, truncated by Geyer's initial positive sequence."""
    rho = autocorrelation(trace)
    m = rho.size // 2
    pairs = rho[: 2 * m].reshape(m, 2).sum(axis=1)
    stop = np.argmax(pairs <= 0) if np.any(pairs <= 0) else m
    return float(max(-1.0 + 2.0 * pairs[:stop].sum(), 1.0 / rho.size))


def effective_sample_size(trace: ArrayLike) -> float:
    """n_chains * T / tau for a (n_chains, T) trace."""
    x = np.asarray(trace)
    return float(x.size / integrated_autocorr_time(x))


def importance_ess(weights: ArrayLike) -> float:
    """Kish effective sample size 1 / sum(w^2) of normalised weights."""
    w = np.asarray(weights, np.float64)
    w = w / w.sum()
    return float(1.0 / np.sum(w**2))
