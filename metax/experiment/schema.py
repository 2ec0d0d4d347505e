"""Typed experiment configs: loaded from YAML, checked key by key before anything compiles.

A config has fixed sections, typed by the dataclasses below (`train`, `eval`, the seed, ...),
and four component sections (`task`, `model`, `module`, `learner`), each a `name` from the
registry plus that builder's keyword arguments, typed by its signature. Nested
components (the optimisers of a learner, a learned inner optimiser) are `{name: ...}`
mappings too. Every key is checked: an unknown one is an error that suggests the nearest
valid key, a wrong type names the key, the type expected and the value given.

`resolve` turns a config into the fully resolved one (every default filled in), which is
what a run folder keeps as `config.yaml`: enough to rerun the run.
"""

import collections.abc
import dataclasses
import math
import os
import types
import typing
from typing import Annotated, Any, Literal, Optional, Union

from metax.experiment.constraints import NonNegative, NonNegativeFloat, NonNegativeInt, Positive, PositiveFloat, PositiveInt  # noqa: F401
from metax.experiment.errors import ConfigError, did_you_mean, unknown_name
from metax.experiment.registry import REQUIRED, Entry, load_plugin, registry
from metax.models.activations import ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class ComponentOf:
    """Marks a config field whose value is a `{name: ..., **args}` from these registries."""

    kinds: tuple[str, ...]


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


# -- components: {name: ..., **args} --------------------------------------------------------


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


# -- the fixed sections ------------------------------------------------------------------


@dataclasses.dataclass
class TrainConfig:
    """How long and how meta-training runs."""

    steps: PositiveInt = 1000  # meta-steps (outer updates)
    meta_batch_size: PositiveInt = 25  # tasks per meta-step, drawn fresh every step
    chunk: Optional[PositiveInt] = None  # meta-steps per compiled call; None: about 0.5 s each
    eval_every: Optional[PositiveInt] = None  # held-out evaluation period; None: start and end only
    checkpoint_every: Optional[PositiveInt] = None  # None: at the end only
    keep_checkpoints: PositiveInt = 3  # how many of the newest checkpoints stay on disk
    check_finite: Optional[list[str]] = None  # metrics that must stay finite; None: the learner's defaults
    devices: PositiveInt = 1  # split each meta-batch over this many devices (a mesh with a task axis)
    tensorboard: bool = False  # also write metrics as TensorBoard scalars to RUN/tensorboard/ (needs tensorboardX)
    profile_chunks: NonNegativeInt = 0  # jax.profiler trace of this many chunks, from the second, to RUN/profile/


@dataclasses.dataclass
class EvalConfig:
    """The fixed held-out task set, scored during and after meta-training."""

    tasks: Annotated[int, Positive] = 500  # held-out tasks (>= 2 for an interval)
    steps: Optional[NonNegativeInt] = None  # adaptation steps; None: the learner's steps_inner
    batch_size: PositiveInt = 250  # held-out tasks per compiled call
    task: dict = dataclasses.field(default_factory=dict)  # task arguments changed for held-out tasks
    plot_tasks: NonNegativeInt = 4  # held-out tasks drawn in the regression fit plot


@dataclasses.dataclass
class ExperimentConfig:
    """A complete experiment. `task`, `model`, `module` and `learner` are resolved
    components (`{"name": ..., **args}`).

    Example:
      >>> config = metax.experiment.parse_config(
      ...     {"task": {"name": "linear"}, "model": {"name": "mlp"}, "module": {"name": "learned_init"},
      ...      "learner": {"name": "reptile", "steps_inner": 3, "optim_fn_inner": {"name": "sgd", "learning_rate": 0.1},
      ...                  "optim_fn_outer": {"name": "sgd", "learning_rate": 1.0}}}, name="demo")
      >>> isinstance(config, metax.experiment.ExperimentConfig), config.seed
      (True, 0)
    """

    name: str
    task: Annotated[dict, ComponentOf(("tasks",))]
    model: Annotated[dict, ComponentOf(("models",))]
    module: Annotated[dict, ComponentOf(("modules",))]
    learner: Annotated[dict, ComponentOf(("learners",))]
    description: str = ""
    seed: NonNegativeInt = 0
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    plugins: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        """The resolved config as plain data (what `config.yaml` holds)."""
        return dataclasses.asdict(self)


