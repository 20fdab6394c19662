"""Data mixing (``align.data.weights``): draw shares follow the weights, draws are keyed by (seed, step,
micro) like the unweighted batches, no weights is the old epoch sampler, bad weights are params errors."""

import numpy as np
import pytest

from edge_glass.config import parse_params
from edge_glass.core.errors import ParamsError
from edge_glass.features.dataset import global_batch, mixing_cdf


def epoch_sampler(step, micro, grad_accum, batch_size, n_items, seed, captions_per_item):
    """The sampler align had before data mixing, item by item: position p of the run is item
    perm_e[p % n] of epoch e = p // n, perm_e a permutation seeded by (seed, e)."""
    indices = []
    for p in range((step * grad_accum + micro) * batch_size, (step * grad_accum + micro + 1) * batch_size):
        indices.append(np.random.default_rng([seed, p // n_items]).permutation(n_items)[p % n_items])
    indices = np.array(indices)
    choice = np.random.default_rng([seed, step, micro, 7]).integers(np.asarray(captions_per_item)[indices])
    return indices, choice


def test_no_weights_draws_exactly_the_epoch_sampler():
    assert mixing_cdf(np.array(["a", "b"], dtype=object), {}) is None
    counts = np.random.default_rng(0).integers(1, 5, size=23)
    for step, micro, accum, bs, seed in [(0, 0, 1, 8, 0), (7, 1, 2, 16, 3), (40, 0, 1, 23, 1), (3, 2, 3, 30, 9)]:
        got = global_batch(step, micro, accum, bs, 23, seed, counts)
        want = epoch_sampler(step, micro, accum, bs, 23, seed, counts)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), (step, micro)
        assert np.array_equal(global_batch(step, micro, accum, bs, 23, seed, counts, None)[0], want[0])


def _draws(sources, weights, steps=400, batch=64, seed=0):
    cdf = mixing_cdf(sources, weights)
    return np.concatenate([global_batch(s, 0, 1, batch, len(sources), seed, np.ones(len(sources), int), cdf)[0]
                           for s in range(steps)])


def test_source_shares_follow_the_weights():
    """Sizes 1000:100 with weights 1:10 give equal shares; an unlisted source keeps weight 1; weight 0
    is never drawn. Chi-square against the expected shares (p = 0.001 critical values: the draws are
    seeded, so this either always passes or always fails)."""
    sizes = {"big": 1000, "small": 100, "mid": 300, "off": 50}
    sources = np.array([s for s, n in sizes.items() for _ in range(n)], dtype=object)
    np.random.default_rng(5).shuffle(sources)  # sources interleaved in the split, as in a real manifest
    drawn = _draws(sources, {"big": 1.0, "small": 10.0, "off": 0.0})
    by_source = {s: int((sources[drawn] == s).sum()) for s in sizes}
    assert by_source["off"] == 0
    expected = {"big": 1000, "small": 1000, "mid": 300}
    total = sum(expected.values())
    chi2 = sum((by_source[s] - len(drawn) * w / total) ** 2 / (len(drawn) * w / total) for s, w in expected.items())
    assert chi2 < 13.82, (by_source, chi2)  # 2 degrees of freedom
    # within a source every item is equally likely (99 degrees of freedom)
    small_items = np.flatnonzero(sources == "small")
    per_item = np.array([(drawn == i).sum() for i in small_items])
    mean = per_item.mean()
    assert ((per_item - mean) ** 2 / mean).sum() < 148.2, per_item


def test_weighted_draws_are_keyed_by_seed_step_and_micro():
    """A resumed run (or any rank) recomputes the same global batch from (seed, step, micro) alone."""
    sources = np.array(["a"] * 30 + ["b"] * 10, dtype=object)
    cdf = mixing_cdf(sources, {"b": 4})
    counts = np.full(40, 3)
    first = global_batch(12, 1, 2, 16, 40, 7, counts, cdf)
    again = global_batch(12, 1, 2, 16, 40, 7, counts, mixing_cdf(sources.copy(), {"b": 4.0}))
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    others = [global_batch(13, 1, 2, 16, 40, 7, counts, cdf), global_batch(12, 0, 2, 16, 40, 7, counts, cdf),
              global_batch(12, 1, 2, 16, 40, 8, counts, cdf)]
    assert all(not np.array_equal(first[0], o[0]) for o in others)
    assert (first[1] < 3).all()


def test_bad_weights_are_params_errors_naming_the_key():
    sources = np.array(["coco", "clotho"], dtype=object)
    with pytest.raises(ParamsError, match=r"align\.data\.weights\.audiocaps: no training item comes from source "
                                          r"'audiocaps' \(the training split's sources: clotho, coco\)"):
        mixing_cdf(sources, {"coco": 1, "audiocaps": 2})
    with pytest.raises(ParamsError, match=r"align\.data\.weights: every training source has weight 0"):
        mixing_cdf(sources, {"coco": 0, "clotho": 0})
    with pytest.raises(ParamsError, match=r"align\.data\.weights\.coco: Input should be greater than or equal to 0"):
        parse_params({"align": {"data": {"weights": {"coco": -1}}}})
    with pytest.raises(ParamsError, match=r"align\.data\.weights\.coco: Input should be a finite number"):
        parse_params({"align": {"data": {"weights": {"coco": float("inf")}}}})
