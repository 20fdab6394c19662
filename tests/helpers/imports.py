"""Static import graph of the project, for the tests that check dvc.yaml deps and the layout."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.setup import REPO


def module_file(name: str) -> Path | None:
    """The file of project module ``name`` (``a.b`` -> a/b.py or a/b/__init__.py), None when not a module."""
    base = REPO / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path) -> set[str]:
    """Project modules ``path`` imports anywhere (module level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # ``from pkg import module``
    names = {n for n in names if n == "edge_glass" or n.startswith("edge_glass.")}
    parents = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}
    return names | parents  # importing a.b.c runs a/__init__ and a/b/__init__


def import_closure(files) -> set[Path]:
    """``files`` and every project module their code imports, at any depth (resolved paths)."""
    seen = {Path(f).resolve() for f in files}
    todo = list(seen)
    while todo:
        for name in imported_names(todo.pop()):
            f = module_file(name)
            if f is not None and f.resolve() not in seen:
                seen.add(f.resolve())
                todo.append(f.resolve())
    return seen
