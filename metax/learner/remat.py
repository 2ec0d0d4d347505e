"""Rematerialisation of the inner loop's backward pass: the `remat` option of the
learners, its block length, and a `lax.scan` checkpointed in blocks.

Chen et al., "Training Deep Nets with Sublinear Memory Cost", 2016,
https://arxiv.org/abs/1604.06174.
"""

import math
import operator
from typing import Any, Callable, Literal, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

Remat = Union[bool, Literal["block"], int]  # the `remat` option: see `MetaLearner`


def _check_remat(remat: Any, steps_inner: int, length: str = "steps_inner") -> Union[bool, str, int]:
    """`remat` as given (False, True, "block" or a block length in [1, steps_inner]),
    or a one-line error naming it (`length` names the loop's length in the message)."""
    if isinstance(remat, (bool, np.bool_)):
        return bool(remat)
    if isinstance(remat, str):
        if remat != "block":
            raise ValueError(
                f"remat={remat!r} is not an option: use False, True (every step), \"block\" "
                "(blocks of about sqrt(steps_inner) steps) or an int block length."
            )
        return remat
    try:
        block = operator.index(remat)
    except TypeError:
        raise TypeError(
            f"remat must be False, True, \"block\" or an int block length, got {remat!r} "
            f"({type(remat).__name__})."
        ) from None
    if not 1 <= block <= max(steps_inner, 1):
        raise ValueError(
            f"remat={block} (the block length of rematerialisation) must lie in [1, "
            f"{length}={steps_inner}]; use remat=\"block\" for blocks of about "
            f"sqrt({length}) steps."
        )
    return block


def remat_block_length(remat: Union[bool, str, int], steps: int) -> Optional[int]:
    """Steps per checkpointed block of a `steps`-long loop under `remat`: None without
    blocks (False, or True: every step checkpointed alone), ceil(sqrt(steps)) for
    "block", else the given length, capped at `steps`."""
    if isinstance(remat, bool):
        return None
    if remat == "block":
        return max(1, math.ceil(math.sqrt(steps)))
    return max(1, min(remat, steps))


def scan_in_blocks(step: Callable, carry: Any, inputs: Any, block: int) -> tuple[Any, Any]:
    """`jax.lax.scan(step, carry, inputs)` with the backward pass rematerialised in blocks.

    The steps are cut into `len // block` blocks of `block` steps plus, if `block` does
    not divide the length, a last block of the remaining steps. Each block is one
    `jax.checkpoint`-ed scan, so the backward pass keeps only the carries at block
    boundaries and recomputes one block's forward pass at a time: with B = sqrt(K) the
    memory of a K-step loop is O(sqrt(K)) carries instead of O(K), for about one extra
    forward pass. Values and gradients equal the plain scan's.
    """
    length = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    full, rest = divmod(length, block)
    run_block = jax.checkpoint(lambda carry, xs: jax.lax.scan(step, carry, xs))
    head = jax.tree_util.tree_map(lambda x: x[: full * block].reshape(full, block, *x.shape[1:]), inputs)
    carry, outputs = jax.lax.scan(run_block, carry, head)
    outputs = jax.tree_util.tree_map(lambda y: y.reshape(full * block, *y.shape[2:]), outputs)
    if rest:
        tail = jax.tree_util.tree_map(lambda x: x[full * block :], inputs)
        carry, tail_outputs = run_block(carry, tail)
        outputs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), outputs, tail_outputs)
    return carry, outputs
