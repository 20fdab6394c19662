"""The optional approximate index: a faiss HNSW graph over the index's embeddings (inner product = cosine).

Exact search is fast enough for galleries up to a few million items on a CPU; past that, or for many
queries a second, HNSW answers in sub-linear time at a recall the benchmark reports
(``benchmarks/inference.py``). faiss-cpu is optional (requirements.txt pins it): imported only here, and
a clear message names the package when it is missing. The graph is faiss's own file format
(``ann.faiss``), written beside the shards; it is rebuilt from the shards on every index build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_glass.core.io import atomic_path

FILE = "ann.faiss"
M = 32  # graph degree: faiss's usual default for 100k-10M vectors
EF_CONSTRUCTION = 80
EF_SEARCH = 64  # recall@10 1.00 vs exact on the benchmark's 100k clustered items (32: 0.998); docs/search.md


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("the approximate index needs faiss-cpu: pip install faiss-cpu==1.15.1 "
                          "(pinned in requirements.txt); exact search needs nothing") from None
    return faiss


class HNSW:
    def __init__(self, index, ef_search: int = EF_SEARCH):
        self.index = index
        self.index.hnsw.efSearch = ef_search

    @classmethod
    def build(cls, embeddings: np.ndarray, m: int = M, ef_construction: int = EF_CONSTRUCTION,
              ef_search: int = EF_SEARCH) -> "HNSW":
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(embeddings.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        return cls(index, ef_search)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices) per query, best first; an index of -1 marks a missing result."""
        k = min(k, self.index.ntotal)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def describe(self) -> str:
        return f"faiss HNSW M={self.index.hnsw.nb_neighbors(1)}, efConstruction {self.index.hnsw.efConstruction}, efSearch {self.index.hnsw.efSearch}"

    def save(self, index_dir: str | Path) -> dict:
        faiss = _faiss()
        with atomic_path(Path(index_dir) / FILE) as tmp:
            faiss.write_index(self.index, str(tmp))
        return {"kind": "faiss-hnsw", "file": FILE, "m": self.index.hnsw.nb_neighbors(1),
                "ef_construction": self.index.hnsw.efConstruction, "ef_search": self.index.hnsw.efSearch}


def build_ann(embeddings: np.ndarray) -> HNSW:
    """The approximate index ``index --ann`` builds, at its default settings."""
    return HNSW.build(embeddings)


def read_ann(index_dir: str | Path, info: dict) -> HNSW:
    faiss = _faiss()
    return HNSW(faiss.read_index(str(Path(index_dir) / info["file"])), info.get("ef_search", EF_SEARCH))
