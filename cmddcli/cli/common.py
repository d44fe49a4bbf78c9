"""Shared CLI plumbing: consoles, error handling, JSON output, logging set-up, and the options that
several commands take (declared once here, with defaults from the library)."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.logging import RichHandler

from ..engine.options import DEFAULT_OVERLAP, MIN_USER_TILE, PRECISIONS, tile_overlap_problem
from ..errors import CmddError

# Progress, tables and logs go to stderr; stdout is reserved for --json payloads and plain results.
err_console = Console(stderr=True)
out_console = Console()


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Library logs to stderr through rich: warnings only with ``quiet``, debug with ``verbose``, else info."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    # tifffile logs its repairs of damaged files without the file's name; cmdd's own line names the
    # file and says whether it could be read.
    logging.getLogger("tifffile").setLevel(logging.ERROR)


def print_json(payload: Any) -> None:
    """Machine-readable output: strict JSON (RFC 8259: inf / nan become null) only, on stdout."""
    from ..fileutil import finite_json

    sys.stdout.write(json.dumps(finite_json(payload), indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print one red ``error:`` line on stderr and return the ``typer.Exit`` to raise (never wrapped
    into several lines, even when stderr is a pipe and rich assumes 80 columns). ``message`` is
    plain text: a path such as ``a[/b]`` is printed as it is, never read as rich markup."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


def print_failures(failures) -> None:
    """The end-of-run list of (path, reason) that a batch went on past, one line each."""
    for path, reason in failures:
        err_console.print(f"[red]failed:[/] {escape(str(path))}: {escape(reason)}", highlight=False, soft_wrap=True)


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


# ---------------------------------------------------------------------------------------- shared options


def _or_list(values) -> str:
    values = list(values)
    return ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else "".join(values)


def device_option(default: Optional[str] = "auto", help: str = "auto, cpu, cuda or cuda:N."):
    """``--device``, shared by deblur, eval, train and bench."""
    return typer.Option(default, "--device", help=help)


def precision_option(default: Optional[str] = "auto", help: Optional[str] = None):
    """``--precision``; the choices come from :data:`cmddcli.engine.options.PRECISIONS`."""
    return typer.Option(default, "--precision", help=help or f"{_or_list(PRECISIONS)}.")


def weights_option(help: str = "Weights: a .safetensors file or a packaged name (v1, ...; see cmdd info); "
                                "default: the shipped default weights."):
    """``--weights / -w``: a .safetensors file or a packaged name (default: the shipped weights)."""
    return typer.Option(None, "--weights", "-w", help=help)


def tile_option(default: Optional[int] = None,
                help: str = "Tile size in pixels (default: automatic, ~512 px on CPU, from free memory on CUDA; 0 = whole image)."):
    """``--tile`` in pixels."""
    return typer.Option(default, "--tile", help=help)


def antiring_option():
    """``--antiring``: the anti-ringing clamp after the network (:mod:`cmddcli.engine.antiring`)."""
    return typer.Option("card", "--antiring", metavar="card|off|W,M",
                        help="Anti-ringing clamp after the network: card (default: what the weights' card names, "
                             "if anything), off, or W,M: each channel kept within the blurred input's range over "
                             "a W px square, widened by M 8-bit levels (e.g. 11,4).")


def check_tile(tile: Optional[int], overlap: int) -> None:
    """``--tile`` / ``--overlap`` as a user may set them (rule: :func:`engine.options.tile_overlap_problem`
    with tile 0 or >= MIN_USER_TILE). Raises CmddError naming the bad value."""
    problem = tile_overlap_problem(tile, overlap, min_tile=MIN_USER_TILE, flag="--")
    if problem:
        raise CmddError(problem)


def _check_threads(value: Optional[int]) -> Optional[int]:
    """More threads than cores is allowed (the user may know better) but said: torch's threads then
    wait on each other and a run is usually slower, not faster."""
    from ..runtime import available_cores

    if value and value > available_cores():
        err_console.print(f"[yellow]warning:[/] --threads {value} is more than the {available_cores()} core(s) this "
                          "process may use; expect it to be slower, not faster", highlight=False, soft_wrap=True)
    return value


def threads_option():
    """``--threads N``: CPU threads (default: every core this process may use)."""
    return typer.Option(None, "--threads", min=1, callback=_check_threads,
                        help="CPU threads for the network (default: every core this process may use, shared "
                             "among the torchrun ranks of a machine).")


def overlap_option():
    """``--overlap`` between tiles in pixels, default :data:`cmddcli.engine.options.DEFAULT_OVERLAP`."""
    return typer.Option(DEFAULT_OVERLAP, "--overlap", metavar="PX",
                        help="Overlap between neighbouring tiles in pixels (cmdd prepare's --overlap is a fraction).")


def json_option(help: str = "Print the JSON summary on stdout (nothing else)."):
    """``--json``: only JSON on stdout."""
    return typer.Option(False, "--json", help=help)


def quiet_option(help: str = "No progress bars or tables; warnings only."):
    """``--quiet / -q``: warnings only."""
    return typer.Option(False, "--quiet", "-q", help=help)


def check_scan_names(values: List[str], option: str = "--scan") -> List[str]:
    """``values`` unchanged if each is ``auto`` or a scan backend's name; else a usage error (exit 2)
    naming ``option``."""
    from ..errors import BackendUnavailable
    from ..model.ssm import check_backend_name

    for value in values:
        try:
            check_backend_name(value)
        except BackendUnavailable as e:
            raise typer.BadParameter(str(e), param_hint=option)
    return values


def _set_scan(value: Optional[str]) -> Optional[str]:
    """``--scan NAME`` is ``CMDD_SCAN=NAME`` for this process and the processes it starts; an unknown
    name is a usage error before anything runs."""
    if value:
        check_scan_names([value])
        os.environ["CMDD_SCAN"] = value
    return value


def scan_option():
    """``--scan NAME``: the selective-scan backend, as ``CMDD_SCAN=NAME``."""
    return typer.Option(None, "--scan", callback=_set_scan,
                        help="Selective-scan backend (auto, ref, torch, cpu, triton, mamba); same as CMDD_SCAN.")
