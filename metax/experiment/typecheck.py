"""The config checker's type checker: a YAML value against a builder's type hint.

`check_value` converts what YAML gives (lists for tuples, strings for activations, strings
for floats such as 1e-3) to the annotated type, or raises a `KeyError_` naming the dotted
key, the type expected and the value given. `_type_name` says a type in a user's words
("positive int", "list of float", "one of 'a', 'b'").

Example:
  >>> from metax.experiment.typecheck import check_value
  >>> check_value([1, 2], tuple[int, int], "model.sizes")
  (1, 2)
"""

import collections.abc
import math
import types
import typing
from typing import Annotated, Any, Literal, Union

from metax.experiment.constraints import NonNegative, Positive
from metax.experiment.errors import ConfigError, did_you_mean
from metax.experiment.registry import REQUIRED
from metax.models.activations import ACTIVATIONS


class KeyError_(ConfigError):
    """A ConfigError that knows the dotted key it is about (for line numbers)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.bare = message


_PLAIN_NAMES = ("bool", "int", "float", "str", "null", "dict")


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *meta = typing.get_args(annotation)
        qualifier = "positive " if Positive in meta else "non-negative " if NonNegative in meta else ""
        return qualifier + _type_name(base)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(annotation)]
        plain = [n for n in names if n in _PLAIN_NAMES or n.startswith(("list", "positive", "non-negative", "one of"))]
        return " or ".join(dict.fromkeys(plain or names))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (list, tuple, collections.abc.Sequence):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def check_value(value: Any, annotation: Any, path: str) -> Any:
    """`value` converted to `annotation` (YAML gives lists for tuples, strings for
    activations, sometimes strings for floats such as 1e-3), or a KeyError_ naming `path`."""
    origin = typing.get_origin(annotation)
    fail = lambda: KeyError_(path, f"expected {_type_name(annotation)}, got {value!r} ({type(value).__name__}).")

    if annotation is Any or annotation is inspect_empty:
        return value
    if origin is Annotated:
        base, *meta = typing.get_args(annotation)
        if typing.get_origin(base) is None:  # a plain type: name the whole constraint
            try:
                value = check_value(value, base, path)
            except KeyError_:
                raise fail() from None
        else:
            value = check_value(value, base, path)
        if Positive in meta and not value > 0:
            raise KeyError_(path, f"must be > 0, got {value!r}.")
        if NonNegative in meta and not value >= 0:
            raise KeyError_(path, f"must be >= 0, got {value!r}.")
        return value
    if origin in (Union, types.UnionType):
        members = typing.get_args(annotation)
        if isinstance(value, float) and not math.isfinite(value) and float in members:
            raise KeyError_(path, f"must be a finite number, got {value!r}.")
        if value is None:
            if type(None) in members:
                return None
            raise fail()
        errors = []
        for member in members:
            if member is type(None):
                continue
            try:
                return check_value(value, member, path)
            except KeyError_ as error:
                errors.append(error)
        # One real alternative: its message is the most precise.
        raise errors[0] if len(errors) == 1 else fail()
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise KeyError_(path, f"must be one of {', '.join(map(repr, choices))}, got {value!r}{did_you_mean(value, map(str, choices))}.")
        return value
    if annotation is type(None):
        if value is not None:
            raise fail()
        return None
    if annotation is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        return value
    if annotation is float:
        if isinstance(value, bool):
            raise fail()
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise fail()
        if not math.isfinite(number):  # a NaN or infinite rate trains on NaN from the first step
            raise KeyError_(path, f"must be a finite number, got {value!r}.")
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise fail()
        return value
    if origin in (list, tuple, collections.abc.Sequence) or annotation in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise fail()
        args = typing.get_args(annotation)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise KeyError_(path, f"expected {len(args)} entries, got {len(value)}.")
            items = [check_value(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            element = args[0] if args else Any
            items = [check_value(v, element, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or annotation is tuple else items
    if origin in (dict, collections.abc.Mapping) or annotation in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise fail()
        return value
    if origin is collections.abc.Callable or annotation is collections.abc.Callable:
        if isinstance(value, str):
            if value not in ACTIVATIONS:
                raise KeyError_(path, f"unknown activation {value!r}{did_you_mean(value, ACTIVATIONS)}; known: {', '.join(ACTIVATIONS)}.")
            return ACTIVATIONS[value]
        if callable(value):
            return value
        raise fail()
    if isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        raise fail()
    return value  # an annotation we cannot check (a protocol, a forward reference)


inspect_empty = REQUIRED


def _plain(value: Any) -> Any:
    """A YAML-representable copy of a default, or a sentinel when it has none."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _UNREPRESENTABLE if any(i is _UNREPRESENTABLE for i in items) else items
    if isinstance(value, dict):
        items = {k: _plain(v) for k, v in value.items()}
        return _UNREPRESENTABLE if any(i is _UNREPRESENTABLE for i in items.values()) else items
    for name, function in ACTIVATIONS.items():
        if value is function:
            return name
    return _UNREPRESENTABLE


_UNREPRESENTABLE = object()
