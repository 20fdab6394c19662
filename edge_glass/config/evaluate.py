"""params.evaluate: retrieval, baseline and caption metrics."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from edge_glass.config.base import DeviceSpec, Strict


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
