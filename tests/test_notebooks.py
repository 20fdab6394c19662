"""The walkthrough notebooks (notebooks/*.ipynb): stored without outputs, written against the public API,
and executed top to bottom on a tiny `dvc repro` workspace, where a failing cell fails the test.

Execution goes through nbclient with the ipykernel `python3` kernel, as `jupyter nbconvert --execute`
does. Each notebook finds its workspace by walking up from its own folder to the `dvc.yaml` (the
kernel starts in the notebook's folder, as under nbconvert), so the working-tree notebook is copied
into the workspace's `notebooks/` and run there.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import nbformat
import pytest
from helpers.setup import REPO

from edge_glass import _EXPORTS
from edge_glass.tools.notebooks import dirty_cells, main, strip

FOLDER = REPO / "notebooks"
NOTEBOOKS = ["01_data", "02_training", "03_retrieval_zeroshot", "04_captioning"]
# the first public name each notebook calls on the path to its results: replaced by one that raises
API_CALLED = {"01_data": "edge_glass.read_manifest", "02_training": "edge_glass.compare.compare",
              "03_retrieval_zeroshot": "edge_glass.load", "04_captioning": "edge_glass.load"}
PUBLIC = set(_EXPORTS) | {"compare"}  # edge_glass.<name> a notebook may use


def read(name: str):
    return nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)


def code_of(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_the_four_notebooks_are_committed():
    tracked = subprocess.run(["git", "ls-files", "notebooks"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert sorted(tracked) >= sorted(f"notebooks/{n}.ipynb" for n in NOTEBOOKS), tracked
    assert sorted(p.stem for p in FOLDER.glob("*.ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs(name):
    nb = read(name)
    assert not dirty_cells(nb), (f"notebooks/{name}.ipynb carries outputs in cells {dirty_cells(nb)}: "
                                 "python -m edge_glass.tools.notebooks --strip")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_opens_with_what_it_needs(name):
    first = read(name).cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("**Needs:**"), first.source[:200]
    assert "dvc repro" in first.source.splitlines()[0]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_uses_only_the_public_api(name):
    code = code_of(read(name))
    used = set(re.findall(r"\bedge_glass\.(\w+)", code))
    assert used, f"{name} uses no edge_glass API"
    assert used <= PUBLIC, f"{name} uses non-public edge_glass names: {sorted(used - PUBLIC)}"
    imported = set(re.findall(r"^\s*(?:from|import)\s+(edge_glass[\w.]*)", code, re.M))
    assert imported <= {"edge_glass", "edge_glass.compare"}, imported


def test_strip_clears_outputs_and_check_finds_them(tmp_path):
    nb = read("01_data")
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="a run's output\n")]
    cell.execution_count = 3
    cell.metadata["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00Z"}
    path = tmp_path / "dirty.ipynb"
    nbformat.write(nb, path)
    assert main(["--check", str(path)]) == 1
    assert main(["--strip", str(path)]) == 0
    assert main(["--check", str(path)]) == 0
    clean = nbformat.read(path, as_version=4)
    assert not dirty_cells(clean) and not strip(clean)
    assert [c.source for c in clean.cells] == [c.source for c in read("01_data").cells]  # code kept
    assert main(["--check", str(tmp_path / "missing.ipynb")]) == 2


def execute(name: str, workspace, tmp_path, first_cell: str | None = None):
    """Run the working tree's notebook inside ``workspace/notebooks`` (as `jupyter nbconvert --execute`
    would from there); the executed copy is written to tmp_path, also when a cell fails."""
    from nbclient import NotebookClient

    nb = read(name)
    if first_cell:
        nb.cells.insert(0, nbformat.v4.new_code_cell(first_cell))
    folder = workspace / "notebooks"
    folder.mkdir(exist_ok=True)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    return nb


def outputs(nb) -> str:
    return json.dumps([o for c in nb.cells if c.cell_type == "code" for o in c.outputs])


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_a_pipeline_workspace(name, repro_workspace, tmp_path, monkeypatch):
    workspace, _ = repro_workspace
    monkeypatch.delenv("EDGE_GLASS_WORKSPACE", raising=False)  # found by walking up to dvc.yaml
    nb = execute(name, workspace, tmp_path)
    assert f"workspace: {workspace}" in outputs(nb)
    assert not any(o.output_type == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "image/png" in outputs(nb), "a walkthrough without a single figure"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_breaking_an_api_a_notebook_calls_fails_it(name, repro_workspace, tmp_path):
    """Execution is a real check: with one public name it calls made to raise, the notebook fails."""
    from nbclient.exceptions import CellExecutionError

    target = API_CALLED[name]
    assert target.removeprefix("edge_glass.") in code_of(read(name)), f"{name} no longer calls {target}"
    module, _, attr = target.rpartition(".")
    breaker = (f"import importlib\n"
               f"def _broken(*args, **kwargs):\n    raise RuntimeError('{target} broken by the test')\n"
               f"setattr(importlib.import_module('{module}'), '{attr}', _broken)")
    with pytest.raises(CellExecutionError, match=f"{re.escape(target)} broken by the test"):
        execute(name, repro_workspace[0], tmp_path, first_cell=breaker)


@pytest.mark.skipif(shutil.which("jupyter") is None, reason="jupyter (nbconvert) not installed")
def test_nbconvert_executes_from_any_folder(tmp_path):
    """The acceptance command, `jupyter nbconvert --to notebook --execute`, on a minimal workspace:
    run from another folder, a notebook still finds its workspace by walking up to dvc.yaml."""
    ws = tmp_path / "ws"
    (ws / "notebooks").mkdir(parents=True)
    (ws / "dvc.yaml").write_text("stages: {}\n")
    nb = nbformat.v4.new_notebook(cells=[read("01_data").cells[1]])  # the shared setup cell
    nb.cells.append(nbformat.v4.new_code_cell("assert Path.cwd() == ROOT, Path.cwd()"))
    nbformat.write(nb, ws / "notebooks" / "setup.ipynb")
    proc = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                           str(ws / "notebooks" / "setup.ipynb"), "--output-dir", str(tmp_path / "out")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    executed = nbformat.read(tmp_path / "out" / "setup.ipynb", as_version=4)
    assert f"workspace: {ws.resolve()}" in outputs(executed)
