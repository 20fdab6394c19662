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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from tqdm import tqdm

from edge_glass.config import Params
from edge_glass.config.download import DownloadParams
from edge_glass.core.errors import DataError
from edge_glass.core.io import atomic_path, package_fingerprint, sha256_text, write_json
from edge_glass.core.prefetch import prefetched
from edge_glass.data.manifest import (
    Ledger,
    Reject,
    Sample,
    reason_kind,
    write_manifest,
    write_rejects,
)
from edge_glass.data.media import decode_image
from edge_glass.data.mediashards import MemberRef, ShardWriter, safe_member_name
from edge_glass.data.sources.base import Source, empty_sources_message
from edge_glass.data.splits import (
    conflict_message,
    finalise,
    split_hygiene,
    write_conflicts,
)

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
    return package_fingerprint("download.py", "data", "core")


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
    from edge_glass.data.sources import build_sources

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
