"""Linear solvers `solve(matvec, b) -> x` for implicit meta-gradients.

Implicit learners need x = H^{-1} v with H the Hessian of the inner loss at the adapted
params, available only through Hessian-vector products `matvec`. Every solver here has
the same shape, so a learner takes any of them (or a user's own) as a value.
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from metax.utils import tree_add, tree_scale, tree_sub

MatVec = Callable[[Any], Any]
LinearSolve = Callable[[MatVec, Any], Any]


def _scipy_solver(name: str, maxiter: int, **kwargs) -> LinearSolve:
    method = getattr(jax.scipy.sparse.linalg, name)

    def solve(matvec: MatVec, b: Any) -> Any:
        # Zero start, as the iMAML and RBP reference implementations use.
        return method(matvec, b, maxiter=maxiter, **kwargs)[0]

    return solve


def solve_cg(maxiter: int, tol: float = 1e-10) -> LinearSolve:
    """Conjugate gradient (H symmetric positive definite), at most `maxiter` iterations.

    Example:
      >>> H = jnp.array([[2.0, 0.0], [0.0, 4.0]])
      >>> metax.learner.solve_cg(maxiter=10)(lambda v: H @ v, jnp.array([2.0, 2.0]))
      Array([1. , 0.5], dtype=float32)
    """
    return _scipy_solver("cg", maxiter, tol=tol)


def solve_gmres(maxiter: int, tol: float = 1e-10) -> LinearSolve:
    """GMRES (any non-singular H), at most `maxiter` restarts.

    Example:
      >>> H = jnp.array([[2.0, 1.0], [0.0, 4.0]])  # not symmetric
      >>> x = metax.learner.solve_gmres(maxiter=10)(lambda v: H @ v, jnp.array([3.0, 4.0]))
      >>> bool(jnp.allclose(x, jnp.array([1.0, 1.0])))
      True
    """
    return _scipy_solver("gmres", maxiter, tol=tol)


def solve_bicgstab(maxiter: int, tol: float = 1e-10) -> LinearSolve:
    """BiCGSTAB (any non-singular H), at most `maxiter` iterations.

    Example:
      >>> H = jnp.array([[2.0, 1.0], [0.0, 4.0]])
      >>> x = metax.learner.solve_bicgstab(maxiter=10)(lambda v: H @ v, jnp.array([3.0, 4.0]))
      >>> bool(jnp.allclose(x, jnp.array([1.0, 1.0])))
      True
    """
    return _scipy_solver("bicgstab", maxiter, tol=tol)


def neumann_series(steps: int, alpha: float) -> Callable[[MatVec, Any], tuple[Any, Any]]:
    """`solve(matvec, b) -> (x, ratio)`: the truncated Neumann series of `solve_neumann`
    and `ratio = ||(I - alpha H)^steps b|| / ||b||`, the size of its last term. The series
    converges only if the ratio shrinks toward 0; a ratio >= 1 means alpha is too large
    (it must stay below 2 / the largest eigenvalue of H)."""

    def solve(matvec: MatVec, b: Any) -> tuple[Any, Any]:
        def step(carry, _):
            term, total = carry
            term = tree_sub(term, tree_scale(matvec(term), alpha))
            return (term, tree_add(total, term)), None

        (term, total), _ = jax.lax.scan(step, (b, b), None, length=steps)
        ratio = _norm(term) / jnp.maximum(_norm(b), jnp.finfo(_norm(b).dtype).tiny)
        return tree_scale(total, alpha), ratio

    return solve


def solve_neumann(steps: int, alpha: float) -> LinearSolve:
    """Truncated Neumann series x = alpha * sum_{k=0}^{steps} (I - alpha H)^k b.

    The recurrent backpropagation approximation (Liao et al., 2018); converges to H^{-1} b
    when the spectrum of alpha H lies in (0, 2).

    Example:
      >>> H = jnp.array([[2.0, 0.0], [0.0, 4.0]])
      >>> x = metax.learner.solve_neumann(steps=200, alpha=0.2)(lambda v: H @ v, jnp.array([2.0, 2.0]))
      >>> bool(jnp.allclose(x, jnp.array([1.0, 0.5]), atol=1e-4))
      True
    """
    series = neumann_series(steps, alpha)
    return lambda matvec, b: series(matvec, b)[0]


def _norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def solve_identity(matvec: MatVec, b: Any) -> Any:
    """H^{-1} ~ I: the T1-T2 approximation (Luketina et al., 2016).

    Example:
      >>> metax.learner.solve_identity(lambda v: 2.0 * v, jnp.array([1.0, 3.0]))
      Array([1., 3.], dtype=float32)
    """
    del matvec
    return b


LINEAR_SOLVERS: dict[str, Callable[..., LinearSolve]] = {
    "cg": solve_cg,
    "gmres": solve_gmres,
    "bicgstab": solve_bicgstab,
}


def get_linear_solver(linsolver: Any, maxiter: Optional[int]) -> LinearSolve:
    """A solver from a name in `LINEAR_SOLVERS` (metax's strings) with `maxiter`
    iterations, or a `solve` callable (which sets its own iterations: maxiter must be None).

    Raises:
      ValueError: for an unknown name, or a `maxiter` that a callable would ignore.
    """
    if callable(linsolver):
        if maxiter is not None:
            raise ValueError(
                f"steps_cg={maxiter} would be ignored: linsolver is a function, which sets its own "
                "iterations (e.g. solve_cg(20)); pass steps_cg=None."
            )
        return linsolver
    if linsolver not in LINEAR_SOLVERS:
        raise ValueError(
            f"Unknown linsolver {linsolver!r}; use one of {sorted(LINEAR_SOLVERS)} or a "
            "function solve(matvec, b) -> x."
        )
    return LINEAR_SOLVERS[linsolver](maxiter)
