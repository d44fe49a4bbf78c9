"""Shared CLI plumbing: consoles, error handling, JSON output, logging set-up."""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from typing import Any, Callable

import typer
from rich.console import Console
from rich.logging import RichHandler

from ..errors import CmddError

# Progress, tables and logs go to stderr; stdout is reserved for --json payloads and plain results.
err_console = Console(stderr=True)
out_console = Console()


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )


def print_json(payload: Any) -> None:
    """Machine-readable output: strict JSON (RFC 8259: inf / nan become null) only, on stdout."""
    sys.stdout.write(json.dumps(_finite(payload), indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def fail(message: str, code: int = 1) -> "typer.Exit":
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    return typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Turn a CmddError into one red line and exit code 1; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CmddError as e:
            raise fail(str(e))
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130)

    return wrapper
