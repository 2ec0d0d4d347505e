"""Value constraints a config type can carry: `PositiveInt` is `Annotated[int, Positive]`.

Their own module, below both the registry's users and the config checker: the built-in
registrations annotate their parameters with them and `schema` enforces them, and neither
has to import the other for it.
"""

from typing import Annotated


class Positive:
    """`Annotated[int, Positive]`: the value must be > 0."""


class NonNegative:
    """`Annotated[int, NonNegative]`: the value must be >= 0."""


PositiveInt = Annotated[int, Positive]
NonNegativeInt = Annotated[int, NonNegative]
PositiveFloat = Annotated[float, Positive]
NonNegativeFloat = Annotated[float, NonNegative]
