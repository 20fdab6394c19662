"""The index format on disk and its resumable writing.

An index folder holds

- ``shards/shard-NNNNN.safetensors``: one float32 tensor ``embeddings`` (rows, dim), L2-normalised at
  ``dim``; its metadata (key ``edge_glass``) holds the shard's fingerprint, its rows and its rejects;
- ``rows.parquet``: per embedded medium ``path`` (relative to the gallery root), ``modality``, ``item_id``,
  where its bytes are (``file``, ``offset``, ``size``) and where its embedding is (``shard``, ``row``);
- ``rejects.csv``: ``path, modality, reason`` for every medium that could not be embedded;
- ``index.json``: the model's fingerprint, ``dim`` and the MRL ``dims`` a search may truncate to, the
  gallery root, the counts (``found = indexed + rejected``, ``ignored``) and the approximate index if built.

Shards are planned over the sorted listing; a shard's fingerprint hashes the model, the dim and each of
its entries with its stamp, so a killed run keeps every finished shard whose inputs and model are
unchanged and embeds only the rest. ``index.json`` is removed when a build starts and written last: a
folder without it is an unfinished index, which search refuses.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from edge_glass.core.errors import DataError, MediaError
from edge_glass.core.io import atomic_path, read_metadata, write_json
from edge_glass.core.prefetch import prefetched
from edge_glass.gallery.listing import MAX_FILE_BYTES, Entry, Listing, read_entry

log = logging.getLogger(__name__)

FORMAT = 1
ROW_FIELDS = ("path", "modality", "item_id", "file", "offset", "size")

Loader = Callable[[str, bytes, str], Any]  # (modality, bytes, path) -> the encoder's input, or MediaError
Embedder = Callable[[str, list], np.ndarray]  # (modality, inputs) -> float32 (n, dim), L2-normalised


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def shard_fingerprint(model_fingerprint: str, dim: int, entries: list[Entry]) -> str:
    h = hashlib.sha256(json.dumps({"format": FORMAT, "model": model_fingerprint, "dim": dim}, sort_keys=True).encode())
    for e in entries:
        h.update(json.dumps([e.path, e.modality, e.item_id, e.file, e.offset, e.size, e.stamp, e.reject]).encode())
    return h.hexdigest()


def plan(entries: list[Entry], shard_size: int) -> list[list[Entry]]:
    """Shards of the listing sorted by (modality, path): a shard's batches are mostly one modality."""
    ordered = sorted(entries, key=lambda e: (e.modality, e.path, e.item_id))
    return [ordered[i : i + shard_size] for i in range(0, len(ordered), shard_size)]


def _load_one(root: Path, load: Loader, max_bytes: int, e: Entry) -> tuple[Any, str]:
    if e.reject:
        return None, e.reject
    try:
        return load(e.modality, read_entry(root, e, max_bytes), e.path), ""
    except MediaError as exc:
        return None, str(exc)


def _load_batch(root: Path, load: Loader, max_bytes: int, batch: list[Entry]) -> list[tuple[Any, str]]:
    return [_load_one(root, load, max_bytes, e) for e in batch]


def embed_shard(root: Path, entries: list[Entry], load: Loader, embed: Embedder, batch_size: int, dim: int,
                pool: ThreadPoolExecutor, on_batch: Callable[[int], None],
                max_bytes: int = MAX_FILE_BYTES) -> tuple[list[Entry], np.ndarray, list[list]]:
    """Load (ahead, in ``pool``) and embed one shard's entries; returns the embedded entries in shard order,
    their embeddings and the rejects ``[path, modality, reason]``."""
    batches = [entries[i : i + batch_size] for i in range(0, len(entries), batch_size)]
    kept: list[Entry] = []
    rows: list[np.ndarray] = []
    rejects: list[list] = []
    for batch, loaded in zip(batches, prefetched(partial(_load_batch, root, load, max_bytes), batches, pool)):
        good = [(e, x) for e, (x, err) in zip(batch, loaded) if not err]
        rejects += [[e.path, e.modality, err] for e, (_, err) in zip(batch, loaded) if err]
        by_kind: dict[str, list[int]] = {}
        for j, (e, _) in enumerate(good):
            by_kind.setdefault(e.modality, []).append(j)
        out = np.zeros((len(good), dim), np.float32)
        for kind, idx in by_kind.items():
            emb = np.asarray(embed(kind, [good[j][1] for j in idx]), dtype=np.float32)
            if emb.shape != (len(idx), dim):
                raise AssertionError(f"embed({kind}) returned {emb.shape}, expected {(len(idx), dim)}")
            out[idx] = emb
        kept += [e for e, _ in good]
        rows.append(out)
        on_batch(len(batch))
    return kept, (np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)), rejects


