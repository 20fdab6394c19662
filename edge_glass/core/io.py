"""Atomic file writes, hashing and small JSON helpers."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from pathlib import Path

from edge_glass.core.errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    A crash or an exception leaves no partial file under the final name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {path.parent}: {exc.strerror}") from exc
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def read_metadata(path: str | Path) -> dict | None:
    """Our JSON metadata (key ``edge_glass``) of a safetensors file: shard ids and fingerprints, checkpoint
    step and history. None if the file is missing, truncated, foreign or has none (the work is redone);
    any other I/O error (permissions, a failing disk, a folder in its place) is raised, not taken for
    "not there yet"."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["edge_glass"])
    except FileNotFoundError:
        return None
    except (SafetensorError, KeyError, TypeError, ValueError):  # truncated, foreign, or not our metadata
        return None


def write_json(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def files_fingerprint(paths) -> str:
    """One hash over several files' contents (sorted by path): a code version for resumable work."""
    return sha256_text("".join(sha256_file(p) for p in sorted(Path(p) for p in paths)))


def package_fingerprint(*parts: str) -> str:
    """One hash over the code of edge_glass modules and folders (``"align.py"``, ``"models"``), for resumable
    work. A folder counts with every .py file under it, so a file added to a folder can never be missed
    (the same rule as the stage's deps in dvc.yaml)."""
    pkg = Path(__file__).resolve().parents[1]
    files = []
    for part in parts:
        path = pkg / part
        if not path.exists():
            raise FileNotFoundError(f"package_fingerprint: no module or folder edge_glass/{part}")
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files_fingerprint(files)
