"""Component configs (`{name: ..., **args}`): checked against their builder's registry
entry with every default filled in (`resolve_component`), then built
(`build_component`) with the runner's context.

Example:
  >>> from metax.experiment.resolve import resolve_component
  >>> resolve_component({"name": "sgd", "learning_rate": 0.1}, ("optimizers",), "learner.optim_fn_outer")["learning_rate"]
  0.1
"""

from typing import Any

from metax.experiment.errors import ConfigError, did_you_mean, unknown_name
from metax.experiment.registry import Entry, registry
from metax.experiment.typecheck import _UNREPRESENTABLE, KeyError_, _plain, _type_name, check_value


def resolve_component(value: Any, kinds: tuple[str, ...], path: str) -> dict:
    """Checks a component config against its builder and fills in every default.

    Returns:
      `{"name": name, **args}` with plain (YAML) values.
    """
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise KeyError_(path, f"expected a mapping with a 'name' key, got {value!r}.")
    if "name" not in value:
        raise KeyError_(path, f"needs a 'name' (one of: {', '.join(_names(kinds))}).")
    entry = _lookup(value["name"], kinds, path)
    resolved = {"name": entry.name}
    given = {k: v for k, v in value.items() if k != "name"}
    known = [p.name for p in entry.params]
    for key in given:
        if entry.param(key) is None:
            context = f" ({key} is set by the runner)" if key in entry.context else ""
            raise KeyError_(
                f"{path}.{key}",
                f"{entry.name} takes no argument {key!r}{context}{did_you_mean(key, known)}; "
                f"its arguments: {', '.join(known) or 'none'}.",
            )
    for param in entry.params:
        key_path = f"{path}.{param.name}"
        if param.name in given:
            raw = given[param.name]
            if param.components and isinstance(raw, list):  # a list of components (e.g. a chain)
                resolved[param.name] = [resolve_component(v, param.components, f"{key_path}[{i}]") for i, v in enumerate(raw)]
            elif param.components and raw is not None:
                resolved[param.name] = resolve_component(raw, param.components, key_path)
            else:
                resolved[param.name] = _to_plain(check_value(raw, param.annotation, key_path), raw)
        elif param.required:
            raise KeyError_(key_path, f"{entry.name} needs {param.name!r} ({_type_name(param.annotation)}).")
        else:
            plain = _plain(param.default)
            if plain is not _UNREPRESENTABLE:
                resolved[param.name] = plain
    return resolved


def _to_plain(checked: Any, raw: Any) -> Any:
    plain = _plain(checked)
    return raw if plain is _UNREPRESENTABLE else plain


def _names(kinds: tuple[str, ...]) -> list[str]:
    return sorted({name for kind in kinds for name in registry(kind).names()})


def _lookup(name: Any, kinds: tuple[str, ...], path: str) -> Entry:
    for kind in kinds:
        if isinstance(name, str) and name in registry(kind):
            return registry(kind).get(name)
    label = " or ".join(kind[:-1] for kind in kinds)
    raise KeyError_(f"{path}.name", str(unknown_name(label, name, _names(kinds))))


def build_component(resolved: dict, kinds: tuple[str, ...], context: dict, path: str) -> Any:
    """Calls the builder of a resolved component with its args and the runner's context
    (`{name: thunk}`: a builder gets only what its signature asks for).

    Library errors raised by the builder (a constructor refusing a value or a pairing)
    become ConfigErrors that name the config section.
    """
    entry = _lookup(resolved["name"], kinds, path)
    kwargs = {}
    for param in entry.params:
        if param.name not in resolved:
            continue
        value = resolved[param.name]
        if param.components and isinstance(value, list):
            value = [build_component(v, param.components, {}, f"{path}.{param.name}[{i}]") for i, v in enumerate(value)]
        elif param.components and value is not None:
            value = build_component(value, param.components, {}, f"{path}.{param.name}")
        else:
            value = check_value(value, param.annotation, f"{path}.{param.name}")
        kwargs[param.name] = value
    missing = [name for name in entry.context if name not in context]
    if missing:
        raise ConfigError(f"{path}: {entry.name} needs {', '.join(missing)}, which this experiment does not provide.")
    try:
        kwargs.update({name: context[name]() for name in entry.context})  # thunks: built only when asked for
        return entry.target(**kwargs)
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"{path} ({entry.name}): {error}") from error
