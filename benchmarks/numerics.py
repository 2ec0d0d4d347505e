"""Numerics per learner: every learner x module pair's meta-gradient in float64, float32
and bfloat16, compared against float64.

    python benchmarks/numerics.py [--out benchmarks/numerics.json]

The pairs are those of the conformance suite (`tests/test_conformance.py`: its learners,
modules, inner optimisers and the list of valid pairs are imported, not repeated). On its
fixed tiny problem (width-4 tanh networks, one sinusoid task with 6 support and 3 query
points, 2 inner steps) the float64 meta-parameters are built once by `reset`; they, the
meta-state and the task are then cast to each dtype and the learner's `grad` (one task's
meta-gradient) is computed, jitted, with `jax_enable_x64` on throughout, so a float32 or
bfloat16 run that silently promotes to float64 shows up as a dtype change.

Evolution-strategy learners (Evosax, LearnedKernel with PES) take no gradient; their
meta-update is a function of the fitness of a population. For them the quantity compared
is the antithetic ES estimate `sum_i (f(h + s e_i) - f(h - s e_i)) e_i / (2 n s)` from
fixed float64 noise `e_i` (n = 4 pairs, s the learner's `sigma_init`), with `f` the
learner's own outer loss (`outer_loss`, the fitness its update scores members with).

Writes the table to the "Numerics per learner" section of RESULTS.md (replaced, not
appended) and every number to a JSON file beside it. tests/test_numerics.py holds
float32 to tolerances derived from this table.
"""

import argparse
import functools
import os
import sys
import time
import warnings
from typing import Any, NamedTuple, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import test_conformance as conformance  # noqa: E402 (the pairs, learners and modules)
from common import RESULTS, machine  # noqa: E402

from metax.utils.io import dumps_json, write_text_atomic  # noqa: E402

DTYPES = {"float64": jnp.float64, "float32": jnp.float32, "bfloat16": jnp.bfloat16}
ES_LEARNERS = {"evosax": 0.05, "learned_kernel_pes": 0.01}  # name -> sigma_init in the conformance suite
ES_PAIRS = 4
SECTION = "Numerics per learner"


class Case(NamedTuple):
    """One learner x module x inner optimiser of the conformance suite."""

    learner: str
    module: str
    optimizer: str

    @property
    def name(self) -> str:
        return "-".join(self)


def cases() -> list[Case]:
    """The conformance suite's valid pairs (those it does not expect to be refused)."""
    return [Case(*pair) for pair in conformance.PAIRS if conformance.expected_error(*pair[:2]) is None]


def cast(tree: Any, dtype: Any) -> Any:
    """Floating leaves of `tree` cast to `dtype`; integers (counters, labels) kept."""
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree
    )


def float_dtypes(tree: Any) -> set:
    return {str(jnp.result_type(a)) for a in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(jnp.result_type(a), jnp.floating)}


class Problem(NamedTuple):
    learner: Any
    hparams: Any
    hstate: Any
    task: Any  # one MetaDataset, float64


@functools.lru_cache(maxsize=None)
def _task(x64: bool) -> Any:
    return conformance.task(conformance.tasks(0), 0)


