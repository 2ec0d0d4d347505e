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

import dataclasses
import os
import typing
from typing import Annotated, Any, Optional

from metax.experiment.constraints import NonNegative, NonNegativeFloat, NonNegativeInt, Positive, PositiveFloat, PositiveInt  # noqa: F401
from metax.experiment.errors import ConfigError, did_you_mean
from metax.experiment.registry import load_plugin, registry

# The checker, component resolution and YAML reading live in their own modules; these
# names stay importable from here.
from metax.experiment.overrides import apply_overrides  # noqa: F401
from metax.experiment.resolve import build_component, resolve_component  # noqa: F401
from metax.experiment.typecheck import KeyError_, _type_name, check_value  # noqa: F401
from metax.experiment.yaml_io import MAX_CONFIG_BYTES, MAX_KEY_LINES, _key_lines, read_yaml  # noqa: F401


@dataclasses.dataclass(frozen=True)
class ComponentOf:
    """Marks a config field whose value is a `{name: ..., **args}` from these registries."""

    kinds: tuple[str, ...]


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


# -- YAML files -------------------------------------------------------------------------


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
