"""Contrastive losses of the align stage (open_clip keeps its losses in one loss.py, too).

Symmetric InfoNCE (CLIP), its Matryoshka sum over nested prefix dims, and the sum over configured
modality pairs on the global batch, gathered over ranks with local gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edge_glass.config.align import AlignParams
from edge_glass.train.distributed import DistInfo, gather_with_local_grad

PAIRS = {"image_text": ("image", "text"), "audio_text": ("audio", "text"),
         "image_audio": ("image", "audio"), "fused_text": ("fused", "text")}


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


def contrastive_loss(model, out: dict, cfg: AlignParams, info: DistInfo) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over configured pairs of the MRL InfoNCE loss on the global batch (gathered over ranks)."""
    gathered = {m: (gather_with_local_grad(z, info), gather_with_local_grad(p.to(torch.uint8), info).bool())
                for m, (z, p) in out.items()}
    scale = model.scale()
    total = torch.zeros((), device=scale.device)
    parts = {}
    for pair in cfg.loss.pairs:
        a, b = PAIRS[pair]
        if a not in gathered or b not in gathered:
            continue
        (za, pa), (zb, pb) = gathered[a], gathered[b]
        valid = pa & pb
        if int(valid.sum()) < 2:
            continue
        loss, _ = mrl_info_nce(za[valid], zb[valid], scale, cfg.mrl.dims, cfg.mrl.weights)
        total = total + loss
        parts[pair] = float(loss.detach())
    return total, parts
