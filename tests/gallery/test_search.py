"""Exact chunked search equals brute force at every MRL dim; the approximate index finds the true neighbours."""

import numpy as np
import pytest

from edge_glass.gallery.search import exact_topk


def normalised(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n, d, centres=50, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    return normalised(c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, d)).astype(np.float32))


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dim", [32, 16, 8])
@pytest.mark.parametrize("chunk", [7, 100, 5000])
def test_chunked_search_equals_brute_force(dim, chunk, threads):
    base = normalised(np.random.default_rng(1).standard_normal((1003, 32)))
    queries = normalised(np.random.default_rng(2).standard_normal((9, dim)))
    scores, idx = exact_topk(queries, base, k=10, dim=dim, chunk=chunk, threads=threads)
    cut = normalised(base[:, :dim])  # MRL: truncate, then renormalise
    brute = queries @ cut.T
    want = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, want, 1), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()  # best first


def test_thread_count_does_not_change_the_result_nor_the_callers_torch_threads():
    import torch

    base = clustered(20000, 48)
    queries = clustered(33, 48, seed=5)
    before = torch.get_num_threads()
    one = exact_topk(queries, base, k=10, chunk=256, threads=1)
    assert torch.get_num_threads() == before
    for threads in (2, 5):
        got = exact_topk(queries, base, k=10, chunk=256, threads=threads)
        np.testing.assert_array_equal(got[1], one[1])
        np.testing.assert_array_equal(got[0], one[0])
    assert torch.get_num_threads() == before


def test_k_larger_than_the_gallery_returns_everything_once():
    base = normalised(np.random.default_rng(3).standard_normal((5, 8)))
    scores, idx = exact_topk(base[:2], base, k=50, chunk=2)
    assert idx.shape == (2, 5) and sorted(idx[0]) == list(range(5))
    assert idx[0, 0] == 0 and idx[1, 0] == 1 and scores[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_wrong_query_dim_is_refused():
    with pytest.raises(ValueError, match="dim"):
        exact_topk(np.zeros((1, 8), np.float32), np.zeros((4, 16), np.float32), k=2, dim=16)


def test_approximate_index_recall_on_clustered_data(tmp_path):
    pytest.importorskip("faiss")
    from edge_glass.gallery.ann import HNSW, read_ann

    base = clustered(5000, 64)
    queries = clustered(200, 64, seed=7)
    _, exact = exact_topk(queries, base, k=10)
    info = HNSW.build(base).save(tmp_path)
    ann = read_ann(tmp_path, info)  # the file round trip is what search uses
    scores, found = ann.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.9, recall
    # and it is not trivially the exact answer of a different question: random ids score near 0
    rand = np.random.default_rng(0).integers(0, len(base), found.shape)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rand, exact)]) < 0.05
    np.testing.assert_allclose(scores[:, 0], np.einsum("qd,qd->q", queries, base[found[:, 0]]), atol=1e-4)


def test_missing_faiss_names_the_package(monkeypatch):
    import builtins

    from edge_glass.gallery import ann

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a, **kw: (_ for _ in ()).throw(ImportError("no")) if name == "faiss" else real(name, *a, **kw))
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        ann.HNSW.build(np.zeros((3, 4), np.float32))
