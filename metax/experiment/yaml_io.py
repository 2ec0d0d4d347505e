"""Reading a YAML config file: size and file-kind checks, readable errors for malformed
YAML, and a key -> line map so that errors can name the line of the key at fault."""

import os
from typing import Any

from metax.experiment.errors import ConfigError


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
