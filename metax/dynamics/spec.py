"""The typed description of a sweep, read from a YAML mapping with every key checked.

```yaml
dataset: digits            # or mnist (then mnist_path: folder of the IDX files)
architectures:             # a list; each entry a grid (lists multiply out) or one architecture
  - {kind: mlp, depth: [1, 2], width: [16, 64], activation: [relu, tanh]}
  - {kind: conv, depth: 2, width: 8, activation: relu}
optimizers: [adam, momentum]
learning_rates: {adam: [0.001, 0.01], momentum: [0.03, 0.1]}   # or one list for all
seeds: [0, 1]
epochs: 10
batch_size: 32
val_every: 10
```

Runs are the product architectures x optimisers x their learning rates x seeds; runs that
share an architecture and optimiser train together under `jax.vmap`.
"""

import dataclasses
import itertools
from typing import Any, Mapping, Optional

from metax.dynamics.architectures import ACTIVATION_NAMES, KINDS, OPTIMIZER_NAMES, Architecture
from metax.dynamics.data import DATASETS
from metax.utils.names import did_you_mean

_ARCH_KEYS = ("kind", "depth", "width", "activation")


class SpecError(ValueError):
    """A sweep spec key or value is wrong; the message names it and says what to do.

    Example:
      >>> from metax.dynamics import SpecError, SweepSpec
      >>> raw = {"architectures": [{"kind": "mlp", "depth": 1, "width": 8, "activation": "relu"}],
      ...        "optimizers": ["adamm"], "learning_rates": [0.01]}
      >>> try:
      ...     SweepSpec.from_dict(raw)
      ... except SpecError as error:
      ...     print(error)
      sweep spec: unknown optimizer 'adamm'...
      >>> issubclass(SpecError, ValueError)
      True
    """


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run of a sweep.

    Example:
      >>> from metax.dynamics import Architecture, RunConfig
      >>> run = RunConfig(Architecture("mlp", 1, 16, "relu"), "adam", 0.001, seed=0)
      >>> run.run_id
      'mlp-d1-w16-relu-adam-lr0.001-s0'
    """

    arch: Architecture
    optimizer: str
    learning_rate: float
    seed: int

    @property
    def run_id(self) -> str:
        return f"{self.arch.name}-{self.optimizer}-lr{self.learning_rate:g}-s{self.seed}"


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A grid of small classifiers to train and log.

    Attributes:
      architectures: the architectures (already multiplied out).
      optimizers: names from `metax.dynamics.OPTIMIZER_NAMES`.
      learning_rates: per optimiser, the rates to try.
      seeds: initialisation / data-order seeds.
      epochs, batch_size: training length and mini-batch size (the last partial batch of
        an epoch is dropped).
      val_every: validation accuracy every this many steps (and at every epoch end).
      dataset, mnist_path, val_fraction, test_fraction, max_train, data_seed: passed to
        `load_classification_data`.

    Example:
      >>> from metax.dynamics import SweepSpec
      >>> spec = SweepSpec.from_dict({
      ...     "architectures": [{"kind": "mlp", "depth": [1, 2], "width": 16, "activation": "relu"}],
      ...     "optimizers": ["adam", "sgd"],
      ...     "learning_rates": {"adam": [0.001], "sgd": [0.1, 0.3]},
      ...     "seeds": [0, 1],
      ... })
      >>> [arch.name for arch in spec.architectures]
      ['mlp-d1-w16-relu', 'mlp-d2-w16-relu']
      >>> len(spec.runs())  # 2 architectures x (1 + 2) rates x 2 seeds
      12
      >>> spec.runs()[0].run_id
      'mlp-d1-w16-relu-adam-lr0.001-s0'
      >>> SweepSpec.from_dict(spec.to_dict()) == spec
      True
    """

    architectures: tuple[Architecture, ...]
    optimizers: tuple[str, ...]
    learning_rates: Mapping[str, tuple[float, ...]]
    seeds: tuple[int, ...] = (0,)
    epochs: int = 10
    batch_size: int = 32
    val_every: int = 10
    dataset: str = "digits"
    mnist_path: Optional[str] = None
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    max_train: Optional[int] = None
    data_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("architectures", "optimizers", "seeds"):
            if not getattr(self, name):
                raise SpecError(f"sweep spec: '{name}' is empty; the grid needs at least one entry.")
        for name in ("epochs", "batch_size", "val_every"):
            _positive_int(name, getattr(self, name))
        for optimizer in self.optimizers:
            if optimizer not in OPTIMIZER_NAMES:
                raise SpecError(f"sweep spec: unknown optimizer {optimizer!r}{_suggest(optimizer, OPTIMIZER_NAMES)}")
            rates = self.learning_rates.get(optimizer, ())
            if not rates:
                raise SpecError(f"sweep spec: learning_rates has no rates for optimizer {optimizer!r}.")
            if any(not _is_number(r) or r <= 0 for r in rates):
                raise SpecError(f"sweep spec: learning_rates[{optimizer!r}] must be positive numbers, got {list(rates)}.")
        if self.dataset not in DATASETS:
            raise SpecError(f"sweep spec: dataset must be one of {DATASETS}, got {self.dataset!r}.")
        if self.dataset == "mnist" and not self.mnist_path:
            raise SpecError("sweep spec: dataset 'mnist' needs mnist_path, the folder holding the MNIST IDX files.")
        if self.max_train is not None:
            _positive_int("max_train", self.max_train)
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 1:
            raise SpecError(
                f"sweep spec: val_fraction={self.val_fraction} and test_fraction={self.test_fraction} must lie in (0, 1) "
                "with a sum below 1."
            )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "SweepSpec":
        """Builds a spec from a parsed YAML mapping, checking every key and type."""
        if not isinstance(raw, Mapping):
            raise SpecError(f"a sweep spec must be a mapping of keys to values, got {type(raw).__name__}.")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        _check_keys("sweep spec", raw, fields)
        for required in ("architectures", "optimizers", "learning_rates"):
            if required not in raw:
                raise SpecError(f"sweep spec: missing required key '{required}'.")
        values = dict(raw)
        values["architectures"] = tuple(_expand_architectures(raw["architectures"]))
        values["optimizers"] = tuple(_str_list("optimizers", raw["optimizers"]))
        values["learning_rates"] = _learning_rates(raw["learning_rates"], values["optimizers"])
        if "seeds" in raw:
            values["seeds"] = tuple(_int_list("seeds", raw["seeds"]))
        for name in ("epochs", "batch_size", "val_every", "data_seed"):
            if name in raw:
                _int("sweep spec", name, raw[name])
        if raw.get("max_train") is not None:
            _int("sweep spec", "max_train", raw["max_train"])
        for name in ("val_fraction", "test_fraction"):
            if name in raw and not _is_number(raw[name]):
                raise SpecError(f"sweep spec: '{name}' must be a number, got {raw[name]!r}.")
        for name in ("dataset", "mnist_path"):
            if raw.get(name) is not None and not isinstance(raw[name], str):
                raise SpecError(f"sweep spec: '{name}' must be a string, got {raw[name]!r}.")
        return cls(**values)

    def to_dict(self) -> dict:
        """The inverse of `from_dict` (architectures listed one by one), JSON-serialisable."""
        out = dataclasses.asdict(self)
        out["architectures"] = [dataclasses.asdict(a) for a in self.architectures]
        out["learning_rates"] = {k: list(v) for k, v in self.learning_rates.items()}
        out["optimizers"], out["seeds"] = list(self.optimizers), list(self.seeds)
        return out

    def runs(self) -> list[RunConfig]:
        """Every run of the grid, in a fixed order."""
        return [
            RunConfig(arch, optimizer, float(lr), int(seed))
            for arch in self.architectures
            for optimizer in self.optimizers
            for lr in self.learning_rates[optimizer]
            for seed in self.seeds
        ]

    def training_signature(self) -> dict:
        """What every run's result depends on besides its own `RunConfig`: runs written under
        another signature are not results of this sweep."""
        keys = ("epochs", "batch_size", "val_every", "dataset", "mnist_path", "val_fraction", "test_fraction", "max_train", "data_seed")
        return {key: getattr(self, key) for key in keys}


