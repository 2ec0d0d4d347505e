"""One registry for everything a config can name: learners, modules, tasks, models,
optimisers and learned optimisers (kernels).

A registry is a dict from names to builders (a class or a function) plus what a config
needs to know about them: a one-line description and the builder's keyword arguments,
read from its signature. Parameters named after something the runner already has (the
module a learner trains, the task's input shape, the network a module wraps, ...) are
filled in by the runner; every other parameter is a config key.

>>> import metax.experiment as mx
>>> @mx.register("learner", "my_maml", description="MAML with a twist")
... class MyMAML(metax.learner.ModelAgnosticMetaLearning):
...     ...

A config then says `learner: {name: my_maml, steps_inner: 5, ...}`. A Python file named in
a config's `plugins:` list is imported once before the config is checked, so its
registrations are usable there.
"""

import dataclasses
import hashlib
import importlib.util
import inspect
import os
import sys
import typing
from typing import Any, Callable, Optional, Union

from metax.experiment.errors import ConfigError, unknown_name

KINDS = ("learners", "modules", "tasks", "models", "optimizers", "kernels")
_SINGULAR = {kind[:-1]: kind for kind in KINDS}

# What the runner fills in, per kind: a builder parameter of this name is not a config key.
CONTEXT = {
    "tasks": ("split",),
    "models": (),
    "modules": (
        "loss_fn_inner", "loss_fn_outer", "base_learner", "base_model", "body", "hidden_dims",
        "output_dim", "input_shape",
    ),
    "learners": ("meta_model", "input_shape"),
    "optimizers": (),
    "kernels": (),
}

# Defaults every builder of a kind gets unless it sets its own: metax's learners take
# `batch_size` positionally with no default, and full-batch inner steps are the norm.
KIND_DEFAULTS = {"learners": {"batch_size": None}}

REQUIRED = inspect.Parameter.empty


@dataclasses.dataclass(frozen=True)
class Param:
    """One config key of a builder."""

    name: str
    annotation: Any  # the resolved type hint (Any when the builder gives none)
    default: Any  # REQUIRED if the config must set it
    components: tuple[str, ...] = ()  # registries a nested {name: ...} value is looked up in

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered builder."""

    kind: str
    name: str
    target: Callable[..., Any]
    description: str
    params: tuple[Param, ...]
    context: tuple[str, ...]  # parameters the runner fills in
    source: str  # "metax" or the plugin file it came from

    def param(self, name: str) -> Optional[Param]:
        return next((p for p in self.params if p.name == name), None)


def _kind(kind: str) -> str:
    kind = _SINGULAR.get(kind, kind)
    if kind not in KINDS:
        raise unknown_name("registry", kind, KINDS)
    return kind


def _type_hints(function: Callable) -> dict:
    try:
        return typing.get_type_hints(function, include_extras=True)
    except Exception:
        pass
    # Some annotation cannot be resolved (a forward reference the module never defines):
    # resolve the others one by one and leave that one unchecked.
    hints = {}
    namespace = getattr(inspect.unwrap(function), "__globals__", {})
    for name, annotation in getattr(function, "__annotations__", {}).items():
        try:
            if isinstance(annotation, str):
                annotation = eval(annotation, namespace)  # noqa: S307 (the library's own annotations)
            hints[name] = annotation
        except Exception:
            hints[name] = Any
    return hints


def _component_kinds(annotation: Any, name: str) -> tuple[str, ...]:
    """Optimiser parameters (typed as optax transformations, or named `optim_fn_*` as in
    metax's learners) take a nested optimiser config; an inner one may be learned."""
    import optax

    members = typing.get_args(annotation) if typing.get_origin(annotation) is Union else (annotation,)
    if name == "optim_fn_inner":
        return ("optimizers", "kernels")
    if name.startswith("optim_fn_") or any(member is optax.GradientTransformation for member in members):
        return ("optimizers",)
    return ()


def _own_parameters(function: Callable, signature: inspect.Signature) -> list[tuple[inspect.Parameter, Any]]:
    hints = _type_hints(function)
    return [(p, hints.get(p.name, Any)) for p in signature.parameters.values() if p.name != "self"]


def builder_parameters(target: Callable) -> list[tuple[inspect.Parameter, Any]]:
    """`target`'s named parameters with their type hints, following `**options` to the base.

    A class whose constructor takes `**options` and hands them to `super().__init__` lists
    only its own arguments; the registry then reads the rest from the next constructor up
    the MRO. metax's learners keep their positional signatures: they pass the base's
    required positional arguments themselves (sometimes a value of their own in a slot,
    as `Evosax` does with `optim_fn_outer`), so `**options` stands for the base's
    keyword-only arguments and its optional ones (with a default) that the subclass does
    not name, and `*args` for the base's positional ones it does not name.

    Example:
      >>> from metax.experiment.registry import builder_parameters
      >>> [p.name for p, _ in builder_parameters(metax.learner.Reptile)][-3:]
      ['extra_metrics', 'truncation', 'remat']
    """
    signature = inspect.signature(target)
    found = _own_parameters(target.__init__ if inspect.isclass(target) else target, signature)
    if not inspect.isclass(target):
        return found
    owners = [klass for klass in target.__mro__ if "__init__" in vars(klass) and klass is not object]
    for base in owners[1:]:
        kinds = {p.kind for p, _ in found}
        takes_options, takes_args = inspect.Parameter.VAR_KEYWORD in kinds, inspect.Parameter.VAR_POSITIONAL in kinds
        if not (takes_options or takes_args):
            break
        named = {p.name for p, _ in found}
        forwarded = [
            (p, hint) for p, hint in _own_parameters(base.__init__, inspect.signature(base.__init__))
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name not in named and (
                (takes_options and (p.kind is p.KEYWORD_ONLY or p.default is not p.empty))
                or (takes_args and p.kind is p.POSITIONAL_OR_KEYWORD)
            )
        ]
        # The subclass's own *args / **options are spent on the base's parameters.
        found = [(p, hint) for p, hint in found if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)] + forwarded
    return found


