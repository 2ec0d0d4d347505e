"""Every `metax ...` command the READMEs document runs as written, shortened.

Commands are taken from fenced ```bash blocks and inline code spans of README.md and
configs/README.md. Synopses with placeholders (`CONFIG.yaml`, `RUN_DIR`, `[...]`) and
examples naming files the repository does not ship (`my_config.yaml`) are illustrations,
not commands, and are skipped; the test fails if it finds no command at all. A `run` is
shortened with `--set train.steps=3 --set eval.tasks=4` and writes into a temporary
folder; commands written to run together (a line ending in `&` and the next: the processes
of a multi-host run) have their config loaded with their changes and device count, which
refuses a meta-batch that does not split over the devices.
"""

import pathlib
import re
import shlex

import pytest

from metax.experiment.cli import main
from metax.experiment.errors import ConfigError
from metax.experiment.schema import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "configs/README.md")
SHORT = ["--set", "train.steps=3", "--set", "eval.tasks=4", "--set", "train.eval_every=null", "--no-progress", "--no-plots"]


def shell_lines(text: str) -> list[str]:
    """The lines of the fenced shell blocks (```bash, ```sh, ``` without a language) of a
    markdown text, comments cut off."""
    lines, fence = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
            continue
        if fence in ("bash", "sh", "console", ""):
            lines.append(line.split(" #")[0].strip())
    return lines


def documented_commands(text: str) -> list[list[str]]:
    """The `metax` command lines of a markdown text (fenced shell blocks, then inline code
    spans), in order; lines ending in `&` and the line after them form one group (they
    run together)."""
    lines = shell_lines(text) + re.findall(r"(?<!`)`(metax [^`]*)`", text)
    groups, pending = [], []
    for line in lines:
        if not line.startswith("metax "):
            continue
        pending.append(line.rstrip("&").strip())
        if not line.endswith("&"):
            groups.append(pending)
            pending = []
    return groups


def runnable(line: str) -> bool:
    """False for a synopsis or an illustration (placeholders, files that are not shipped)."""
    words = shlex.split(line)
    if len(words) < 2 or any(w in ("...", "[") or w.startswith("[") or re.fullmatch(r"[A-Z_]+(\.yaml)?", w) for w in words):
        return False
    if words[1] in ("run", "validate", "eval", "plot", "compare") and (len(words) < 3 or words[2].startswith("-")):
        return False  # a mention of the subcommand (`metax run --seeds`), not a command
    files = [w for w in words[2:] if re.search(r"\.(yaml|yml|py)$", w)]
    return all((ROOT / f).exists() for f in files)


def shortened(words: list[str], out: pathlib.Path) -> list[str]:
    if words[1] == "run":
        return words[1:] + SHORT + ["--out", str(out)]
    return words[1:]


COMMANDS = [
    (document, group)
    for document in DOCUMENTS
    for group in documented_commands((ROOT / document).read_text())
    if all(runnable(line) for line in group)
]


def test_the_readmes_document_commands():
    groups = [group for _, group in COMMANDS]
    assert any(len(group) == 2 for group in groups), "the two-process example was not found"
    assert any(group == ["metax run configs/sinusoid-maml.yaml"] for group in groups)
    assert not runnable("metax run CONFIG.yaml [--set key=value ...]") and not runnable("metax run my_config.yaml")


@pytest.mark.parametrize("document,group", COMMANDS, ids=[" && ".join(g) for _, g in COMMANDS])
def test_documented_command_runs(document, group, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the commands are written for the repository root
    out = tmp_path / "run"
    if len(group) == 1:
        code = main(shortened(shlex.split(group[0]), out))
        assert code == 0, f"{document}: `{group[0]}` exited {code}: {capsys.readouterr().err[-2000:]}"
        return
    # Commands meant to run together (processes of one multi-host run) are checked by
    # loading their config with their changes and device count (which refuses a meta-batch
    # that does not split over the devices): starting the processes costs more than this
    # file's time budget, and tests/test_parallel.py runs two of them.
    for line in group:
        words = shlex.split(line)
        assert words[1] == "run", line
        try:
            load_config(words[2], config_changes(words[3:]))
        except ConfigError as error:
            raise AssertionError(f"{document}: `{line}` is refused: {error}") from None


def config_changes(options: list[str]) -> list[str]:
    """The `--set` values of `metax run` options, `--devices N` as `train.devices=N`."""
    changes = []
    for flag, value in zip(options[::2], options[1::2]):
        if flag == "--set":
            changes.append(value)
        elif flag == "--devices":
            changes.append(f"train.devices={value}")
        elif flag not in ("--coordinator", "--num-processes", "--process-id", "--out"):
            raise AssertionError(f"unexpected option {flag} in a multi-process command")
    return changes