def load_sweep_spec(path: str) -> SweepSpec:
    """Reads a YAML sweep spec file.

    Example:
      >>> import os, tempfile
      >>> from metax.dynamics import load_sweep_spec
      >>> path = os.path.join(tempfile.mkdtemp(), "sweep.yaml")
      >>> with open(path, "w") as handle:
      ...     _ = handle.write(
      ...         "{architectures: [{kind: conv, depth: 2, width: 8, activation: [relu, tanh]}],"
      ...         " optimizers: [momentum], learning_rates: [0.03, 0.1], epochs: 3}"
      ...     )
      >>> spec = load_sweep_spec(path)
      >>> len(spec.runs()), spec.epochs, spec.learning_rates
      (4, 3, {'momentum': (0.03, 0.1)})
    """
    import yaml

    with open(path) as handle:
        raw = yaml.safe_load(handle)
    try:
        return SweepSpec.from_dict(raw if raw is not None else {})
    except SpecError as error:
        raise SpecError(f"{path}: {error}") from None


def _suggest(name: str, options) -> str:
    hint = did_you_mean(name, options)  # the runner's suggestion rule, from the layer both use
    return f"{hint}." if hint else f"; choose from {', '.join(options)}."


def _check_keys(where: str, raw: Mapping, allowed) -> None:
    for key in raw:
        if key not in allowed:
            raise SpecError(f"{where}: unknown key {key!r}{_suggest(key, allowed)}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(where: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}: '{name}' must be an int, got {value!r}.")
    return value


