"""Decoding ahead of a frozen encoder: the one read-ahead both the preprocess stage and the API use.

A job is one batch of items; ``load(item)`` turns an item into what the encoder's ``forward`` takes
(or raises MediaError, which becomes that item's reject reason). :func:`loaded_batches` yields each job
decoded, in job order, while the next jobs decode in a loader thread or in DataLoader worker processes,
so decoding overlaps the encoder's matrix work instead of alternating with it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, Sequence

import torch

from edge_glass.core.errors import MediaError
from edge_glass.core.prefetch import prefetched
from edge_glass.encoders.base import FrozenEncoder


def load_batch(load: Callable[[Any], Any], items: Sequence) -> list[tuple[Any, Any, str]]:
    """``(item, loaded, "")`` per item, or ``(item, None, reason)`` for one that fails: a reject, not a raise."""
    out = []
    for it in items:
        try:
            out.append((it, load(it), ""))
        except MediaError as exc:
            out.append((it, None, str(exc)))
    return out


class BatchLoads(torch.utils.data.Dataset):
    """Batch ``j`` of the planned jobs, decoded: what each DataLoader worker process computes."""

    def __init__(self, load: Callable[[Any], Any], jobs: Sequence[Sequence]):
        self.load, self.jobs = load, jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, j: int):
        return load_batch(self.load, self.jobs[j])


def _as_is(batch):
    return batch


def _worker_init(_: int) -> None:
    """One thread per worker for torch and numpy's BLAS: the processes are the parallelism."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")


@contextmanager
def loaded_batches(encoder: FrozenEncoder, jobs: Sequence[Sequence], num_workers: int, load: Callable[[Any], Any]):
    """The jobs' decoded batches (:func:`load_batch` lists) in job order, decoded ahead of the encoder.

    ``num_workers`` = 0: one loader thread in this process (two batches ahead). N > 0: N DataLoader
    processes, ``prefetch_factor`` 2, pinned memory when the encoder is on CUDA (an encoder that decodes
    nothing, text, keeps the thread). Order is the jobs' order either way, so the output does not depend
    on the worker count. ``load`` must pickle for N > 0 (a module-level function or a partial of one)."""
    if num_workers == 0 or not jobs or not encoder.decodes_media:
        with ThreadPoolExecutor(max_workers=1) as pool:
            yield prefetched(partial(load_batch, load), jobs, pool)
        return
    loader = torch.utils.data.DataLoader(
        BatchLoads(load, jobs), batch_size=None, shuffle=False, num_workers=min(num_workers, len(jobs)),
        collate_fn=_as_is, pin_memory=encoder.device.type == "cuda", prefetch_factor=2,
        worker_init_fn=_worker_init, persistent_workers=False,
    )
    it = iter(loader)
    try:
        yield it
    finally:
        del it


def loader_blas_single_threaded():
    """numpy's BLAS threads spin beside torch's on small loader matmuls (log-mel); give them one thread."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def length_sorted_batches(keys: Sequence[float], batch_size: int) -> list[list[int]]:
    """Positions ``0..n-1`` in batches, sorted by ``keys`` (audio length; ties in input order) so that
    padding stays small; equal keys (images, texts) keep the input order."""
    order = sorted(range(len(keys)), key=lambda i: (keys[i], i))
    return [order[j : j + batch_size] for j in range(0, len(order), batch_size)]
