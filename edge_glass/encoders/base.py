"""The interface every frozen encoder offers to the preprocess stage, and where it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edge_glass.device import autocast


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
    """``loader()`` decodes one input on the CPU (in loader workers); ``forward`` encodes a list of loaded
    inputs on ``self.device`` and returns per-item token features (n_i, token_dim) and pooled
    features (b, pooled_dim), both float32 on the CPU whatever device and autocast computed them.

    ``batch_size`` comes from the encoder's own params section (``preprocess.vision.batch_size``...).
    """

    info: EncoderInfo
    batch_size: int = 32
    decodes_media: bool = True  # False: inputs need no decoding (text), so loader processes would only add overhead
    device: torch.device = torch.device("cpu")
    precision: torch.dtype = torch.float32

    def modules(self) -> list[nn.Module]:
        """The networks that ``place`` moves to the device."""
        raise NotImplementedError

    def place(self, device: torch.device, precision: torch.dtype) -> "FrozenEncoder":
        """Move the networks to ``device``; ``forward`` then autocasts to ``precision`` (fp32: none)."""
        for m in self.modules():
            m.to(device)
        self.device, self.precision = torch.device(device), precision
        return self

    def autocast(self):
        return autocast(self.device, self.precision)

    def loader(self):
        """A picklable ``source -> input`` callable (decode, resize, resample) that loader workers run."""
        raise NotImplementedError

    def load(self, source: Any) -> Any:
        return self.loader()(source)

    @torch.inference_mode()
    def forward(self, batch: list[Any]) -> tuple[list[torch.Tensor], torch.Tensor]:
        raise NotImplementedError


def split_tokens(tokens: torch.Tensor) -> list[torch.Tensor]:
    """(b, n, d) device tokens -> per-item float32 CPU tensors, with one device-to-host copy."""
    return list(tokens.float().cpu())
