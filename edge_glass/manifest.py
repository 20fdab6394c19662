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
from edge_glass.mediashards import MemberRef

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


SPLITS = ("train", "val", "test")  # in this order: a group given two splits keeps the latest (a test set stays whole)


def assign_split(key: str, seed: int, train: float, val: float) -> str:
    """Deterministic split from a hash of (seed, key): stable when other items change.

    ``key`` is an item's group, so every item of a group gets the same split."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"


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


class UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the root is a group node if the set has one, then the smallest name: independent of insertion
            # order, and a lone group keeps its own name (so its split does not move when others change)
            rank = lambda n: (not n.startswith("group:"), n)  # noqa: E731
            lo, hi = sorted((ra, rb), key=rank)
            self.parent[hi] = lo


def split_groups(samples: list[Sample], link_shared_captions: bool) -> dict[str, str]:
    """item_id -> split group: the source's group, joined with every group it shares a caption with
    and with every item whose image or audio has the same content hash (in any entry or source).

    Joining by caption keeps a caption that occurs verbatim on two items out of two splits; joining by
    content hash does the same for one image or clip filed under two ids.
    """
    uf = UnionFind()
    owner: dict[str, str] = {}

    def link(item_id: str, key: str) -> None:
        if key in owner:
            uf.union(item_id, owner[key])
        else:
            owner[key] = item_id

    for s in samples:
        group = f"{s.source}/{s.group}" if s.group else s.item_id
        uf.union(s.item_id, "group:" + group)
        for medium in ("image", "audio"):
            digest = getattr(s, f"{medium}_sha256")
            if digest:
                link(s.item_id, f"{medium}:{digest}")
        if link_shared_captions:
            for c in s.captions:
                link(s.item_id, "caption:" + caption_key(c))
    return {s.item_id: uf.find(s.item_id) for s in samples}


@dataclass
class SplitConflict:
    """One item of a group whose given splits differ: a row of ``split_conflicts.csv``.

    ``given_split`` is ``hash`` for an item whose split was not given (it follows the group);
    ``action``: report, keep, drop (rejected), follow or error."""

    group: str
    item_id: str
    source: str
    given_split: str
    final_split: str
    action: str


CONFLICT_COLUMNS = ["group", "item_id", "source", "given_split", "final_split", "action"]


def resolve_splits(samples: list[Sample], seed: int, train: float, val: float, on_conflict: str
                   ) -> tuple[list[SplitConflict], list[Sample], int]:
    """Give every item its group's split; returns (conflicts, items to reject, hash items that followed).

    ``s.group`` must hold the item's split group. A group without a given split draws one by hash.
    Otherwise its hash-split items follow the latest given split (train < val < test). A group given
    two or more splits is a conflict: ``on_conflict`` report keeps every given split as it is, drop
    returns the items given an earlier split than the latest for rejection (so the latest split, such
    as a published test set, stays exactly as given), error changes nothing (the caller stops).
    """
    members: dict[str, list[Sample]] = {}
    for s in samples:
        members.setdefault(s.group, []).append(s)
    conflicts: list[SplitConflict] = []
    dropped: list[Sample] = []
    followed = 0
    for group, items in members.items():
        given = {s.split for s in items if s.split}
        if not given:
            split = assign_split(group, seed, train, val)
            for s in items:
                s.split = split
            continue
        latest = max(given, key=SPLITS.index)
        for s in items:
            if not s.split:
                s.split, followed = latest, followed + 1
                if len(given) > 1:
                    conflicts.append(SplitConflict(group, s.item_id, s.source, "hash", latest, "follow"))
            elif len(given) > 1:
                if on_conflict == "drop":
                    action = "keep" if s.split == latest else "drop"
                    final = latest if action == "keep" else ""
                    if action == "drop":
                        dropped.append(s)
                else:
                    action, final = on_conflict, s.split
                conflicts.append(SplitConflict(group, s.item_id, s.source, s.split, final, action))
    order = {name: k for k, name in enumerate((*SPLITS, "hash"))}
    conflicts.sort(key=lambda c: (c.group, order[c.given_split], c.item_id))
    return conflicts, dropped, followed


def write_conflicts(conflicts: list[SplitConflict], path: str | Path) -> None:
    """``split_conflicts.csv``, always written (header only when every group has one split)."""
    df = pd.DataFrame([c.__dict__ for c in conflicts], columns=CONFLICT_COLUMNS)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


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
