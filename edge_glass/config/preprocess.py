"""params.preprocess: the frozen encoders and how their features are stored."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from edge_glass.config.base import DeviceSpec, Precision, Strict


SECTIONS = {"image": "vision", "audio": "audio", "text": "text"}  # modality -> its encoder's params section


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
