"""Every flag of the three programs (and of `dfdaemon setup`), and every key of
dfdaemon's `--config` file, is documented in its page: one added without a line in the
docs fails here."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

import dfdaemon.cli
import dfdaemon.setup.cli
import dfget.cli
import supernode.cli
from dfdaemon.configfile import CONFIG_KEYS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def long_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The parser's `--flags` (its subcommands' too), but `--help`."""
    found: set[str] = set()
    for action in parser._actions:
        found |= {o for o in action.option_strings if o.startswith("--") and o != "--help"}
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= long_flags(sub)
    return found


@pytest.mark.parametrize(
    ("build", "page"),
    [
        (dfget.cli.build_parser, "dfget.md"),
        (dfdaemon.cli.build_parser, "dfdaemon.md"),
        (dfdaemon.setup.cli.build_parser, "clients.md"),
        (supernode.cli.build_parser, "supernode.md"),
    ],
    ids=["dfget", "dfdaemon", "dfdaemon-setup", "supernode"],
)
def test_every_flag_is_in_its_page(build: Callable[[], argparse.ArgumentParser], page: str) -> None:
    flags = long_flags(build())
    assert len(flags) >= 10  # (the parser was read)
    text = (DOCS / page).read_text()
    assert sorted(f for f in flags if f"`{f}" not in text) == []


def test_every_config_key_of_dfdaemon_is_in_its_page() -> None:
    text = (DOCS / "dfdaemon.md").read_text()
    assert len(CONFIG_KEYS) >= 10
    assert sorted(key for key in CONFIG_KEYS if f"`{key}" not in text) == []
