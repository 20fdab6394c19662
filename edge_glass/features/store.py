"""Feature shards: a few large safetensors files per modality plus a Parquet index.

A shard holds ``tokens`` (sum of n_i, token_dim), ``offsets`` (n+1,) and ``pooled`` (n, pooled_dim);
its metadata lists the item ids and a fingerprint of the encoder, settings and planned ids, so a
finished shard is recognised and skipped when a killed run is resumed.

The read side (:class:`FeatureStore`) memory-maps the shards: nothing is loaded whole, a batch is one
fancy-index gather per shard, and the resident memory of a reader grows with the number of items only
by small integer arrays (the OS pages shard bytes in and out as needed).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from edge_glass.core.io import atomic_path, read_metadata, sha256_text

SHARD_RE = re.compile(r"^shard-(\d{5})\.safetensors$")
DTYPES = {"float16": torch.float16, "float32": torch.float32}  # preprocess.dtype -> how shards store features


def as_stored(features: torch.Tensor, dtype_name: str) -> torch.Tensor:
    """Features as a reader of the shards sees them: rounded to the storage dtype (``preprocess.dtype``),
    then float32. Features computed on the fly (``edge_glass.load``) go through this, so the align model
    gets the very numbers it was trained on."""
    return features.to(DTYPES[dtype_name]).float()


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def plan_shards(ids: list[str], shard_size: int) -> list[list[str]]:
    return [ids[i : i + shard_size] for i in range(0, len(ids), shard_size)]


def shard_fingerprint(base: str, ids: list[str]) -> str:
    return sha256_text(base + "\n" + "\n".join(ids))


def read_offsets(path: Path) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("offsets")


def write_shard(
    path: Path, ids: list[str], tokens: list[torch.Tensor], pooled: torch.Tensor, dtype: torch.dtype, metadata: dict
) -> None:
    """Write one shard atomically: temp file, fsync, rename."""
    lengths = torch.tensor([t.shape[0] for t in tokens], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    tensors = {
        "tokens": torch.cat(tokens).to(dtype).contiguous() if tokens else torch.zeros(0, 0, dtype=dtype),
        "offsets": offsets,
        "pooled": pooled.to(dtype).contiguous(),
    }
    # one metadata key: safetensors stores the metadata map in hash order, which varies per process
    meta = {"edge_glass": json.dumps({**metadata, "ids": ids}, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


@dataclass
class Shard:
    ids: list[str]
    tokens: torch.Tensor
    offsets: torch.Tensor
    pooled: torch.Tensor

    def item_tokens(self, row: int) -> torch.Tensor:
        return self.tokens[self.offsets[row] : self.offsets[row + 1]]


def read_shard(path: Path) -> Shard:
    meta = read_metadata(path)  # None: a truncated or foreign file is not a finished shard
    if meta is None:
        raise FileNotFoundError(f"feature shard missing or corrupt: {path}")
    t = load_file(str(path))
    return Shard(meta["ids"], t["tokens"], t["offsets"], t["pooled"])


SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def memmap_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """Read-only numpy memory maps of every tensor in a safetensors file (no tensor data is read)."""
    path = Path(path)
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if spec["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {spec['dtype']}, not one edge_glass writes")
        start, end = spec["data_offsets"]
        dtype = np.dtype(SAFETENSORS_DTYPES[spec["dtype"]])
        shape = tuple(spec["shape"])
        if end == start:
            out[name] = np.zeros(shape, dtype=dtype)
        else:
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=8 + header_len + start, shape=shape)
    return out


class ShardView:
    """One shard's tensors as memory maps; ``offsets`` (small) is read into memory."""

    def __init__(self, path: Path):
        if read_metadata(path) is None:
            raise FileNotFoundError(f"feature shard missing or corrupt: {path}")
        t = memmap_tensors(path)
        self.tokens, self.pooled = t["tokens"], t["pooled"]
        self.offsets = np.array(t["offsets"], dtype=np.int64)


