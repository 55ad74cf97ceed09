"""What the CLI prints: tables that fit the terminal by folding their cells (never cutting a name short), and
whole lines when the output goes to a pipe or a file."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.table import Table

PIPE_WIDTH = 400  # wide enough that no table or message wraps in a pipe; `grep` sees whole rows


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else PIPE_WIDTH
    return Console(stderr=stderr, width=width)


def print_table(console: Console, table: Table) -> None:
    for column in table.columns:
        column.overflow = "fold"
        column.no_wrap = False
    console.print(table)
