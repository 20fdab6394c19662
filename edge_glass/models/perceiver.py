"""Perceiver resampler (Flamingo): a fixed set of latents reads a variable-length token sequence."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False))


class CrossAttention(nn.Module):
    """Queries from ``x`` attend to ``context``; pre-norms on both sides."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def attend(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.attend(self.norm_q(x), self.norm_kv(context))


class PerceiverAttention(CrossAttention):
    """Latents query [media; latents]: separate norms for media and latents, latents joined into keys/values."""

    @property
    def norm_latents(self) -> nn.LayerNorm:
        return self.norm_q

    @property
    def norm_media(self) -> nn.LayerNorm:
        return self.norm_kv

    def forward(self, media: torch.Tensor, latents: torch.Tensor, media_mask: torch.Tensor | None = None) -> torch.Tensor:
        """media (b, n, d), latents (b, m, d), media_mask (b, n) True for real tokens."""
        latents = self.norm_latents(latents)
        context = torch.cat([self.norm_media(media), latents], dim=1)
        mask = None
        if media_mask is not None:
            keep_latents = torch.ones(latents.shape[:2], dtype=torch.bool, device=latents.device)
            mask = torch.cat([media_mask, keep_latents], dim=1)[:, None, None, :]
        return self.attend(latents, context, mask)


class PerceiverResampler(nn.Module):
    """(b, n, in_dim) tokens with a mask -> (b, num_latents, dim) latents."""

    def __init__(self, in_dim: int, dim: int, num_latents: int, depth: int, heads: int, dim_head: int):
        super().__init__()
        self.proj_in = nn.Linear(in_dim, dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads, dim_head), feed_forward(dim)]) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        media = self.proj_in(tokens)
        x = repeat(self.latents, "m d -> b m d", b=tokens.shape[0])
        for attn, ff in self.layers:
            x = x + attn(media, x, mask)
            x = x + ff(x)
        return self.norm(x)


class MeanPool(nn.Module):
    """Ablation of the resampler: project tokens and take their masked mean as a single latent."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj_in = nn.Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """(b, 1, dim). The projection is affine, so it is applied to the masked mean token rather than to
        every token (the same result, n times fewer FLOPs); ``pooled``: that mean if the caller has it."""
        if pooled is None:
            w = torch.ones(tokens.shape[:2], device=tokens.device) if mask is None else mask
            w = w.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)
        return self.norm(self.proj_in(pooled)).unsqueeze(1)
