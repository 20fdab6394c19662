"""params.evaluate: retrieval, baseline, zero-shot classification and caption metrics."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from edge_glass.config.base import DeviceSpec, Strict

EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"  # Debian's unicode-data


class ZeroShotSet(Strict):
    """One labelled set of ``evaluate.zeroshot``: media with a class label each, scored by the CLIP protocol
    (class prompts from ``templates``, the class embedding the mean of its normalised prompt embeddings).

    ``format``: ``folder`` (ImageFolder: one subfolder per class under ``path``, its name the label),
    ``table`` (CSV/TSV/JSONL/Parquet at ``path`` with a media-path column ``path_key`` and a label column
    ``label_key``, paths relative to ``media_root``, default the table's folder) or ``emoji_groups`` (the
    openmoji items of ``evaluate.split`` labelled by their Unicode emoji group from ``path``, default
    Debian's emoji-test.txt; their image features are the preprocess stage's, not encoded again)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # key in metrics/zeroshot.json, folder in data/zeroshot
    modality: Literal["image", "audio"] = "image"
    format: Literal["folder", "table", "emoji_groups"]
    path: Optional[str] = None
    media_root: Optional[str] = None
    path_key: str = "path"
    label_key: str = "label"
    # label -> class name used in the prompts (a mapping, or a JSON/YAML/CSV file of one); default: the label
    classnames: Optional[Union[dict[str, str], str]] = None
    templates: Optional[list[str]] = Field(None, min_length=1)  # prompts with one {}; default by modality
    limit_per_class: Optional[int] = Field(None, ge=1)  # the first N items of each class (sorted by path)

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, v):
        bad = [t for t in v or [] if t.count("{}") != 1]
        if bad:
            raise ValueError(f"every template needs exactly one {{}} for the class name (got {bad[0]!r})")
        return v

    @model_validator(mode="after")
    def _path_needed(self):
        if self.format != "emoji_groups" and not self.path:
            raise ValueError(f"format {self.format!r} needs a path (the {'class folders' if self.format == 'folder' else 'table'})")
        if self.format == "emoji_groups" and self.modality != "image":
            raise ValueError("format 'emoji_groups' classifies the emoji images: modality must be image")
        if self.format != "table" and self.media_root:
            raise ValueError("media_root is for format 'table' (a folder set's media are under its path)")
        return self

    @property
    def source(self) -> str:
        return self.path or EMOJI_TEST


class EvaluateParams(Strict):
    split: Literal["train", "val", "test"] = "test"
    device: DeviceSpec = "auto"  # embedding and similarity chunks
    recall_k: list[int] = Field(default_factory=lambda: [1, 5, 10], min_length=1)
    chunk_size: int = Field(1024, ge=1)
    baseline_ridge: float = Field(100.0, ge=0)  # used when there is no val split to choose it
    caption_samples: int = Field(20, ge=0)  # generated vs reference rows in metrics/caption_samples.md
    bootstrap_resamples: int = Field(1000, ge=100)  # 95% intervals of every R@K, top-1 and caption metric
    # labelled sets for zero-shot classification (metrics/zeroshot.json); default: the emoji groups
    zeroshot: list[ZeroShotSet] = Field(default_factory=lambda: [ZeroShotSet(name="emoji_groups", format="emoji_groups")])

    @field_validator("recall_k")
    @classmethod
    def _positive_k(cls, v):
        if any(k < 1 for k in v):
            raise ValueError(f"recall_k values must be >= 1 (got {v})")
        return sorted(set(v))

    @field_validator("zeroshot")
    @classmethod
    def _unique_names(cls, v):
        names = [s.name for s in v]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"zero-shot set names must be unique (repeated: {repeated})")
        return v