def _signature_params(
    target: Callable, context: tuple[str, ...], defaults: dict, components: dict
) -> tuple[tuple[Param, ...], tuple[str, ...]]:
    params, used_context = [], []
    for parameter, annotation in builder_parameters(target):
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.name in context:
            used_context.append(parameter.name)
            continue
        default = defaults.get(parameter.name, parameter.default)
        kinds = tuple(_kind(k) for k in components.get(parameter.name, ())) or _component_kinds(
            annotation, parameter.name
        )
        params.append(Param(parameter.name, annotation, default, kinds))
    unknown = (set(defaults) | set(components)) - {p.name for p in params}
    if unknown:
        raise ValueError(f"defaults/components name parameters {sorted(unknown)} that {target!r} does not take.")
    return tuple(params), tuple(used_context)


class Registry:
    """Name -> `Entry` for one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> None:
        previous = self._entries.get(entry.name)
        if previous is not None and previous.target is not entry.target:
            raise ValueError(
                f"{self.kind[:-1]} {entry.name!r} is already registered (from {previous.source}); "
                "choose another name."
            )
        self._entries[entry.name] = entry

    def get(self, name: Any, where: Optional[str] = None) -> Entry:
        if not isinstance(name, str) or name not in self._entries:
            raise unknown_name(self.kind[:-1], name, self._entries, where)
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[name] for name in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries


REGISTRIES = {kind: Registry(kind) for kind in KINDS}
_current_source = ["metax"]


def registry(kind: str) -> Registry:
    """The registry of `kind` ("learners" or "learner", "modules", "tasks", ...).

    Example:
      >>> "maml" in metax.experiment.registry("learners")
      True
      >>> [p.name for p in metax.experiment.registry("tasks").get("sinusoid").params]
      ['shots_train', 'shots_test']
    """
    return REGISTRIES[_kind(kind)]


def register(
    kind: str,
    name: str,
    target: Optional[Callable[..., Any]] = None,
    *,
    description: Optional[str] = None,
    defaults: Optional[dict] = None,
    components: Optional[dict] = None,
) -> Any:
    """Registers a builder (a class or function) under `name`; usable as a decorator.

    Args:
      kind: "learner", "module", "task", "model", "optimizer" or "kernel" (plural works).
      name: the name configs use.
      target: the builder; omit to use `register(...)` as a decorator.
      description: one line for `metax list` (default: the first line of the docstring).
      defaults: config defaults that replace (or add to) the signature's own.
      components: `{parameter: kinds}` for parameters that take a nested `{name: ...}`
        config from other registries (optimiser-typed parameters are found by type).

    Builders receive the runner's context by parameter name (see `CONTEXT`): a learner's
    `meta_model` and `input_shape`; a module's `loss_fn_inner`, `loss_fn_outer`,
    `base_learner` / `base_model` (the network with its readout), `body` (the network
    without it), `hidden_dims`, `output_dim`, `input_shape`; a task's `split` ("train"
    or "test"). Every other parameter is a config key, typed by its annotation.

    Example:
      >>> @metax.experiment.register("optimizer", "docs_sgd_half", description="SGD at half the rate")
      ... def sgd_half(learning_rate: float):
      ...     return optax.sgd(learning_rate / 2)
      >>> metax.experiment.registry("optimizer").get("docs_sgd_half").description
      'SGD at half the rate'
    """
    kind = _kind(kind)

    def add(target):
        names = {p.name: p for p, _ in builder_parameters(target)}
        implicit = {k: v for k, v in KIND_DEFAULTS.get(kind, {}).items() if k in names and names[k].default is REQUIRED}
        params, used = _signature_params(target, CONTEXT[kind], {**implicit, **(defaults or {})}, dict(components or {}))
        text = description or (inspect.getdoc(target) or "").strip().splitlines()[0:1]
        text = text if isinstance(text, str) else (text[0] if text else "")
        REGISTRIES[kind].add(Entry(kind, name, target, text, params, used, _current_source[0]))
        return target

    return add if target is None else add(target)


_plugins: dict[str, str] = {}  # absolute path -> module name


def load_plugin(path: str) -> None:
    """Imports a user's Python file once, so its `register` calls take effect.

    Raises:
      ConfigError: if the file is missing or fails to import (with the error it raised).

    Example:
      >>> import pathlib, tempfile
      >>> plugin = pathlib.Path(tempfile.mkdtemp()) / "plugin.py"
      >>> _ = plugin.write_text("import metax, optax\\n"
      ...     "metax.experiment.register('optimizer', 'docs_plain_sgd', lambda learning_rate: optax.sgd(learning_rate))\\n")
      >>> metax.experiment.load_plugin(str(plugin))
      >>> metax.experiment.registry("optimizers").get("docs_plain_sgd").source == str(plugin)
      True
    """
    path = os.path.abspath(path)
    if path in _plugins:
        return
    if not os.path.isfile(path):
        raise ConfigError(f"plugins: {path} does not exist; give a Python file path relative to the config file.")
    module_name = "metax_plugin_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    # Without a .py suffix importlib finds no loader (spec None): say so instead of failing
    # on None.
    spec = importlib.util.spec_from_file_location(module_name, path) if path.endswith(".py") else None
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugins: {path} is not a Python file (*.py); a plugin is a .py file that calls metax.experiment.register.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    _current_source[0] = path
    try:
        spec.loader.exec_module(module)
    except SystemExit as error:  # sys.exit() in a plugin must not end `metax run` with its status
        del sys.modules[module_name]
        raise ConfigError(
            f"plugins: importing {path} called sys.exit({error.code!r}); a plugin must only define and "
            "register components. Nothing was run."
        ) from None
    except Exception as error:
        del sys.modules[module_name]
        raise ConfigError(f"plugins: importing {path} failed: {type(error).__name__}: {error}") from error
    finally:
        _current_source[0] = "metax"
    _plugins[path] = module_name
