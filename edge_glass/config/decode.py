"""params.decode: the caption decoder (LoRA causal LM or TRM), its training and generation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from edge_glass.config.base import (
    DeviceSpec,
    OptimizerParams,
    Precision,
    Strict,
    _no_fp16_training,
)


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
