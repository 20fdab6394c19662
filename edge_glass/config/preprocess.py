"""params.preprocess: the frozen encoders and how their features are stored."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from edge_glass.config.base import DeviceSpec, Precision, Strict

# backend hf (encoders/hf.py): which hidden state is stored as tokens and what the pooled feature is.
# layer: null = the model's output (last_hidden_state, after any final norm); an int indexes
# output_hidden_states (0 = the embeddings, -1 = the last block's output, -2 the one before...).
# pool: model = the model's own pooled output (pooler_output / *_embeds / the CLS token); mean = the
# masked mean of the stored tokens.
HFLayer = Optional[int]
HFPool = Literal["model", "mean"]


SECTIONS = {"image": "vision", "audio": "audio", "text": "text"}  # modality -> its encoder's params section


class VisionEncoderParams(Strict):
    backend: Literal["efficientnet_lite0", "open_clip", "hf"] = "efficientnet_lite0"  # registry ENCODERS
    weights: Literal["pretrained", "random"] = "pretrained"  # random: architecture only (smoke tests, throughput)
    open_clip_model: str = "ViT-B-32"
    open_clip_pretrained: str = "openai"
    model: str = "facebook/dinov2-small"  # backend hf: a hub id or a local transformers folder
    layer: HFLayer = None
    pool: HFPool = "model"
    image_size: int = Field(224, ge=32, le=1024)
    batch_size: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _hf_needs_a_model(self):
        if self.backend == "hf" and not self.model.strip():
            raise ValueError("model: backend hf needs a hub id or a local transformers folder")
        return self


class AudioEncoderParams(Strict):
    backend: Literal["whisper", "hf"] = "whisper"  # registry ENCODERS
    model: str = "whisper-tiny.en"
    trim_to_length: bool = True
    token_pool: int = Field(2, ge=1, le=16)
    layer: HFLayer = None  # backend hf
    pool: HFPool = "mean"  # backend hf (wav2vec2, HuBERT and Whisper have no pooled output of their own)
    batch_size: int = Field(16, ge=1)


class TextEncoderParams(Strict):
    backend: Literal["sentence_transformers", "hf"] = "sentence_transformers"  # registry ENCODERS
    model: str = "all-MiniLM-L6-v2"
    max_length: int = Field(64, ge=4, le=512)
    layer: HFLayer = None  # backend hf
    pool: HFPool = "mean"  # backend hf
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
