"""Fusion of two media token sequences (image latents, audio latents) into one sequence."""

from __future__ import annotations

import torch
from torch import nn

from edge_glass.models.perceiver import CrossAttention, feed_forward


class ConcatFusion(nn.Module):
    """Both sequences side by side; a learned type embedding tells them apart."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.type_embed = nn.Parameter(torch.zeros(2, dim))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a + self.type_embed[0], b + self.type_embed[1]], dim=1)


class CrossAttentionFusion(nn.Module):
    """``a`` attends to ``b`` (residual), then a feed-forward layer."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.attn = CrossAttention(dim, heads, dim_head)
        self.ff = feed_forward(dim)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = a + self.attn(a, b)
        return x + self.ff(x)


class GatedCrossAttentionFusion(CrossAttentionFusion):
    """Flamingo's gated cross-attention: tanh gates start at 0, so fusion starts as the identity on ``a``."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__(dim, heads, dim_head)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = a + self.attn_gate.tanh() * self.attn(a, b)
        return x + self.ff_gate.tanh() * self.ff(x)


FUSIONS = {"concat": ConcatFusion, "cross_attention": CrossAttentionFusion, "gated": GatedCrossAttentionFusion}


def build_fusion(kind: str, dim: int, heads: int, dim_head: int) -> nn.Module:
    if kind not in FUSIONS:
        raise ValueError(f"align.fusion: unknown fusion '{kind}' (choose from {sorted(FUSIONS)})")
    return FUSIONS[kind](dim, heads, dim_head)
