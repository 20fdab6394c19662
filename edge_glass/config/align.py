"""params.align: resamplers, fusion, Matryoshka heads, loss and training."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field, field_validator, model_validator

from edge_glass.config.base import (
    DeviceSpec,
    OptimizerParams,
    Precision,
    Strict,
    _no_fp16_training,
)


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


class LossParams(Strict):
    # infonce: symmetric InfoNCE (CLIP) with one learnable temperature; siglip: the sigmoid loss of
    # SigLIP (Zhai et al. 2023) with a learnable log-scale and bias per loss pair and MRL dim
    kind: Literal["infonce", "siglip"] = "infonce"
    temperature_init: float = Field(0.07, gt=0)  # infonce
    learnable_temperature: bool = True  # infonce's temperature; siglip's scales (its biases always learn)
    siglip_init_scale: float = Field(10.0, gt=0)  # the log-scale starts at log(10), as in the paper
    siglip_init_bias: float = -10.0
    pairs: list[Literal["image_text", "audio_text", "image_audio", "fused_text"]] = Field(
        default_factory=lambda: ["image_text", "audio_text", "fused_text"], min_length=1
    )


class DataParams(Strict):
    # source name (the manifest's ``source``) -> sampling weight: an item of source s is drawn with
    # probability proportional to w_s; a source not listed keeps weight 1; {} = uniform over items
    # (epoch-wise permutations, the sampler without weights)
    weights: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(default_factory=dict)


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
    data: DataParams = DataParams()
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
