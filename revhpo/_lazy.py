"""Lazy package exports (PEP 562): a package names what it exports and where each name lives;
a submodule is imported on first access, so TensorFlow-free parts (configs, tables) can be
imported without importing TensorFlow."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, object]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose ``exports`` map each public name
    to the submodule (relative to ``package``) that defines it; ``namespace`` is the package's
    ``globals()``, where a name is kept once imported (later lookups skip ``__getattr__``)."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
