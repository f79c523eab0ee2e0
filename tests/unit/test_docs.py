"""The README and the command line agree: every command and option is documented, and
nothing documented is missing from the command line.

Two kinds of README tables are checked. The command reference (after
``<!-- commands -->``) has a row per command with all its options. An option table
(after ``<!-- options: COMMAND -->``) names in its first column every option of one
command, with its meaning.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
import typer.main
from scoring.batch import main as batch_main
from scoring.cli import app
from scoring.settings import PROJECT_ROOT
from scoring.stream import main as stream_main

assert PROJECT_ROOT is not None, "the tests run from a checkout"
README = (PROJECT_ROOT / "README.md").read_text()

OPTION = re.compile(r"(?<![\w-])--[a-z][\w-]*")
COMMAND = re.compile(r"`(scoring(?: [a-z][\w-]*)+)")
# A command as written in prose (`scoring ...`), on a command line, or in $(...).
MENTION = re.compile(r"(?:`|^\s*|\$\(|\| )(scoring(?: [a-z][\w-]*)+)", re.M)
# Every command's own options; not documented per command.
GENERIC = {"--help", "--install-completion", "--show-completion"}


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def argparse_options(parse_args: Callable[[list[str]], object]) -> set[str]:
    """The long options of the parser a job's ``parse_args`` builds."""

    def grab(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Parsed(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", grab):
        try:
            parse_args([])
        except _Parsed as parsed:
            actions = parsed.parser._actions
            return {s for a in actions for s in a.option_strings if s.startswith("--")} - GENERIC
    raise AssertionError("parse_args built no parser")


# Commands that hand their arguments to a job's own parser.
FORWARDED = {
    "scoring batch run": lambda: argparse_options(batch_main.parse_args),
    "scoring stream run": lambda: argparse_options(stream_main.parse_args),
}


def cli_commands() -> dict[str, set[str]]:
    """Every command of the ``scoring`` CLI and its long options."""
    root = typer.main.get_command(app)

    def walk(command: Any, path: str, ctx: Any) -> Iterator[tuple[str, set[str]]]:
        if hasattr(command, "list_commands"):  # a group
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, f"{path} {name}", sub.context_class(sub, parent=ctx))
        elif path in FORWARDED:
            yield path, FORWARDED[path]()
        else:
            options = {o for p in command.params for o in p.opts if o.startswith("--")}
            yield path, options - GENERIC

    return dict(walk(root, "scoring", root.context_class(root)))


def table_after(mark: str, text: str = README) -> list[list[str]]:
    """The cells of the markdown table right after ``mark`` (header and rule dropped)."""
    start = text.index(mark) + len(mark)
    lines = text[start:].lstrip("\n").splitlines()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    assert len(rows) > 2, f"no table after {mark}"
    return rows[2:]


def documented_commands(text: str = README) -> dict[str, set[str]]:
    """The command reference: each row's command and the options it names."""
    found = {}
    tables = option_tables(text)
    for cells in table_after("<!-- commands -->", text):
        match = COMMAND.match(cells[0])
        assert match, f"not a command: {cells[0]}"
        command = match.group(1)
        # A command with its own option table points there.
        found[command] = tables[command] if command in tables else set(OPTION.findall(cells[1]))
    return found


def option_tables(text: str = README) -> dict[str, set[str]]:
    """Each ``<!-- options: COMMAND -->`` table's options, by command."""
    tables = {}
    for mark in re.finditer(r"<!-- options: (.+?) -->", text):
        rows = table_after(mark.group(0), text[mark.start() :])
        tables[mark.group(1)] = {o for cells in rows for o in OPTION.findall(cells[0])}
    return tables


def test_the_readers_of_the_readme_find_what_they_should() -> None:
    text = (
        "<!-- commands -->\n| command | options |\n| --- | --- |\n"
        "| `scoring a b` | below |\n| `scoring c` | none |\n| `scoring d E` | `--q` |\n\n"
        "<!-- options: scoring a b -->\n| option | meaning |\n| --- | --- |\n"
        "| `--x`, `--y-z` | what (not `--w`) |\n"
    )
    assert documented_commands(text) == {
        "scoring a b": {"--x", "--y-z"},
        "scoring c": set(),
        "scoring d": {"--q"},
    }
    assert option_tables(text) == {"scoring a b": {"--x", "--y-z"}}


def test_the_forwarded_parsers_are_read() -> None:
    assert {"--model", "--source", "--target", "--date"} <= FORWARDED["scoring batch run"]()
    assert {"--model", "--input-topic", "--kafka-config"} <= FORWARDED["scoring stream run"]()


def test_every_command_is_in_the_command_reference_with_its_options() -> None:
    documented, actual = documented_commands(), cli_commands()
    assert sorted(documented) == sorted(actual), "commands differ"
    differences = {
        command: {
            "not in the README": sorted(actual[command] - documented[command]),
            "not in the CLI": sorted(documented[command] - actual[command]),
        }
        for command in actual
        if actual[command] != documented[command]
    }
    assert not differences


@pytest.mark.parametrize("command", sorted(option_tables()))
def test_each_option_table_names_every_option_of_its_command(command: str) -> None:
    actual = cli_commands()
    assert command in actual, f"the README has an option table for {command}, no such command"
    documented = option_tables()[command]
    assert sorted(actual[command] - documented) == [], "options the table does not name"
    assert sorted(documented - actual[command]) == [], "options the command does not have"


def known(mention: str, commands: set[str]) -> bool:
    """A command followed by its arguments, or a group of commands."""
    words = mention.split()
    prefixes = {" ".join(words[:n]) for n in range(2, len(words) + 1)}
    groups = {" ".join(c.split()[:n]) for c in commands for n in range(1, len(c.split()))}
    return bool(prefixes & commands) or mention in groups


def test_every_command_the_readme_mentions_exists() -> None:
    commands = set(cli_commands())
    assert known("scoring model list fraud", commands)
    assert known("scoring model", commands)
    assert not known("scoring model lst fraud", commands)
    mentioned = {m.group(1) for m in MENTION.finditer(README)}
    assert sorted(m for m in mentioned if not known(m, commands)) == []
