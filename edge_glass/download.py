"""The download stage: every configured source into a manifest plus media in a few tar shards.

Per source, candidates are cut into chunks of ``download.shard_size``; each chunk becomes one media
shard ``media/<source>/NNNNN.tar`` and a record file ``NNNNN.parquet`` (img2dataset's layout: the
items and rejects of that shard, with each member's byte offset). A chunk's record file carries a
fingerprint of the source settings, the code and the chunk's candidates (with their files' size and
mtime), so a killed download resumes: finished chunks are read back, not recomputed
(``data/download`` is ``persist`` in dvc.yaml). Then, over all sources at once, captions are cleaned,
duplicates rejected, split groups formed and splits drawn, and the manifest is written.

Split groups join items by the source's group, by shared captions and by equal content hashes of the
decoded media (computed where each item is normalised, stored with the chunk's records), so one
image or clip under two ids, or one group split by the data's own split column, never straddles two
splits unnoticed: ``split_conflicts.csv`` lists such groups, ``download.split_conflicts`` decides.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from tqdm import tqdm

from edge_glass.config import DownloadParams, Params
from edge_glass.io import atomic_path, files_fingerprint, sha256_text, write_json
from edge_glass.manifest import (
    SPLITS, Ledger, Reject, Sample, SplitConflict, caption_key, dedupe_captions, resolve_splits, split_groups,
    write_conflicts, write_manifest, write_rejects,
)
from edge_glass.media import decode_image
from edge_glass.mediashards import MemberRef, ShardWriter, safe_member_name
from edge_glass.prefetch import prefetched
from edge_glass.sources.base import DataError, Source, empty_sources_message

log = logging.getLogger(__name__)

RECORD_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("reject", pa.string()), ("captions", pa.list_(pa.string())),
    ("split", pa.string()), ("group", pa.string()),
    ("image_member", pa.string()), ("image_offset", pa.int64()), ("image_size", pa.int64()),
    ("audio_member", pa.string()), ("audio_offset", pa.int64()), ("audio_size", pa.int64()),
    ("audio_duration_s", pa.float32()), ("license", pa.string()), ("attribution", pa.string()),
    ("image_sha256", pa.string()), ("audio_sha256", pa.string()), ("image_phash", pa.string()),
])
HASH_FIELDS = ("image_sha256", "audio_sha256", "image_phash")


def code_fingerprint() -> str:
    """Hash of the code that turns inputs into media shards: changed code redoes finished chunks."""
    pkg = Path(__file__).parent
    return files_fingerprint([*pkg.glob("sources/*.py"), pkg / "download.py", pkg / "media.py",
                              pkg / "mediashards.py", pkg / "manifest.py"])


def _sha256(header: str, array: np.ndarray) -> str:
    h = hashlib.sha256(header.encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def hash_media(s: Sample | Reject) -> Sample | Reject:
    """Fill a sample's content hashes from its normalised media bytes.

    The hashes are of the decoded content, not the file: the RGB pixels with their shape, the 16-bit
    samples with their rate (the stage's sample rate), so the same pixels sent as PNG, lossless WEBP or
    the same JPEG bytes give one hash. ``image_phash`` is the 64-bit DCT perceptual hash (16 hex digits)
    that finds near duplicates (recompressed, slightly edited) across splits.
    """
    if isinstance(s, Sample):
        if s.image is not None:
            img = decode_image(s.image)
            pixels = np.asarray(img, dtype=np.uint8)
            s.image_sha256 = _sha256(f"rgb8 {pixels.shape}\n", pixels)
            s.image_phash = str(imagehash.phash(img))
        if s.audio is not None:
            wav, sr = sf.read(io.BytesIO(s.audio), dtype="int16", always_2d=True)
            s.audio_sha256 = _sha256(f"pcm16 {sr} {wav.shape}\n", wav)
    return s


def safe_process(source: Source, cand) -> Sample | Reject:
    """``source.process`` (plus the content hashes) that turns an unexpected error on one item into that
    item's reject."""
    if cand.reject:  # an entry found unusable while listing: recorded, never processed
        return Reject(cand.item_id, source.name, cand.reject)
    try:
        return hash_media(source.process(cand))
    except Exception as exc:  # one item's fault must not kill the stage; systemic faults show in the chunk check
        log.warning("%s: unexpected %s on %s: %s", source.name, type(exc).__name__, cand.item_id, exc)
        return Reject(cand.item_id, source.name, f"unexpected error: {type(exc).__name__}: {exc}")


def _record_row(rec: Sample | Reject) -> dict:
    if isinstance(rec, Reject):
        return {"item_id": rec.item_id, "reject": rec.reason}
    row = {"item_id": rec.item_id, "reject": None, "captions": rec.captions, "split": rec.split, "group": rec.group,
           "audio_duration_s": rec.audio_duration_s, "license": rec.license, "attribution": rec.attribution,
           **{k: getattr(rec, k) for k in HASH_FIELDS}}
    for medium in ("image", "audio"):
        ref = getattr(rec, f"{medium}_ref")
        if ref is not None:
            row.update({f"{medium}_member": ref.member, f"{medium}_offset": ref.offset, f"{medium}_size": ref.size})
    return row


def _from_row(row: dict, source: str, shard: str) -> Sample | Reject:
    if row["reject"] is not None:
        return Reject(row["item_id"], source, row["reject"])
    s = Sample(row["item_id"], source, list(row["captions"]), audio_duration_s=row["audio_duration_s"],
               license=row["license"], attribution=row["attribution"], split=row["split"], group=row["group"],
               **{k: row.get(k) for k in HASH_FIELDS})
    for medium in ("image", "audio"):
        if row[f"{medium}_member"] is not None:
            setattr(s, f"{medium}_ref", MemberRef(shard, row[f"{medium}_member"], int(row[f"{medium}_offset"]),
                                                 int(row[f"{medium}_size"])))
    return s


class Chunk:
    """One resumable unit: ``NNNNN.tar`` (media) + ``NNNNN.parquet`` (records, fingerprint)."""

    def __init__(self, src_dir: Path, k: int, out_dir: Path, source: str):
        self.tar, self.records = src_dir / f"{k:05d}.tar", src_dir / f"{k:05d}.parquet"
        self.out_dir, self.source = out_dir, source

    def load(self, fingerprint: str) -> list | None:
        """Records of a finished chunk with this fingerprint; None if missing, stale or damaged."""
        try:
            table = pq.read_table(self.records)
            meta = json.loads(table.schema.metadata[b"edge_glass"])
            if meta["fingerprint"] != fingerprint or self.tar.stat().st_size != meta["tar_bytes"]:
                return None
        except FileNotFoundError:
            return None
        except (OSError, KeyError, ValueError, TypeError, pa.ArrowException) as exc:
            log.warning("%s: unreadable, redone: %s", self.records, exc)
            return None
        shard = str(self.tar.relative_to(self.out_dir))
        return [_from_row(row, self.source, shard) for row in table.to_pylist()]

    def write(self, records: list, fingerprint: str, tar_bytes: int) -> None:
        table = pa.Table.from_pylist([_record_row(r) for r in records], schema=RECORD_SCHEMA)
        meta = {"fingerprint": fingerprint, "tar_bytes": tar_bytes, "n": len(records)}
        table = table.replace_schema_metadata({"edge_glass": json.dumps(meta)})
        with atomic_path(self.records) as tmp:
            pq.write_table(table, tmp)


def process_chunk(source: Source, cands: list, chunk: Chunk, fingerprint: str, pool: ThreadPoolExecutor,
                  workers: int, bar: tqdm) -> list:
    """Process a chunk's candidates in worker threads (in order) and write its shard and records."""
    writer = ShardWriter(chunk.tar, chunk.out_dir)
    records = []
    try:
        for rec in prefetched(lambda c: safe_process(source, c), cands, pool, depth=2 * workers):
            if isinstance(rec, Sample):
                for medium in ("image", "audio"):
                    data = getattr(rec, medium)
                    if data is not None:
                        ref = writer.add(safe_member_name(rec.item_id, getattr(rec, f"{medium}_ext")), data)
                        setattr(rec, f"{medium}_ref", ref)
                        setattr(rec, medium, None)  # bytes live in the shard now
            records.append(rec)
            bar.update(1)
        tar_bytes = writer.close()
    except BaseException:
        writer.abort()
        raise
    unexpected = sum(isinstance(r, Reject) and r.reason.startswith("unexpected error") for r in records)
    if unexpected >= 8 and unexpected > len(records) // 2:
        first = next(r.reason for r in records if isinstance(r, Reject) and r.reason.startswith("unexpected error"))
        raise RuntimeError(f"source {source.name!r}: {unexpected} of {len(records)} items of {chunk.tar.name} failed "
                           f"with unexpected errors, a systemic fault (first: {first})")
    chunk.write(records, fingerprint, tar_bytes)
    return records


def run_source(source: Source, d: DownloadParams, out_dir: Path, pool: ThreadPoolExecutor) -> tuple[list, dict]:
    """Every record of one source (kept samples and rejects, in candidate order) and its counts:
    ``in`` (candidates read, counted as the source lists them, apart from any outcome: build_manifest
    checks it against kept + rejected), ``chunks``, ``resumed_chunks``.

    A limit stops reading: the candidates of the last chunk after the limit's last kept item count as
    not read (they are no item's drop, and a bigger limit would read them)."""
    limit = getattr(source, "limit", d.limit_per_source)
    size = min(d.shard_size, limit) if limit else d.shard_size
    src_dir = out_dir / "media" / source.name
    src_dir.mkdir(parents=True, exist_ok=True)
    base = sha256_text(json.dumps({"source": source.fingerprint(), "code": code_fingerprint(), "chunk": size}))
    records, kept, chunks, resumed, read = [], 0, 0, 0, 0
    cands_iter = iter(source.candidates())
    with tqdm(desc=f"download {source.name}", unit="item") as bar:
        for k in itertools.count():
            cands = list(itertools.islice(cands_iter, size))
            if not cands:
                break
            read += len(cands)
            chunks += 1
            fingerprint = sha256_text(base + f"\n{k}\n" + "\n".join(f"{c.item_id}\t{c.stamp}" for c in cands))
            chunk = Chunk(src_dir, k, out_dir, source.name)
            recs = chunk.load(fingerprint)
            if recs is None:
                recs = process_chunk(source, cands, chunk, fingerprint, pool, d.num_workers, bar)
            else:
                resumed += 1
                bar.update(len(recs))
            if len(recs) != len(cands):  # a chunk holds one record per candidate, or items went missing
                raise AssertionError(f"source {source.name!r}: chunk {k} has {len(recs)} records for {len(cands)} candidates")
            for i, rec in enumerate(recs):
                if limit and kept >= limit:
                    read -= len(recs) - i
                    break
                records.append(rec)
                kept += isinstance(rec, Sample)
            if limit and kept >= limit:
                break
    return records, {"in": read, "chunks": chunks, "resumed_chunks": resumed}


def remove_stale_media(media_dir: Path, keep: set[Path]) -> int:
    """Delete every file under media/ that is not a current chunk (old layouts, dropped sources, temp files)."""
    removed = 0
    for p in sorted(media_dir.rglob("*"), reverse=True):
        if p.is_file() and p not in keep:
            p.unlink()
            removed += 1
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    return removed


# which of two items sharing an id or a first caption is kept: a given later split first (test, val,
# train), then hash-split items, each in reading order, so a published test set keeps all its items
KEEP_PRIORITY = {"test": 0, "val": 1, "train": 2, "": 3}


def finalise(ledger: Ledger, params: Params) -> tuple[list[SplitConflict], int]:
    """Clean captions, reject repeated ids and (optionally) repeated first captions, form split groups
    and settle every item's split (see :func:`edge_glass.manifest.resolve_splits`).

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


def check_reconciles(ledger: Ledger, read: dict[str, int]) -> None:
    """Per source, ``in`` (candidates counted as they were read) = kept + rejected; a difference is an
    item the code lost or invented on the way, a bug, so it stops the stage."""
    out = Counter(s.source for s in ledger.samples) + Counter(r.source for r in ledger.rejects)
    bad = [f"{name}: {read.get(name, 0)} in, {out[name]} kept + rejected"
           for name in sorted(set(read) | set(out)) if read.get(name, 0) != out[name]]
    if bad:
        raise AssertionError(f"download counts do not reconcile (items lost or invented by the code): {'; '.join(bad)}")


def build_manifest(params: Params, out_dir: str | Path, metrics_path: str | Path | None = None) -> dict:
    """Run every source in ``download.sources`` and ``download.local``; write manifest, rejects, media shards.

    Returns the stats (also written to ``metrics_path`` when given); every candidate is kept or rejected
    with a reason. A source that keeps nothing stops the stage with a DataError naming it and its top
    reject reasons, after rejects.csv and the metrics are written (so the reasons are there to read).
    """
    from edge_glass.sources import build_sources

    out_dir = Path(out_dir)
    d = params.download
    ledger = Ledger()
    chunk_stats, keep = {}, set()
    sources = build_sources(params)
    # a stopped run must not leave an earlier run's outputs to be read
    for name in ("manifest.parquet", "rejects.csv", "split_conflicts.csv", "near_duplicates.csv"):
        (out_dir / name).unlink(missing_ok=True)
    with ThreadPoolExecutor(max_workers=d.num_workers) as pool:
        for source in sources:
            try:
                records, chunk_stats[source.name] = run_source(source, d, out_dir, pool)
            except DataError as exc:  # a systemic fault in one source's input: say which entry it is
                if source.label in str(exc):
                    raise
                raise DataError(f"{source.label}: {exc}") from None
            for rec in records:
                (ledger.rejects if isinstance(rec, Reject) else ledger.samples).append(rec)
            for k in range(chunk_stats[source.name]["chunks"]):
                keep |= {out_dir / "media" / source.name / f"{k:05d}.{ext}" for ext in ("tar", "parquet")}
    remove_stale_media(out_dir / "media", keep)
    conflicts, followed = finalise(ledger, params)
    write_conflicts(conflicts, out_dir / "split_conflicts.csv")
    read = {name: c["in"] for name, c in chunk_stats.items()}
    check_reconciles(ledger, read)
    # a stop (split conflicts with download.split_conflicts=error, a source that kept nothing) comes after
    # rejects.csv, split_conflicts.csv and the metrics are written, so its reasons are there to read
    stop = conflict_message(conflicts, out_dir / "split_conflicts.csv") if conflicts and d.split_conflicts == "error" else ""
    stop = stop or empty_sources_message(sources, read, ledger.samples, ledger.rejects, d.allow_empty_sources,
                                         out_dir / "rejects.csv")
    write_rejects(ledger.rejects, out_dir / "rejects.csv")
    if not stop:
        write_manifest(ledger.samples, out_dir / "manifest.parquet")
    stats = download_stats(ledger, read)
    stats["split_hygiene"], near = split_hygiene(ledger.samples, d.near_duplicate_hamming)
    stats["split_hygiene"]["conflicts"] = {
        "groups": len({c.group for c in conflicts}), "items": sum(c.given_split != "hash" for c in conflicts),
        "dropped": sum(c.action == "drop" for c in conflicts)}
    stats["split_hygiene"]["hash_items_following_given_split"] = followed
    with atomic_path(out_dir / "near_duplicates.csv") as tmp:
        near.to_csv(tmp, index=False)
    for name, c in chunk_stats.items():
        # resumed chunks vary from run to run: logged, not a metric (a forced rerun must give equal metrics)
        log.info("%s: %d of %d chunks resumed", name, c["resumed_chunks"], c["chunks"])
        stats["sources"].setdefault(name, {"in": 0, "kept": 0, "rejected": 0})["chunks"] = c["chunks"]
    stats["media_bytes"] = sum(p.stat().st_size for p in keep if p.suffix == ".tar")
    stats["files"] = len(keep) + 3 + (not stop)  # + rejects, split_conflicts, near_duplicates (+ manifest)
    if metrics_path is not None:
        write_json(stats, Path(metrics_path))
    if stop:
        raise DataError(stop)
    return stats


def reason_kind(reason: str) -> str:
    """The reason without its particulars ("audio too short (0.1s < 0.3s)" -> "audio too short")."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()


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


def download_stats(ledger: Ledger, read: dict[str, int]) -> dict:
    """Counts for metrics/download.json; ``read``: per source, the candidates read (its ``in``)."""
    kept = Counter(s.source for s in ledger.samples)
    rejected = Counter(r.source for r in ledger.rejects)
    splits = Counter(s.split for s in ledger.samples)
    reasons: dict[str, Counter] = {}
    for r in ledger.rejects:
        reasons.setdefault(r.source, Counter())[reason_kind(r.reason)] += 1
    return {
        "in": sum(read.values()),
        "kept": len(ledger.samples),
        "rejected": len(ledger.rejects),
        "splits": dict(sorted(splits.items())),
        "with_image": sum(s.image_ref is not None for s in ledger.samples),
        "with_audio": sum(s.audio_ref is not None for s in ledger.samples),
        "triples": sum(s.image_ref is not None and s.audio_ref is not None for s in ledger.samples),
        "captions": sum(len(s.captions) for s in ledger.samples),
        "sources": {
            src: {"in": read.get(src, 0), "kept": kept[src], "rejected": rejected[src],
                  "rejected_by_reason": dict(sorted(reasons.get(src, Counter()).items()))}
            for src in sorted(set(read) | set(kept) | set(rejected))
        },
    }
