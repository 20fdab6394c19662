"""Matryoshka (MRL) projection heads and the contrastive loss summed over nested prefix dims."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge_glass.features.keyed_random import keyed_uniforms


class MRLHead(nn.Module):
    """One projection to ``projection_dim``; every prefix ``[:d]`` is itself a usable embedding.

    Dropout is keyed when the caller passes the rows' global batch positions and a (seed, step, micro)
    key: the mask is then a pure function of those (see keyed_random), the same for 1 or N processes
    and after a resume. Without them it is ordinary ``nn.Dropout``."""

    def __init__(self, in_dim: int, projection_dim: int, kind: str = "mlp", dropout: float = 0.0, *, dropout_id: int = 0):
        super().__init__()
        self.dropout_id = dropout_id
        if kind in ("linear", "pca"):
            self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, projection_dim))
        else:
            self.net = nn.Sequential(
                nn.LayerNorm(in_dim), nn.Linear(in_dim, projection_dim), nn.GELU(), nn.Dropout(dropout),
                nn.Linear(projection_dim, projection_dim),
            )

    def forward(self, x: torch.Tensor, positions=None, key: tuple[int, int, int] | None = None) -> torch.Tensor:
        for layer in self.net:
            if isinstance(layer, nn.Dropout) and self.training and layer.p > 0 and key is not None and positions is not None:
                keep = keyed_uniforms((*key, 1000 + self.dropout_id), positions, x.shape[-1]) >= layer.p
                x = x * torch.from_numpy(keep).to(device=x.device, dtype=x.dtype) / (1 - layer.p)
            else:
                x = layer(x)
        return x


class MomentAccumulator:
    """Streaming float64 sums (n, sum x, sum x x^T) over row chunks: memory O(d^2), not O(n d).

    Chunks are added in a fixed order and summed in float64, so the result does not depend on how many
    items there are per chunk in memory or (beyond float64 rounding) on the BLAS thread count."""

    def __init__(self):
        self.n, self.s, self.ss = 0, None, None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double().cpu()
        if self.s is None:
            self.s, self.ss = torch.zeros(x.shape[1], dtype=torch.float64), torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        self.n += len(x)
        self.s += x.sum(0)
        self.ss += x.t() @ x

    @property
    def mean(self) -> torch.Tensor:
        return self.s / self.n

    def covariance(self) -> torch.Tensor:
        return (self.ss - self.n * torch.outer(self.mean, self.mean)) / max(self.n - 1, 1)


def layer_norm64(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` computed in float64 (the PCA statistics then carry no float32 rounding)."""
    x = x.double()
    w = norm.weight.double() if norm.weight is not None else 1.0
    b = norm.bias.double() if norm.bias is not None else 0.0
    return F.layer_norm(x, x.shape[-1:], None, None, norm.eps) * w + b


@torch.no_grad()
def init_head_with_pca(head: MRLHead, chunks) -> None:
    """Set a linear head to the principal components of LayerNorm(x): prefix dims keep the most variance.

    ``chunks``: an iterable of (n_i, d) feature tensors (or one tensor), streamed through float64
    moments, so all captions of a large data set never sit in memory at once and the result does not
    depend on the thread count. Each component's sign is fixed (largest coordinate positive)."""
    norm, linear = head.net[0], head.net[-1]
    acc = MomentAccumulator()
    for x in [chunks] if isinstance(chunks, torch.Tensor) else chunks:
        acc.add(layer_norm64(norm, x))
    k = linear.out_features
    if acc.n < k:
        raise ValueError(f"PCA text head needs at least {k} caption features (got {acc.n})")
    evals, evecs = torch.linalg.eigh(acc.covariance())
    v = evecs.flip(1)[:, :k].t()  # (k, d), by decreasing variance
    sign = torch.sign(v.gather(1, v.abs().argmax(1, keepdim=True)))
    v = v * sign
    linear.weight.copy_(v.float())
    linear.bias.copy_((-(v @ acc.mean)).float())
