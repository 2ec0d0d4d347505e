"""Dotted `--set key.sub=value` overrides of a config mapping (values parsed as YAML).

Example:
  >>> from metax.experiment.overrides import apply_overrides
  >>> apply_overrides({"train": {"steps": 10}}, ["train.steps=20", "learner=maml"])
  {'train': {'steps': 20}, 'learner': 'maml'}
"""

from metax.experiment.errors import ConfigError


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
