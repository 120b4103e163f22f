"""Docs and --help stay in sync with the commands (sqlite-utils style)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gsvr_batch.cli import cli
from gsvr_batch.exitcodes import DESCRIPTIONS, ExitCode

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
COMMANDS = sorted(cli.commands)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_documented_with_an_example(name):
    assert re.search(rf"gsvr-batch {re.escape(name)}\b", README), f"README has no example of `gsvr-batch {name}`"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_is_documented(name):
    cmd = cli.commands[name]
    missing = []
    for p in cmd.params:
        if isinstance(p, click.Option):
            for opt in p.opts + p.secondary_opts:
                if opt.startswith("--") and opt not in ("--help",) and opt not in README:
                    missing.append(opt)
    assert not missing, f"`gsvr-batch {name}` options missing from README: {missing}"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_works_for_every_command(name):
    r = CliRunner().invoke(cli, [name, "--help"])
    assert r.exit_code == 0 and "Usage:" in r.output


def test_exit_codes_table_matches_the_code():
    for code in ExitCode:
        assert re.search(rf"\|\s*`?{int(code)}`?\s*\|", README), f"exit code {int(code)} not in README's table"
    r = CliRunner().invoke(cli, ["run", "--help"])
    for code, desc in DESCRIPTIONS.items():
        assert str(int(code)) in r.output
