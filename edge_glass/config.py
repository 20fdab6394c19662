"""Typed schema for params.yaml; every stage validates its params at start-up.

Errors name the offending key, e.g. ``align.perceiver.num_latents: must be >= 1 (got 0)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


# One device rule for every stage (edge_glass.device): auto = this process's GPU when CUDA is present
DeviceSpec = Annotated[str, Field(pattern=r"^(auto|cpu|cuda|cuda:\d+)$")]
# autocast dtype; auto = bf16 on CUDA, fp32 (no autocast) on the CPU
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class ParamsError(ValueError):
    """A params.yaml value is unknown, of the wrong type or out of range."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class VisionEncoderParams(Strict):
    backend: Literal["efficientnet_lite0", "open_clip"] = "efficientnet_lite0"  # registry ENCODERS
    weights: Literal["pretrained", "random"] = "pretrained"  # random: architecture only (smoke tests, throughput)
    open_clip_model: str = "ViT-B-32"
    open_clip_pretrained: str = "openai"
    image_size: int = Field(224, ge=32, le=1024)
    batch_size: int = Field(32, ge=1)


class AudioEncoderParams(Strict):
    backend: Literal["whisper"] = "whisper"  # registry ENCODERS
    model: str = "whisper-tiny.en"
    trim_to_length: bool = True
    token_pool: int = Field(2, ge=1, le=16)
    batch_size: int = Field(16, ge=1)


class TextEncoderParams(Strict):
    backend: Literal["sentence_transformers"] = "sentence_transformers"  # registry ENCODERS
    model: str = "all-MiniLM-L6-v2"
    max_length: int = Field(64, ge=4, le=512)
    batch_size: int = Field(128, ge=1)


class PreprocessParams(Strict):
    modalities: list[Literal["image", "audio", "text"]] = Field(default_factory=lambda: ["image", "audio", "text"], min_length=1)
    dtype: Literal["float16", "float32"] = "float16"
    shard_size: int = Field(512, ge=1)
    num_threads: Optional[int] = Field(None, ge=1)
    nproc_per_node: int = Field(1, ge=1)  # torchrun processes; each writes its own shards
    device: DeviceSpec = "auto"  # encoders run here (auto: the rank's own GPU, else the CPU)
    precision: Precision = "auto"  # encoder autocast
    num_workers: int = Field(0, ge=0)  # media-decoding processes (0: one thread of the main process)
    vision: VisionEncoderParams = VisionEncoderParams()
    audio: AudioEncoderParams = AudioEncoderParams()
    text: TextEncoderParams = TextEncoderParams()


class PerceiverParams(Strict):
    num_latents: int = Field(64, ge=1)
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    dim_head: int = Field(32, ge=1)
    pool: Literal["perceiver", "mean"] = "mean"


class MRLParams(Strict):
    dims: list[int] = Field(default_factory=lambda: [256, 128, 64, 32], min_length=1)
    weights: Optional[list[float]] = None

    @field_validator("dims")
    @classmethod
    def _descending(cls, v):
        if any(d <= 0 for d in v):
            raise ValueError(f"dims must be positive (got {v})")
        if any(a <= b for a, b in zip(v, v[1:])):
            raise ValueError(f"dims must be strictly descending (got {v})")
        return v

    @model_validator(mode="after")
    def _weights_match(self):
        if self.weights is not None and len(self.weights) != len(self.dims):
            raise ValueError(f"weights has {len(self.weights)} entries but dims has {len(self.dims)}")
        return self


class OptimizerParams(Strict):
    """AdamW with linear warmup + cosine decay, clipping and checkpoints (decode.train; base of align.train)."""

    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(20, ge=0)
    clip_grad: Optional[float] = Field(1.0, gt=0)
    checkpoint_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    num_threads: Optional[int] = Field(None, ge=1)
    # training randomness (initialisation, batches, dropout); null: the top-level seed, which also
    # decides the data splits. A seed sweep varies this one and keeps the test set.
    seed: Optional[int] = None


