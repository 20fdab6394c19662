"""Manifest records, caption clean-up, deterministic splits and the rejects ledger."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from edge_glass.io import atomic_path

MANIFEST_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("image_path", pa.string()),
        ("audio_path", pa.string()),
        ("audio_duration_s", pa.float32()),
        ("captions", pa.list_(pa.string())),
        ("license", pa.string()),
        ("attribution", pa.string()),
    ]
)


@dataclass
class Sample:
    """One item: any of image and audio, with one or more captions; paths relative to the repo."""

    item_id: str
    source: str
    captions: list[str]
    image_path: Optional[str] = None
    audio_path: Optional[str] = None
    audio_duration_s: Optional[float] = None
    license: str = ""
    attribution: str = ""
    split: str = ""


@dataclass
class Reject:
    item_id: str
    source: str
    reason: str


@dataclass
class Ledger:
    """Kept samples and rejects of one download run; ``seen`` counts every candidate once."""

    samples: list[Sample] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return len(self.samples) + len(self.rejects)

    def reject(self, item_id: str, source: str, reason: str) -> None:
        self.rejects.append(Reject(item_id, source, reason))


_SPACE = re.compile(r"\s+")


def clean_caption(text: str) -> str:
    """Normalise unicode and whitespace; keep case and punctuation."""
    text = unicodedata.normalize("NFKC", str(text)).replace("_", " ")
    return _SPACE.sub(" ", text).strip()


def dedupe_captions(captions: list[str], limit: int) -> list[str]:
    """Clean, drop empty and case-insensitive duplicates, keep first order, cap at ``limit``."""
    out, seen = [], set()
    for c in captions:
        c = clean_caption(c)
        key = c.casefold().rstrip(".!?")
        if c and key not in seen:
            seen.add(key)
            out.append(c)
    return out[:limit]


def assign_split(item_id: str, seed: int, train: float, val: float) -> str:
    """Deterministic split from a hash of (seed, item_id): stable when other items change."""
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"


def write_manifest(samples: list[Sample], path: str | Path) -> None:
    rows = {name: [getattr(s, name) for s in samples] for name in MANIFEST_SCHEMA.names}
    table = pa.table(rows, schema=MANIFEST_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path} (run the download stage: dvc repro download)")
    return pq.read_table(path).to_pandas()


def write_rejects(rejects: list[Reject], path: str | Path) -> None:
    df = pd.DataFrame([r.__dict__ for r in rejects], columns=["item_id", "source", "reason"])
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