class FeatureStore:
    """Read side of one modality's features, memory-mapped.

    ``index`` maps feature id -> (shard, row, n_tokens); rows of the store are the index's rows, and
    :meth:`gather_tokens` / :meth:`gather_pooled` take arrays of them (-1: absent), so callers keep
    only integer arrays per item.
    """

    def __init__(self, modality_dir: str | Path):
        self.dir = Path(modality_dir)
        index = self.dir / "index.parquet"
        if not index.exists():
            raise FileNotFoundError(f"feature index not found: {index} (run the preprocess stage)")
        self.index = pd.read_parquet(index)
        self.shard_of = self.index["shard"].to_numpy(np.int64)
        self.row_of = self.index["row"].to_numpy(np.int64)
        self.n_tokens = self.index["n_tokens"].to_numpy(np.int64)
        self._views: dict[int, ShardView] = {}
        self._rows: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def view(self, k: int) -> ShardView:
        if k not in self._views:  # opened once; memory maps cost address space, not memory
            self._views[k] = ShardView(self.dir / shard_name(k))
        return self._views[k]

    @property
    def dims(self) -> tuple[int, int]:
        """(token_dim, pooled_dim) from the first shard."""
        v = self.view(int(self.shard_of[0]))
        return v.tokens.shape[1], v.pooled.shape[1]

    def rows(self, ids) -> np.ndarray:
        """Store rows of feature ids (-1 where absent), vectorised through a pandas Index."""
        return pd.Index(self.index["id"]).get_indexer(pd.Index(ids))

    def gather_tokens(self, rows: np.ndarray, pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Padded tokens (b, L, d) float32 and mask (b, L) of store rows (-1: absent, all padding).

        One fancy-index gather per shard touched: positions of every token come from offsets by index
        arithmetic, no Python loop over items."""
        rows = np.asarray(rows, dtype=np.int64)
        present = rows >= 0
        lengths = np.where(present, self.n_tokens[np.maximum(rows, 0)], 0)
        length = max(int(lengths.max(initial=0)), 1, pad_to or 0)
        dim = self.dims[0]
        out = np.zeros((len(rows) * length, dim), dtype=np.float32)  # rows of (item, token), reshaped below
        mask = np.arange(length)[None, :] < lengths[:, None]
        for k in np.unique(self.shard_of[rows[present]]):
            sel = np.flatnonzero(present & (self.shard_of[np.maximum(rows, 0)] == k))
            view = self.view(int(k))
            starts = view.offsets[self.row_of[rows[sel]]]
            n = lengths[sel]
            within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            out[np.repeat(sel * length, n) + within] = view.tokens[np.repeat(starts, n) + within]
        out = out.reshape(len(rows), length, dim)
        return out, mask

    def gather_pooled(self, rows: np.ndarray) -> np.ndarray:
        """Pooled features (b, d) float32 of store rows (all present)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), self.dims[1]), dtype=np.float32)
        for k in np.unique(self.shard_of[rows]):
            sel = np.flatnonzero(self.shard_of[rows] == k)
            out[sel] = self.view(int(k)).pooled[self.row_of[rows[sel]]]
        return out

    def pooled(self) -> tuple[list[str], torch.Tensor]:
        """All pooled features in index order (for small sets: the baseline, tests)."""
        ids = list(self.index["id"])
        return ids, torch.from_numpy(self.gather_pooled(np.arange(len(ids)))) if ids else torch.zeros(0)

    def tokens(self, feature_id: str) -> torch.Tensor:
        """One item's tokens (O(1) after the first call builds the id -> row map)."""
        if self._rows is None:
            self._rows = {i: r for r, i in enumerate(self.index["id"])}
        if feature_id not in self._rows:
            raise KeyError(f"{feature_id} not in {self.dir}")
        r = self._rows[feature_id]
        view = self.view(int(self.shard_of[r]))
        start = view.offsets[self.row_of[r]]
        return torch.from_numpy(np.array(view.tokens[start:start + self.n_tokens[r]]))


def finished_shards(modality_dir: Path) -> dict[int, Path]:
    return {int(m.group(1)): p for p in modality_dir.glob("shard-*.safetensors") if (m := SHARD_RE.match(p.name))}


def remove_stale(modality_dir: Path, keep: int) -> list[Path]:
    """Delete shards numbered >= ``keep`` and leftover temp files from killed runs."""
    removed = [p for k, p in finished_shards(modality_dir).items() if k >= keep]
    removed += list(modality_dir.glob(".shard-*.tmp-*"))
    for p in removed:
        p.unlink()
    return removed


def write_index(modality_dir: Path, rows: list[dict]) -> None:
    df = pd.DataFrame(rows, columns=["id", "item_id", "shard", "row", "n_tokens"])
    with atomic_path(modality_dir / "index.parquet") as tmp:
        df.to_parquet(tmp, index=False)
