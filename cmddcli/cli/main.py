"""The `cmdd` application. Each command lives in its own module and registers itself here."""

from __future__ import annotations

import typer

from .. import __version__

app = typer.Typer(
    name="cmdd",
    help="cmdd: remove defocus blur from photographs with CMDDNet (a CNN-Mamba U-Net).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"cmdd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
):
    """cmdd: remove defocus blur from photographs with CMDDNet."""


def _register_all() -> None:
    from . import cmd_bench, cmd_deblur, cmd_eval, cmd_info, cmd_prepare, cmd_train

    for module in (cmd_deblur, cmd_prepare, cmd_train, cmd_eval, cmd_info, cmd_bench):
        module.register(app)


_register_all()


def main() -> None:
    """The ``cmdd`` console script."""
    app()


if __name__ == "__main__":
    main()
