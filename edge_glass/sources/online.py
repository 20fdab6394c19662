"""Online caption data sets loaded with Hugging Face ``datasets`` (needs network access to the hub).

Each source is a row adapter over ``datasets.load_dataset``; rows become the same Samples as the
offline sources, with media written under the media folder.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image

from edge_glass.config import AudioCheckParams, OnlineParams
from edge_glass.manifest import Reject, Sample
from edge_glass.media import MediaError, check_audio, load_audio, load_image, resample, write_wav


@dataclass(frozen=True)
class HubSpec:
    repo: str
    image_column: str | None
    audio_column: str | None
    caption_column: str
    id_column: str | None
    license: str
    attribution: str


HUB_SOURCES: dict[str, HubSpec] = {
    "coco": HubSpec(
        "nlphuji/mscoco_2014_5k_test_image_text_retrieval", "image", None, "caption", "filename",
        "CC-BY-4.0 (annotations); images under Flickr terms", "Lin et al., Microsoft COCO, 2014 (Karpathy 5k test split)",
    ),
    "flickr30k": HubSpec(
        "nlphuji/flickr30k", "image", None, "caption", "img_id",
        "research use (Flickr30k terms)", "Young et al., From image descriptions to visual denotations, 2014",
    ),
    "audiocaps": HubSpec(
        "OpenSound/AudioCaps", None, "audio", "caption", "audiocap_id",
        "CC-BY-4.0 (captions); audio from YouTube", "Kim et al., AudioCaps, NAACL 2019",
    ),
    "clotho": HubSpec(
        "CLAPv2/Clotho", None, "audio", "text", "file_name",
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
        return datasets.load_dataset(spec.repo, split=params.hf_split, cache_dir=params.cache_dir, streaming=True)
    except Exception as exc:  # hub errors come in many types
        raise RuntimeError(
            f"download source '{name}' could not load {spec.repo} (split {params.hf_split}): {exc}. "
            "Online sources need network access to the Hugging Face hub; the offline default is "
            "download.sources=[openmoji,asterisk]."
        ) from exc


def _as_image(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict) and value.get("bytes"):
        return load_image(value["bytes"])
    if isinstance(value, dict) and value.get("path"):
        return load_image(value["path"])
    raise MediaError(f"image column has no decodable value ({type(value).__name__})")


def _as_audio(value: Any, sample_rate: int) -> np.ndarray:
    if isinstance(value, dict) and value.get("array") is not None:
        wav = np.asarray(value["array"], dtype=np.float32)
        wav = wav.mean(axis=0) if wav.ndim == 2 else wav
        return resample(wav, int(value["sampling_rate"]), sample_rate)
    if isinstance(value, dict) and value.get("bytes"):
        return load_audio(io.BytesIO(value["bytes"]), sample_rate)
    if isinstance(value, dict) and value.get("path"):
        return load_audio(value["path"], sample_rate)
    raise MediaError(f"audio column has no decodable value ({type(value).__name__})")


def iter_hub_rows(
    name: str, rows: Iterable[dict], audio: AudioCheckParams, media_dir: Path, base_dir: Path, limit: int | None
) -> Iterator[Sample | Reject]:
    """Turn hub rows into Samples; undecodable media and caption-less rows become Rejects."""
    spec = HUB_SOURCES[name]
    out_dir = media_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for index, row in enumerate(rows):
        if limit is not None and count >= limit:
            return
        raw_id = row.get(spec.id_column) if spec.id_column else None
        key = str(raw_id if raw_id is not None else index).replace("/", "__")
        item_id = f"{name}/{key}"
        captions = row.get(spec.caption_column)
        captions = [captions] if isinstance(captions, str) else list(captions or [])
        sample = Sample(item_id=item_id, source=name, captions=captions, license=spec.license, attribution=spec.attribution)
        try:
            if spec.image_column:
                path = out_dir / f"{Path(key).stem}.png"
                _as_image(row.get(spec.image_column)).save(path)
                sample.image_path = str(path.relative_to(base_dir))
            if spec.audio_column:
                wav = _as_audio(row.get(spec.audio_column), audio.sample_rate)
                sample.audio_duration_s = check_audio(
                    wav, audio.sample_rate, audio.min_duration_s, audio.max_duration_s, audio.silence_dbfs
                )
                path = out_dir / f"{Path(key).stem}.wav"
                write_wav(path, wav, audio.sample_rate)
                sample.audio_path = str(path.relative_to(base_dir))
        except MediaError as exc:
            yield Reject(item_id, name, str(exc))
            continue
        count += 1
        yield sample
