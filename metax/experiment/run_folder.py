"""Preparing a run's folder for `metax run`: a new run, a run to resume (with its accepted
config changes recorded), a run that ended before its first step (started afresh), or a
refusal that changes nothing."""

import os
import shutil
from typing import Optional

from metax.experiment.errors import ConfigError


def _untrained(out: str, entries: list[str]) -> bool:
    """A run that ended before its first checkpoint or metric row (a crash, a kill, a bad
    setting found late): nothing in it is worth keeping, so a rerun may start it afresh."""
    from metax.experiment import checkpoint as ckpt

    checkpoints = os.path.join(out, "checkpoints")
    if os.path.isdir(checkpoints) and any(not n.endswith(".tmp") and ".tmp-" not in n for n in os.listdir(checkpoints)):
        return False
    known = {"config.yaml", "checkpoints", "metrics.jsonl", "metrics.csv", "eval.jsonl", "eval.csv", "run_log.jsonl",
             "timing.jsonl", "timing.csv", "tensorboard", "profile"}
    empty = lambda name: not os.path.exists(os.path.join(out, name)) or os.path.getsize(os.path.join(out, name)) == 0
    return set(entries) <= known and empty("metrics.jsonl") and not ckpt.list_checkpoints(checkpoints)


def _prepare_folder(out: str, config, resume: bool) -> tuple[bool, Optional[dict]]:
    """Checks that `out` may receive this run and writes its config.yaml (the caller
    holds the folder's lock).

    Returns:
      `(resuming, recorded)`: True and the recorded config if it holds a run of this
      config to resume (with accepted changes written into its config.yaml and log),
      False and None for a new run.

    Raises:
      ConfigError: if `out` is a file, holds another run (or other files), or cannot be
        written; nothing in it is changed.
    """
    import yaml

    from metax.experiment.folders import contents, log_event
    from metax.experiment.io import write_text_atomic
    from metax.experiment.resume import resume_changes
    from metax.experiment.schema import dump_config

    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file; give a folder for the run.")
    existing = contents(out)
    config_path = os.path.join(out, "config.yaml")
    if existing and _untrained(out, existing):
        for name in existing:  # only files a run writes, none with a step in it
            path = os.path.join(out, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        print(f"{out}: the run recorded there ended before its first step; starting it afresh.")
        existing = []
    if existing:
        if not os.path.exists(config_path):
            raise ConfigError(f"--out {out} is not empty and holds no metax run; choose a new or empty folder.")
        try:
            with open(config_path) as handle:
                previous = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{config_path} cannot be read ({error}); choose another --out.") from error
        if not isinstance(previous, dict):
            raise ConfigError(f"{config_path} is not a metax run config; choose another --out.")
        if not resume:
            raise ConfigError(
                f"--out {out} holds a run of {previous.get('name', '?')!r}; pass --resume to continue it, "
                "or choose another --out (nothing was changed)."
            )
        changes = resume_changes(out, previous, config.to_dict())
        if changes:
            write_text_atomic(config_path, dump_config(config))
            log_event(out, "resume", changes=changes)
            print(f"{out}: resuming with " + ", ".join(f"{c['key']} {c['from']} -> {c['to']}" for c in changes))
        return True, previous
    try:
        os.makedirs(out, exist_ok=True)
        write_text_atomic(config_path, dump_config(config))
    except OSError as error:
        raise ConfigError(f"cannot write the run folder {out}: {error.strerror or error}; choose a writable --out.") from error
    return False, None
