"""Command line interface: parses, calls one library function per command, prints.

No logic lives here beyond turning arguments into calls and results into text and exit codes.
"""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import GsvrError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gsvr-batch")
def cli() -> None:
    """Turn many videos into lesson plans with Google Gemini, unattended and resumable."""


def fail(exc: GsvrError) -> None:
    """Print ``Error: ...`` and exit with the error's documented code (never a traceback)."""
    click.echo(f"Error: {exc}", err=True)
    sys.exit(int(exc.exit_code))


def main() -> None:
    cli(prog_name="gsvr-batch")
