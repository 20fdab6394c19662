"""The decoder registry: ``decode.kind`` -> the builder that makes that caption decoder.

Each decoder module owns its builder (what it loads, which vocabulary it uses) and registers it
with one decorator line, like ``FUSIONS`` for fusion and ``SOURCES`` for data sources. A builder is
``build(params, latent_dim, embedding_dim, lm_dir, captions, device) -> CaptionDecoder``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from edge_glass.core.registry import registrar

DECODERS: dict[str, Callable] = {}


register_decoder = registrar(DECODERS, "decoder")


def build_decoder(params, latent_dim: int, embedding_dim: int, lm_dir: str | Path, captions: list[str] | None = None,
                  device: torch.device | str = "cpu"):
    """The decoder named by ``decode.kind`` on ``device``; seeded so every run starts from the same weights.

    ``captions`` (the training captions) set the TRM's closed vocabulary when ``trm.vocab: caption``."""
    import edge_glass.decoders.lora_lm  # noqa: F401  (fill the registry)
    import edge_glass.decoders.trm  # noqa: F401

    kind = params.decode.kind
    if kind not in DECODERS:
        raise ValueError(f"decode.kind: unknown decoder {kind!r} (choose from {sorted(DECODERS)})")
    return DECODERS[kind](params, latent_dim, embedding_dim, lm_dir, captions, torch.device(device))