def _section(cls: type, value: Any, path: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise KeyError_(path, f"expected a mapping of {cls.__name__} keys, got {value!r}.")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            raise KeyError_(
                f"{path}.{key}" if path else key,
                f"unknown key{did_you_mean(key, fields)}; {path or 'the config'} takes: {', '.join(fields)}.",
            )
    kwargs = {}
    for name, field in fields.items():
        key_path = f"{path}.{name}" if path else name
        if name not in value:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise KeyError_(key_path, "is required.")
            continue
        annotation = hints[name]
        meta = typing.get_args(annotation)[1:] if typing.get_origin(annotation) is Annotated else ()
        component = next((m for m in meta if isinstance(m, ComponentOf)), None)
        if component is not None:
            kwargs[name] = resolve_component(value[name], component.kinds, key_path)
        elif dataclasses.is_dataclass(annotation):
            kwargs[name] = _section(annotation, value[name], key_path)
        else:
            kwargs[name] = check_value(value[name], annotation, key_path)
    return cls(**kwargs)


def parse_config(data: Any, *, name: Optional[str] = None, base_dir: str = ".") -> ExperimentConfig:
    """Checks a config mapping (as read from YAML) and resolves every component.

    Plugins named in `plugins` are imported first (paths relative to `base_dir`), and
    stored as absolute paths.

    Raises:
      ConfigError: for the first key at fault.

    Example:
      >>> config = metax.experiment.parse_config(
      ...     {"task": {"name": "linear"}, "model": {"name": "mlp"}, "module": {"name": "learned_init"},
      ...      "learner": {"name": "reptile", "steps_inner": 3, "optim_fn_inner": {"name": "sgd", "learning_rate": 0.1},
      ...                  "optim_fn_outer": {"name": "sgd", "learning_rate": 1.0}}}, name="demo")
      >>> config.learner["steps_inner"], config.train.meta_batch_size  # defaults filled in
      (3, 25)
    """
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections (task, model, module, learner, ...), got {type(data).__name__}.")
    data = dict(data)
    plugins = check_value(data.get("plugins", []) or [], list[str], "plugins")
    absolute = [p if os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p)) for p in plugins]
    for path in absolute:
        load_plugin(path)
    data["plugins"] = absolute
    if name is not None and "name" not in data:
        data["name"] = name
    config = _section(ExperimentConfig, data, "")
    _check_consistency(config)
    return config


MAX_SEED = 2**63 - 1  # jax.random.PRNGKey takes a signed 64-bit seed


def _check_consistency(config: ExperimentConfig) -> None:
    if config.eval.tasks < 2:
        raise KeyError_("eval.tasks", f"must be >= 2 for an interval over held-out tasks, got {config.eval.tasks}.")
    if config.seed > MAX_SEED:
        raise KeyError_("seed", f"must be at most 2**63 - 1 (a PRNG key's 64-bit seed), got {config.seed}.")
    devices, batch = config.train.devices, config.train.meta_batch_size
    # Checked here too, so `validate` refuses what `run` would; more devices than tasks is
    # left to the run's device check, which first says how many devices there are.
    if devices <= batch and batch % devices:
        lower, upper = (batch // devices) * devices, (batch // devices + 1) * devices
        raise KeyError_(
            "train.meta_batch_size",
            f"meta_batch_size={batch} does not split over {devices} devices; use a multiple of {devices} "
            f"(e.g. {lower or upper} or {upper}) or another device count (train.devices, --devices); "
            f"e.g. --set train.meta_batch_size={lower or upper}.",
        )
    entry = registry("tasks").get(config.task["name"])
    known = [p.name for p in entry.params]
    for key in config.eval.task:
        if entry.param(key) is None:
            raise KeyError_(f"eval.task.{key}", f"{entry.name} takes no argument {key!r}{did_you_mean(key, known)}; its arguments: {', '.join(known)}.")
    # Held-out overrides are checked like the task's own arguments.
    resolve_component({**config.task, **config.eval.task}, ("tasks",), "eval.task")


# -- YAML -----------------------------------------------------------------------------


MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; more is a wrong file
MAX_KEY_LINES = 100_000  # bounds the key -> line map, whatever aliases the file uses


def _key_lines(node: Any, path: str = "<config>") -> dict:
    """Dotted key -> line number (1-based) for every mapping key of a YAML node tree.

    Each node is visited once: an alias (`*name`) points at a node already visited, and
    following it would let a small file of nested aliases grow the map exponentially.
    A key that appears twice in one mapping is refused, naming both lines (YAML's own
    loader keeps the last silently).

    Raises:
      ConfigError: for a duplicate key.

    Example:
      >>> import yaml
      >>> _key_lines(yaml.compose("train:\\n  steps: 3\\n"))
      {'train': 1, 'train.steps': 2}
    """
    import yaml

    lines: dict = {}
    seen: set = set()
    stack = [(node, "")]
    while stack and len(lines) < MAX_KEY_LINES:  # iterative: deep nesting cannot overflow
        current, prefix = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, yaml.SequenceNode):
            stack.extend((child, prefix) for child in reversed(current.value))
        if not isinstance(current, yaml.MappingNode):
            continue
        first: dict = {}
        for key_node, value_node in current.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            dotted = f"{prefix}.{key}" if prefix else key
            if key in first and isinstance(key_node, yaml.ScalarNode) and key != "<<":
                raise ConfigError(
                    f"{path}, line {line}: duplicate key {dotted!r} (also on line {first[key]}); YAML would "
                    "keep only the last one silently. Merge the two into one mapping."
                )
            first[key] = line
            lines.setdefault(dotted, line)
            stack.append((value_node, dotted))
    return lines


