"""Feature shards: a few large safetensors files per modality plus a Parquet index.

A shard holds ``tokens`` (sum of n_i, token_dim), ``offsets`` (n+1,) and ``pooled`` (n, pooled_dim);
its metadata lists the item ids and a fingerprint of the encoder, settings and planned ids, so a
finished shard is recognised and skipped when a killed run is resumed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from edge_glass.io import atomic_path, read_metadata, sha256_text

SHARD_RE = re.compile(r"^shard-(\d{5})\.safetensors$")


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


class FeatureStore:
    """Read side of one modality's features: ``index`` maps id -> (shard, row, n_tokens)."""

    def __init__(self, modality_dir: str | Path):
        self.dir = Path(modality_dir)
        index = self.dir / "index.parquet"
        if not index.exists():
            raise FileNotFoundError(f"feature index not found: {index} (run the preprocess stage)")
        self.index = pd.read_parquet(index)
        self._cache: dict[int, Shard] = {}

    def shard(self, k: int) -> Shard:
        if k not in self._cache:
            self._cache = {k: read_shard(self.dir / shard_name(k))}
        return self._cache[k]

    def pooled(self) -> tuple[list[str], torch.Tensor]:
        """All pooled features in index order."""
        ids = list(self.index["id"])
        _, pooled = self.load_all()
        return ids, torch.stack([pooled[i] for i in ids]) if ids else torch.zeros(0)

    def load_all(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Every id's tokens (views into the shard tensors) and pooled feature, read once."""
        tokens, pooled = {}, {}
        for k in sorted(self.index["shard"].unique()):
            shard = read_shard(self.dir / shard_name(int(k)))
            for row, i in enumerate(shard.ids):
                tokens[i] = shard.item_tokens(row)
                pooled[i] = shard.pooled[row]
        return tokens, pooled

    def tokens(self, item_id: str) -> torch.Tensor:
        row = self.index.loc[self.index["id"] == item_id]
        if row.empty:
            raise KeyError(f"{item_id} not in {self.dir}")
        return self.shard(int(row["shard"].iloc[0])).item_tokens(int(row["row"].iloc[0]))


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
