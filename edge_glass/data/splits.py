"""Leak-free splits: groups (group_key, shared captions, equal media content), given splits and
hash splits per group, split conflicts, and the split hygiene report (overlaps between splits)."""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from edge_glass.config import Params
from edge_glass.core.io import atomic_path
from edge_glass.data.manifest import Ledger, Sample, caption_key, dedupe_captions

log = logging.getLogger(__name__)


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


def conflict_message(conflicts: list[SplitConflict], path: Path, shown: int = 5) -> str:
    """One line naming the conflicting groups and, per group, which items the data gave which split."""
    by_group: dict[str, dict[str, list[str]]] = {}
    for c in conflicts:
        if c.given_split != "hash":
            by_group.setdefault(c.group, {}).setdefault(c.given_split, []).append(c.item_id)
    parts = [f"{g!r} (" + "; ".join(f"{split}: {', '.join(ids)}" for split, ids in splits.items()) + ")"
             for g, splits in list(by_group.items())[:shown]]
    more = f" and {len(by_group) - shown} more" if len(by_group) > shown else ""
    return (f"download.split_conflicts=error: {len(by_group)} split group(s) have items given different splits: "
            f"{', '.join(parts)}{more}; every item is listed in {path} (split_conflicts=drop keeps each group's "
            f"latest split, report keeps them as given)")


SPLIT_PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))


NEAR_DUPLICATE_COLUMNS = ["split_a", "item_id_a", "split_b", "item_id_b", "hamming"]


NEAR_DUPLICATE_LISTED = 100_000  # rows of near_duplicates.csv at most; the metrics count every pair


