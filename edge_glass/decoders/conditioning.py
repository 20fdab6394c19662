"""Aligned features that condition the caption decoders, and the projector that turns them into prefix tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from edge_glass.features.dataset import MEDIA, Batch, FeatureSplit
from edge_glass.models.aligner import AlignModel


@dataclass
class Conditioning:
    """Per item: resampler (or fused) latents pooled to ``k`` tokens, and the aligned MRL embedding."""

    latents: torch.Tensor  # (n, k, dim)
    embedding: torch.Tensor  # (n, projection_dim)

    def __len__(self) -> int:
        return len(self.latents)

    def select(self, idx) -> "Conditioning":
        idx = torch.as_tensor(idx, device=self.latents.device)
        return Conditioning(self.latents[idx], self.embedding[idx])

    def to(self, device) -> "Conditioning":
        return Conditioning(self.latents.to(device), self.embedding.to(device))

    def repeat_interleave(self, n: int) -> "Conditioning":
        return Conditioning(self.latents.repeat_interleave(n, 0), self.embedding.repeat_interleave(n, 0))


def pool_latents(latents: torch.Tensor, k: int) -> torch.Tensor:
    """(b, m, d) -> (b, k, d) by adaptive average pooling over the latent axis."""
    return rearrange(F.adaptive_avg_pool1d(rearrange(latents, "b m d -> b d m"), k), "b d k -> b k d")


@torch.no_grad()
def aligned_conditioning(model: AlignModel, data: FeatureSplit, prefix_tokens: int, batch_size: int = 256) -> Conditioning:
    """Run the frozen align model once over ``data`` (:func:`batch_conditioning` per batch)."""
    model.eval()
    device = next(model.parameters()).device
    parts = [batch_conditioning(model, data.batch(list(range(start, min(start + batch_size, len(data))))).to(device),
                                prefix_tokens)
             for start in range(0, len(data), batch_size)]
    return Conditioning(torch.cat([c.latents for c in parts]), torch.cat([c.embedding for c in parts]))


@torch.no_grad()
def batch_conditioning(model: AlignModel, batch: Batch, prefix_tokens: int) -> Conditioning:
    """Conditioning of one batch (on the model's device): fused latents where an item has image and
    audio, else the latents of the medium it has; the embedding of the same (fused or single) branch.
    The decode stage (cached features) and ``edge_glass.load(...).caption`` (new files) both call it."""
    out = model(batch)
    lat = {m: model.latents(m, batch.tokens[m], batch.masks[m]) for m in model.media}
    fused = model.fusion(lat["image"], lat["audio"]) if model.has_fusion else None
    present = {m: batch.present[m].tolist() for m in model.media}  # one device sync per batch
    latents, embeddings = [], []
    for j in range(len(batch.text)):
        have = [m for m in MEDIA if m in model.media and present[m][j]]
        branch = "fused" if fused is not None and len(have) == 2 else have[0]
        tokens = fused[j] if branch == "fused" else lat[branch][j]
        latents.append(pool_latents(tokens[None], prefix_tokens)[0])
        embeddings.append(out[branch][0][j])
    return Conditioning(torch.stack(latents), torch.stack(embeddings))


class Projector(nn.Module):
    """Latents and embedding -> ``k + 1`` prefix tokens in the decoder's embedding size (two-layer MLPs)."""

    def __init__(self, latent_dim: int, embedding_dim: int, out_dim: int):
        super().__init__()

        def mlp(d):
            return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

        self.latents = mlp(latent_dim)
        self.embedding = mlp(embedding_dim)

    def forward(self, cond: Conditioning) -> torch.Tensor:
        return torch.cat([self.latents(cond.latents), self.embedding(cond.embedding)[:, None]], dim=1)
