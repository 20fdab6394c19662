"""Ordered, bounded look-ahead over a thread pool (media decoding while the consumer works)."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator


def prefetched(fn: Callable, jobs: Iterable, pool: ThreadPoolExecutor, depth: int = 2) -> Iterator:
    """``fn(job)`` for every job in order, keeping ``depth`` jobs loading ahead in ``pool``.

    Unlike ``pool.map`` it never holds more than ``depth + 1`` results, so memory stays bounded."""
    queue: deque = deque()
    for job in jobs:
        queue.append(pool.submit(fn, job))
        if len(queue) > depth:
            yield queue.popleft().result()
    while queue:
        yield queue.popleft().result()
