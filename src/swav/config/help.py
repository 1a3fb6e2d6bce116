"""The settings' help: every option with its default and the docstring under its field."""

from __future__ import annotations

import dataclasses
from typing import Any

from swav.config.schema import SECTIONS


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (its ``--help`` text)."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError, SyntaxError):
        return docs
    node = tree.body[0]
    body = node.body if isinstance(node, ast.ClassDef) else []
    for a, b in zip(body, body[1:]):
        if (
            isinstance(a, ast.AnnAssign)
            and isinstance(a.target, ast.Name)
            and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant)
            and isinstance(b.value.value, str)
        ):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def describe_options() -> list[tuple[str, str, str]]:
    """(key, default, help) for every option, from the dataclass fields and their docstrings."""
    rows = []
    for section, f in SECTIONS.items():
        if section == "run_dir":
            rows.append(("run_dir", "runs/swav", "Run directory: config, checkpoints, metrics."))
            continue
        if section == "method":
            rows.append(
                (
                    "method",
                    "'swav'",
                    "The objective: swav (online Sinkhorn codes, swapped prediction), "
                    "deepclusterv2 (k-means of a memory bank, frozen centroids) or selav2 "
                    "(Sinkhorn pseudo-labels over a memory bank, once per epoch).",
                )
            )
            continue
        cls: Any = f.default_factory
        docs = _field_docs(cls)
        inst = cls()
        for sub in dataclasses.fields(inst):
            rows.append(
                (f"{section}.{sub.name}", repr(getattr(inst, sub.name)), docs.get(sub.name, ""))
            )
    return rows