def read_yaml(path: str) -> tuple[Any, dict]:
    """The parsed YAML file and its key -> line map.

    Raises:
      ConfigError: for a missing or unreadable file, a directory or other non-regular
        file (a device such as /dev/zero, a pipe), a file over 1 MiB, malformed YAML (with
        the line and column of the problem), nesting too deep to read, or a duplicate key.
    """
    import yaml

    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory; give the path of a YAML config file (e.g. configs/sinusoid-maml.yaml).")
    if not os.path.exists(path):
        raise ConfigError(f"{path} does not exist; `metax list` shows the registered names and configs/ holds examples.")
    if not os.path.isfile(path):  # /dev/zero, a FIFO: reading could never end
        raise ConfigError(f"{path} is not a regular file; give the path of a YAML config file.")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_CONFIG_BYTES + 1)  # capped: the size can change after the check
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from error
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; is it a config file? A config is a few hundred bytes of YAML.")
    try:
        data = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text), path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}{where}: malformed YAML: {problem}.") from error
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read (thousands of brackets or indents); a config nests a few levels.") from None
    return data, lines


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Applies `key.sub=value` overrides (values parsed as YAML) to a config mapping.

    Raises:
      ConfigError: for an override without `=` or one that descends into a non-mapping.
    """
    import copy

    import yaml

    data = copy.deepcopy(data) if data is not None else {}
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"--set {override!r}: expected key=value, e.g. --set train.steps=100.")
        key, text = override.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {override!r}: the value is not valid YAML ({error}).") from error
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {override!r}: empty key segment in {key!r}.")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                if isinstance(child, str):  # a component given by name only: expand it
                    child = node[part] = {"name": child}
                else:
                    raise ConfigError(f"--set {override!r}: {'.'.join(parts[: depth + 1])} is {child!r}, not a section.")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str, overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """Reads, overrides and checks a YAML config file.

    Raises:
      ConfigError: naming the file, the key and its line for the first problem found.

    Example:
      >>> import pathlib
      >>> path = pathlib.Path(metax.__file__).resolve().parents[1] / "configs" / "sinusoid-maml.yaml"
      >>> config = metax.experiment.load_config(str(path), ["train.steps=20"])
      >>> config.name, config.train.steps, config.module["name"]
      ('sinusoid-maml', 20, 'learned_init')
    """
    data, lines = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path} is empty; a config needs task, model, module and learner sections.")
    data = apply_overrides(data, list(overrides or []))
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        return parse_config(data, name=name, base_dir=os.path.dirname(os.path.abspath(path)))
    except KeyError_ as error:
        line = _line_for(error.path, lines)
        where = f"{path}, line {line}" if line else path
        overridden = any(o.split("=", 1)[0].strip() == error.path for o in overrides or [])
        where = f"{where} (--set)" if overridden else where
        raise ConfigError(f"{where}: {error}") from error
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def _line_for(path: str, lines: dict) -> Optional[int]:
    """The line of `path`, or of its nearest ancestor key that the file has."""
    parts = path.replace("[", ".[").split(".") if path else []
    while parts:
        key = ".".join(p for p in parts if not p.startswith("["))
        if key in lines:
            return lines[key]
        parts = parts[:-1]
    return None


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML text."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)


def config_from_dict(data: dict) -> ExperimentConfig:
    """Rebuilds a config from its resolved dict (a run folder's config.yaml)."""
    return parse_config(data)