def write_shard(path: Path, embeddings: np.ndarray, metadata: dict) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({"embeddings": np.ascontiguousarray(embeddings, dtype=np.float32)}, str(tmp),
                  metadata={"edge_glass": json.dumps(metadata)})


def build_index(listing: Listing, out_dir: str | Path, *, model_fingerprint: str, dim: int, dims: list[int],
                load: Loader, embed: Embedder, shard_size: int = 1000, batch_size: int = 32, workers: int = 2,
                progress: bool = True, max_bytes: int = MAX_FILE_BYTES, extra: dict | None = None) -> dict:
    """Embed every entry of ``listing`` into ``out_dir``; finished shards of an earlier run are kept.

    ``load`` turns one medium's bytes into the model's input (raising MediaError for a bad file: a reject,
    never a crash of the run) and runs in ``workers`` threads ahead of ``embed``; files over ``max_bytes``
    are rejects, never read. Returns index.json's dict."""
    from tqdm import tqdm

    out = Path(out_dir)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    (out / "index.json").unlink(missing_ok=True)  # unfinished from here on, until written again
    shards = plan(listing.entries, shard_size)
    fingerprints = [shard_fingerprint(model_fingerprint, dim, s) for s in shards]
    rows: list[dict] = []
    rejects: list[list] = []
    resumed = 0
    bar = tqdm(total=len(listing.entries), desc="index", unit="item", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for k, entries in enumerate(shards):
            path = shard_dir / shard_name(k)
            meta = read_metadata(path)
            if meta is not None and meta.get("fingerprint") == fingerprints[k]:
                resumed += 1
                bar.update(len(entries))
            else:
                kept, emb, shard_rejects = embed_shard(listing.root, entries, load, embed, batch_size, dim, pool,
                                                       bar.update, max_bytes)
                meta = {"fingerprint": fingerprints[k], "rows": [[getattr(e, f) for f in ROW_FIELDS] for e in kept],
                        "rejects": shard_rejects}
                write_shard(path, emb, meta)
            rows += [{**dict(zip(ROW_FIELDS, r)), "shard": k, "row": i} for i, r in enumerate(meta["rows"])]
            rejects += meta["rejects"]
    bar.close()
    for stale in shard_dir.glob("shard-*.safetensors"):
        if int(stale.stem.split("-")[1]) >= len(shards):
            stale.unlink()
    found = len(listing.entries)
    if len(rows) + len(rejects) != found:
        raise AssertionError(f"index: {found} found but {len(rows)} indexed + {len(rejects)} rejected")
    table = pd.DataFrame(rows, columns=[*ROW_FIELDS, "shard", "row"]).astype(
        {"offset": "int64", "size": "int64", "shard": "int64", "row": "int64"})
    with atomic_path(out / "rows.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(out / "rejects.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "modality", "reason"])
        w.writerows(rejects)
    by_kind = lambda items: {m: sum(1 for x in items if x == m) for m in sorted(set(items))}  # noqa: E731
    info = {
        "format": FORMAT,
        "model_fingerprint": model_fingerprint,
        "dim": dim,
        "dims": sorted({d for d in dims if d <= dim} | {dim}, reverse=True),
        "root": str(listing.root),
        "source": listing.source,
        "shards": len(shards),
        "shard_size": shard_size,
        "counts": {"found": found, "indexed": len(rows), "rejected": len(rejects), "ignored": listing.ignored,
                   "indexed_by_modality": by_kind([r["modality"] for r in rows]),
                   "resumed_shards": resumed},
        "ann": None,
        **(extra or {}),
    }
    return info


def finish_index(out_dir: str | Path, info: dict) -> None:
    """Write index.json: the index is complete (search refuses a folder without it)."""
    write_json(info, Path(out_dir) / "index.json")


def read_info(index_dir: str | Path) -> dict:
    path = Path(index_dir) / "index.json"
    if not path.is_file():
        hint = " (an unfinished build: run python -m edge_glass.index again to resume it)" \
            if (Path(index_dir) / "shards").is_dir() else ""
        raise DataError(f"not a gallery index: {path} is missing{hint}")
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT:
        raise DataError(f"{path}: index format {info.get('format')!r}, this version reads {FORMAT}; rebuild the index")
    return info


def read_rows(index_dir: str | Path) -> pd.DataFrame:
    return pd.read_parquet(Path(index_dir) / "rows.parquet")


def read_embeddings(index_dir: str | Path, info: dict) -> np.ndarray:
    """All embeddings in rows.parquet order (shard by shard), float32 (N, dim)."""
    from safetensors.numpy import load_file

    parts = [load_file(str(Path(index_dir) / "shards" / shard_name(k)))["embeddings"] for k in range(info["shards"])]
    return np.concatenate(parts) if parts else np.zeros((0, info["dim"]), np.float32)