def build(case: Case, abstract: bool = False) -> Problem:
    """The learner and its float64 meta-state (None if `abstract`) on the conformance
    suite's first task. Call with `jax_enable_x64` on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # end-point learners warn about fixed initialisations
        learner = conformance.LEARNERS[case.learner](conformance.MODULES[case.module](), conformance.OPTIMIZERS[case.optimizer]())
    task = _task(jax.config.jax_enable_x64)
    if abstract:
        return Problem(learner, None, None, task)
    state = learner.reset(jax.random.PRNGKey(1), task.train.x)
    return Problem(learner, state.hparams, state.hstate, task)


def meta_gradient_fn(case: Case, learner: Any, compiler_options: Optional[dict] = None):
    """`fn(hstate, hparams, task) -> (meta-gradient, metrics)` for one task, jitted
    (compiled with XLA `compiler_options` if given, e.g. `FAST_COMPILE`)."""
    jitted = jax.jit(_meta_gradient(case, learner))
    if compiler_options is None:
        return jitted
    return lambda *args: jitted.lower(*args).compile(compiler_options)(*args)


# XLA options that compile these tiny programs ~40% faster (less optimisation, same ops).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _meta_gradient(case: Case, learner: Any):
    rng = jax.random.PRNGKey(2)
    if case.learner not in ES_LEARNERS:
        def fn(hstate, hparams, task):
            hgrads, _, metrics = learner.grad(rng, hstate, hparams, task)
            return hgrads, metrics

        return fn

    sigma = ES_LEARNERS[case.learner]

    def es(hstate, hparams, task, noise):
        flat, unravel = ravel_pytree(hparams)
        noise = noise.astype(flat.dtype)
        members = jnp.concatenate([flat + sigma * noise, flat - sigma * noise])
        batch = jax.tree_util.tree_map(lambda a: a[None], task)
        rngs = jax.random.split(rng, 1)

        def fitness(member):
            over_tasks = jax.vmap(learner.outer_loss, in_axes=(0, None, None, 0, None))
            losses, (_, metrics) = over_tasks(rngs, hstate, unravel(member), batch, learner.steps_inner)
            return jnp.mean(losses), metrics

        f, metrics = jax.vmap(fitness)(members)
        contrast = f[:ES_PAIRS] - f[ES_PAIRS:]
        estimate = jnp.sum(contrast[:, None] * noise, axis=0) / (2 * ES_PAIRS * sigma)
        return unravel(estimate), jax.tree_util.tree_map(lambda m: m[0], metrics)

    def fn(hstate, hparams, task):
        size = ravel_pytree(hparams)[0].size
        noise = jax.random.normal(jax.random.PRNGKey(3), (ES_PAIRS, size), jnp.float64)
        return es(hstate, hparams, task, noise)

    return fn


def compare(estimate: Any, reference: Any) -> tuple[float, float]:
    """Relative error `||a - b|| / ||b||` and cosine of two meta-gradients, in float64."""
    a = np.asarray(ravel_pytree(cast(estimate, jnp.float64))[0], np.float64)
    b = np.asarray(ravel_pytree(reference)[0], np.float64)
    norm = np.linalg.norm(b)
    cosine = float(a @ b / (np.linalg.norm(a) * norm)) if np.linalg.norm(a) > 0 else float("nan")
    return float(np.linalg.norm(a - b) / norm), cosine


class Outcome(NamedTuple):
    meta_gradient: Any  # None when it could not be computed
    metrics: Any
    reason: Optional[str]  # why the dtype could not run, or None


def run(case: Case, problem: Problem, dtype: str, fn=None) -> Outcome:
    """The meta-gradient with meta-state and task cast to `dtype`; checks that every
    floating output keeps that dtype (a library that promotes or truncates is reported)."""
    fn = fn or meta_gradient_fn(case, problem.learner)
    target = DTYPES[dtype]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grads, metrics = fn(cast(problem.hstate, target), cast(problem.hparams, target), cast(problem.task, target))
            grads, metrics = jax.device_get((grads, metrics))
    except Exception as error:  # noqa: BLE001 (recorded: this dtype cannot run here)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return Outcome(None, None, f"{type(error).__name__}: {first[:160]}")
    found = float_dtypes(grads) | float_dtypes(metrics)
    if found != {dtype}:
        return Outcome(grads, metrics, f"outputs are {sorted(found)}, not {dtype}")
    if not np.all(np.isfinite(ravel_pytree(cast(grads, jnp.float64))[0])):
        return Outcome(grads, metrics, "non-finite meta-gradient")
    return Outcome(grads, metrics, None)


def measure(case: Case) -> dict:
    """float32 and bfloat16 against float64 for one case (x64 must be on)."""
    problem = build(case)
    fn = meta_gradient_fn(case, problem.learner)
    reference = run(case, problem, "float64", fn)
    if reference.reason is not None:
        raise RuntimeError(f"{case.name}: float64 failed: {reference.reason}")
    row = {"learner": case.learner, "module": case.module, "optimizer": case.optimizer,
           "estimator": "es" if case.learner in ES_LEARNERS else "grad",
           "norm_float64": float(np.linalg.norm(ravel_pytree(reference.meta_gradient)[0]))}
    for dtype in ("float32", "bfloat16"):
        outcome = run(case, problem, dtype, fn)
        row[dtype] = {"reason": outcome.reason}
        if outcome.meta_gradient is not None:
            rel, cosine = compare(outcome.meta_gradient, reference.meta_gradient)
            row[dtype].update(rel_err=rel, cosine=cosine)
    return row


def _cell(entry: dict) -> str:
    if "rel_err" not in entry or entry["reason"] == "non-finite meta-gradient":
        return entry["reason"]
    text = f"{entry['rel_err']:.1e}"
    return text + (f" ({entry['reason']})" if entry["reason"] else "")


def _cos(entry: dict) -> str:
    return f"{1 - entry['cosine']:.0e}" if "cosine" in entry and np.isfinite(entry["cosine"]) else "-"


def table(rows: list[dict]) -> str:
    lines = [
        "| learner | module | inner optimiser | f32 rel. err | f32 1 - cos | bf16 rel. err (or why not) | bf16 1 - cos |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['learner']} | {row['module']} | {row['optimizer']} | {_cell(row['float32'])} | "
            f"{_cos(row['float32'])} | {_cell(row['bfloat16'])} | {_cos(row['bfloat16'])} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Worst float32 error per learner, the number tests/test_numerics.py's tolerances come from."""
    worst = {}
    for row in rows:
        worst[row["learner"]] = max(worst.get(row["learner"], 0.0), row["float32"].get("rel_err", np.inf))
    return ", ".join(f"{name} {err:.1e}" for name, err in worst.items())


