"""Small pytree helpers shared by every part of metax."""

from metax.utils.pytree import append_keys
from metax.utils.pytree import get_field
from metax.utils.pytree import set_field
from metax.utils.pytree import tree_add
from metax.utils.pytree import tree_length
from metax.utils.pytree import tree_mean_keep_dtype
from metax.utils.pytree import tree_scale
from metax.utils.pytree import tree_sub

__all__ = [
    "append_keys",
    "get_field",
    "set_field",
    "tree_add",
    "tree_length",
    "tree_mean_keep_dtype",
    "tree_scale",
    "tree_sub",
]
