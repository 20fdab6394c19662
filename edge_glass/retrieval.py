"""Recall@K for cross-modal retrieval with several captions per item (CLIP_benchmark convention).

A query scores a hit at k if any gallery entry owned by the query's item is among its top k. The
per-query statistic is the rank of the first hit (``query_ranks``); Recall@K is the mean of
``rank < K``, and its bootstrap interval resamples the test items that own the queries, keeping these
ranks fixed (``edge_glass.bootstrap.cluster_ci``).
Ties have a defined order: equal similarities rank by gallery index (the lower first), so results do
not depend on how a top-k kernel happens to order them. Similarities are computed in chunks of
queries, so memory is chunk_size x gallery.
"""

from __future__ import annotations

import numpy as np
import torch


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
