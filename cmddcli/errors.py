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
