"""Package namespaces whose names load on first use (so ``import cmddcli.data`` does not load torch)."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict, namespace: dict) -> tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a public name to the submodule
    that defines it; the first access imports that submodule and caches the name in ``namespace``."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
