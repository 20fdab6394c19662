"""Keep the walkthrough notebooks in ``notebooks/`` stored without outputs, so their diffs are code only.

    python -m edge_glass.tools.notebooks --strip            # clear outputs of notebooks/*.ipynb in place
    python -m edge_glass.tools.notebooks --check            # exit 1 listing notebooks that carry outputs
    python -m edge_glass.tools.notebooks --strip FILE ...   # or name the files

Outputs are images, audio and tables of one particular run: committed, they would bloat every diff
and go stale with the next ``dvc repro``. The tests execute the notebooks instead (tests/test_notebooks.py)
and fail on a committed notebook that carries outputs or execution counts. ``jupyter nbconvert
--clear-output --inplace notebooks/*.ipynb`` does the same as ``--strip`` except that it keeps the
per-cell execution metadata (timings) that some front ends add, which ``--strip`` removes too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

FOLDER = Path("notebooks")
RUN_METADATA = ("execution", "collapsed", "scrolled")  # per-run cell metadata front ends add


def dirty_cells(nb) -> list[int]:
    """Indices of the cells that carry outputs, an execution count or run metadata."""
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and (
        cell.get("outputs") or cell.get("execution_count") is not None
        or any(key in cell.get("metadata", {}) for key in RUN_METADATA))]


def strip(nb) -> bool:
    """Clear outputs, execution counts and run metadata in place; True when anything changed."""
    changed = bool(dirty_cells(nb))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell["outputs"], cell["execution_count"] = [], None
            for key in RUN_METADATA:
                cell.get("metadata", {}).pop(key, None)
    return changed


def notebook_paths(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths or [FOLDER]:
        found += sorted(path.glob("*.ipynb")) if path.is_dir() else [path]
    missing = [p for p in found if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such notebook: {', '.join(map(str, missing))}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--strip", action="store_true", help="clear outputs in place")
    mode.add_argument("--check", action="store_true", help="exit 1 when a notebook carries outputs")
    parser.add_argument("paths", nargs="*", type=Path, help=f"notebooks or folders (default: {FOLDER}/)")
    args = parser.parse_args(argv)
    try:
        paths = notebook_paths(args.paths)
    except FileNotFoundError as exc:
        print(f"notebooks: {exc}", file=sys.stderr)
        return 2
    dirty = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if args.check:
            if cells := dirty_cells(nb):
                dirty.append(f"{path}: cells {', '.join(map(str, cells))} carry outputs")
        elif strip(nb):
            nbformat.write(nb, path)
            print(f"stripped {path}")
    if dirty:
        print("\n".join(dirty) + "\nrun: python -m edge_glass.tools.notebooks --strip", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
