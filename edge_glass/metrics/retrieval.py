"""Recall@K for cross-modal retrieval with several captions per item (CLIP_benchmark convention).

A query scores a hit at k if any gallery entry owned by the query's item is among its top k. The
per-query statistic is the rank of the first hit (``query_ranks``); Recall@K is the mean of
``rank < K``, and its bootstrap interval resamples the test items that own the queries, keeping these
ranks fixed (``edge_glass.metrics.bootstrap.cluster_ci``).
Ties have a defined order: equal similarities rank by gallery index (the lower first), so results do
not depend on how a top-k kernel happens to order them. Similarities are computed in chunks of
queries, so memory is chunk_size x gallery.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from edge_glass.features.dataset import FeatureSplit
from edge_glass.models.aligner import AlignModel


def query_ranks(queries: torch.Tensor, query_owner, gallery: torch.Tensor, gallery_owner,
                chunk_size: int = 1024) -> np.ndarray:
    """0-based rank of each query's first true gallery entry (``len(gallery)`` when it has none).

    queries (nq, d), gallery (ng, d), both L2-normalised; owners are item ids per row. Computed on the
    gallery's device (the evaluate stage's ``evaluate.device``)."""
    device = gallery.device
    queries = queries.to(device)
    codes = {o: i for i, o in enumerate(dict.fromkeys([*query_owner, *gallery_owner]))}
    q_own = torch.tensor([codes[o] for o in query_owner], device=device, dtype=torch.long)
    g_own = torch.tensor([codes[o] for o in gallery_owner], device=device, dtype=torch.long)
    ng = gallery.shape[0]
    index = torch.arange(ng, device=device)
    ranks = []
    for start in range(0, queries.shape[0], chunk_size):
        sims = queries[start : start + chunk_size].float() @ gallery.float().t()
        positive = g_own[None, :] == q_own[start : start + chunk_size, None]
        best = torch.where(positive, sims, torch.full_like(sims, float("-inf"))).max(1).values
        # the first true entry in the tie order: best similarity, then lowest gallery index
        first = torch.where(positive & (sims == best[:, None]), index, ng).min(1).values
        ahead = (sims > best[:, None]) | ((sims == best[:, None]) & (index[None, :] < first[:, None]))
        rank = ahead.sum(1)
        ranks.append(torch.where(positive.any(1), rank, torch.full_like(rank, ng)).cpu())
    return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)


def recall_from_ranks(ranks: np.ndarray, ks: list[int]) -> dict[int, float]:
    n = max(len(ranks), 1)
    return {k: float((np.asarray(ranks) < k).sum() / n) for k in ks}


def recall_at_k(
    queries: torch.Tensor, query_owner, gallery: torch.Tensor, gallery_owner, ks: list[int], chunk_size: int = 1024,
) -> dict[int, float]:
    """Recall@K for every k in ``ks`` (see ``query_ranks``)."""
    return recall_from_ranks(query_ranks(queries, query_owner, gallery, gallery_owner, chunk_size), ks)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_split(model: AlignModel, data: FeatureSplit, batch_size: int = 256) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """Projected (unnormalised) embeddings of every media item and every caption of ``data``, on the CPU.

    Batches go to the model's device and results come back, so evaluation runs wherever the model is."""
    device = model_device(model)
    rows: dict[str, list] = {}
    owners: dict[str, list] = {}
    text_rows, text_owners = [], []
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        out = model(data.batch(idx).to(device))
        for m, (z, present) in out.items():
            if m == "text":
                continue
            present = present.cpu()
            rows.setdefault(m, []).append(z.float().cpu()[present])
            owners.setdefault(m, []).extend(data.item_ids[i] for i, p in zip(idx, present.tolist()) if p)
        feats, owner = data.caption_features(idx)
        text_rows.append(model.heads["text"](feats.to(device)).float().cpu())
        text_owners.extend(data.item_ids[i] for i in owner)
    result = {m: (torch.cat(rows[m]), owners[m]) for m in rows}
    result["text"] = (torch.cat(text_rows), text_owners)
    return result


def caption_ids(owners: list[str]) -> list[str]:
    """``item#j`` for the j-th caption of each item in ``owners`` order: query names a PR can pair on."""
    seen: dict[str, int] = {}
    out = []
    for o in owners:
        out.append(f"{o}#{seen.get(o, 0)}")
        seen[o] = seen.get(o, 0) + 1
    return out


def media_text_ranks(media: tuple[torch.Tensor, list], text: tuple[torch.Tensor, list], name: str,
                     chunk: int) -> dict[str, pd.DataFrame]:
    """Per-query first-hit ranks for media->text (over captions of items that have this medium) and
    text->media; inputs normalised. One frame per task: ``query``, ``item_id``, ``rank``."""
    zm, own_m = media
    zt, own_t = text
    own_m = np.asarray(own_m)
    keep = np.isin(np.asarray(own_t), own_m)
    zt, own_t = zt[torch.from_numpy(keep).to(zt.device)], np.asarray(own_t)[keep]
    return {
        f"{name}_to_text": pd.DataFrame({"query": own_m, "item_id": own_m,
                                         "rank": query_ranks(zm, own_m, zt, own_t, chunk)}),
        f"text_to_{name}": pd.DataFrame({"query": caption_ids(list(own_t)), "item_id": own_t,
                                         "rank": query_ranks(zt, own_t, zm, own_m, chunk)}),
    }


def media_text_recalls(media: tuple[torch.Tensor, list], text: tuple[torch.Tensor, list], name: str,
                       ks: list[int], chunk: int) -> dict[str, dict[str, float]]:
    """Recall@K of media->text and text->media (no intervals: align's validation uses it)."""
    return {task: {f"R@{k}": v for k, v in recall_from_ranks(f["rank"].to_numpy(), ks).items()}
            for task, f in media_text_ranks(media, text, name, chunk).items()}


def embedded_ranks(emb: dict, d: int, device, chunk: int) -> dict[str, pd.DataFrame]:
    """Per-task query ranks at MRL dim ``d`` from ``embed_split`` output."""
    norm = {m: (F.normalize(z[:, :d], dim=-1).to(device), o) for m, (z, o) in emb.items()}
    out = {}
    for m in ("image", "audio", "fused"):
        if m in norm and len(norm[m][1]):
            out.update(media_text_ranks(norm[m], norm["text"], m, chunk))
    return out


def trained_recalls(model: AlignModel, data: FeatureSplit, dims: list[int], ks: list[int],
                    chunk_size: int = 1024) -> dict[int, dict]:
    """Recall@K per MRL dim (no intervals); embeddings and similarity chunks on the model's device."""
    emb = embed_split(model, data)
    return {d: {task: {f"R@{k}": v for k, v in recall_from_ranks(f["rank"].to_numpy(), ks).items()}
                for task, f in embedded_ranks(emb, d, model_device(model), chunk_size).items()}
            for d in dims}
