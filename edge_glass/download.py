"""The download stage: build the manifest of image/audio/text samples from named sources."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from edge_glass.config import Params
from edge_glass.manifest import Ledger, Reject, Sample, assign_split, dedupe_captions, write_manifest, write_rejects
from edge_glass.media import MediaError, check_image, load_image


def _records(name: str, params: Params, media_dir: Path, base_dir: Path):
    d = params.download
    if name == "openmoji":
        from edge_glass.sources.openmoji import iter_openmoji

        return iter_openmoji(d.openmoji, media_dir, base_dir, d.limit_per_source)
    if name == "asterisk":
        from edge_glass.sources.asterisk import iter_asterisk

        return iter_asterisk(d.asterisk, d.audio, media_dir, base_dir, d.limit_per_source)
    from edge_glass.sources.online import iter_hub_rows, load_hub_rows

    return iter_hub_rows(name, load_hub_rows(name, d.online), d.audio, media_dir, base_dir, d.limit_per_source)


def _finalise(ledger: Ledger, params: Params, base_dir: Path) -> None:
    """Clean captions, check images, drop cross-item duplicate captions, assign splits."""
    d = params.download
    first_owner: dict[str, str] = {}
    kept: list[Sample] = []
    for s in ledger.samples:
        s.captions = dedupe_captions(s.captions, d.max_captions_per_item)
        if not s.captions:
            ledger.reject(s.item_id, s.source, "empty caption")
            continue
        if s.image_path is not None:
            try:
                check_image(load_image(base_dir / s.image_path))
            except MediaError as exc:
                ledger.reject(s.item_id, s.source, str(exc))
                continue
        key = s.captions[0].casefold().rstrip(".!?")
        if key in first_owner:
            ledger.reject(s.item_id, s.source, f"duplicate caption of {first_owner[key]}: {s.captions[0]!r}")
            continue
        first_owner[key] = s.item_id
        s.split = assign_split(s.item_id, params.seed, d.split.train, d.split.val)
        kept.append(s)
    ledger.samples = kept


def build_manifest(params: Params, out_dir: str | Path) -> dict:
    """Run every source in ``params.download.sources``; write manifest, rejects and media.

    Returns counts per source; every candidate is either kept or rejected with a reason.
    """
    out_dir = Path(out_dir)
    media_dir = out_dir / "media"
    if media_dir.exists():
        shutil.rmtree(media_dir)
    media_dir.mkdir(parents=True)
    ledger = Ledger()
    for name in params.download.sources:
        for rec in tqdm(_records(name, params, media_dir, out_dir), desc=f"download {name}", unit="item"):
            (ledger.rejects if isinstance(rec, Reject) else ledger.samples).append(rec)
        if name == "openmoji" and params.download.openmoji.speak_captions:
            from edge_glass.sources.espeak import add_spoken_captions

            add_spoken_captions(ledger, name, params.download.espeak, params.download.audio, media_dir, out_dir)
    seen = ledger.seen
    _finalise(ledger, params, out_dir)
    if ledger.seen != seen:
        raise AssertionError(f"download counts do not reconcile: {seen} in, {ledger.seen} kept + rejected")
    if not ledger.samples:
        raise RuntimeError(f"download kept no samples from {params.download.sources}; see rejects for reasons")
    write_manifest(ledger.samples, out_dir / "manifest.parquet")
    write_rejects(ledger.rejects, out_dir / "rejects.csv")
    return download_stats(ledger)


def download_stats(ledger: Ledger) -> dict:
    kept = Counter(s.source for s in ledger.samples)
    rejected = Counter(r.source for r in ledger.rejects)
    splits = Counter(s.split for s in ledger.samples)
    stats = {
        "in": ledger.seen,
        "kept": len(ledger.samples),
        "rejected": len(ledger.rejects),
        "splits": dict(sorted(splits.items())),
        "with_image": sum(s.image_path is not None for s in ledger.samples),
        "with_audio": sum(s.audio_path is not None for s in ledger.samples),
        "triples": sum(s.image_path is not None and s.audio_path is not None for s in ledger.samples),
        "captions": sum(len(s.captions) for s in ledger.samples),
        "sources": {
            src: {"in": kept[src] + rejected[src], "kept": kept[src], "rejected": rejected[src]}
            for src in sorted(set(kept) | set(rejected))
        },
    }
    return stats
