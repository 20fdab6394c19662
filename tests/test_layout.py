"""The layout is the architecture: the import contract in pyproject.toml holds, and it can fail.

`lint-imports` (import-linter) checks the layers (stages and commands -> parts -> config -> core),
the forbidden imports (data never imports models, metrics never imports a stage) and that no part
has an import cycle. The second test breaks the rule on purpose in a copy of the package and
expects the contract to catch it, so a contract that checks nothing cannot pass unnoticed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.imports import import_closure, module_file
from helpers.setup import REPO

ROOT = REPO
PKG = ROOT / "edge_glass"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: `bash setup.sh` installs import-linter (requirements.txt)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([exe, "--no-cache", "--config", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_import_contract_holds():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


@pytest.mark.parametrize("module, bad_import", [
    ("data/media.py", "import edge_glass.models.aligner"),        # data -> models: forbidden
    ("metrics/bootstrap.py", "import edge_glass.evaluate"),        # metrics -> a stage
    ("core/io.py", "import edge_glass.config"),                    # core imports nothing above it
    ("align.py", "import edge_glass.evaluate"),                    # one stage importing another
])
def test_import_contract_fails_on_a_wrong_import(tmp_path, module, bad_import):
    shutil.copytree(PKG, tmp_path / "edge_glass", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "edge_glass" / module
    target.write_text(target.read_text() + f"\n{bad_import}  # deliberately wrong\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0, out.stdout[-2000:]
    assert "BROKEN" in out.stdout


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_top_level_lists_the_stages_and_commands():
    top = sorted(p.stem for p in PKG.glob("*.py"))
    assert len(top) <= 16, top
    # prepare_lm runs decoders/lm.py; zeroshot_features runs preprocess.py's run_zeroshot_features (the same
    # encoders and shard code path as preprocess: a module of its own could not import it, stages are siblings)
    stages = set(re.findall(r"^  (\w+):\n", (ROOT / "dvc.yaml").read_text(), re.M)) - {"prepare_lm", "zeroshot_features"}
    assert stages <= set(top) | {p.name for p in PKG.iterdir() if p.is_dir()}, stages


def test_no_module_outside_tools_is_imported_only_by_tests_or_benchmarks():
    """Every module under edge_glass/ outside tools/ is reached from a stage or a command (the stage scripts,
    ``python -m`` commands of dvc.yaml, compare, params, export, index, search, serve, the Python API), following
    imports at any depth, lazy ones included; what tests and benchmarks alone import belongs in tools/."""
    commands = [PKG / f"{c}.py" for c in ("compare", "params", "export", "index", "search", "serve")]
    entries = [*(ROOT / "stages").glob("*.py"), *commands,
               PKG / "api.py",  # the Python API (edge_glass.load) is an entry of its own
               *[module_file(m) for m in re.findall(r"python -m (edge_glass[\w.]*)", (ROOT / "dvc.yaml").read_text())]]
    entries = [p.parent / "__main__.py" if p.name == "__init__.py" and (p.parent / "__main__.py").exists() else p
               for p in entries]
    reached = import_closure(entries)  # lazy imports and the packages above each module included
    unreached = sorted(module_name(p) for p in PKG.rglob("*.py")
                       if p not in reached and "tools" not in p.relative_to(PKG).parts and p.name != "__main__.py"
                       and p != PKG / "__init__.py")
    assert not unreached, f"no stage or command reaches: {unreached} (move helpers only tests use to tools/)"


def test_public_api_names_resolve():
    """Every name ``edge_glass.__all__`` declares imports, from the module the layout puts it in."""
    import edge_glass

    for name in edge_glass.__all__:
        assert getattr(edge_glass, name) is not None, name
    with pytest.raises(AttributeError):
        edge_glass.not_a_public_name  # noqa: B018
