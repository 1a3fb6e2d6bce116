"""The package's structure, checked from the source so that it stays as documented in
docs/architecture.md: layering of imports, function size, no repeated blocks, annotations."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "swav"

# Lower layers never import higher ones (data -> model -> objective -> config -> engine ->
# interop -> eval -> viz / report / demo -> cli). The package's __init__ is the public facade.
LAYERS = {
    "swav.errors": 0,
    "swav.run_length": 0,
    "swav.values": 0,
    "swav.lazy": 0,
    "swav.data": 1,
    "swav.model": 2,
    "swav.objective": 3,
    "swav.config": 4,
    "swav.engine": 5,
    "swav.interop": 6,
    "swav.eval": 7,
    "swav.viz": 8,
    "swav.report": 8,
    "swav.publish": 8,
    "swav.demo": 8,
    "swav.cli": 9,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int | None:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    return None


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every swav module imported anywhere in the file (lazy imports inside functions too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("swav.") or m == "swav"}


def test_every_module_has_a_layer():
    missing = [_module_name(p) for p in _sources() if p.parent != SRC or p.stem != "__init__"]
    missing = [m for m in missing if _layer(m) is None]
    assert not missing, f"modules without a layer in LAYERS: {missing}"


def test_no_module_imports_from_a_layer_above_it():
    violations = []
    for path in _sources():
        module = _module_name(path)
        own = _layer(module)
        if own is None:  # the package facade
            continue
        tree = ast.parse(path.read_text())
        for imported in _imports(tree, module, path.stem == "__init__"):
            layer = _layer(imported)
            if layer is not None and layer > own:
                violations.append(f"{module} (layer {own}) imports {imported} (layer {layer})")
    assert not violations, "\n".join(violations)


def test_the_layer_check_can_fail():
    tree = ast.parse("from swav.engine.train import pretrain\nimport swav.cli\n")
    found = _imports(tree, "swav.model.swav", False)
    assert {_layer(m) for m in found} == {5, 9}


def _module_edges(path: Path, modules: set[str]) -> set[str]:
    """The swav modules a file imports, anywhere in it (inside functions and ``if
    TYPE_CHECKING`` blocks too): ``from swav.a import b`` is ``swav.a.b`` when that is a
    module, else ``swav.a``."""
    module = _module_name(path)
    found = set()
    for name in _imports(ast.parse(path.read_text()), module, path.stem == "__init__"):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def import_cycles(paths: list[Path]) -> list[list[str]]:
    """The circles of the import graph (strongly connected groups of two or more modules)."""
    modules = {_module_name(p): p for p in paths}
    graph = {m: _module_edges(p, set(modules)) for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_import_graph_has_no_circle():
    """Counting imports inside functions: one placed there to dodge a circle still closes it
    (imports inside functions are for start-up time only)."""
    cycles = import_cycles(_sources())
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_the_circle_check_can_fail(tmp_path):
    pkg = tmp_path / "swav"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "engine" / "a.py").write_text("from swav.engine.b import f\n")
    (pkg / "engine" / "b.py").write_text("def f():\n    from swav.engine import a\n")
    paths = sorted(pkg.rglob("*.py"))
    global SRC
    real, SRC = SRC, pkg
    try:
        assert import_cycles(paths) == [["swav.engine.a", "swav.engine.b"]]
    finally:
        SRC = real


MAX_POSITIONAL = 6


def _crowded_calls(tree: ast.AST) -> list[tuple[int, str, int]]:
    return [
        (n.lineno, ast.unparse(n.func), len(n.args))
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and len(n.args) > MAX_POSITIONAL
    ]


def test_no_call_passes_more_than_six_positional_arguments():
    crowded = [
        f"{_module_name(path)}:{line} {func}({n} positional)"
        for path in _sources()
        for line, func, n in _crowded_calls(ast.parse(path.read_text()))
    ]
    assert not crowded, "\n".join(crowded)
    assert _crowded_calls(ast.parse("f(1, 2, 3, 4, 5, 6, 7)\nf(1, 2, 3, 4, 5, 6, x=7)"))[0][0] == 1


MAX_LINES = 80


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{_module_name(path)}.{node.name}: {n} lines")
    assert not long, "\n".join(long)


_SKIP = re.compile(r"^(#.*|[\])}(\[{,:]*|\"\"\"|from .* import .*|import .*|\)\s*->.*:)$")


def _code_lines(path: Path) -> list[tuple[int, str]]:
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        s = " ".join(line.split())
        if s and not _SKIP.match(s):
            out.append((i, s))
    return out


def repeated_blocks(paths: list[Path], size: int = 6) -> list[str]:
    """Runs of ``size`` consecutive code lines (blank lines, comments, imports and lone
    brackets left out, white space folded) that stand in two places."""
    seen: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for path in paths:
        lines = _code_lines(path)
        for k in range(len(lines) - size + 1):
            window = tuple(s for _, s in lines[k : k + size])
            seen[window].append(f"{path}:{lines[k][0]}")
    return [" ~ ".join(places) for places in seen.values() if len(places) > 1]


def test_no_block_of_six_lines_is_repeated(tmp_path):
    repeats = repeated_blocks(_sources())
    assert not repeats, "\n".join(repeats)
    # and the check finds one when there is one
    body = "\n".join(f"    x{i} = f({i})" for i in range(6))
    for name in ("a", "b"):
        (tmp_path / f"{name}.py").write_text(f"def {name}():\n{body}\n")
    assert len(repeated_blocks([tmp_path / "a.py", tmp_path / "b.py"])) == 1


def _public_callables(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield node.name, node
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and (
                    not item.name.startswith("_") or item.name in ("__init__", "__call__")
                ):
                    yield f"{node.name}.{item.name}", item


def _unannotated(fn: ast.FunctionDef) -> list[str]:
    args = fn.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    if params and params[0].arg in ("self", "cls"):
        params = params[1:]
    params += [a for a in (args.vararg, args.kwarg) if a is not None]
    missing = [a.arg for a in params if a.annotation is None]
    if fn.returns is None:
        missing.append("return")
    return missing


def test_every_public_function_and_method_is_annotated():
    bare = []
    for path in _sources():
        for name, fn in _public_callables(ast.parse(path.read_text())):
            missing = _unannotated(fn)
            if missing:
                bare.append(f"{_module_name(path)}.{name}: {', '.join(missing)}")
    assert not bare, "\n".join(bare)


def test_the_training_loop_stays_short():
    """``engine/train.py`` is the loop alone: what a method does is behind ``Method``, the
    trainer's pieces in ``engine/trainer.py``, the budget in ``engine/pacing.py``."""
    lines = len((SRC / "engine" / "train.py").read_text().splitlines())
    assert lines <= 400, f"engine/train.py has {lines} lines"
    text = (SRC / "engine" / "train.py").read_text()
    for name in ("deepclusterv2", "selav2", "ClusterLoss", "SwAVLoss", "queue.reset"):
        assert name not in text, f"engine/train.py names {name}"


IMPORT_NAMES = {"umap-learn": "umap", "faiss-cpu": "faiss", "mlflow-skinny": "mlflow"}
"""Packages whose import name differs from their distribution name."""


def test_every_optional_extra_is_used_by_the_code():
    """An extra in pyproject.toml installs something the package imports (``dev`` and
    ``bench`` serve the tests and benchmarks)."""
    import tomllib

    extras = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    imported = set()
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
    unused = [
        f"{extra}: {package}"
        for extra, packages in extras.items()
        if extra not in ("dev", "bench")
        for package in packages
        if not any((IMPORT_NAMES.get(package, package) in name.split(".")) for name in imported)
    ]
    assert not unused, f"extras that no code imports: {unused}"