def near_duplicate_pairs(phash: np.ndarray, split: np.ndarray, content: np.ndarray, max_hamming: int,
                         limit: int | None = None) -> tuple[list[tuple[int, int, int]], Counter]:
    """Pairs (i, j, bits) of images in different splits (``split[i] < split[j]``) whose 64-bit pHashes
    differ in at most ``max_hamming`` bits and whose pixels differ (``content``: ids of equal pixels;
    equal pixels are duplicate media, counted apart).

    Pigeonhole instead of all pairs: the 64 bits are cut into ``max_hamming + 1`` bands, and two hashes
    within ``max_hamming`` bits agree on at least one band, so only items that share a band's value are
    compared (a pair is counted at the first band it agrees on). Comparisons run blockwise in numpy,
    a few MB at a time, so 100k images take seconds, not the hours of all pairs.

    Returns the pairs (the first ``limit`` found, all when None) and the count of every pair per
    (split index, split index): one degenerate pHash (blank or letterboxed images) shared by thousands
    of images in two splits is millions of pairs, counted but not all held in memory.
    """
    n, bands = len(phash), max_hamming + 1
    edges = [64 * b // bands for b in range(bands + 1)]
    keys = [(phash >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:])]
    out: list[tuple[int, int, int]] = []
    counts: Counter = Counter()
    for b, key in enumerate(keys):
        order = np.argsort(key, kind="stable")
        ks, ss = key[order], split[order]
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]]) if n else np.zeros(0, dtype=np.int64)
        ends = np.r_[starts[1:], n]
        mixed = np.minimum.reduceat(ss, starts) != np.maximum.reduceat(ss, starts) if n else starts.astype(bool)
        for lo, hi in zip(starts[mixed].tolist(), ends[mixed].tolist()):
            idx = order[lo:hi]
            by_split = [idx[split[idx] == k] for k in range(len(SPLITS))]
            for a, c in itertools.combinations(range(len(SPLITS)), 2):
                ia, ib = by_split[a], by_split[c]
                step = max(1, 2**20 // max(len(ib), 1))
                for r in range(0, len(ia) if len(ib) else 0, step):
                    rows = ia[r:r + step]
                    bits = np.bitwise_count(phash[rows][:, None] ^ phash[ib][None, :])
                    ok = (bits <= max_hamming) & (content[rows][:, None] != content[ib][None, :])
                    for earlier in keys[:b]:
                        ok &= earlier[rows][:, None] != earlier[ib][None, :]
                    found = int(ok.sum())
                    if not found:
                        continue
                    counts[a, c] += found
                    room = found if limit is None else max(0, limit - len(out))
                    if room:
                        ii, jj = np.nonzero(ok)
                        out += zip(rows[ii[:room]].tolist(), ib[jj[:room]].tolist(), bits[ii[:room], jj[:room]].tolist())
    return out, counts


def split_hygiene(samples: list[Sample], max_hamming: int | None) -> tuple[dict, pd.DataFrame]:
    """Leakage between every two splits (the goal is 0 everywhere) and the near-duplicate image pairs.

    Per pair of splits: ``groups_spanning`` (split groups with items in both), ``duplicate_media``
    (image or audio content hashes in both), ``caption_overlap`` (distinct captions, as
    :func:`caption_key` compares them, in both) and ``near_duplicate_images`` (image pairs within
    ``max_hamming`` pHash bits whose pixels differ; None: not searched). Near duplicates are listed,
    not moved: a pHash match is evidence to look at, not proof of the same picture.
    """
    groups: dict[str, set[str]] = {}
    media = {split: set() for split in SPLITS}
    captions = {split: set() for split in SPLITS}
    for s in samples:
        groups.setdefault(s.group, set()).add(s.split)
        media[s.split].update(f"{m}:{h}" for m, h in (("image", s.image_sha256), ("audio", s.audio_sha256)) if h)
        captions[s.split].update(caption_key(c) for c in s.captions)
    with_phash = [s for s in samples if s.image_phash]
    near = pd.DataFrame(columns=NEAR_DUPLICATE_COLUMNS)
    counts: Counter = Counter()
    if max_hamming is not None and with_phash:
        phash = np.array([int(s.image_phash, 16) for s in with_phash], dtype=np.uint64)
        split = np.array([SPLITS.index(s.split) for s in with_phash], dtype=np.int8)
        content_ids: dict[str, int] = {}
        content = np.array([content_ids.setdefault(s.image_sha256, len(content_ids)) for s in with_phash], dtype=np.int64)
        pairs, counts = near_duplicate_pairs(phash, split, content, max_hamming, NEAR_DUPLICATE_LISTED)
        if sum(counts.values()) > len(pairs):
            log.warning("%d near-duplicate image pairs across splits; near_duplicates.csv lists the first %d",
                        sum(counts.values()), len(pairs))
        rows = [(with_phash[i].split, with_phash[i].item_id, with_phash[j].split, with_phash[j].item_id, bits)
                for i, j, bits in pairs]
        near = pd.DataFrame(sorted(rows, key=lambda r: (SPLITS.index(r[0]), SPLITS.index(r[2]), r[1], r[3])),
                            columns=NEAR_DUPLICATE_COLUMNS)
    out: dict = {}
    for a, b in SPLIT_PAIRS:
        out[f"{a}_{b}"] = {
            "groups_spanning": sum(a in splits and b in splits for splits in groups.values()),
            "duplicate_media": len(media[a] & media[b]),
            "caption_overlap": len(captions[a] & captions[b]),
            "near_duplicate_images": (counts[SPLITS.index(a), SPLITS.index(b)] if max_hamming is not None else None),
        }
    sizes = Counter(s.group for s in samples)
    out["groups"] = len(sizes)
    out["largest_group"] = max(sizes.values(), default=0)
    return out, near


# which of two items sharing an id or a first caption is kept: a given later split first (test, val,
# train), then hash-split items, each in reading order, so a published test set keeps all its items
KEEP_PRIORITY = {"test": 0, "val": 1, "train": 2, "": 3}


def finalise(ledger: Ledger, params: Params) -> tuple[list[SplitConflict], int]:
    """Clean captions, reject repeated ids and (optionally) repeated first captions, form split groups
    and settle every item's split (see :func:`edge_glass.data.splits.resolve_splits`).

    Of two items with one id, or one first caption, the one with the later given split is kept
    (``KEEP_PRIORITY``): a duplicate never takes an item out of a published test set. Repeated first
    captions among hash-split items are rejected before the groups form (as the default data always
    was); one involving an item with a given split is settled after the splits are: in one split the
    lower-priority item is rejected, across two splits of one group it is a split conflict that
    ``download.split_conflicts`` decides (listed in ``split_conflicts.csv``).

    Returns the split conflicts (groups given two splits) and how many hash-split items followed a
    group member's given split. With ``download.split_conflicts=drop`` the conflicting items of the
    earlier splits are rejects here; with ``error`` the caller stops after writing the conflicts.
    """
    d = params.download
    position = {id(s): k for k, s in enumerate(ledger.samples)}
    rank = lambda s: (KEEP_PRIORITY.get(s.split, 3), position[id(s)])  # noqa: E731
    ids: dict[str, Sample] = {}
    kept: list[Sample] = []
    for s in sorted(ledger.samples, key=rank):
        if s.item_id in ids:
            other = ids[s.item_id]
            ledger.reject(s.item_id, s.source, f"duplicate item id (kept the item from {other.source}"
                                               f"{', split ' + other.split if other.split else ''})")
            continue
        ids[s.item_id] = s
        s.captions = dedupe_captions(s.captions, d.max_captions_per_item)
        if not s.captions:
            ledger.reject(s.item_id, s.source, "empty caption")
            continue
        kept.append(s)
    kept.sort(key=lambda s: position[id(s)])  # reading order again: the manifest's order does not depend on splits
    if d.reject_duplicate_captions:  # hash-split items among themselves, before grouping
        first_owner: dict[str, str] = {}
        survivors = []
        for s in kept:
            key = caption_key(s.captions[0])
            if not s.split and key in first_owner:
                ledger.reject(s.item_id, s.source, f"duplicate caption: {s.captions[0]!r} is the first caption of "
                                                   f"{first_owner[key]}")
                continue
            if not s.split:
                first_owner.setdefault(key, s.item_id)
            survivors.append(s)
        kept = survivors
    given = {id(s) for s in kept if s.split}
    groups = split_groups(kept, d.group_shared_captions)
    for s in kept:
        s.group = groups[s.item_id].removeprefix("group:")
    conflicts, dropped, followed = resolve_splits(kept, params.seed, d.split.train, d.split.val, d.split_conflicts)
    gone = {id(s) for s in dropped}
    latest = {c.group: c.final_split for c in conflicts if c.action == "keep"}
    for s in dropped:
        ledger.reject(s.item_id, s.source, f"split conflict: given split {s.split} but its group {s.group!r} is also "
                                           f"in {latest[s.group]} (download.split_conflicts=drop keeps the latest split)")
    kept = [s for s in kept if id(s) not in gone]
    if d.reject_duplicate_captions:  # a repeated first caption that involves an item with a given split
        by_key: dict[str, list[Sample]] = {}
        for s in kept:
            by_key.setdefault(caption_key(s.captions[0]), []).append(s)
        conflict_groups = {c.group for c in conflicts}
        for items in by_key.values():
            if len(items) < 2 or not any(id(s) in given for s in items):
                continue
            # given split before hash-split, later split first, then reading order
            items.sort(key=lambda s: (KEEP_PRIORITY[s.split], id(s) not in given, position[id(s)]))
            owner = items[0]
            for s in items[1:]:
                if s.split != owner.split and s.group == owner.group and s.group in conflict_groups:
                    continue  # a split conflict: split_conflicts.csv lists it, download.split_conflicts decides
                ledger.reject(s.item_id, s.source, f"duplicate caption: {s.captions[0]!r} is the first caption of "
                                                   f"{owner.item_id}")
                gone.add(id(s))
    ledger.samples = [s for s in kept if id(s) not in gone]
    return conflicts, followed
