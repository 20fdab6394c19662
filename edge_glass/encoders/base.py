"""The interface every frozen encoder offers to the preprocess stage, and where it runs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_glass.core.device import autocast


@dataclass
class EncoderInfo:
    """What is recorded about an encoder next to its features."""

    modality: str
    name: str
    token_dim: int
    pooled_dim: int
    # what computes the features: "state_dict" and "architecture" (module_hashes) for every backend, plus
    # file name -> sha256 of the weight files where they are at hand
    weights: dict[str, str] = field(default_factory=dict)
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

    max_tokens: int | None = None  # text encoders: inputs longer than this many tokens are truncated

    def token_count(self, text: str) -> int:
        """Tokens of ``text`` as the encoder's tokenizer counts them (text encoders)."""
        raise NotImplementedError

    @torch.inference_mode()
    def forward(self, batch: list[Any]) -> tuple[list[torch.Tensor], torch.Tensor]:
        raise NotImplementedError


def split_tokens(tokens: torch.Tensor) -> list[torch.Tensor]:
    """(b, n, d) device tokens -> per-item float32 CPU tensors, with one device-to-host copy."""
    return list(tokens.float().cpu())


_HASHES: dict[tuple, dict[str, str]] = {}  # per process: (backend, weight source stamp) -> module_hashes


def module_hashes(modules: list[nn.Module], cache_key: tuple | None = None) -> dict[str, str]:
    """sha256 of the loaded networks: ``state_dict`` over every tensor (name, dtype, shape, bytes) and
    ``architecture`` over the module tree (types and their settings: eps, pooling mode, ...).

    The weights that compute the features, whatever they were loaded from (a file, a hub id resolved in
    the cache, a conversion): a shard fingerprint built on them changes with any weight change, where a
    file hash exists only for some backends. One pass over the bytes (~0.1 s for MiniLM on the CPU);
    ``cache_key`` (backend and :func:`source_stamp` of where the weights came from) skips even that for an
    encoder loaded again in the same process (torchrun's rank pass, then rank 0's pass)."""
    if cache_key is not None and cache_key in _HASHES:
        return dict(_HASHES[cache_key])
    weights, arch = hashlib.sha256(), hashlib.sha256()
    for i, module in enumerate(modules):
        arch.update(f"{i}:{module!r}\n".encode())
        for name, sub in module.named_modules():
            arch.update(f"{i}.{name}:{type(sub).__module__}.{type(sub).__qualname__}({sub.extra_repr()})\n".encode())
        for name, t in sorted(module.state_dict().items()):
            weights.update(f"{i}.{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
            weights.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    out = {"state_dict": weights.hexdigest(), "architecture": arch.hexdigest()}
    if cache_key is not None:
        _HASHES[cache_key] = dict(out)
    return out


def source_stamp(source: str | Path) -> tuple:
    """Where weights come from, cheaply: a file's or a folder's files' (path, size, mtime), else the name
    (a hub id). The cache key of :func:`module_hashes`, never a fingerprint itself."""
    path = Path(source)
    if not path.exists():
        return (str(source),)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
