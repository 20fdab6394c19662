import numpy as np
import torch
import torch.nn.functional as F

from edge_glass.metrics.retrieval import recall_at_k


def test_recall_on_hand_made_similarities_with_several_captions():
    # 2 images; captions: c0,c1 belong to image A, c2 to image B.
    # image A ranks: c2 (wrong), c1 (right), c0 -> hit at k=2
    # image B ranks: c2 (right) -> hit at k=1
    queries = torch.eye(3)[:2]
    gallery = torch.tensor([[0.1, 0.0, 0.0], [0.5, 0.0, 0.0], [0.9, 1.0, 0.0]])
    r = recall_at_k(queries, np.array(["A", "B"]), gallery, np.array(["A", "A", "B"]), [1, 2, 3])
    assert r == {1: 0.5, 2: 1.0, 3: 1.0}
    # text -> image: one positive each
    r = recall_at_k(gallery, np.array(["A", "A", "B"]), queries, np.array(["A", "B"]), [1, 2])
    # c0 -> A (0.1 vs 0) hit; c1 -> A hit; c2 -> scores A 0.9, B 1.0 -> hit
    assert r == {1: 1.0, 2: 1.0}


def _reference(q, q_own, g, g_own, ks):
    order = torch.argsort(q @ g.t(), dim=1, descending=True).numpy()
    return {k: float(np.mean([(g_own[order[i, :k]] == q_own[i]).any() for i in range(len(q_own))])) for k in ks}


def test_chunked_equals_full_matrix_on_large_gallery():
    g = torch.Generator().manual_seed(0)
    n_items = 500
    q = F.normalize(torch.randn(n_items, 32, generator=g), dim=-1)
    captions = F.normalize(q.repeat_interleave(5, 0) + 0.9 * torch.randn(5 * n_items, 32, generator=g), dim=-1)
    q_own = np.arange(n_items)
    c_own = np.repeat(q_own, 5)
    for chunk in (7, 128, 10_000):
        assert recall_at_k(q, q_own, captions, c_own, [1, 5, 10], chunk) == _reference(q, q_own, captions, c_own, [1, 5, 10])
        assert recall_at_k(captions, c_own, q, q_own, [1, 5], chunk) == _reference(captions, c_own, q, q_own, [1, 5])
