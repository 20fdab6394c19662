"""Counter-based random numbers: each draw is a pure function of a key and its coordinates.

Training draws (token dropout, head dropout) use these instead of a generator's state, so a draw for
global batch row r at step s is the same in one process or N, and after a kill -9 and resume: nothing
depends on how many draws happened before, on which rank, or in which order.
"""

from __future__ import annotations

import numpy as np

_M = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic): a cheap, well-mixed hash."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M
        return x ^ (x >> np.uint64(31))


def keyed_uniforms(key: tuple[int, ...], rows, width: int) -> np.ndarray:
    """(len(rows), width) uniforms in [0, 1) for ``key`` (ints), row ids ``rows`` and column index."""
    k = np.asarray(np.uint64(0))
    for part in key:
        k = splitmix64(np.asarray(k ^ np.uint64(int(part) & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64))
    row = splitmix64(k ^ np.asarray(rows, dtype=np.uint64))
    with np.errstate(over="ignore"):
        col = (np.arange(width, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)) & _M
    h = splitmix64(row[:, None] ^ col[None, :])
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
