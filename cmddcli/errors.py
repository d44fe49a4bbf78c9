"""The one domain exception family. The CLI turns any of these into a red line and exit code 1."""

from __future__ import annotations


class CmddError(Exception):
    """A user-facing error: bad input, a missing file, incompatible weights. One line, no traceback."""


class InputError(CmddError):
    """An input file or folder cannot be used (corrupt, unsupported, missing). Carries the path."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class WeightsError(CmddError):
    """A weights file is missing, unsafe, or made for another configuration."""


class BackendUnavailable(CmddError):
    """A requested selective-scan backend cannot run here; the message says how to get it."""


def run_script(main) -> None:
    """Run a ``scripts/*.py`` ``main() -> int`` and exit with its code; a :class:`CmddError` (or an
    ``OSError``, e.g. a disk failing mid-run) becomes one ``error: ...`` line on stderr and exit 1,
    as in the CLI. Never returns."""
    import sys

    try:
        code = main()
    except CmddError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    except OSError as e:
        where = getattr(e, "filename", None)
        print(f"error: {where}: {e.strerror or e}" if where else f"error: {e.strerror or e}", file=sys.stderr)
        code = 1
    sys.exit(code)
