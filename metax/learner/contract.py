"""The input contract of every learner, checked once where data enters.

`reset`, `update`, `eval` and `adapt` call these checks first. They read only shapes and
dtypes, which are static under `jax.jit`, so they run once at trace time (and on every
eager call) and cost nothing per compiled step. Each failure is one line naming the
argument at fault and what to do instead.

The dtype policy: the meta-parameters' float dtype is fixed at `reset` and never changes.
`reset` builds them in the dtype of `sample_input` when that is float32 or float64; a
half-precision `sample_input` (float16, bfloat16) gives float32 meta-parameters, with a
warning, because half-precision meta-parameters and outer optimiser states lose the
small outer updates; integer or boolean inputs are refused (cast them, and scale images,
yourself). Afterwards every floating input and target that enters a learner is cast to
the meta-parameters' dtype.
"""

import warnings
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from metax.data import Dataset, MetaDataset, check_metabatch

HALF_PRECISION = (jnp.float16, jnp.bfloat16)


def float_dtype(tree: Any) -> Optional[np.dtype]:
    """The float dtype of a pytree's floating leaves (their promotion), None if it has none."""
    dtypes = [jnp.result_type(leaf) for leaf in jax.tree_util.tree_leaves(tree)]
    dtypes = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    return jnp.result_type(*dtypes) if dtypes else None


def _check_float_input(x: Any, argument: str) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{argument} has dtype {dtype}; metax models take floating inputs: cast them, e.g. "
            f"x.astype(jnp.float32) (and scale images to [0, 1]), before building the Dataset."
        )


def check_sample_input(sample_input: Any, argument: str = "sample_input") -> jax.Array:
    """Checks `reset`'s input `(samples, *input_shape)` and applies the dtype policy.

    Returns:
      `sample_input` as an array, cast to float32 if it was half precision.
    """
    if not hasattr(sample_input, "shape") or not hasattr(sample_input, "dtype"):
        raise TypeError(
            f"{argument} must be an array of one task's inputs (samples, *input_shape), e.g. "
            f"metabatch.train.x[0]; got {type(sample_input).__name__}."
        )
    if np.ndim(sample_input) < 1 or np.shape(sample_input)[0] == 0:
        raise ValueError(
            f"{argument} has shape {tuple(np.shape(sample_input))}; it must hold at least one "
            "sample, (samples, *input_shape), e.g. metabatch.train.x[0]."
        )
    _check_float_input(sample_input, argument)
    if jnp.result_type(sample_input) in HALF_PRECISION:
        warnings.warn(
            f"{argument} is {jnp.result_type(sample_input)}: metax keeps meta-parameters and the outer "
            "optimiser's state in float32 (half precision loses the small outer updates); inputs are "
            "cast to float32 when they enter the learner.",
            stacklevel=3,
        )
        sample_input = jnp.asarray(sample_input, jnp.float32)
    return sample_input


def cast_dataset(dataset: Dataset, dtype: Optional[np.dtype]) -> Dataset:
    """`dataset` with floating `x` and `y` cast to `dtype` (no-op for None or equal dtypes)."""
    if dtype is None:
        return dataset
    cast = lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) and jnp.result_type(a) != dtype else a
    return dataset._replace(x=cast(dataset.x), y=cast(dataset.y))


def check_dataset(dataset: Any, argument: str) -> None:
    """One task's dataset: a `Dataset` with at least one sample of floating inputs."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"{argument} must be a metax.data.Dataset(x, y), got {type(dataset).__name__}.")
    if np.ndim(dataset.x) < 1 or np.shape(dataset.x)[0] == 0:
        raise ValueError(
            f"{argument} is empty (x has shape {tuple(np.shape(dataset.x))}): adaptation needs at "
            "least one sample; give every task a support and a query set."
        )
    _check_float_input(dataset.x, f"{argument}.x")


def check_metabatch_contract(metabatch: Any, name: str = "metabatch") -> None:
    """Structure, non-empty splits, floating inputs and equal support/query widths."""
    check_metabatch(metabatch, name)
    train, test = metabatch.train, metabatch.test
    for split, data in (("train", train), ("test", test)):
        shape = tuple(np.shape(data.x))
        if shape[1] == 0:
            kind = "support" if split == "train" else "query"
            raise ValueError(
                f"{name}.{split} has 0 samples per task (x shape {shape}): the {kind} set is empty; "
                "give every task at least one support and one query sample."
            )
        _check_float_input(data.x, f"{name}.{split}.x")
    if np.shape(train.x)[2:] != np.shape(test.x)[2:]:
        raise ValueError(
            f"{name}.train.x has inputs of shape {tuple(np.shape(train.x)[2:])} but {name}.test.x "
            f"has {tuple(np.shape(test.x)[2:])}: support and query inputs must have the same shape."
        )


def check_learner_arguments(method: str, rng: Any, meta_state: Any, metabatch: Any, state_type: type) -> None:
    """Catches `update` / `eval` arguments given in the wrong order or of the wrong kind."""
    order = f"{method}(rng, meta_state, metabatch)"
    kinds = {"rng": rng, "meta_state": meta_state, "metabatch": metabatch}
    for argument, value in kinds.items():
        is_state, is_batch = isinstance(value, state_type), isinstance(value, MetaDataset)
        if argument != "meta_state" and is_state or argument != "metabatch" and is_batch:
            raise TypeError(
                f"{method}: argument {argument!r} got a {type(value).__name__}; the order is {order}."
            )
    if not _is_key(rng):
        raise TypeError(
            f"{method}: rng must be a PRNG key such as jax.random.PRNGKey(0), got "
            f"{type(rng).__name__} of shape {tuple(np.shape(rng))}; the order is {order}."
        )
    if not isinstance(meta_state, state_type):
        raise TypeError(
            f"{method}: meta_state must be the {state_type.__name__} returned by reset, got "
            f"{type(meta_state).__name__}; the order is {order}."
        )


def _is_key(rng: Any) -> bool:
    dtype = getattr(rng, "dtype", None)
    if dtype is None:
        return False
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return np.ndim(rng) == 0
    return dtype == jnp.uint32 and np.ndim(rng) == 1


def check_targets(loss_fn: Any, pred: jax.ShapeDtypeStruct, target: Any, argument: str) -> None:
    """Asks the energy whether `target` fits the model's output `pred` (one task)."""
    check = getattr(loss_fn, "check_target", None)
    if check is not None:
        check(pred, jax.ShapeDtypeStruct(np.shape(target), jnp.result_type(target)), argument)
