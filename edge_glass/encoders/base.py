"""The interface every frozen encoder offers to the preprocess stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class EncoderInfo:
    """What is recorded about an encoder next to its features."""

    modality: str
    name: str
    token_dim: int
    pooled_dim: int
    weights: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    settings: dict[str, Any] = field(default_factory=dict)


class FrozenEncoder:
    """``load`` decodes one input on the CPU; ``forward`` encodes a list of loaded inputs.

    ``forward`` returns per-item token features (n_i, token_dim) and pooled features (b, pooled_dim).
    """

    info: EncoderInfo

    def load(self, source: Any) -> Any:
        raise NotImplementedError

    @torch.inference_mode()
    def forward(self, batch: list[Any]) -> tuple[list[torch.Tensor], torch.Tensor]:
        raise NotImplementedError
