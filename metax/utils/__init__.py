"""Small pytree helpers shared by every part of metax."""

from metax.utils.pytree import append_keys
from metax.utils.pytree import get_field
from metax.utils.pytree import tree_length
from metax.utils.pytree import tree_mean_keep_dtype

__all__ = [
    "append_keys",
    "get_field",
    "tree_length",
    "tree_mean_keep_dtype",
]
