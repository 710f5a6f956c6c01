"""The `prvr` command line: one click group. Exit codes: 0 ok, 1 a problem with the inputs (message says which
and how to fix it), 2 a usage error (click's). The commands live in ``prvr/commands/``, one module per area."""

from __future__ import annotations

import logging
import sys

import click

from prvr.commands.config_cli import config_command, presets_command
from prvr.commands.data_cli import data_group
from prvr.commands.demo_cli import demo_command
from prvr.commands.extract_cli import extract_command, extract_text_command
from prvr.commands.index_cli import build_index_command, index_group, query_command
from prvr.commands.moments_cli import localize_command, select_moments_command, train_moments_command
from prvr.commands.serve_cli import serve_command
from prvr.commands.train_cli import eval_command, quickstart_command, train_command

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """prvr: partially relevant video retrieval (DreamPRVR)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _command in (presets_command, config_command, data_group, train_command, eval_command, quickstart_command,
                 build_index_command, query_command, index_group, serve_command, train_moments_command,
                 localize_command, select_moments_command, extract_command, extract_text_command, demo_command):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
