"""Bootstrap confidence intervals over test items, and the paired bootstrap of a difference.

Every metric here is a function of per-item statistics: CIDEr-D the mean of per-item scores, corpus
BLEU a function of summed n-gram counts, Recall@K the share of queries with ``rank < K``. A bootstrap
resample draws the test *items* with replacement; drawing multinomial *counts* per item
(``resample_counts``) gives every resample as one matrix product with the statistics, so 1,000
resamples of 10k items cost a few matrix products. Seeded: the same seed gives the same interval.

Retrieval has several queries per item (text->media: every caption of the item), and the captions of
one item are correlated: resampling queries independently would treat 5 near-identical captions as 5
independent observations and shrink the interval by up to sqrt(5). So queries are resampled in
clusters (``cluster_sums``, ``cluster_ci``): an item drawn c times weights each of its queries by c,
and R@K is the ratio of weighted hits to weighted queries. Duplicating an item's queries leaves the
interval unchanged.

The paired bootstrap (a PR against its base) draws the *same* items for both runs, so what varies
between them is only the change; a difference whose 95% interval excludes 0 is marked as real.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


CHUNK_ELEMENTS = 1 << 24  # counts held at once (~128 MB as float64): memory stays flat in the number of items


def resample_counts(n: int, resamples: int, seed: int, chunk: int = 200):
    """Chunks of (resamples, n) multinomial counts: how often each of n items is drawn per resample.

    A chunk holds at most ``CHUNK_ELEMENTS`` counts (fewer resamples per chunk for many items); the rows
    are drawn one after another from one generator, so the chunking does not change the counts."""
    rng = np.random.default_rng([seed, 0xB007])
    chunk = max(1, min(chunk, CHUNK_ELEMENTS // max(n, 1)))
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)
        done += size


def bootstrap(stats: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], *, resamples: int = RESAMPLES,
              seed: int = 0) -> np.ndarray:
    """``statistic`` of each resample; ``stats`` is (n, s) per-item statistics, ``statistic`` maps
    (r, s) count-weighted *sums* to (r,) values (or (r, j): one column per statistic)."""
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim == 1:
        stats = stats[:, None]
    out = [statistic(counts @ stats) for counts in resample_counts(len(stats), resamples, seed)]
    return np.concatenate(out)


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap values."""
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def mean_ci(values: np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean of per-item values."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    n = len(values)
    return interval(bootstrap(values, lambda sums: sums[:, 0] / n, resamples=resamples, seed=seed))


def paired_difference(new: np.ndarray, old: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], *,
                      resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """statistic(new) − statistic(old) over the same items, its paired 95% interval (every resample draws
    the same items of both) and whether the interval excludes 0. ``new``/``old``: (n, s) per-item
    statistics; ``statistic`` maps (r, s) count-weighted sums to (r,) values (a mean: ``sums[:, 0] / n``)."""
    new = np.asarray(new, dtype=np.float64).reshape(len(new), -1)
    old = np.asarray(old, dtype=np.float64).reshape(len(old), -1)
    if new.shape != old.shape:
        raise ValueError(f"paired bootstrap needs the same items on both sides ({new.shape} vs {old.shape})")
    s = new.shape[1]
    draws = bootstrap(np.concatenate([new, old], axis=1),
                      lambda sums: statistic(sums[:, :s]) - statistic(sums[:, s:]), resamples=resamples, seed=seed)
    point = float(statistic(new.sum(0)[None])[0] - statistic(old.sum(0)[None])[0])
    lo, hi = interval(draws)
    return {"diff": point, "lo": lo, "hi": hi, "significant": bool(lo > 0 or hi < 0)}


def paired_cluster_difference(clusters, new: np.ndarray, old: np.ndarray, *, resamples: int = RESAMPLES,
                              seed: int = 0) -> dict:
    """``paired_difference`` of the per-row means of ``new`` and ``old`` ((n,) values of the same rows,
    e.g. the hits of the queries both runs share), resampling whole clusters (test items): every resample
    draws the same items for both runs and weights each of their rows by the draw count."""
    new = np.asarray(new, dtype=np.float64).reshape(-1)
    old = np.asarray(old, dtype=np.float64).reshape(-1)
    if new.shape != old.shape or len(new) != len(clusters):
        raise ValueError(f"paired bootstrap needs the same rows on both sides ({new.shape} vs {old.shape})")
    _, sums = cluster_sums(clusters, np.stack([new, old], axis=1))  # columns: new, old, rows
    ratio = lambda s: s[:, 0] / s[:, 1]  # noqa: E731
    return paired_difference(sums[:, [0, 2]], sums[:, [1, 2]], ratio, resamples=resamples, seed=seed)


def as_columns(stats: np.ndarray) -> np.ndarray:
    stats = np.asarray(stats, dtype=np.float64)
    return stats[:, None] if stats.ndim == 1 else stats


def cluster_sums(clusters, stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted cluster ids, (m, s + 1) per-cluster sums of the per-row ``stats`` with a last column
    counting each cluster's rows). Sorted, so neither the row order nor duplicated rows change which
    cluster a resample draws: the interval depends on the items, not on how their queries are listed."""
    clusters = np.asarray(clusters)
    stats = as_columns(stats)
    ids, inverse = np.unique(clusters, return_inverse=True)
    inverse = inverse.reshape(-1)
    columns = [np.bincount(inverse, weights=stats[:, j], minlength=len(ids)) for j in range(stats.shape[1])]
    columns.append(np.bincount(inverse, minlength=len(ids)).astype(np.float64))
    return ids, np.stack(columns, axis=1)


def ratio_of_sums(sums: np.ndarray) -> np.ndarray:
    """Weighted per-row means from resampled cluster sums: every column but the last over the last (the
    weighted number of rows). A ratio estimator, so clusters of different sizes weigh by their rows."""
    return sums[:, :-1] / sums[:, -1:]


def cluster_ci(clusters, stats: np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0,
               level: float = LEVEL) -> list[tuple[float, float]]:
    """Interval of the per-row mean of each column of ``stats`` (n, s), resampling whole clusters
    (test items) with replacement: one (lo, hi) per column."""
    stats = as_columns(stats)
    if len(stats) == 0:
        return [(float("nan"), float("nan"))] * stats.shape[1]
    _, sums = cluster_sums(clusters, stats)
    draws = bootstrap(sums, ratio_of_sums, resamples=resamples, seed=seed)
    return [interval(draws[:, j], level) for j in range(draws.shape[1])]


def stratified_counts(strata, resamples: int, seed: int, chunk: int = 200):
    """Chunks of (resamples, n) draw counts that resample the items *within each stratum* (class): every
    resample keeps each class's item count, so a class of 3 items is never drawn 0 or 9 times over, and the
    interval of a per-class mean (mean per-class recall) is defined in every resample."""
    strata = np.asarray(strata)
    n = len(strata)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    rng = np.random.default_rng([seed, 0x57A7])
    chunk = max(1, min(chunk, CHUNK_ELEMENTS // max(n, 1)))
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        counts = np.zeros((size, n), dtype=np.float64)
        for idx in groups:
            counts[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=size)
        yield counts
        done += size


def stratified_bootstrap(strata, stats: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], *,
                         resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``bootstrap`` with the items resampled within their stratum (``stratified_counts``)."""
    stats = as_columns(stats)
    return np.concatenate([statistic(counts @ stats) for counts in stratified_counts(strata, resamples, seed)])


def stratified_mean_ci(strata, values: np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0,
                       level: float = LEVEL) -> list[tuple[float, float]]:
    """Interval of the mean of each column of per-item ``values`` (n, s) under the stratified bootstrap: one
    (lo, hi) per column."""
    values = as_columns(values)
    if len(values) == 0:
        return [(float("nan"), float("nan"))] * values.shape[1]
    n = len(values)
    draws = stratified_bootstrap(strata, values, lambda sums: sums / n, resamples=resamples, seed=seed)
    return [interval(draws[:, j], level) for j in range(draws.shape[1])]
