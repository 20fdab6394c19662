"""Recall@K for cross-modal retrieval with several captions per item (CLIP_benchmark convention).

A query scores a hit at k if any gallery entry owned by the query's item is among its top k.
Similarities are computed in chunks of queries, so memory is chunk_size x gallery.
"""

from __future__ import annotations

import numpy as np
import torch


def recall_at_k(
    queries: torch.Tensor, query_owner: np.ndarray, gallery: torch.Tensor, gallery_owner: np.ndarray,
    ks: list[int], chunk_size: int = 1024,
) -> dict[int, float]:
    """queries (nq, d), gallery (ng, d), both L2-normalised; owners are item ids (any hashable) per row.

    Similarity chunks are computed on the gallery's device (the evaluate stage's ``evaluate.device``)."""
    device = gallery.device
    queries = queries.to(device)
    codes = {o: i for i, o in enumerate(dict.fromkeys([*query_owner, *gallery_owner]))}
    q_own = torch.tensor([codes[o] for o in query_owner], device=device)
    g_own = torch.tensor([codes[o] for o in gallery_owner], device=device)
    kmax = min(max(ks), gallery.shape[0])
    hits = {k: 0 for k in ks}
    for start in range(0, queries.shape[0], chunk_size):
        sims = queries[start : start + chunk_size].float() @ gallery.float().t()
        top = sims.topk(kmax, dim=1).indices
        match = g_own[top] == q_own[start : start + chunk_size, None]
        first_hit = torch.where(match.any(1), match.float().argmax(1), torch.full((len(top),), kmax, device=device))
        for k in ks:
            hits[k] += int((first_hit < k).sum())
    n = max(queries.shape[0], 1)
    return {k: hits[k] / n for k in ks}
