"""The estimator table: every meta-gradient estimator against an exact float64 reference.

    python benchmarks/estimators.py                # K = 5, 20, 80; appends to RESULTS.md, draws estimators.png
    python benchmarks/estimators.py --quick --no-record

One workload for all: sinusoid regression (10 support / 10 query points), a fixed
meta-batch of `TASKS` tasks, a tanh MLP 16-16 (smooth: a ReLU network's minimiser can sit on
a kink, where the implicit gradient does not exist; measured: no convergence) under `LearnedInit` with the iMAML proximal term
`(lam / 2) ||params - init||^2` (lam = `REG`) in the inner loss, inner SGD. Each estimator
runs in float32 (what users run) through its learner's own jitted `update` with
`optax.sgd(1.0)` outside (the ES learners: their strategy's mean moved by plain SGD with
rate 1 and no fitness shaping), so the meta-gradient it applies is `hparams_before -
hparams_after`.

References (float64, `jax_enable_x64`), and why each is the right one:

- "implicit": the exact gradient of the bilevel objective `L_out(p*(init))`, where
  `p*(init) = argmin_p L_in(p) + (lam / 2) ||p - init||^2` is solved to a gradient norm
  of ~1e-12 (20,000 gradient steps at a quarter of the inner rate, then Newton steps) and the gradient is
  `-(d_init grad_p F)^T H^{-1} grad_p L_out` with the dense Hessian `H` of the inner
  objective (strongly convex here: its smallest eigenvalue is printed). MAML, first-order
  MAML, CG, RBP, T1T2, EqProp, symmetric EqProp and Evosax all estimate this quantity
  as K grows (MAML and Evosax through the K-step unroll that converges to p*), so their
  error against it is what a user who wants the bilevel gradient gets.
- "unrolled": the exact gradient of the K-step objective `L_out(p_K(init))` (float64
  backpropagation through the same K SGD steps), the quantity MAML and Evosax estimate
  at finite K: their error against it separates float32 rounding / ES noise from
  the K-step bias. For the learned kernel (a learned update rule: no fixed point, the
  objective *is* the K-step unroll) it is the only meaningful reference: float64
  backprop through all K steps of the learned rule, for truncated backprop (the last
  K/4 steps) and for antithetic ES (PES with one segment).

Also per estimator and K: time per meta-step (median of jitted `update` calls) and the
peak memory XLA plans for the compiled `update` (`memory_analysis()`: arguments +
outputs + temporaries - aliased). Appends a table to RESULTS.md ("Estimators") and
draws benchmarks/estimators.png.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the references; the estimators stay float32

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from common import append_rows  # noqa: E402

import metax  # noqa: E402

HIDDEN = (16, 16)
SHOTS = 10
TASKS = 8
REG = 40.0  # iMAML proximal strength lam: makes the inner problem strongly convex (at 10 it is not: measured)
LR_INNER = 0.005  # inner SGD rate: contracts for every task (printed: lr * lambda_max < 2)
BETA = 0.05  # EqProp nudging
POPULATION = 256  # ES members (antithetic pairs)
SIGMA = 0.01  # ES perturbation std
HERE = os.path.dirname(os.path.abspath(__file__))


def module():
    loss = metax.energy.SquaredError
    return metax.module.LearnedInit(loss(), loss(), metax.models.mlp_fn(list(HIDDEN), 1, activation=jax.nn.tanh), reg_strength=REG, output_dim=1)


def kernel():
    return metax.kernel.CoordinatewiseKernel(hidden_sizes=(8,), step_size=LR_INNER, output_scale=0.1)


def learners(K: int, quick: bool) -> dict:
    """Estimator name -> (learner, reference name)."""
    L, sgd, one = metax.learner, optax.sgd(LR_INNER), optax.sgd(1.0)
    shaping = {"fitness_shaping_fn": lambda population, fitness, state, params: fitness}
    pop = 8 if quick else POPULATION
    es = dict(population_size=pop, sigma_init=SIGMA, **shaping)
    return {
        "MAML (second order)": (L.ModelAgnosticMetaLearning(module(), None, K, sgd, one, False), "implicit"),
        "MAML (first order)": (L.ModelAgnosticMetaLearning(module(), None, K, sgd, one, True), "implicit"),
        "iMAML CG (20 iters)": (L.ConjugateGradient(module(), None, K, 20, sgd, one), "implicit"),
        "RBP (Neumann 20, alpha=lr)": (L.RecurrentBackpropagation(module(), None, K, 20, sgd, one, LR_INNER), "implicit"),
        "T1T2": (L.T1T2(module(), None, K, sgd, one), "implicit"),
        f"EqProp (beta={BETA}, K nudged)": (
            L.EquilibriumPropagation(module(), None, K, K, sgd, sgd, one, BETA), "implicit"),
        f"symmetric EqProp (beta={BETA})": (
            L.SymmetricEquilibriumPropagation(module(), None, K, K, sgd, sgd, one, BETA), "implicit"),
        f"Evosax Open-ES (pop {pop}, sigma {SIGMA})": (
            L.Evosax(module(), None, K, sgd, (1,), "Open_ES",
                     dict(es, optimizer=optax.sgd(1.0), use_antithetic_sampling=True)), "implicit"),
        "learned kernel, truncated backprop (K/4)": (
            L.LearnedKernel(module(), None, K, kernel(), one, truncation=max(1, K // 4)), "unrolled kernel"),
        f"learned kernel, ES (PES 1 segment, pop {pop})": (
            L.LearnedKernel(module(), None, K, kernel(), one, estimator="pes", es_kwargs=es), "unrolled kernel"),
    }


def tasks(dtype):
    sample = metax.data.make_task_sampler("sinusoid", SHOTS, SHOTS)
    batch = jax.jit(lambda k: metax.data.sample_metabatch(k, sample, TASKS))(jax.random.PRNGKey(42))
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, batch)


# -- float64 references --------------------------------------------------------------------


def implicit_reference(learner, meta_state, batch, solve_steps: int):
    """Mean over tasks of the exact implicit gradient at the converged inner solution;
    also the worst final inner-gradient norm and the smallest Hessian eigenvalue."""
    rng = jax.random.PRNGKey(0)
    hparams, hstate = meta_state.hparams, meta_state.hstate

    def one_task(task):
        params0, state = learner.meta_model.reset_params(rng, hparams, hstate, task.train.x)
        flat0, unravel = ravel_pytree(params0)
        h_flat, h_unravel = ravel_pytree(hparams)
        inner = lambda p, h: learner.inner_loss(rng, state, hstate, unravel(p), h_unravel(h), task.train)[0]
        outer = lambda p, h: learner.query_energy(rng, state, hstate, unravel(p), h_unravel(h), task.test)[0]
        grad_p = jax.grad(inner)
        # Gradient descent at a quarter of the inner rate (stable wherever the curvature
        # along the way exceeds the end point's), then Newton to machine precision.
        p = jax.lax.fori_loop(0, solve_steps, lambda _, p: p - 0.25 * LR_INNER * grad_p(p, h_flat), flat0)
        for _ in range(8):
            p = p - jnp.linalg.solve(jax.hessian(inner)(p, h_flat), grad_p(p, h_flat))
        H = jax.hessian(inner)(p, h_flat)
        mixed = jax.jacobian(grad_p, argnums=1)(p, h_flat)  # (params, hparams)
        g_p, g_h = jax.grad(outer, argnums=(0, 1))(p, h_flat)
        hgrad = g_h - mixed.T @ jnp.linalg.solve(H, g_p)
        return hgrad, jnp.linalg.norm(grad_p(p, h_flat)), jnp.linalg.eigvalsh(H)[0], jnp.linalg.eigvalsh(H)[-1]

    hgrads, residual, lowest, highest = jax.jit(jax.vmap(one_task))(batch)
    return jnp.mean(hgrads, 0), float(jnp.max(residual)), float(jnp.min(lowest)), float(jnp.max(highest))


def unrolled_reference(learner_f64, meta_state, batch):
    """Float64 backpropagation through every inner step (`learner_f64`: MAML or
    LearnedKernel with backprop, no truncation), averaged over tasks."""
    grads, _, _ = jax.jit(jax.vmap(learner_f64.grad, (0, None, None, 0)))(
        jax.random.split(jax.random.PRNGKey(0), TASKS), meta_state.hstate, meta_state.hparams, batch)
    return ravel_pytree(jax.tree_util.tree_map(lambda g: jnp.mean(g, 0), grads))[0]


# -- the estimators --------------------------------------------------------------------------


def measure(learner, meta_state, batch, windows: int):
    """(meta-gradient as a flat float64 vector, seconds per meta-step, planned peak MiB)."""
    update = jax.jit(learner.update)
    rng = jax.random.PRNGKey(1)
    compiled = update.lower(rng, meta_state, batch).compile()
    memory = compiled.memory_analysis()
    peak = None
    if memory is not None:
        peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
                - memory.alias_size_in_bytes) / 2**20
    new_state, _ = compiled(rng, meta_state, batch)
    before = ravel_pytree(meta_state.hparams)[0]
    after = ravel_pytree(new_state.hparams)[0]
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        jax.block_until_ready(compiled(rng, meta_state, batch))
        times.append(time.perf_counter() - start)
    return np.asarray(before - after, np.float64), statistics.median(times), peak


def compare(estimate, reference):
    reference = np.asarray(reference, np.float64)
    cosine = float(estimate @ reference / (np.linalg.norm(estimate) * np.linalg.norm(reference)))
    relative = float(np.linalg.norm(estimate - reference) / np.linalg.norm(reference))
    return cosine, relative


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inner", default="5,20,80", help="comma list of inner-step counts K")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="K = 2, tiny ES populations, one window (a smoke run)")
    parser.add_argument("--no-record", action="store_true", help="print only; no RESULTS.md row, no plot")
    args = parser.parse_args(argv)
    ks = [2] if args.quick else [int(k) for k in args.inner.split(",")]
    windows = 1 if args.quick else args.windows
    batch32, batch64 = tasks(jnp.float32), tasks(jnp.float64)
    key = jax.random.PRNGKey(0)

    rows, curves = [], {}
    cache = {}

    def as64(tree):
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

    def reference(kind, K, hparams32):
        """The float64 reference of `kind` at the estimator's own starting hparams (cast up:
        drawing them in float64 from the same key would give other numbers)."""
        key_ = (kind, K if kind != "implicit" else None, ravel_pytree(hparams32)[0].tobytes())
        if key_ not in cache:
            sgd = optax.sgd(LR_INNER)
            if kind == "unrolled kernel":
                learner64 = metax.learner.LearnedKernel(module(), None, K, kernel(), sgd)
            else:
                learner64 = metax.learner.ModelAgnosticMetaLearning(module(), None, K, sgd, sgd)
            state64 = learner64.reset(key, batch64.train.x[0])._replace(hparams=as64(hparams32))
            if kind == "implicit":
                value, residual, lowest, highest = implicit_reference(learner64, state64, batch64, 200 if args.quick else 20000)
                print(f"implicit reference: inner gradient norm {residual:.1e}, Hessian eigenvalues in "
                      f"[{lowest:.3g}, {highest:.3g}], lr * max = {LR_INNER * highest:.3g}", flush=True)
            else:
                value = unrolled_reference(learner64, state64, batch64)
            cache[key_] = np.asarray(value)
        return cache[key_]

    for K in ks:
        for name, (learner, kind) in learners(K, args.quick).items():
            meta_state = learner.reset(key, batch32.train.x[0])
            estimate, seconds, peak = measure(learner, meta_state, batch32, windows)
            cosine, relative = compare(estimate, reference(kind, K, meta_state.hparams))
            cos_u, rel_u = (None, None)
            if kind == "implicit":
                cos_u, rel_u = compare(estimate, reference("unrolled", K, meta_state.hparams))
            fmt = lambda v, f: "-" if v is None else format(v, f)
            row = [name, K, kind, f"{cosine:.4f}", f"{relative:.2e}", fmt(cos_u, ".4f"), fmt(rel_u, ".2e"),
                   f"{1e3 * seconds:.2f}", fmt(peak, ".2f")]
            print(" | ".join(str(c) for c in row), flush=True)
            rows.append(row)
            curves.setdefault(name, []).append((K, cosine, relative, seconds, peak))
    if args.no_record:
        return 0
    append_rows(
        "Estimators: meta-gradient error against float64 references",
        ["estimator", "K", "reference", "cosine", "relative error", "cosine vs unrolled", "rel. error vs unrolled",
         "ms per meta-step", "XLA peak MiB"],
        rows,
        note=f"`benchmarks/estimators.py`: sinusoid, {TASKS} fixed tasks, 10/10 shots, tanh MLP 16-16, LearnedInit with "
        f"iMAML proximal term lam={REG}, inner SGD {LR_INNER}; estimators in float32 through their jitted `update` "
        "with SGD(1) outside; references in float64 (see the script's docstring: 'implicit' = exact gradient of the "
        "converged bilevel objective, 'unrolled' = exact gradient of the K-step objective). Time: median of "
        "jitted calls on one meta-batch; memory: XLA's plan for the compiled `update` (arguments + outputs + "
        "temporaries - aliased).",
    )
    plot(curves, os.path.join(HERE, "estimators.png"))
    return 0


def plot(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(21, 4.2))
    titles = ["cosine to reference", "relative error", "seconds per meta-step", "XLA peak MiB"]
    for name, points in curves.items():
        points = np.array([[np.nan if v is None else v for v in p] for p in points], dtype=float)
        for column, ax in enumerate(axes, start=1):
            ax.plot(points[:, 0], points[:, column], marker="o", label=name)
    ks = sorted({p[0] for points in curves.values() for p in points})
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("inner steps K")
        ax.set_title(title)
    for ax in axes[1:]:
        ax.set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