class TrainParams(OptimizerParams):
    batch_size: int = Field(128, ge=2)  # global contrastive batch (over all ranks)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    grad_accum: int = Field(1, ge=1)
    eval_every: int = Field(20, ge=1)
    nproc_per_node: int = Field(1, ge=1)
    select: Literal["best_val", "last"] = "best_val"  # best_val needs a val split (an error without one)
    precision: Precision = "auto"  # fp16 refused: see _no_fp16_training

    @field_validator("precision")
    @classmethod
    def _no_fp16(cls, v):
        return _no_fp16_training(v)


def _no_fp16_training(v: str) -> str:
    """fp16 gradients underflow without loss scaling, and edge_glass has no GradScaler: refused, not run silently.

    Refusing instead of adding a GradScaler: bf16 (same speed on every GPU from Ampere on, no underflow)
    and fp32 cover training, and a scaler would add state to every checkpoint and skipped steps to the
    exact-resume and multi-rank guarantees, for GPUs (pre-Ampere) that the project does not target."""
    if v == "fp16":
        raise ValueError("fp16 needs loss scaling, which edge_glass does not do; use bf16 or fp32")
    return v


class LossParams(Strict):
    temperature_init: float = Field(0.07, gt=0)
    learnable_temperature: bool = True
    pairs: list[Literal["image_text", "audio_text", "image_audio", "fused_text"]] = Field(
        default_factory=lambda: ["image_text", "audio_text", "fused_text"], min_length=1
    )


class AlignParams(Strict):
    device: DeviceSpec = "auto"  # auto: the rank's own GPU, else the CPU
    dim: int = Field(128, ge=8)
    projection_dim: int = Field(256, ge=1)
    text_head: Literal["mlp", "linear", "pca"] = "pca"
    freeze_text_head: bool = True
    dropout: float = Field(0.1, ge=0, lt=1)
    token_dropout: float = Field(0.3, ge=0, lt=1)
    linear_path: bool = True
    fusion: Literal["concat", "cross_attention", "gated"] = "gated"
    perceiver: PerceiverParams = PerceiverParams()
    mrl: MRLParams = MRLParams()
    loss: LossParams = LossParams()
    train: TrainParams = TrainParams()

    @model_validator(mode="after")
    def _no_frozen_random_head(self):
        if self.freeze_text_head and self.text_head != "pca":
            raise ValueError(f"freeze_text_head: true with text_head: {self.text_head} would freeze a randomly "
                             "initialised projection (only the pca head starts from the caption features); "
                             "set align.freeze_text_head: false or align.text_head: pca")
        return self

    @model_validator(mode="after")
    def _mrl_fits_projection(self):
        if self.mrl.dims[0] > self.projection_dim:
            raise ValueError(
                f"mrl.dims[0]={self.mrl.dims[0]} is larger than projection_dim={self.projection_dim}"
            )
        if self.train.batch_size % self.train.nproc_per_node:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} must be divisible by train.nproc_per_node={self.train.nproc_per_node}"
            )
        return self


class LoraParams(Strict):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)


class LMParams(Strict):
    model: str = "SmolLM2-135M-Instruct"  # packaged GGUF (prepare_lm stage) or a hub id / local folder
    quantization: Literal["none", "8bit", "4bit"] = "none"
    lora: LoraParams = LoraParams()


