"""Params entries for the sample datasets of edge_glass.tools.sample_datasets (every local format)."""

from __future__ import annotations

from pathlib import Path

from edge_glass.tools import sample_datasets as sd

CLOTHO_CAPTIONS = [f"caption_{k}" for k in range(1, 6)]


def write_all(root: Path, n: int) -> list[dict]:
    """Write every format (distinct items per format) under ``root``; return their ``download.local`` entries."""
    coco = sd.write_coco(root / "coco", n)
    karpathy = sd.write_karpathy(root / "karpathy", n, start=n)
    table = sd.write_table(root / "openclip", n, "csv", start=2 * n)
    tars = sd.write_webdataset(root / "img2dataset", n, per_shard=6, start=3 * n)
    clotho = sd.write_clotho(root / "clotho", n)
    audiocaps = sd.write_audiocaps(root / "audiocaps", n, start=n)
    clap = sd.write_clap_webdataset(root / "clap", n, start=2 * n)
    return [
        {"name": "coco", "format": "coco", "path": str(coco), "media_root": str(root / "coco" / "val2017")},
        {"name": "karpathy", "format": "karpathy", "path": str(karpathy)},
        {"name": "openclip", "format": "table", "path": str(table), "image_key": "filepath", "caption_keys": ["title"]},
        {"name": "laion", "format": "webdataset", "path": tars},
        *[{"name": f"clotho-{part}", "format": "table", "path": str(path), "media_root": str(root / "clotho" / part),
           "audio_key": "file_name", "caption_keys": CLOTHO_CAPTIONS, "split": "from_file"} for part, path in clotho.items()],
        {"name": "audiocaps", "format": "table", "path": str(audiocaps["train"]), "media_root": str(root / "audiocaps" / "audio"),
         "audio_template": "{youtube_id}_{start_time}.wav", "caption_keys": ["caption"], "group_key": "youtube_id"},
        {"name": "clap", "format": "webdataset", "path": str(clap), "split": "train"},
    ]
