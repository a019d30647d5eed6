"""A mistyped flag is reported by the command it was given to: that command's usage and one
error line naming the flag, exit code 2, for every command and nested command of ``clsmon``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from streams.cli import build_parser, main


def leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = (),
                  ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable command under ``parser`` (``("hl7", "listen")``, ...) with its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from leaf_commands(child, (*path, name))


def valid_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Arguments the command accepts as far as parsing goes: its positionals and required
    options, each given one value ("1" parses as a number, a path and a name alike)."""
    argv: list[str] = []
    # one option of each group of which one is required (simulate: --to or --broker)
    chosen = [g._group_actions[0] for g in parser._mutually_exclusive_groups if g.required]
    for action in parser._actions:
        required = action.required or action in chosen
        if action.nargs in ("?", "*", 0) or (action.option_strings and not required):
            continue
        value = str(next(iter(action.choices))) if action.choices else "1"
        argv += [*action.option_strings[:1], value]
    return argv


COMMANDS = dict(leaf_commands(build_parser()))


def test_every_nested_command_is_covered() -> None:
    assert {("replay",), ("worker",), ("hl7", "listen"), ("import", "mimic3"),
            ("users", "add")} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
@pytest.mark.parametrize("where", ["after", "before"])
def test_unknown_flag_is_reported_with_the_commands_own_usage(
        path: tuple[str, ...], where: str, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = valid_arguments(COMMANDS[path])
    argv = ([*path, *arguments, "--no-such-flag"] if where == "after"
            else [*path, "--no-such-flag", *arguments])
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    command = "clsmon " + " ".join(path)
    lines = err.splitlines()
    assert lines[0].startswith(f"usage: {command} "), err
    assert lines[-1] == f"{command}: error: unrecognized arguments: --no-such-flag", err
    assert sum("error" in line for line in lines) == 1, err
    assert "Traceback" not in err and out == ""


def test_extra_positional_is_reported_by_its_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["replay", "a.csv", "b.csv"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: clsmon replay ")
    assert err.splitlines()[-1] == "clsmon replay: error: unrecognized arguments: b.csv"