class TRMParams(Strict):
    dim: int = Field(256, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    latent_steps: int = Field(3, ge=1)  # n: latent updates per cycle
    cycles: int = Field(2, ge=1)  # T: latent-then-answer cycles; all but the last run without gradient
    vocab: Literal["caption", "full"] = "caption"  # output over tokens seen in training captions, or the whole tokenizer
    dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_dim(self):
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        return self


class GenerateParams(Strict):
    strategy: Literal["greedy", "beam", "nucleus"] = "greedy"
    num_beams: int = Field(3, ge=1)
    length_penalty: float = 1.0  # beam: finished hypotheses ranked by sum log p / length**length_penalty
    top_p: float = Field(0.9, gt=0, le=1)
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(16, ge=1)
    min_new_tokens: int = Field(0, ge=0)  # EOS is not allowed before this many tokens
    batch_size: int = Field(64, ge=1)


class DecodeParams(Strict):
    kind: Literal["lora_lm", "trm"] = "lora_lm"
    device: DeviceSpec = "auto"  # decoder training and generation
    precision: Precision = "auto"  # autocast of the LM / TRM (training and generation); fp16 refused (no loss scaling)
    prefix_tokens: int = Field(4, ge=1)  # aligned latents pooled to this many prefix tokens
    max_caption_tokens: int = Field(24, ge=2)
    split: Literal["train", "val", "test"] = "test"
    lm: LMParams = LMParams()
    trm: TRMParams = TRMParams()
    train: OptimizerParams = OptimizerParams()
    generate: GenerateParams = GenerateParams()

    @field_validator("precision")
    @classmethod
    def _no_fp16(cls, v):
        return _no_fp16_training(v)


class EvaluateParams(Strict):
    split: Literal["train", "val", "test"] = "test"
    device: DeviceSpec = "auto"  # embedding and similarity chunks
    recall_k: list[int] = Field(default_factory=lambda: [1, 5, 10], min_length=1)
    chunk_size: int = Field(1024, ge=1)
    baseline_ridge: float = Field(100.0, ge=0)  # used when there is no val split to choose it
    caption_samples: int = Field(20, ge=0)  # generated vs reference rows in metrics/caption_samples.md
    bootstrap_resamples: int = Field(1000, ge=100)  # 95% intervals of every R@K and caption metric

    @field_validator("recall_k")
    @classmethod
    def _positive_k(cls, v):
        if any(k < 1 for k in v):
            raise ValueError(f"recall_k values must be >= 1 (got {v})")
        return sorted(set(v))


class ReportParams(Strict):
    """The HTML report (``python -m edge_glass.report --html``, the ``report`` stage)."""

    samples: int = Field(12, ge=1)  # random queries per direction, worst failures, caption cards
    top_k: int = Field(5, ge=1, le=50)
    thumbnail_px: int = Field(128, ge=16, le=512)
    audio_seconds: float = Field(5.0, gt=0, le=30)


class Params(Strict):
    seed: int = 0
    download: DownloadParams = DownloadParams()
    preprocess: PreprocessParams = PreprocessParams()
    align: AlignParams = AlignParams()
    decode: DecodeParams = DecodeParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()

    @model_validator(mode="after")
    def _decode_captions_the_scored_split(self):
        if self.decode.split != self.evaluate.split:
            raise ValueError(f"decode.split={self.decode.split} but evaluate.split={self.evaluate.split}: evaluate "
                             "scores the captions decode writes, so both must name the same split")
        return self

    @property
    def align_seed(self) -> int:
        """Seed of align's randomness: ``align.train.seed``, else ``seed``."""
        return self.seed if self.align.train.seed is None else self.align.train.seed

    @property
    def decode_seed(self) -> int:
        """Seed of decode's randomness (init, batches, dropout, sampling): ``decode.train.seed``, else ``seed``."""
        return self.seed if self.decode.train.seed is None else self.decode.train.seed


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        got = "" if e["type"] == "extra_forbidden" else f" (got {e.get('input')!r})"
        if isinstance(e.get("input"), dict):
            got = ""
        lines.append(f"{source}: {key or '<root>'}: {msg}{got}")
    return "\n".join(lines)


def parse_params(raw: dict, source: str = "params") -> Params:
    """Validate a params mapping; raise ParamsError naming every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: file not found (run from the repository root)")
    with open(path) as f:
        raw = yaml.safe_load(f)
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    return parse_params(raw, source=str(path))
