"""metax's calling convention for networks: constructed outside a transform, a pure pair.

In metax (Schug, 2023) `metax.models.MultilayerPerceptron([32, 32], activate_final=True)`
returns `hk.transform_with_state` of the network's forward pass, so it can be handed to a
module directly as its `body` / `base_learner`. Inside a user's own Haiku function the same
classes must behave as ordinary `hk.Module`s. `TransformOutsideHaiku` gives a module class
both behaviours: constructed inside `hk.transform` it is the module; constructed anywhere
else it returns

    hk.transform_with_state(lambda *args, **kwargs: cls(*ctor_args, **ctor_kwargs)(*args, **kwargs))

whose `init(rng, x, is_training, ...)` / `apply(params, state, rng, x, is_training, ...)`
take the module's call arguments.
"""

from typing import Any

import haiku as hk


def _inside_transform() -> bool:
    try:
        hk.running_init()  # raises outside hk.transform (its documented behaviour)
    except ValueError:
        return False
    return True


class TransformOutsideHaiku(type(hk.Module)):
    """Metaclass: a Haiku module inside a transform, `hk.transform_with_state` outside one."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if _inside_transform():
            return super().__call__(*args, **kwargs)
        # Run the constructor once now, so bad arguments fail here and not at init.
        hk.transform(lambda: super(TransformOutsideHaiku, cls).__call__(*args, **kwargs)).init(None)

        def forward(*call_args, **call_kwargs):
            return cls(*args, **kwargs)(*call_args, **call_kwargs)

        return hk.transform_with_state(forward)
