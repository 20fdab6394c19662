"""dvc.yaml's deps are complete: every project module a stage's entry point loads, at import time or in a
function (lazy imports), is one of that stage's deps (the file, or a folder above it). A module missing
from the deps is code that changes the stage's outputs without DVC rerunning it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.imports import import_closure, imported_names
from helpers.setup import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

# run in a fresh interpreter: import the entry (a stage script by path, without running its __main__
# block, or a module) and list the project modules then loaded
LOADED = """
import importlib, importlib.util, json, sys
kind, target = sys.argv[1:3]
if kind == "script":
    spec = importlib.util.spec_from_file_location("dvc_stage_entry", target)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
else:
    importlib.import_module(target)
print(json.dumps(sorted({m.__file__ for n, m in list(sys.modules.items())
                         if (n == "edge_glass" or n.startswith("edge_glass.")) and getattr(m, "__file__", None)})))
"""


def entry(cmd: str) -> tuple[str, str] | None:
    """The Python entry point a stage's cmd runs: ("script", stages/x.py) or ("module", edge_glass.x)."""
    if m := re.search(r"(?:^|\s)(stages/[\w/]+\.py)\b", cmd):
        return "script", m.group(1)
    if m := re.search(r"python3?\s+-m\s+([\w.]+)", cmd):
        return "module", m.group(1)
    return None


def loaded_modules(kind: str, target: str) -> set[Path]:
    """What the entry imports when loaded, closed over every project import in those files' code."""
    proc = subprocess.run([sys.executable, "-c", LOADED, kind, str(REPO / target) if kind == "script" else target],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = {Path(f).resolve() for f in json.loads(proc.stdout.strip().splitlines()[-1])}
    return import_closure(files | ({REPO / target} if kind == "script" else set()))


def uncovered(files: set[Path], deps: list) -> list[str]:
    """Files (relative to the repo) that no dep names, itself or by a folder above it; empty ``__init__.py``
    files excepted (no code to change)."""
    dep_paths = [(REPO / (d if isinstance(d, str) else next(iter(d)))).resolve() for d in deps]
    out = []
    for f in files:
        if f.name == "__init__.py" and not f.read_text().strip():
            continue
        if not any(f == d or d in f.parents for d in dep_paths):
            out.append(str(f.relative_to(REPO)))
    return sorted(out)


PYTHON_STAGES = [name for name, s in STAGES.items() if entry(s["cmd"])]


def test_every_python_stage_is_checked():
    assert {"download", "preprocess", "align", "prepare_lm", "decode", "evaluate", "report"} <= set(PYTHON_STAGES)


@pytest.mark.parametrize("stage", PYTHON_STAGES)
def test_stage_deps_cover_every_project_module_it_loads(stage):
    kind, target = entry(STAGES[stage]["cmd"])
    missing = uncovered(loaded_modules(kind, target), STAGES[stage].get("deps", []))
    assert not missing, f"dvc.yaml stage '{stage}' loads these project files but does not list them in its deps: {missing}"


def test_the_check_sees_lazy_imports_and_folders(tmp_path):
    """The closure finds an import made inside a function, and a folder dep covers the files below it."""
    lazy = imported_names(REPO / "edge_glass" / "encoders" / "registry.py")  # imports the encoders inside place_encoder
    assert "edge_glass.encoders.audio" in lazy
    files = {REPO / "edge_glass" / "encoders" / "audio.py", REPO / "edge_glass" / "data" / "media.py"}
    assert uncovered(files, ["edge_glass/encoders", "edge_glass/data/media.py"]) == []
    assert uncovered(files, ["edge_glass/encoders"]) == ["edge_glass/data/media.py"]
    assert uncovered(files, ["edge_glass/encoders/base.py", "edge_glass/data/media.py"]) == ["edge_glass/encoders/audio.py"]
