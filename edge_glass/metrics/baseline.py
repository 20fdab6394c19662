"""The no-training baseline: frozen pooled media features mapped into the frozen text space by ridge regression."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

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


def baseline_ranks(features_dir: Path, manifest: pd.DataFrame, split: str, params: Params) -> tuple[dict, dict]:
    """No training: frozen pooled media features mapped linearly into the frozen text space.

    The map is ridge regression fitted in closed form on train; the ridge strength is picked from
    RIDGE_GRID by the mean R@1 over the val tasks (``evaluate.baseline_ridge`` without a val split),
    then the map is scored on ``split``. Returns (per-task query ranks on ``split``, chosen ridge per medium).
    """
    text_pooled = pooled_by_id(FeatureStore(features_dir / "text"))
    split_of = dict(zip(manifest.item_id, manifest.split))
    text_by_item: dict[str, list[torch.Tensor]] = {}
    for cid, z in text_pooled.items():
        text_by_item.setdefault(cid.rsplit("#", 1)[0], []).append(z.double())
    chunk = params.evaluate.chunk_size
    out, chosen = {}, {}
    for m in ("image", "audio"):
        if not (features_dir / m / "index.parquet").exists():
            continue
        pooled = pooled_by_id(FeatureStore(features_dir / m))
        ids = {s: [i for i in pooled if split_of.get(i) == s and i in text_by_item] for s in ("train", "val", split)}
        if not ids["train"] or not ids[split]:
            continue
        x = torch.stack([pooled[i].double() for i in ids["train"]])
        mu, sd = x.mean(0), x.std(0) + 1e-6
        y = torch.stack([F.normalize(torch.stack(text_by_item[i]).mean(0), dim=0) for i in ids["train"]])

        def ranks(w: torch.Tensor, eval_ids: list[str]) -> dict[str, pd.DataFrame]:
            xe = (torch.stack([pooled[i].double() for i in eval_ids]) - mu) / sd
            mapped = F.normalize(apply_map(w, xe), dim=-1).float()
            caps = [(i, z) for i in eval_ids for z in text_by_item[i]]
            gallery = F.normalize(torch.stack([z for _, z in caps]), dim=-1).float()
            return media_text_ranks((mapped, eval_ids), (gallery, [i for i, _ in caps]), m, chunk)

        def val_score(ridge: float) -> float:
            return float(np.mean([(f["rank"] < 1).mean() for f in ranks(ridge_map((x - mu) / sd, y, ridge), ids["val"]).values()]))

        best = pick_ridge(val_score, RIDGE_GRID) if ids["val"] else params.evaluate.baseline_ridge
        chosen[m] = best
        out.update(ranks(ridge_map((x - mu) / sd, y, best), ids[split]))
    return out, chosen


def pick_ridge(val_score: Callable[[float], float], grid) -> float:
    """The ridge strength with the best validation score (the smaller one on a tie)."""
    scores = {r: val_score(r) for r in grid}
    return max(sorted(scores), key=lambda r: scores[r])
