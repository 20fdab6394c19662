"""Matryoshka (MRL) projection heads and the contrastive loss summed over nested prefix dims."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MRLHead(nn.Module):
    """One projection to ``projection_dim``; every prefix ``[:d]`` is itself a usable embedding."""

    def __init__(self, in_dim: int, projection_dim: int, kind: str = "mlp", dropout: float = 0.0):
        super().__init__()
        if kind in ("linear", "pca"):
            self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, projection_dim))
        else:
            self.net = nn.Sequential(
                nn.LayerNorm(in_dim), nn.Linear(in_dim, projection_dim), nn.GELU(), nn.Dropout(dropout),
                nn.Linear(projection_dim, projection_dim),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mrl_embeddings(z: torch.Tensor, dims: list[int]) -> dict[int, torch.Tensor]:
    """L2-normalised prefixes of ``z`` for every MRL dim."""
    return {d: F.normalize(z[..., :d], dim=-1) for d in dims}


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP loss: row i of ``a`` matches row i of ``b``; mean of a->b and b->a cross-entropies."""
    logits = logit_scale * a @ b.t()
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def mrl_info_nce(
    a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, dims: list[int], weights: list[float] | None = None
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Weighted sum over dims of the InfoNCE loss on normalised prefixes; also returns each dim's loss."""
    weights = weights or [1.0] * len(dims)
    per_dim = {
        d: symmetric_info_nce(F.normalize(a[:, :d], dim=-1), F.normalize(b[:, :d], dim=-1), logit_scale) for d in dims
    }
    return sum(w * per_dim[d] for w, d in zip(weights, dims)), per_dim


@torch.no_grad()
def init_head_with_pca(head: MRLHead, x: torch.Tensor) -> None:
    """Set a linear head to the principal components of LayerNorm(x): prefix dims keep the most variance."""
    norm, linear = head.net[0], head.net[-1]
    h = norm(x.float())
    mean = h.mean(0)
    _, _, v = torch.linalg.svd(h - mean, full_matrices=False)
    k = linear.out_features
    if v.shape[0] < k:
        raise ValueError(f"PCA text head needs at least {k} caption features (got {v.shape[0]})")
    linear.weight.copy_(v[:k])
    linear.bias.copy_(-(v[:k] @ mean))
