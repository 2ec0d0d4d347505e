"""Toy mirror-descent tilt in 1-D: exact target vs importance, MCMC and annealed samplers.

Seed 004. The base policy q(a|s) = N(mu_a, sigma_a^2), dynamics
q(s'|a,s) = N(alpha a + d s + mu_eps, sigma_s'^2) and value Q(a) = -0.5 qA (a - mu_Q)^2
make pi_beta(a|s) ∝ q(a|s) exp(beta Q(a)) Gaussian, so every sampler can be scored
against the closed form (`metax.tilt.GaussianTilt`). The script

1. checks the mirror-descent step numerically (importance reweighting of base draws),
2. checks conditional invariance pi_beta(s'|a,s) = q(s'|a,s) with KS tests,
3. runs each sampler of `--samplers` `--kl-runs` times and measures the histogram KL
   of its actions and states to the exact marginals, evaluations per action,
   acceptance, autocorrelation and effective sample size,
4. sweeps the state refreshes per level L = 0..`--sweep-max-refresh` for the annealed
   (pc_*) samplers,

and writes metrics.json plus plots and GIFs to `--out`.

    python experiments/toy_md/run_toy_md.py --out runs/toy_md
    python experiments/toy_md/run_toy_md.py --samplers all --beta-schedule late_ramp --out runs/toy_md_all

It refuses to overwrite an earlier run's metrics.json in --out unless given --overwrite.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

if importlib.util.find_spec("metax") is None:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from metax.experiment.io import study_folder_problem, write_json_atomic  # noqa: E402
from metax.experiment.plots import pyplot, save_figure  # noqa: E402
from metax.experiment.signals import run_study  # noqa: E402
from metax.tilt import (  # noqa: E402
    PC_SAMPLERS,
    SAMPLERS,
    GaussianTilt,
    SamplerConfig,
    TiltParams,
    check_sampler,
    check_schedule,
    make_levels,
    metrics,
    run_sampler,
    validate_levels,
    validate_params,
)

plt = pyplot()  # the Agg backend, before matplotlib.animation loads
from matplotlib.animation import FuncAnimation, PillowWriter  # noqa: E402

PROG = "run_toy_md.py"
DEFAULT_OUT = os.path.join("runs", "toy_md")  # relative to the working directory, never the source tree
KS_DRAWS = 20_000  # exact draws for the conditional-invariance KS tests
# Pairs with |a - a0| < 0.1 sd of pi_beta enter the windowed KS test; the window adds
# alpha^2 (0.1 sd)^2 / 3 to the variance of s', far below what the test can resolve.
KS_WINDOW_SD = 0.1
MAX_ANIM_FRAMES = 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--samplers", default="pc_ula", help=f"comma list of {', '.join(SAMPLERS)}, or 'all' (default: pc_ula)")
    add("--beta-schedule", default="linear", help="linear, late_constant, late_ramp, tfg_plus_final_mala, sigma_power")
    add("--lambda-scale", type=float, default=1.0, help="MD strength beta at the clean level (default 1)")
    add("--K", type=int, default=10, help="annealing levels (default 10)")
    add("--refresh-L", type=int, default=1, help="exact state refreshes per level (default 1)")
    add("--action-steps-per-level", type=int, default=10, help="corrector steps per level (default 10)")
    add("--kl-runs", type=int, default=5, help="independent runs per sampler for the KLs (default 5)")
    add("--kl-bins", type=int, default=40, help="histogram bins on mean +- 5 sd (default 40)")
    add("--sweep-max-refresh", type=int, default=4, help="refresh sweep L = 0..this (default 4)")
    add("--sweep-runs", type=int, default=3, help="runs per sweep point (default 3)")
    add("--sigma-a", type=float, default=1.0, help="base policy sd (default 1)")
    add("--mu-a", type=float, default=0.0, help="base policy mean (default 0)")
    add("--qA", type=float, default=1.0, help="curvature of Q (default 1)")
    add("--mu-Q", type=float, default=2.0, help="optimum of Q (default 2)")
    add("--alpha", type=float, default=1.0, help="action gain of the dynamics (default 1)")
    add("--sigma-sprime", type=float, default=0.5, help="dynamics noise sd (default 0.5)")
    add("--d", type=float, default=0.5, help="state gain of the dynamics (default 0.5)")
    add("--mu-eps", type=float, default=0.0, help="dynamics offset (default 0)")
    add("--s", type=float, default=1.0, help="current state s (default 1)")
    add("--n-chains", type=int, default=2000, help="chains / draws per run (default 2000)")
    add("--n-steps", type=int, default=100, help="steps of the plain MCMC samplers (default 100)")
    add("--step-size", type=float, default=0.1, help="Langevin step in units of the prior variance (default 0.1)")
    add("--seed", type=int, default=0, help="PRNG seed (default 0)")
    add("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    add("--overwrite", action="store_true", help="replace an earlier run's metrics.json in --out")
    return p


def _check_args(args: argparse.Namespace) -> tuple[list[str], GaussianTilt]:
    """Validates everything up front; raises ValueError with a user-facing message."""
    names = [n.strip() for n in args.samplers.split(",") if n.strip()]
    names = list(SAMPLERS) if names == ["all"] else names
    if not names:
        raise ValueError(f"--samplers is empty; valid samplers: {', '.join(SAMPLERS)}")
    for name in names:
        check_sampler(name)
    check_schedule(args.beta_schedule)
    minimum = {"K": 1, "refresh_L": 0, "action_steps_per_level": 0, "kl_runs": 1, "kl_bins": 2,
               "sweep_max_refresh": 0, "sweep_runs": 1, "n_chains": 2, "n_steps": 1}
    for field, low in minimum.items():
        flag, value = "--" + field.replace("_", "-"), getattr(args, field)
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if not args.step_size > 0:
        raise ValueError(f"--step-size must be positive, got {args.step_size:g}")
    problem = study_folder_problem(args.out, args.overwrite, ("metrics.json", "*_match_*.png", "anim_*.gif", "*_kl_vs_refresh.png"))
    if problem is not None:
        raise ValueError(problem)
    params = TiltParams(**{field: getattr(args, field) for field in TiltParams._fields})
    try:
        validate_params(params, [args.lambda_scale])
    except ValueError as e:  # name the flags, not the fields
        msg = str(e).replace("sigma_sprime", "--sigma-sprime").replace("sigma_a must", "--sigma-a must")
        raise ValueError(msg) from None
    tilt = GaussianTilt(params)
    if any(n in PC_SAMPLERS for n in names):
        levels = make_levels(args.beta_schedule, args.lambda_scale, args.K, args.sigma_a)
        try:
            validate_levels(tilt, levels)
        except ValueError as e:
            raise ValueError(f"{e} (a level of --beta-schedule {args.beta_schedule})") from None
    return names, tilt


def _normal_pdf(x, mean, var):
    return np.exp(-0.5 * (x - mean) ** 2 / var) / np.sqrt(2 * np.pi * var)


def plot_match(path, samples, weights, exact, base, bins, title, xlabel, gt=None):
    """Histogram of samples against the exact tilted and the base densities."""
    lo = min(exact[0] - 4.5 * np.sqrt(exact[1]), base[0] - 3.5 * np.sqrt(base[1]))
    hi = max(exact[0] + 4.5 * np.sqrt(exact[1]), base[0] + 3.5 * np.sqrt(base[1]))
    x = np.linspace(lo, hi, 400)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.hist(samples, bins=bins, range=(lo, hi), weights=weights, density=True, alpha=0.45, color="C0", label="sampler")
    if gt is not None:
        ax.hist(gt, bins=bins, range=(lo, hi), density=True, histtype="step", color="k", lw=1.2,
                label="exact samples")
    ax.plot(x, _normal_pdf(x, *exact), "C3", lw=2, label="exact tilted")
    ax.plot(x, _normal_pdf(x, *base), "C2--", lw=1.5, label="base")
    ax.set(title=title, xlabel=xlabel, ylabel="density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def write_anim(path, trace, frame_targets, exact, bins, title):
    """GIF of the action histogram over steps/levels against each frame's target."""
    cols = np.unique(np.linspace(0, trace.shape[1] - 1, min(MAX_ANIM_FRAMES, trace.shape[1])).astype(int))
    lo = min(exact[0] - 5 * np.sqrt(exact[1]), float(np.quantile(trace[:, 0], 0.01)))
    hi = max(exact[0] + 5 * np.sqrt(exact[1]), float(np.quantile(trace[:, 0], 0.99)))
    edges = np.linspace(lo, hi, bins + 1)
    # Histograms up front; frames only move bar heights and one line (fast to render).
    heights = [np.histogram(trace[:, c], edges, density=True)[0] for c in cols]
    x = np.linspace(lo, hi, 300)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    bars = ax.bar(edges[:-1], heights[0], width=np.diff(edges), align="edge", alpha=0.5, color="C0")
    (target_line,) = ax.plot(x, _normal_pdf(x, *frame_targets[cols[0]]), "C1", lw=1.5, label="current target")
    ax.plot(x, _normal_pdf(x, *exact), "C3--", lw=1.5, label="exact pi_beta")
    peak = max(max(h.max() for h in heights), _normal_pdf(0, 0, min(t[1] for t in frame_targets)))
    ax.set(xlabel="action a", ylim=(0, 1.15 * peak), title=f"{title} {cols[0] + 1}/{trace.shape[1]}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()

    def draw(i):
        for bar, h in zip(bars, heights[i]):
            bar.set_height(h)
        target_line.set_ydata(_normal_pdf(x, *frame_targets[cols[i]]))
        ax.set_title(f"{title} {cols[i] + 1}/{trace.shape[1]}")

    anim = FuncAnimation(fig, draw, frames=len(cols))
    anim.save(path, writer=PillowWriter(fps=4), dpi=72)
    plt.close(fig)


def _kl_runs(name, key, tilt, beta, config, runs, bins):
    """Runs `name` `runs` times; returns per-run KLs and the first run's result."""
    kls, results = [], []
    for k in jax.random.split(key, runs):
        r = jax.tree_util.tree_map(np.asarray, run_sampler(name, k, tilt, config))
        kls.append(metrics.marginal_kls(tilt, beta, r.actions, r.states, bins, r.weights))
        results.append(r)
    return np.asarray(kls), results


def _mean_std(x):
    return {"mean": float(np.mean(x)), "std": float(np.std(x))}


def _exact_checks(tilt: GaussianTilt, beta: float, key: jax.Array) -> dict[str, Any]:
    """The MD step by reweighting base draws, and conditional invariance by KS tests."""
    k_base, k_tilt, k_is = jax.random.split(key, 3)
    a_b, s_b = map(np.asarray, tilt.sample_joint(k_base, 0.0, (KS_DRAWS,)))
    a_t, s_t = map(np.asarray, tilt.sample_joint(k_tilt, beta, (KS_DRAWS,)))
    r_is = run_sampler("importance", k_is, tilt, SamplerConfig(beta=beta, n_chains=KS_DRAWS))
    a_is, w = np.asarray(r_is.actions, np.float64), np.asarray(r_is.weights, np.float64)
    w_mean = float(np.sum(w * a_is))
    a0 = float(tilt.action_mean(beta))
    window = KS_WINDOW_SD * float(np.sqrt(tilt.action_var(beta)))
    p = tilt.params
    return {
        "md_reweighting": {
            "n": KS_DRAWS,
            "ess": metrics.importance_ess(w),
            "weighted_action_mean": w_mean,
            "weighted_action_var": float(np.sum(w * (a_is - w_mean) ** 2)),
        },
        "conditional_invariance": {
            "a0": a0,
            "window": window,
            "analytic": f"N({p.alpha:g} a0 + {float(tilt.state_offset):g}, {p.sigma_sprime:g}^2)",
            "base_window": metrics.conditional_ks(tilt, a_b, s_b, a0, window)._asdict(),
            "tilted_window": metrics.conditional_ks(tilt, a_t, s_t, a0, window)._asdict(),
            "tilted_residual": metrics.residual_ks(tilt, a_t, s_t)._asdict(),
        },
    }


def _sampler_metrics(name, results, kls, tilt, a0, window) -> dict[str, Any]:
    """KLs over runs, cost, acceptance, conditional KS and (MCMC) mixing of one sampler."""
    r = results[0]
    mean = float(np.sum(r.weights * r.actions))
    pooled_a = np.concatenate([x.actions for x in results])
    pooled_s = np.concatenate([x.states for x in results])
    m = {
        "action_kl": _mean_std(kls[:, 0]),
        "state_kl": _mean_std(kls[:, 1]),
        "evals_per_action": float(r.evals_per_action),
        "accept_rate": None if name == "importance" else float(np.mean(r.accept_rate)),
        "action_mean": mean,
        "action_var": float(np.sum(r.weights * (r.actions - mean) ** 2)),
        "ks_window": metrics.conditional_ks(tilt, pooled_a, pooled_s, a0, window)._asdict(),
        "ks_residual": metrics.residual_ks(tilt, r.actions, r.states)._asdict(),
    }
    if name == "importance":
        m["ess"] = metrics.importance_ess(r.weights)
    elif name not in PC_SAMPLERS:  # mixing over the second half of each chain
        tail = r.action_trace[:, r.action_trace.shape[1] // 2 :]
        m["integrated_autocorr_time"] = metrics.integrated_autocorr_time(tail)
        m["ess"] = metrics.effective_sample_size(tail)
        m["autocorr_lag1_to_5"] = metrics.autocorrelation(tail, 5)[1:].tolist()
    return m


def _sampler_plots(args, name, r, m, tilt, levels, key, exact_a, exact_s) -> None:
    """action/state_match_<name>(_gt).png and anim_<name>.gif."""
    beta, bins = args.lambda_scale, args.kl_bins
    base_a = (float(tilt.action_mean(0.0)), float(tilt.action_var(0.0)))
    base_s = (float(tilt.state_mean(0.0)), float(tilt.state_var(0.0)))
    gt_a, gt_s = map(np.asarray, tilt.sample_joint(key, beta, (args.n_chains,)))
    w_plot = r.weights if name == "importance" else None
    panels = [("action", r.actions, exact_a, base_a, gt_a, "action a"),
              ("state", r.states, exact_s, base_s, gt_s, "next state s'")]
    for kind, samples, exact, base, gt, label in panels:
        title = f"{name}: {kind} marginal (KL {m[f'{kind}_kl']['mean']:.4f})"
        path = os.path.join(args.out, f"{kind}_match_{name}")
        plot_match(path + ".png", samples, w_plot, exact, base, bins, title, label)
        plot_match(path + "_gt.png", samples, w_plot, exact, base, bins, title + " vs exact draws", label, gt=gt)
    if name in PC_SAMPLERS:
        targets = [(float(tilt.noised(sg).action_mean(b)), float(tilt.noised(sg).action_var(b)))
                   for sg, b in zip(levels.sigma[1:], levels.beta[1:])]
        frame = "level"
    else:
        targets, frame = [exact_a] * r.action_trace.shape[1], "step"
    write_anim(os.path.join(args.out, f"anim_{name}.gif"), r.action_trace, targets, exact_a, bins, f"{name} {frame}")


def run(args: argparse.Namespace, names: list[str], tilt: GaussianTilt) -> dict[str, Any]:
    """The whole study; returns the metrics dict (also written to metrics.json)."""
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    beta, bins, n = args.lambda_scale, args.kl_bins, args.n_chains
    k_ks, k_floor, k_samplers, k_sweep = jax.random.split(jax.random.PRNGKey(args.seed), 4)
    exact_a = (float(tilt.action_mean(beta)), float(tilt.action_var(beta)))
    exact_s = (float(tilt.state_mean(beta)), float(tilt.state_var(beta)))
    out: dict[str, Any] = {
        "config": vars(args) | {"samplers": names},
        "exact": {
            "action_mean": exact_a[0], "action_var": exact_a[1],
            "state_mean": exact_s[0], "state_var": exact_s[1],
            "base_action_mean": float(tilt.action_mean(0.0)), "base_action_var": float(tilt.action_var(0.0)),
            "base_state_mean": float(tilt.state_mean(0.0)), "base_state_var": float(tilt.state_var(0.0)),
            "joint_cov": np.asarray(tilt.joint_cov(beta)).tolist(),
        },
    }
    # KL of exact draws of the same size: the floor every sampler's KL is read against.
    floor = np.array([
        metrics.marginal_kls(tilt, beta, *map(np.asarray, tilt.sample_joint(k, beta, (n,))), bins)
        for k in jax.random.split(k_floor, args.kl_runs)
    ])
    out["kl_exact_samples"] = {"action": _mean_std(floor[:, 0]), "state": _mean_std(floor[:, 1])}
    out |= _exact_checks(tilt, beta, k_ks)

    config = SamplerConfig(
        beta=beta, n_chains=n, n_steps=args.n_steps, step_size=args.step_size, schedule=args.beta_schedule,
        K=args.K, refresh_L=args.refresh_L, action_steps_per_level=args.action_steps_per_level,
    )
    levels = make_levels(args.beta_schedule, beta, args.K, args.sigma_a)
    a0, window = out["conditional_invariance"]["a0"], out["conditional_invariance"]["window"]
    out["samplers"] = {}
    pc_names = [x for x in names if x in PC_SAMPLERS]
    bar = tqdm(total=len(names) + len(pc_names), desc="toy_md", unit="sampler")
    for name, key in zip(names, jax.random.split(k_samplers, len(names))):
        bar.set_postfix(sampler=name)
        t0 = time.perf_counter()
        kls, results = _kl_runs(name, key, tilt, beta, config, args.kl_runs, bins)
        m = _sampler_metrics(name, results, kls, tilt, a0, window)
        m["seconds"] = time.perf_counter() - t0
        out["samplers"][name] = m
        _sampler_plots(args, name, results[0], m, tilt, levels, key, exact_a, exact_s)
        bar.update()

    out["refresh_sweep"] = _refresh_sweep(args, pc_names, k_sweep, tilt, config, out["kl_exact_samples"], bar)
    bar.close()
    out["runtime_s"] = time.perf_counter() - t_start
    write_json_atomic(os.path.join(args.out, "metrics.json"), out)  # NaN / inf are written as null
    return out


def _refresh_sweep(args, pc_names, key, tilt, config, out_floor, bar):
    """KL vs state refreshes per level, L = 0..--sweep-max-refresh, per annealed sampler."""
    refresh = list(range(args.sweep_max_refresh + 1))
    sweep: dict[str, Any] = {"refresh_L": refresh}
    for name, k in zip(pc_names, jax.random.split(key, max(len(pc_names), 1))):
        bar.set_postfix(sweep=name)
        # The same key at every L (common random numbers): differences are due to L alone.
        kls = np.stack([
            _kl_runs(name, k, tilt, args.lambda_scale, config._replace(refresh_L=L), args.sweep_runs, args.kl_bins)[0]
            for L in refresh
        ])  # (len(refresh), runs, 2)
        sweep[name] = {
            "action_kl_mean": kls[:, :, 0].mean(1).tolist(), "action_kl_std": kls[:, :, 0].std(1).tolist(),
            "state_kl_mean": kls[:, :, 1].mean(1).tolist(), "state_kl_std": kls[:, :, 1].std(1).tolist(),
        }
        bar.update()
    if pc_names:
        for kind in ("action", "state"):
            fig, ax = plt.subplots(figsize=(5, 3.4))
            for name in pc_names:
                ax.errorbar(refresh, sweep[name][f"{kind}_kl_mean"], yerr=sweep[name][f"{kind}_kl_std"],
                            marker="o", capsize=3, label=name)
            floor = out_floor[kind]["mean"]
            ax.axhline(floor, color="gray", ls=":", label="exact draws (floor)")
            ax.set_xticks(refresh)
            ax.set(yscale="log", xlabel="state refreshes per level L", ylabel=f"{kind} KL",
                   title=f"{kind} KL vs refresh ({args.beta_schedule}, K={args.K})")
            ax.legend(fontsize=7)
            fig.tight_layout()
            save_figure(fig, os.path.join(args.out, f"{kind}_kl_vs_refresh.png"), dpi=90)
    return sweep


def _summary(out: dict[str, Any]) -> str:
    """The key numbers, one line per check / sampler / sweep."""
    e, md, ci, fl = out["exact"], out["md_reweighting"], out["conditional_invariance"], out["kl_exact_samples"]
    lines = [
        f"exact pi_beta(a): mean {e['action_mean']:.4f} var {e['action_var']:.4f}; reweighted base draws: "
        f"mean {md['weighted_action_mean']:.4f} var {md['weighted_action_var']:.4f} (ESS {md['ess']:.0f}/{md['n']})",
        f"conditional invariance KS p-values: base {ci['base_window']['p_value']:.3f} (n={ci['base_window']['n']}), "
        f"tilted {ci['tilted_window']['p_value']:.3f} (n={ci['tilted_window']['n']}), "
        f"residual {ci['tilted_residual']['p_value']:.3f}",
        f"KL of exact draws (floor): action {fl['action']['mean']:.4f} state {fl['state']['mean']:.4f}",
    ]
    for name, m in out["samplers"].items():
        acc = "" if m["accept_rate"] is None else f" accept {m['accept_rate']:.3f}"
        ess = f" ESS {m['ess']:.0f}" if "ess" in m else ""
        lines.append(
            f"{name}: action KL {m['action_kl']['mean']:.4f}±{m['action_kl']['std']:.4f} "
            f"state KL {m['state_kl']['mean']:.4f}±{m['state_kl']['std']:.4f} "
            f"evals/action {m['evals_per_action']:.0f}{acc}{ess} KS p {m['ks_window']['p_value']:.3f}"
        )
    sweep = out["refresh_sweep"]
    for name in (k for k in sweep if k != "refresh_L"):
        def fmt(xs):
            return " ".join(f"{x:.4f}" for x in xs)

        lines.append(
            f"{name} refresh L={sweep['refresh_L']}: action KL {fmt(sweep[name]['action_kl_mean'])}; "
            f"state KL {fmt(sweep[name]['state_kl_mean'])}"
        )
    lines.append(f"runtime {out['runtime_s']:.1f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, with a message on stderr)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed usage and the error
        return int(e.code or 0)
    try:
        names, tilt = _check_args(args)
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    out = run(args, names, tilt)
    print(_summary(out))
    print(f"wrote {os.path.join(args.out, 'metrics.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(run_study(main, "experiments/toy_md/run_toy_md.py"))
