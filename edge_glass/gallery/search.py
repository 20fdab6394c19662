"""Exact top-k search by chunked matrix products, and an opened index (:class:`Gallery`) to search.

Scores are cosines at the search dim: the stored embeddings (normalised at the index's dim) are cut to
the first ``dim`` values (Matryoshka) and each chunk's rows are divided by their norm there, so one
index serves every MRL dim. Only one chunk of scores (queries x chunk) exists at a time and the running
top-k is merged with each chunk's: memory is flat in the number of items.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch

from edge_glass.core.device import torch_threads
from edge_glass.core.errors import DataError, MediaError
from edge_glass.gallery.store import read_embeddings, read_info, read_rows

CHUNK = 4096  # rows per matrix product: 1,000 queries x 4k float32 scores (16 MB) stay near the cache
PARTS_PER_THREAD = 4  # row ranges per worker thread: a thread slowed by a busy machine leaves the rest to the others


def exact_topk(queries: np.ndarray, base: np.ndarray, k: int, dim: int | None = None,
               chunk: int = CHUNK, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best rows of ``base`` per query by cosine at ``dim``: (scores, indices), each (q, k'),
    best first, k' = min(k, len(base)). ``queries`` must be L2-normalised at ``dim``.

    ``base`` is cut into contiguous row ranges searched by ``threads`` worker threads (default: torch's
    thread count), each on one torch thread, and the ranges' top-k are merged in range order, so the
    result does not depend on the thread count or timing. Independent ranges rather than torch's own
    multi-threaded matmul: no op waits for every thread (a busy 2-core machine stalls that barrier), and
    the per-range top-k runs in parallel too."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    dim = dim or base.shape[1]
    if q.shape[1] != dim:
        raise ValueError(f"queries have dim {q.shape[1]}, searching at {dim}")
    k = min(k, len(base))
    threads = max(1, threads or torch.get_num_threads())
    step = max(chunk, -(-len(base) // (threads * PARTS_PER_THREAD) // chunk) * chunk)
    ranges = [(lo, min(lo + step, len(base))) for lo in range(0, len(base), step)]
    search = partial(_range_topk, q, base, k, dim, chunk)
    if threads == 1 or len(ranges) == 1:
        with torch_threads(1) if threads == 1 else contextlib.nullcontext():
            parts = [search(r) for r in ranges]
    else:
        with ThreadPoolExecutor(min(threads, len(ranges)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            parts = list(pool.map(search, ranges))
    best_s, best_i = torch.full((len(q), 0), -torch.inf), torch.zeros((len(q), 0), dtype=torch.long)
    for s, i in parts:
        best_s, best_i = _merge(best_s, best_i, s, i, k)
    return best_s.numpy(), best_i.numpy()


def _merge(best_s: torch.Tensor, best_i: torch.Tensor, s: torch.Tensor, i: torch.Tensor, k: int):
    """The running top-k merged with a new candidate set (memory stays (q, 2k), flat in the gallery size)."""
    scores, order = torch.topk(torch.cat([best_s, s], 1), min(k, best_s.shape[1] + s.shape[1]), dim=1)
    return scores, torch.gather(torch.cat([best_i, i], 1), 1, order)


@torch.inference_mode()
def _range_topk(q: torch.Tensor, base: np.ndarray, k: int, dim: int, chunk: int,
                rows_range: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``base[lo:hi]`` chunk by chunk: one score buffer (q x chunk), reused (a fresh buffer per
    chunk costs page faults that rival the matmul)."""
    lo, hi = rows_range
    buf = torch.empty(len(q) * min(chunk, hi - lo))
    best_s, best_i = torch.full((len(q), 0), -torch.inf), torch.zeros((len(q), 0), dtype=torch.long)
    for start in range(lo, hi, chunk):
        rows = torch.from_numpy(base[start : min(start + chunk, hi), :dim])
        scores = buf[: len(q) * len(rows)].view(len(q), len(rows))
        torch.mm(q, rows.T, out=scores)
        if dim != base.shape[1]:  # renormalise the truncated rows (MRL): divide their scores by the norm
            scores /= torch.linalg.vector_norm(rows, dim=1).clamp_min(1e-12)
        s, i = torch.topk(scores, min(k, len(rows)), dim=1)
        best_s, best_i = _merge(best_s, best_i, s, i + start, k)
    return best_s, best_i


class Gallery:
    """An index opened for search: its info, rows and embeddings held in memory (N x dim float32)."""

    def __init__(self, index_dir: str | Path):
        self.dir = Path(index_dir)
        self.info = read_info(self.dir)
        self.rows = read_rows(self.dir)
        self.embeddings = read_embeddings(self.dir, self.info)
        self.root = Path(self.info["root"])
        self._ann = None
        if len(self.rows) != len(self.embeddings):
            raise DataError(f"{self.dir}: rows.parquet has {len(self.rows)} rows but the shards {len(self.embeddings)}"
                            f" embeddings; rebuild the index")

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    def check_model(self, fingerprint: str) -> None:
        """Refuse a model other than the one that built the index: its embeddings live in another space."""
        if fingerprint != self.info["model_fingerprint"]:
            raise DataError(f"{self.dir} was indexed by another model (fingerprint "
                            f"{self.info['model_fingerprint'][:12]}, this model {fingerprint[:12]}); "
                            f"search it with that model or rebuild the index")

    def search_dim(self, dim: int | None) -> int:
        if dim is None:
            return self.dim
        if dim not in self.info["dims"]:
            raise DataError(f"--dim {dim}: this index searches at {', '.join(map(str, self.info['dims']))} "
                            f"(the model's MRL dims up to the index's dim)")
        return dim

    def search(self, queries: np.ndarray, k: int = 10, dim: int | None = None,
               ann: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row indices) of the top ``k`` rows per query; exact unless ``ann``."""
        dim = self.search_dim(dim)
        if not ann:
            return exact_topk(queries, self.embeddings, k, dim)
        if self.info.get("ann") is None:
            raise DataError(f"{self.dir} has no approximate index: build it with python -m edge_glass.index ... --ann")
        if dim != self.dim:
            raise DataError(f"the approximate index searches at dim {self.dim} only; use exact search for --dim {dim}")
        if self._ann is None:
            from edge_glass.gallery.ann import read_ann

            self._ann = read_ann(self.dir, self.info["ann"])
        return self._ann.search(queries, k)

    def results(self, scores: np.ndarray, indices: np.ndarray) -> list[list[dict]]:
        """Per query, ``{"rank", "path", "score", "modality", "row"}`` best first (ANN gaps, index -1, dropped)."""
        paths, kinds = self.rows["path"].tolist(), self.rows["modality"].tolist()
        out = []
        for s_row, i_row in zip(scores, indices):
            good = [(float(s), int(i)) for s, i in zip(s_row, i_row) if i >= 0]
            out.append([{"rank": r + 1, "path": paths[i], "score": s, "modality": kinds[i], "row": i}
                        for r, (s, i) in enumerate(good)])
        return out


def embed_query(model, *, text: str | None = None, image: str | None = None, audio: str | None = None,
                dim: int | None = None) -> np.ndarray:
    """One query's embedding (1, dim); a query file that cannot be used is a DataError naming it."""
    try:
        if text is not None:
            return model.embed_texts([text], dim=dim)
        if image is not None:
            return model.embed_images([image], dim=dim)
        return model.embed_audio([audio], dim=dim)
    except MediaError as exc:
        name = image if image is not None else audio
        raise DataError(f"query file {name}: {exc}" if name and str(name) not in str(exc) else str(exc)) from None
