"""What may change when a run is resumed, and the commands that resume it.

A resumed run must be the run it continues, so its config must match the one recorded in
the folder, except for changes that leave every step already taken valid:

- `train.steps` larger: a finished run is extended, an unfinished one goes further;
- learning rates (any `...learning_rate` key), but only after the run stopped on a
  non-finite value (recorded in its `run_log.jsonl`): resuming with the same rate would
  replay the same steps and meet the same failure;
- what is recorded beside the numbers (`train.tensorboard`, `train.profile_chunks`).

Accepted changes are written into the folder's `config.yaml` and recorded in its log;
any other difference is refused, naming the key.
"""

import hashlib
import shlex
from typing import Any, Optional

from metax.experiment.errors import ConfigError
from metax.experiment.folders import read_events

STEPS_KEY = "train.steps"
# What a run records beside its numbers, not what it computes: free to change on resume,
# and not in the fingerprint (so folders written before these keys existed still resume).
OBSERVING_KEYS = ("train.tensorboard", "train.profile_chunks")


def _flatten(tree: Any, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        found = {}
        for key, value in tree.items():
            found.update(_flatten(value, f"{prefix}{key}."))
        return found or {prefix[:-1]: {}}
    if isinstance(tree, list) and any(isinstance(item, dict) for item in tree):  # a chain of optimisers
        found = {}
        for index, item in enumerate(tree):
            found.update(_flatten(item, f"{prefix[:-1]}[{index}]."))
        return found
    return {prefix[:-1]: tree}


def _is_rate(path: str) -> bool:
    return path.rsplit(".", 1)[-1] == "learning_rate"


def _same_files(a: Any, b: Any) -> bool:
    """Plugin lists naming the same files, found at another path (a moved run folder)."""
    import os

    names = lambda paths: [os.path.basename(p) for p in paths] if isinstance(paths, list) else paths
    return names(a) == names(b)


def fingerprints(config: dict, recorded: Optional[dict] = None) -> tuple[str, ...]:
    """The checkpoint fingerprints this config accepts, the one to write first: a hash
    of the config without the keys a resume may change (so an extended run or one
    resumed at a lower rate still matches its checkpoints), and the hash of the whole
    recorded config, which older metax versions wrote."""
    import yaml

    changeable = lambda path: path in (STEPS_KEY, "plugins", *OBSERVING_KEYS) or _is_rate(path)  # plugins: where, not what
    stable = {path: value for path, value in _flatten(config).items() if not changeable(path)}
    found = [hashlib.sha256(repr(sorted(stable.items())).encode()).hexdigest()[:16]]
    if recorded is not None:
        text = yaml.safe_dump(recorded, sort_keys=False, default_flow_style=None)
        found.append(hashlib.sha256(text.encode()).hexdigest()[:16])
    return tuple(found)


def resume_changes(folder: str, recorded: dict, wanted: dict) -> list[dict]:
    """The accepted changes `[{"key", "from", "to"}]` between the folder's recorded config
    and the wanted one.

    Raises:
      ConfigError: naming every key that may not change, and what may.
    """
    old, new = _flatten(recorded or {}), _flatten(wanted)
    after_nonfinite = bool(read_events(folder)) and read_events(folder)[-1].get("event") == "nonfinite"
    accepted, refused = [], []
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path, "<unset>"), new.get(path, "<unset>")
        if a == b or (path == "plugins" and _same_files(a, b)) or (path in OBSERVING_KEYS and a == "<unset>" and not b):
            continue  # (a folder from before the observing keys: their defaults)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        if (path == STEPS_KEY and numbers and b > a) or path in OBSERVING_KEYS:
            accepted.append({"key": path, "from": a, "to": b})
        elif _is_rate(path) and numbers and after_nonfinite:
            accepted.append({"key": path, "from": a, "to": b})
        else:
            why = " (only after a non-finite stop)" if _is_rate(path) else " (only larger)" if path == STEPS_KEY else ""
            refused.append(f"{path} is {a!r} there, {b!r} here{why}")
    if refused:
        raise ConfigError(
            f"--resume: {folder} holds a run of a different config ({'; '.join(refused[:5])}"
            f"{'; ...' if len(refused) > 5 else ''}); a resume may change only train.steps (larger) and, after a "
            "non-finite stop, learning rates. Resume with `metax resume "
            f"{shlex.quote(folder)}`, or choose another --out."
        )
    return accepted


def lower_rate_command(folder: str, config: dict) -> str:
    """`metax resume FOLDER --set <rate>=<half> ...` for the outer learning rates (all of
    them if none is outer): the command a non-finite stop suggests."""
    rates = {p: v for p, v in _flatten(config).items() if _is_rate(p) and isinstance(v, (int, float))}
    outer = {p: v for p, v in rates.items() if "outer" in p} or rates
    sets = " ".join(f"--set {p}={v / 2:g}" for p, v in sorted(outer.items()))
    return f"metax resume {shlex.quote(folder)}" + (f" {sets}" if sets else "")
