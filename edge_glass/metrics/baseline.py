"""The no-training baseline: frozen pooled media features mapped into the frozen text space by ridge regression."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from edge_glass.config import Params
from edge_glass.features.store import FeatureStore
from edge_glass.metrics.retrieval import media_text_ranks
from edge_glass.models.ridge import RIDGE_GRID, apply_map, ridge_map


def pooled_by_id(store: FeatureStore) -> dict[str, torch.Tensor]:
    """Every pooled feature of a store by id (the baseline works on pooled features only)."""
    ids, pooled = store.pooled()
    return dict(zip(ids, pooled))


@dataclass
class BaselineMap:
    """The baseline of one medium: frozen pooled features, standardised with the train statistics, mapped by
    the ridge solution into the frozen text space (what retrieval's and zero-shot's baselines both score)."""

    w: torch.Tensor
    mu: torch.Tensor
    sd: torch.Tensor
    ridge: float

    def __call__(self, pooled: torch.Tensor) -> torch.Tensor:
        """L2-normalised mapped features (float32) of pooled media features (n, d)."""
        return F.normalize(apply_map(self.w, (pooled.double() - self.mu) / self.sd), dim=-1).float()


def fitted_baselines(features_dir: Path, manifest: pd.DataFrame, split: str, params: Params) -> Iterator[tuple]:
    """Per medium with train items: (medium, its ``BaselineMap``, pooled features by id,
    the ``split`` ids, caption features by item). The map is ridge regression fitted in closed form on train;
    the ridge strength is picked from RIDGE_GRID by the mean R@1 over the val tasks (``evaluate.baseline_ridge``
    without a val split)."""
    text_pooled = pooled_by_id(FeatureStore(features_dir / "text"))
    split_of = dict(zip(manifest.item_id, manifest.split))
    text_by_item: dict[str, list[torch.Tensor]] = {}
    for cid, z in text_pooled.items():
        text_by_item.setdefault(cid.rsplit("#", 1)[0], []).append(z.double())
    chunk = params.evaluate.chunk_size
    for m in ("image", "audio"):
        if not (features_dir / m / "index.parquet").exists():
            continue
        pooled = pooled_by_id(FeatureStore(features_dir / m))
        ids = {s: [i for i in pooled if split_of.get(i) == s and i in text_by_item] for s in ("train", "val", split)}
        if not ids["train"]:
            continue
        x = torch.stack([pooled[i].double() for i in ids["train"]])
        mu, sd = x.mean(0), x.std(0) + 1e-6
        y = torch.stack([F.normalize(torch.stack(text_by_item[i]).mean(0), dim=0) for i in ids["train"]])

        def fit(ridge: float) -> BaselineMap:
            return BaselineMap(ridge_map((x - mu) / sd, y, ridge), mu, sd, ridge)

        def val_score(ridge: float) -> float:
            return float(np.mean([(f["rank"] < 1).mean()
                                  for f in map_ranks(fit(ridge), pooled, ids["val"], text_by_item, m, chunk).values()]))

        best = pick_ridge(val_score, RIDGE_GRID) if ids["val"] else params.evaluate.baseline_ridge
        yield m, fit(best), pooled, ids[split], text_by_item


def map_ranks(bmap: BaselineMap, pooled: dict, eval_ids: list[str], text_by_item: dict, m: str, chunk: int
              ) -> dict[str, pd.DataFrame]:
    """Retrieval ranks of the mapped media of ``eval_ids`` against their captions' frozen features."""
    mapped = bmap(torch.stack([pooled[i].double() for i in eval_ids]))
    caps = [(i, z) for i in eval_ids for z in text_by_item[i]]
    gallery = F.normalize(torch.stack([z for _, z in caps]), dim=-1).float()
    return media_text_ranks((mapped, eval_ids), (gallery, [i for i, _ in caps]), m, chunk)


def baseline_ranks(features_dir: Path, manifest: pd.DataFrame, split: str, params: Params) -> tuple[dict, dict]:
    """No training: frozen pooled media features mapped linearly into the frozen text space
    (``fitted_baselines``), scored on ``split``. Returns (per-task query ranks on ``split``, chosen ridge per medium).
    """
    out, chosen = {}, {}
    for m, bmap, pooled, eval_ids, text_by_item in fitted_baselines(features_dir, manifest, split, params):
        if not eval_ids:
            continue
        chosen[m] = bmap.ridge
        out.update(map_ranks(bmap, pooled, eval_ids, text_by_item, m, params.evaluate.chunk_size))
    return out, chosen


def baseline_maps(features_dir: Path, manifest: pd.DataFrame, split: str, params: Params) -> dict[str, BaselineMap]:
    """The fitted ``BaselineMap`` of every medium (the ridge chosen exactly as for retrieval's baseline)."""
    return {m: bmap for m, bmap, *_ in fitted_baselines(features_dir, manifest, split, params)}


def pick_ridge(val_score: Callable[[float], float], grid) -> float:
    """The ridge strength with the best validation score (the smaller one on a tie)."""
    scores = {r: val_score(r) for r in grid}
    return max(sorted(scores), key=lambda r: scores[r])