def _positive_int(name: str, value) -> None:
    _int("sweep spec", name, value)
    if value < 1:
        raise SpecError(f"sweep spec: '{name}' must be positive, got {value}.")


def _as_list(name: str, value) -> list:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise SpecError(f"sweep spec: '{name}' is an empty list; the grid needs at least one value.")
    return items


def _str_list(name: str, value) -> list[str]:
    items = _as_list(name, value)
    if not all(isinstance(item, str) for item in items):
        raise SpecError(f"sweep spec: '{name}' must be a list of names, got {value!r}.")
    return items


def _int_list(name: str, value) -> list[int]:
    return [_int("sweep spec", name, item) for item in _as_list(name, value)]


def _learning_rates(raw, optimizers) -> dict[str, tuple[float, ...]]:
    if isinstance(raw, Mapping):
        _check_keys("sweep spec learning_rates", raw, optimizers)
        rates = {name: _as_list(f"learning_rates.{name}", value) for name, value in raw.items()}
    else:
        rates = {name: _as_list("learning_rates", raw) for name in optimizers}
    for name, values in rates.items():
        if not all(_is_number(v) for v in values):
            raise SpecError(f"sweep spec: learning_rates for {name!r} must be numbers, got {values!r}.")
    return {name: tuple(float(v) for v in values) for name, values in rates.items()}


def _expand_architectures(raw) -> list[Architecture]:
    entries = _as_list("architectures", raw)
    out = []
    for index, entry in enumerate(entries):
        where = f"sweep spec architectures[{index}]"
        if not isinstance(entry, Mapping):
            raise SpecError(f"{where}: must be a mapping with keys {_ARCH_KEYS}, got {entry!r}.")
        _check_keys(where, entry, _ARCH_KEYS)
        missing = [key for key in _ARCH_KEYS if key not in entry]
        if missing:
            raise SpecError(f"{where}: missing key(s) {missing}.")
        axes = [_as_list(f"architectures[{index}].{key}", entry[key]) for key in _ARCH_KEYS]
        for kind in axes[0]:
            if kind not in KINDS:
                raise SpecError(f"{where}: unknown kind {kind!r}{_suggest(kind, KINDS)}")
        for activation in axes[3]:
            if activation not in ACTIVATION_NAMES:
                raise SpecError(f"{where}: unknown activation {activation!r}{_suggest(activation, ACTIVATION_NAMES)}")
        for key, values in zip(("depth", "width"), axes[1:3]):
            for value in values:
                _int(where, key, value)
                if value < 1:
                    raise SpecError(f"{where}: '{key}' must be positive, got {value}.")
        out.extend(Architecture(*combo) for combo in itertools.product(*axes))
    seen = set()
    for arch in out:
        if arch in seen:
            raise SpecError(f"sweep spec: architecture {arch.name} is listed twice; remove the duplicate.")
        seen.add(arch)
    return out
