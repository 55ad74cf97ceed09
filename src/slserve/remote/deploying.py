"""What the `deploy` commands share."""

from __future__ import annotations

import typer
from rich.console import Console


def stop_unless_deployable(console: Console, missing: list[str]) -> None:
    """Say what a real deploy lacks here, and stop (exit 2); nothing when nothing is missing."""
    if not missing:
        return
    console.print("[red]cannot deploy from here[/red]; missing:")
    for item in missing:
        console.print(f"  - {item}")
    raise typer.Exit(2)
