"""`metax --version` and help text for every positional argument and option."""

import argparse

import pytest

from metax.experiment.cli import _parser, main


def actions(parser):
    """(subcommand, action) for every argument of the parser and its subcommands."""
    found = [("metax", a) for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(name, a) for a in sub._actions]
    return found


def test_every_argument_has_help():
    missing = [
        f"{command} {a.option_strings or a.dest}" for command, a in actions(_parser())
        if a.help is None or (a.help != argparse.SUPPRESS and not a.help.strip())
    ]
    assert not missing, f"arguments without help text: {missing}"


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("metax ")
