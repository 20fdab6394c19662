"""What every local format shares: the entry as a Source, split words, media path checks, cell helpers,
and the sniffing that names the format a file looks like (for the error when a format keeps nothing)."""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import Any

from edge_glass.core.errors import DataError, MediaError
from edge_glass.data.media import read_media_file
from edge_glass.data.sources.base import (
    Candidate,
    Source,
    caption_reject_reason,
    file_stamp,
    text_captions,
)

# what the split words of the common data sets mean (Karpathy's restval is train; Clotho's development
# is its training set, validation its val, evaluation its test)
SPLIT_WORDS = {
    "train": "train", "training": "train", "restval": "train", "development": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "evaluation": "test", "eval": "test",
}
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
AUDIO_EXTS = ("flac", "wav", "mp3", "ogg")


def normalise_split(value: Any) -> str | None:
    return SPLIT_WORDS.get(str(value).strip().casefold()) if value is not None else None


def split_from_filename(path: Path) -> str:
    """The split named in a file name (clotho_captions_evaluation.csv -> test), or DataError."""
    found = {SPLIT_WORDS[w] for w in re.split(r"[^a-z]+", path.stem.casefold()) if w in SPLIT_WORDS}
    if len(found) != 1:
        raise DataError(f"{path}: split=from_file needs a split_key column or a file name naming one split "
                        f"({', '.join(sorted(SPLIT_WORDS))}); found {sorted(found) or 'none'}")
    return found.pop()


def load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"annotation file unreadable: {path}: {exc}") from None


class LocalSource(Source):
    """Shared by the local formats: entry settings, media_root, split rules, reading and checking media."""

    group_doc = "the item (tables: group_key)"

    def __init__(self, entry, params):
        super().__init__(entry.name, params)
        self.entry = entry
        self.license, self.attribution = entry.license, entry.attribution
        self.path = Path(entry.path)
        default_root = self.path.parent if not glob.has_magic(entry.path) and "{" not in entry.path else Path(".")
        self.root = Path(entry.media_root) if entry.media_root else default_root
        self.max_bytes = params.max_file_mb * 2**20

    def settings(self):
        return {"entry": self.entry.model_dump(), "annotation": file_stamp(self.path)}

    @property
    def label(self) -> str:
        return f"download.local entry {self.name!r}"

    def empty_hint(self, rejects) -> str:
        """The two common first mistakes: a file of another format (its required fields absent, so every
        entry is rejected), and a media_root one folder off (every media file missing)."""
        guessed = None if glob.has_magic(self.entry.path) else sniff_format(self.path)
        if guessed not in (None, self.entry.format):
            return f"{self.path.name} looks like format: {guessed}, not format: {self.entry.format}"
        missing = [Path(r.reason.removeprefix("missing file: ")) for r in rejects if r.reason.startswith("missing file: ")]
        if not missing or len(missing) < len(rejects) / 2:
            return ""
        root = self.root
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())[:500] if root.is_dir() else []
        for path in missing[:20]:
            if not path.is_relative_to(root):
                continue
            rel = path.relative_to(root)
            below = next((d for d in subdirs if (d / rel).is_file()), None)
            if below is not None:
                return f"did media_root point one folder too high? {rel} is under {below} (media_root: {root})"
            if (root.parent / rel).is_file():
                return f"did media_root point one folder too low? {rel} is under {root.parent} (media_root: {root})"
        return f"media files missing: check media_root (the file's media paths are relative to it: {root})"

    @property
    def limit(self) -> int | None:
        limits = [x for x in (self.entry.limit, self.params.limit_per_source) if x is not None]
        return min(limits) if limits else None

    def media_root(self) -> Path:
        root = self.root.resolve()
        if not root.is_dir():
            raise DataError(f"download.local entry {self.name!r}: media_root {self.root} is not a folder")
        return root

    def split_for(self, value: Any = None) -> str | None:
        """The item's given split ('' for hash splits), or None when the file's value is not a split."""
        mode = self.entry.split_mode
        if mode == "hash":
            return ""
        if mode != "from_file":
            return mode
        return normalise_split(value)

    def read_media(self, rel: Any) -> bytes:
        rel = str(rel).strip()
        path = Path(rel)
        return read_media_file(path if path.is_absolute() else self.root / path, self._root_real, self.max_bytes)

    def make(self, cand: Candidate, captions: Any, *, image: Any = None, audio: Any = None, split_value: Any = None,
             group: str = ""):
        """Sample from one item's raw fields (captions, media paths, split value), or a Reject."""
        good, bad = text_captions(captions)
        if not good:
            return self.reject(cand, caption_reject_reason(bad))
        split = self.split_for(split_value)
        if split is None:
            return self.reject(cand, f"unknown split value {split_value!r} (known: {', '.join(sorted(SPLIT_WORDS))})")
        sample = self.sample(cand, good, split=split, group=group)
        try:
            if present(image):
                sample.image, sample.image_ext = self.image_bytes(self.read_media(image))
            if present(audio):
                sample.audio, sample.audio_ext, sample.audio_duration_s = self.audio_bytes(self.read_media(audio))
        except MediaError as exc:
            return self.reject(cand, str(exc))
        if sample.image is None and sample.audio is None:
            return self.reject(cand, "no media path (image and audio both empty)")
        return sample

    def candidates(self):
        self._root_real = self.media_root()
        yield from self.items()

    def items(self):
        raise NotImplementedError


def present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and value != value) and str(value).strip() != ""


def cell(value: Any, split: bool = False) -> str:
    """A table cell as compared between rows of one id: absent is '', a split by its meaning."""
    if not present(value):
        return ""
    text = str(value).strip()
    return (normalise_split(text) or text) if split else text


def hashable(value: Any) -> Any:
    """An id usable as a dict key (a JSON list or object becomes its text)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def brief(value: Any) -> str:
    return f"{type(value).__name__}: {str(value)[:40]!r}"


def looks_like(data: Any) -> str | None:
    """The local format a parsed JSON annotation file looks like: coco, karpathy, or None."""
    if not isinstance(data, dict):
        return None
    first = lambda key: next((x for x in data.get(key) or [] if isinstance(x, dict)), None)  # noqa: E731
    ann, img = first("annotations"), first("images")
    if isinstance(data.get("annotations"), list) and ann is not None and {"image_id", "caption"} <= set(ann):
        return "coco"
    if img is not None and "sentences" in img:
        return "karpathy"
    return None


def looks_like_hint(data: Any, fmt: str) -> str:
    guessed = looks_like(data)
    return f"; it looks like format: {guessed}" if guessed not in (None, fmt) else ""


def sniff_format(path: Path) -> str | None:
    """The local format a file looks like from its name and (JSON) content, or None when unsure."""
    name = path.name.casefold()
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "webdataset"
    if name.endswith(".json"):
        try:
            return looks_like(load_json(path))
        except DataError:
            return None
    if path.suffix.casefold() in (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".parquet", ".pq"):
        return "table"
    return None


