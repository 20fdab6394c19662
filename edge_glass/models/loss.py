"""Contrastive losses of the align stage (open_clip keeps its losses in one loss.py, too).

Symmetric InfoNCE (CLIP) and SigLIP's sigmoid loss, their Matryoshka sums over nested prefix dims, and
the sum over configured modality pairs on the global batch, gathered over ranks with local gradients.
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


def sigmoid_terms(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(n, n) SigLIP terms: -log sigmoid(+-(scale * a_i . b_j + bias)), + on the diagonal (matches)."""
    logits = scale * a @ b.t() + bias
    labels = 2 * torch.eye(a.shape[0], device=a.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits)


def sigmoid_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SigLIP loss (Zhai et al. 2023; open_clip ``SigLipLoss``): every (a_i, b_j) of the batch is a
    binary problem, positive iff i == j; the sum over all n*n pairs divided by n. No softmax over the
    batch: the same value whether the pairs are summed in one block or in per-rank blocks."""
    return sigmoid_terms(a, b, scale, bias).sum() / a.shape[0]


def mrl_sigmoid(
    a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, dims: list[int],
    weights: list[float] | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Weighted sum over dims of the sigmoid loss on normalised prefixes, dim k with its own
    ``scales[k]`` and ``biases[k]``; also returns each dim's loss."""
    weights = weights or [1.0] * len(dims)
    per_dim = {d: sigmoid_loss(F.normalize(a[:, :d], dim=-1), F.normalize(b[:, :d], dim=-1), scales[k], biases[k])
               for k, d in enumerate(dims)}
    return sum(w * per_dim[d] for w, d in zip(weights, dims)), per_dim


@torch.no_grad()
def item_losses(model, a: torch.Tensor, b: torch.Tensor, pair: str, cfg: AlignParams) -> torch.Tensor:
    """Each row's share of one pair's loss: the mean of its a->b and b->a terms, so the mean over the rows
    is the pair's loss. Only for the logs (per-source losses); the training loss is computed as before."""
    weights = cfg.mrl.weights or [1.0] * len(cfg.mrl.dims)
    out = torch.zeros(a.shape[0], device=a.device)
    for k, (w, d) in enumerate(zip(weights, cfg.mrl.dims)):
        x, y = F.normalize(a[:, :d], dim=-1), F.normalize(b[:, :d], dim=-1)
        if cfg.loss.kind == "siglip":
            scales, biases = model.siglip_scale_bias(pair)
            terms = sigmoid_terms(x, y, scales[k], biases[k])
            out += w * (terms.sum(dim=1) + terms.sum(dim=0)) / 2
        else:
            logits = model.scale() * x @ y.t()
            target = torch.arange(a.shape[0], device=a.device)
            out += w * (F.cross_entropy(logits, target, reduction="none")
                        + F.cross_entropy(logits.t(), target, reduction="none")) / 2
    return out


def contrastive_loss(model, out: dict, cfg: AlignParams, info: DistInfo,
                     per_item: bool = False) -> tuple[torch.Tensor, dict[str, float]] | tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Sum over configured pairs of the MRL InfoNCE or sigmoid loss on the global batch (gathered over ranks).

    ``per_item``: also return each global-batch row's loss summed over the pairs it is in (every rank
    holds the whole global batch, so every rank gets the same vector; for per-source training curves)."""
    gathered = {m: (gather_with_local_grad(z, info), gather_with_local_grad(p.to(torch.uint8), info).bool())
                for m, (z, p) in out.items()}
    siglip = cfg.loss.kind == "siglip"
    scale = None if siglip else model.scale()
    device = next(iter(gathered.values()))[0].device
    total = torch.zeros((), device=device)
    rows = torch.zeros(len(next(iter(gathered.values()))[0]), device=device) if per_item else None
    parts = {}
    for pair in cfg.loss.pairs:
        a, b = PAIRS[pair]
        if a not in gathered or b not in gathered:
            continue
        (za, pa), (zb, pb) = gathered[a], gathered[b]
        valid = pa & pb
        if int(valid.sum()) < 2:
            continue
        if siglip:
            scales, biases = model.siglip_scale_bias(pair)
            loss, _ = mrl_sigmoid(za[valid], zb[valid], scales, biases, cfg.mrl.dims, cfg.mrl.weights)
        else:
            loss, _ = mrl_info_nce(za[valid], zb[valid], scale, cfg.mrl.dims, cfg.mrl.weights)
        total = total + loss
        parts[pair] = float(loss.detach())
        if per_item:
            rows[valid] += item_losses(model, za[valid].detach(), zb[valid].detach(), pair, cfg)
    return (total, parts, rows) if per_item else (total, parts)