def write_section(text: str) -> None:
    """Replaces (or adds) the section of RESULTS.md."""
    current = open(RESULTS).read() if os.path.exists(RESULTS) else "# Benchmark results\n"
    title = f"\n## {SECTION}\n"
    if title in current:
        start = current.index(title)
        end = current.find("\n## ", start + len(title))
        current = current[:start] + (current[end:] if end >= 0 else "")
    write_text_atomic(RESULTS, current.rstrip("\n") + "\n" + title + "\n" + text.rstrip("\n") + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "numerics.json"))
    parser.add_argument("--only", default=None, help="a learner name: measure its pairs only (no files written)")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    rows = []
    for case in cases():
        if args.only and case.learner != args.only:
            continue
        row = measure(case)
        rows.append(row)
        print(f"{case.name:45s} f32 {_cell(row['float32']):>10s}  bf16 {_cell(row['bfloat16'])}", flush=True)
    seconds = time.perf_counter() - start
    if args.only:
        return 0
    note = (
        f"{time.strftime('%Y-%m-%d')}, {machine()}, {seconds:.0f} s (load average {load_start:.1f} at the "
        f"start, {os.getloadavg()[0]:.1f} at the end: a shared machine; the errors do not depend on it; "
        "compiled programs come from the test suite's persistent cache when it holds them). "
        "`python benchmarks/numerics.py`: every valid learner x module x inner-optimiser case of the "
        "conformance suite, on its tiny problem (width-4 tanh networks, one sinusoid task with 6 support "
        "and 3 query points, 2 inner steps), with the float64 meta-parameters cast to each dtype. "
        "Relative error `||g - g64|| / ||g64||` and cosine of one task's meta-gradient (`grad`) against "
        "float64; for the evolution strategies (evosax, learned_kernel_pes) the antithetic ES estimate "
        f"from fixed noise ({ES_PAIRS} pairs, the learner's sigma) of the learner's outer loss. "
        "bfloat16 runs `grad` with bfloat16 meta-parameters and data, which the runner never does (`reset` "
        "keeps half-precision inputs' meta-parameters in float32); where it cannot run, the cell says why. "
        f"Worst float32 error per learner: {summary(rows)}. All numbers: `benchmarks/numerics.json`."
    )
    write_section(note + "\n\n" + table(rows))
    write_text_atomic(args.out, dumps_json({"machine": machine(), "seconds": seconds, "rows": rows}, indent=1))
    print(f"{len(rows)} cases in {seconds:.0f} s; wrote {RESULTS} and {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
