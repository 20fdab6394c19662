"""Manifest records (items, rejects, the ledger that counts them), caption clean-up and the manifest file.

Splits (groups, given and hash splits, conflicts, hygiene) are in ``data/splits.py``."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from edge_glass.core.io import atomic_path
from edge_glass.data.mediashards import MemberRef

MEDIA_FIELDS = [(f"{m}_{k}", t) for m in ("image", "audio")
                for k, t in (("shard", pa.string()), ("member", pa.string()), ("offset", pa.int64()), ("size", pa.int64()))]
MANIFEST_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("group", pa.string()),  # splits are decided per group: one group never straddles two splits
        *MEDIA_FIELDS,  # {image,audio}_{shard,member,offset,size}: the media's bytes inside a tar shard
        # content hashes of the decoded normalised media (a re-encoded copy of the same pixels or samples
        # matches): equal hashes join one split group, across entries and sources
        ("image_sha256", pa.string()),
        ("audio_sha256", pa.string()),
        ("image_phash", pa.string()),  # 64-bit perceptual hash, 16 hex digits: near duplicates across splits
        ("audio_duration_s", pa.float32()),
        ("captions", pa.list_(pa.string())),
        ("license", pa.string()),
        ("attribution", pa.string()),
    ]
)


@dataclass
class Sample:
    """One item: any of image and audio, with one or more captions.

    A source fills ``image``/``audio`` with normalised bytes (and their extension); the download stage
    writes them into a media shard and keeps only the :class:`MemberRef`. ``split`` is set by a source
    only when the item's split is given (by the file or the entry); ``group`` names the items that
    must share a split (default: the item alone). The download stage fills the content hashes
    (``image_sha256``, ``audio_sha256``, ``image_phash``) from the normalised bytes.
    """

    item_id: str
    source: str
    captions: list[str]
    image: Optional[bytes] = None
    image_ext: str = ""
    audio: Optional[bytes] = None
    audio_ext: str = ""
    audio_duration_s: Optional[float] = None
    license: str = ""
    attribution: str = ""
    split: str = ""
    group: str = ""
    image_ref: Optional[MemberRef] = None
    audio_ref: Optional[MemberRef] = None
    image_sha256: Optional[str] = None
    audio_sha256: Optional[str] = None
    image_phash: Optional[str] = None


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
        key = caption_key(c)
        if c and key not in seen:
            seen.add(key)
            out.append(c)
    return out[:limit]


def _manifest_value(s: Sample, name: str):
    medium, _, key = name.partition("_")
    if medium in ("image", "audio") and key in ("shard", "member", "offset", "size"):
        ref = getattr(s, f"{medium}_ref")
        return getattr(ref, key) if ref is not None else None
    return getattr(s, name)


def media_ref(row, medium: str) -> MemberRef | None:
    """The MemberRef of a manifest row's image or audio (a pandas row or namedtuple), or None."""
    shard = getattr(row, f"{medium}_shard")
    if not isinstance(shard, str):
        return None
    return MemberRef(shard, getattr(row, f"{medium}_member"), int(getattr(row, f"{medium}_offset")),
                     int(getattr(row, f"{medium}_size")))


def caption_key(caption: str) -> str:
    """What counts as "the same caption": case-insensitive, trailing ., ! and ? ignored."""
    return caption.casefold().rstrip(".!?")


def write_manifest(samples: list[Sample], path: str | Path) -> None:
    rows = {name: [_manifest_value(s, name) for s in samples] for name in MANIFEST_SCHEMA.names}
    table = pa.table(rows, schema=MANIFEST_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path} (run the download stage: dvc repro download)")
    table = pq.read_table(path)
    if "image_shard" not in table.column_names:
        raise FileNotFoundError(f"{path} is a manifest of an older layout (media as loose files); "
                                "rerun the download stage: dvc repro -f download")
    return table.to_pandas()


def write_rejects(rejects: list[Reject], path: str | Path) -> None:
    df = pd.DataFrame([r.__dict__ for r in rejects], columns=["item_id", "source", "reason"])
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def reason_kind(reason: str) -> str:
    """The reason without its particulars ("audio too short (0.1s < 0.3s)" -> "audio too short")."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()
