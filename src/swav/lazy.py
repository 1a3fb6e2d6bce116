"""Package facades whose public names are imported on first use, so that importing the
package (and ``swav --help``) does not import torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, modules: dict[str, list[str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that resolves each name listed under its
    module (``{"swav.model.heads": ["Prototypes", ...]}``) by importing that module."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
