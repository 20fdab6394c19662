"""Online caption data sets loaded with Hugging Face ``datasets`` (needs network access to the hub).

Each is a :class:`HubSource` over ``datasets.load_dataset(..., streaming=True)``: rows become the same
Samples as every other source. ``pip install datasets`` (``bash setup.sh --online``) and hub access are
needed; the stage leaves ``HF_HUB_OFFLINE`` unset only when such a source is configured.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from edge_glass.config.download import OnlineParams
from edge_glass.core.errors import MediaError
from edge_glass.data.sources.base import (
    Candidate,
    Source,
    caption_reject_reason,
    text_captions,
)
from edge_glass.data.sources.registry import register_source


@dataclass(frozen=True)
class HubSpec:
    repo: str
    image_column: str | None
    audio_column: str | None
    caption_column: str
    id_columns: tuple[str, ...]  # the item is the row's value of these; rows sharing it are one item
    license: str
    attribution: str
    group_column: str | None = None  # items sharing this value share a split (default: the item)


HUB_SOURCES: dict[str, HubSpec] = {
    "coco": HubSpec(
        "nlphuji/mscoco_2014_5k_test_image_text_retrieval", "image", None, "caption", ("filename",),
        "CC-BY-4.0 (annotations); images under Flickr terms", "Lin et al., Microsoft COCO, 2014 (Karpathy 5k test split)",
    ),
    "flickr30k": HubSpec(
        "nlphuji/flickr30k", "image", None, "caption", ("img_id",),
        "research use (Flickr30k terms)", "Young et al., From image descriptions to visual denotations, 2014",
    ),
    "audiocaps": HubSpec(
        # one row per caption: the item is the clip (youtube_id + start_time) with all its captions,
        # and every clip of one video shares a split
        "OpenSound/AudioCaps", None, "audio", "caption", ("youtube_id", "start_time"),
        "CC-BY-4.0 (captions); audio from YouTube", "Kim et al., AudioCaps, NAACL 2019", "youtube_id",
    ),
    "clotho": HubSpec(
        "CLAPv2/Clotho", None, "audio", "text", ("file_name",),
        "Clotho: audio Freesound licences, captions Tampere University", "Drossos et al., Clotho, ICASSP 2020",
    ),
}


def load_hub_rows(name: str, params: OnlineParams) -> Iterable[dict]:
    """Stream rows of a hub data set; a clear error when the hub cannot be reached."""
    spec = HUB_SOURCES[name]
    try:
        import datasets
    except ImportError:
        raise ImportError(f"download source '{name}' needs the 'datasets' package: pip install datasets") from None
    try:
        rows = datasets.load_dataset(spec.repo, split=params.hf_split, cache_dir=params.cache_dir, streaming=True)
        for column, feature in ((spec.image_column, datasets.Image), (spec.audio_column, datasets.Audio)):
            if column and column in (rows.features or {}):
                rows = rows.cast_column(column, feature(decode=False))  # encoded bytes: small while queued
        return rows
    except Exception as exc:  # hub errors come in many types
        raise RuntimeError(
            f"download source '{name}' could not load {spec.repo} (split {params.hf_split}): {exc}. "
            "Online sources need network access to the Hugging Face hub; the offline default is "
            "download.sources=[openmoji,asterisk]."
        ) from exc


def _media_value(value: Any) -> bytes | tuple[np.ndarray, int]:
    """Encoded bytes of an image/audio cell, or (samples, sampling_rate) for decoded audio."""
    if isinstance(value, dict) and value.get("array") is not None:
        return np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"]
    if isinstance(value, dict) and value.get("path"):
        try:
            with open(value["path"], "rb") as f:
                return f.read()
        except OSError as exc:
            raise MediaError(f"media file unreadable: {exc}") from None
    if hasattr(value, "save"):  # a decoded PIL image
        buf = io.BytesIO()
        value.save(buf, "PNG")
        return buf.getvalue()
    raise MediaError(f"media column has no decodable value ({type(value).__name__})")


class HubSource(Source):
    """A hub data set streamed row by row; media arrive as encoded bytes (``decode=False``) when possible."""

    def __init__(self, name, params):
        super().__init__(name, params)
        self.spec = HUB_SOURCES[name]
        self.license, self.attribution = self.spec.license, self.spec.attribution

    def settings(self):
        return {"repo": self.spec.repo, **self.params.online.model_dump()}

    def _key(self, row: dict, index: int) -> str:
        values = [row.get(c) for c in self.spec.id_columns]
        if any(v is None for v in values):
            return str(index)
        return "_".join(str(v) for v in values).replace("/", "__")

    def candidates(self):
        spec = self.spec
        rows = load_hub_rows(self.name, self.params.online)
        # first pass over the text columns only: every caption of each item (AudioCaps has a row per caption)
        text_cols = [c for c in (spec.caption_column, *spec.id_columns) if c]
        caption_rows = rows.select_columns(text_cols) if hasattr(rows, "select_columns") else rows
        captions: dict[str, list] = {}
        for index, row in enumerate(caption_rows):
            good, bad = text_captions(row.get(spec.caption_column))
            captions.setdefault(self._key(row, index), []).extend(good + [None] * len(bad))
        seen: set[str] = set()
        for index, row in enumerate(rows):
            key = self._key(row, index)
            if key in seen:
                continue
            seen.add(key)
            yield Candidate(f"{self.name}/{key}", (row, captions.get(key, [])))

    def process(self, cand):
        row, caps = cand.payload
        spec = self.spec
        captions = [c for c in caps if c is not None]
        if not captions:
            return self.reject(cand, caption_reject_reason(["not text"] if caps else []))
        group = str(row.get(spec.group_column)) if spec.group_column and row.get(spec.group_column) is not None else ""
        sample = self.sample(cand, captions, group=group)
        try:
            if spec.image_column:
                value = _media_value(row.get(spec.image_column))
                sample.image, sample.image_ext = self.image_bytes(value if isinstance(value, bytes) else b"")
            if spec.audio_column:
                value = _media_value(row.get(spec.audio_column))
                sample.audio, sample.audio_ext, sample.audio_duration_s = (
                    self.audio_bytes(value) if isinstance(value, bytes) else self.audio_bytes(*value))
        except MediaError as exc:
            return self.reject(cand, str(exc))
        return sample


for _name in HUB_SOURCES:
    register_source(_name)(HubSource)
