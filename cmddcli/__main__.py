"""``python -m cmddcli ...`` runs the ``cmdd`` command line (same name in usage lines and errors)."""

from .cli.main import app

if __name__ == "__main__":
    app(prog_name="cmdd")
