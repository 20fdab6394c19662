"""Bootstrap confidence intervals over test queries, and the paired bootstrap of a difference.

Every metric here is a function of per-query (or per-item) statistics: Recall@K is the mean of
``rank < K``, CIDEr-D the mean of per-item scores, corpus BLEU a function of summed n-gram counts.
A bootstrap resample draws the queries with replacement; drawing multinomial *counts* per query
(``resample_counts``) gives every resample as one matrix product with the statistics, so 1,000
resamples of 10k queries cost a few matrix products. Seeded: the same seed gives the same interval.

The paired bootstrap (a PR against its base) draws the *same* queries for both runs, so what varies
between them is only the change; a difference whose 95% interval excludes 0 is marked as real.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


def resample_counts(n: int, resamples: int, seed: int, chunk: int = 200):
    """Chunks of (resamples, n) multinomial counts: how often each of n items is drawn per resample."""
    rng = np.random.default_rng([seed, 0xB007])
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)
        done += size


def bootstrap(stats: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], *, resamples: int = RESAMPLES,
              seed: int = 0) -> np.ndarray:
    """``statistic`` of each resample; ``stats`` is (n, s) per-item statistics, ``statistic`` maps
    (r, s) count-weighted *sums* and the resample size to (r,) values."""
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
    the same rows of both) and whether the interval excludes 0. ``new``/``old``: (n, s) per-item
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


def with_ci(metrics: dict[str, float], per_item: dict[str, np.ndarray], *, resamples: int = RESAMPLES,
            seed: int = 0) -> dict[str, float]:
    """``metrics`` with ``<name>_ci95_lo`` / ``<name>_ci95_hi`` beside every value that has per-item values
    (flat keys, so ``dvc metrics diff`` shows the bounds as metrics of their own)."""
    out = {}
    for name, value in metrics.items():
        out[name] = value
        if name in per_item:
            lo, hi = mean_ci(per_item[name], resamples=resamples, seed=seed)
            out[f"{name}_ci95_lo"], out[f"{name}_ci95_hi"] = round(lo, 4), round(hi, 4)
    return out
