"""params.download: packaged and hub sources, your own data (download.local), media checks, splits."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from edge_glass.config.base import Strict


class SplitParams(Strict):
    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _sums_to_one(self):
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1 (got {total:g})")
        return self


class OpenMojiParams(Strict):
    render_size: int = Field(136, ge=32, le=1024)
    font_size: int = Field(109, ge=8, le=512)
    exclude_groups: list[Literal["flags", "keycaps", "clocks", "skin_tones"]] = ["flags", "keycaps", "clocks", "skin_tones"]
    speak_captions: bool = True


class AsteriskParams(Strict):
    sounds_dir: str = "/usr/share/asterisk/sounds/en_US_f_Allison"
    transcripts: str = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"


class EspeakParams(Strict):
    voices: list[str] = Field(default_factory=lambda: ["en-us+f3", "en-us+m3", "en-gb+f2", "en-us+m1"], min_length=1)
    words_per_minute: int = Field(150, ge=80, le=450)


class AudioCheckParams(Strict):
    sample_rate: int = Field(16000, ge=8000, le=48000)
    min_duration_s: float = Field(0.3, gt=0)
    max_duration_s: float = Field(30.0, gt=0, le=30.0)
    silence_dbfs: float = Field(-50.0, le=0)
    # a clip whose decoded float32 samples (frames x channels x 4 bytes, from the header) exceed this is
    # refused before decoding: bounds each worker's memory whatever the rate or channel count
    max_decoded_mb: int = Field(64, ge=1)
    format: Literal["flac", "wav"] = "flac"  # how download stores audio in its shards (16-bit PCM either way)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_duration_s >= self.max_duration_s:
            raise ValueError("min_duration_s must be < max_duration_s")
        return self


class OnlineParams(Strict):
    hf_split: str = "test"
    cache_dir: Optional[str] = None


class ImageParams(Strict):
    """How download stores images: RGB, shorter side at most ``short_side`` (never upscaled)."""

    short_side: int = Field(448, ge=32, le=4096)
    max_pixels: int = Field(100_000_000, ge=1024)  # refused above this before decoding (JPEGs decode at reduced scale)
    format: Literal["auto", "png", "jpeg"] = "auto"  # auto: JPEG sources stay JPEG, the rest become PNG
    jpeg_quality: int = Field(90, ge=50, le=100)


SourceName = Literal["openmoji", "asterisk", "coco", "flickr30k", "audiocaps", "clotho"]


LOCAL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


SplitMode = Literal["train", "val", "test", "from_file", "hash"]


class LocalBase(Strict):
    """One dataset on disk (an entry of ``download.local``)."""

    name: str = Field(pattern=LOCAL_NAME)  # item-id prefix and source name in metrics; unique
    path: str  # annotation / table file, or a glob of tar shards (webdataset)
    media_root: Optional[str] = None  # media paths in the file are relative to it; default: the file's folder
    split: Optional[SplitMode] = None  # default: from_file where the format has a split field, else hash
    limit: Optional[int] = Field(None, ge=1)
    license: str = ""
    attribution: str = ""

    has_split_field: ClassVar[bool] = False

    @property
    def split_mode(self) -> str:
        return self.split or ("from_file" if self.has_split_field else "hash")

    @model_validator(mode="after")
    def _split_available(self):
        if self.split == "from_file" and not self.has_split_field:
            raise ValueError(f"split=from_file: format {self.format!r} has no split field (use train, val, test or hash)")
        return self


class CocoLocal(LocalBase):
    format: Literal["coco"]


class KarpathyLocal(LocalBase):
    format: Literal["karpathy"]
    has_split_field: ClassVar[bool] = True


class TableLocal(LocalBase):
    """CSV / TSV / JSONL / Parquet (by extension); one row per caption or per item."""

    format: Literal["table"]
    image_key: Optional[str] = None  # column of image paths
    audio_key: Optional[str] = None  # column of audio paths
    image_template: Optional[str] = None  # or a path built from columns, e.g. "{image_id}.jpg"
    audio_template: Optional[str] = None  # e.g. "{youtube_id}_{start_time}.wav" (AudioCaps)
    caption_keys: list[str] = Field(min_length=1)  # one column (string or list) or several (caption_1..5)
    id_key: Optional[str] = None  # default: the media path (rows with the same path are one item)
    split_key: Optional[str] = None  # column with train/val/test (also validation, evaluation, restval, ...)
    group_key: Optional[str] = None  # items sharing this column's value share a split (default: the item)

    # from_file: the split column, or without one the file name (Clotho's development/validation/evaluation)
    has_split_field: ClassVar[bool] = True

    @property
    def split_mode(self) -> str:
        return self.split or ("from_file" if self.split_key else "hash")

    @model_validator(mode="after")
    def _one_path_per_medium(self):
        for medium in ("image", "audio"):
            if getattr(self, f"{medium}_key") and getattr(self, f"{medium}_template"):
                raise ValueError(f"give {medium}_key or {medium}_template, not both")
        if not any((self.image_key, self.audio_key, self.image_template, self.audio_template)):
            raise ValueError("a table needs image_key/image_template and/or audio_key/audio_template")
        return self


class WebDatasetLocal(LocalBase):
    format: Literal["webdataset"]


LocalSourceParams = Annotated[Union[CocoLocal, KarpathyLocal, TableLocal, WebDatasetLocal], Field(discriminator="format")]


class DownloadParams(Strict):
    sources: list[SourceName] = Field(default_factory=lambda: ["openmoji", "asterisk"])
    local: list[LocalSourceParams] = Field(default_factory=list)
    limit_per_source: Optional[int] = Field(None, ge=1)
    max_captions_per_item: int = Field(5, ge=1)
    reject_duplicate_captions: bool = True  # an item whose first caption is another item's is a reject
    group_shared_captions: bool = True  # items sharing a caption verbatim are one split group
    split: SplitParams = SplitParams()
    # a split group (group_key, shared caption, equal media content) that the data's given splits put in two
    # splits: report it (split_conflicts.csv), drop the items of the earlier split(s), or stop with an error
    split_conflicts: Literal["report", "drop", "error"] = "report"
    # image pairs across splits within this many pHash bits are counted and listed as near duplicates; null: off
    near_duplicate_hamming: Optional[int] = Field(4, ge=0, le=10)
    shard_size: int = Field(1000, ge=1)  # candidates per media shard (tar) and resume unit
    num_workers: int = Field(2, ge=1)  # threads decoding / normalising media
    max_file_mb: int = Field(512, ge=1)  # media files larger than this are rejects, never read
    # a source / download.local entry that keeps nothing beside others that keep items: an error (false) or a
    # warning (true); keeping nothing at all is always an error
    allow_empty_sources: bool = False
    image: ImageParams = ImageParams()
    openmoji: OpenMojiParams = OpenMojiParams()
    asterisk: AsteriskParams = AsteriskParams()
    espeak: EspeakParams = EspeakParams()
    audio: AudioCheckParams = AudioCheckParams()
    online: OnlineParams = OnlineParams()

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"sources must not repeat (got {v})")
        return v

    @model_validator(mode="after")
    def _some_source_and_unique_names(self):
        if not self.sources and not self.local:
            raise ValueError("no data: set download.sources and/or download.local")
        names = [e.name for e in self.local]
        clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(self.sources)))
        if clash:
            raise ValueError(f"local names must be unique and differ from download.sources (repeated: {clash})")
        return self
