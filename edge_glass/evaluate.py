"""The evaluate stage: retrieval Recall@K per task and MRL dim, against a closed-form linear baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from edge_glass.config import Params
from edge_glass.data import FeatureSplit
from edge_glass.features import FeatureStore
from edge_glass.linear_probe import RIDGE_GRID, apply_map, ridge_map
from edge_glass.models.aligner import AlignModel
from edge_glass.retrieval import recall_at_k

def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_split(model: AlignModel, data: FeatureSplit, batch_size: int = 256) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """Projected (unnormalised) embeddings of every media item and every caption of ``data``, on the CPU.

    Batches go to the model's device and results come back, so evaluation runs wherever the model is."""
    device = model_device(model)
    rows: dict[str, list] = {}
    owners: dict[str, list] = {}
    text_rows, text_owners = [], []
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        out = model(data.batch(idx).to(device))
        for m, (z, present) in out.items():
            if m == "text":
                continue
            present = present.cpu()
            rows.setdefault(m, []).append(z.float().cpu()[present])
            owners.setdefault(m, []).extend(data.item_ids[i] for i, p in zip(idx, present.tolist()) if p)
        feats, owner = data.caption_features(idx)
        text_rows.append(model.heads["text"](feats.to(device)).float().cpu())
        text_owners.extend(data.item_ids[i] for i in owner)
    result = {m: (torch.cat(rows[m]), owners[m]) for m in rows}
    result["text"] = (torch.cat(text_rows), text_owners)
    return result


def media_text_recalls(media: tuple[torch.Tensor, list], text: tuple[torch.Tensor, list], name: str,
                       ks: list[int], chunk: int) -> dict[str, dict[str, float]]:
    """media->text over captions of items that have this medium, and text->media; inputs normalised."""
    zm, own_m = media
    zt, own_t = text
    keep = np.isin(np.asarray(own_t), np.asarray(own_m))
    zt, own_t = zt[torch.from_numpy(keep)], np.asarray(own_t)[keep]
    m2t = recall_at_k(zm, np.asarray(own_m), zt, own_t, ks, chunk)
    t2m = recall_at_k(zt, own_t, zm, np.asarray(own_m), ks, chunk)
    return {f"{name}_to_text": {f"R@{k}": v for k, v in m2t.items()},
            f"text_to_{name}": {f"R@{k}": v for k, v in t2m.items()}}


def trained_recalls(model: AlignModel, data: FeatureSplit, params: Params, dims: list[int] | None = None) -> dict[int, dict]:
    """Recall@K per MRL dim; embeddings and similarity chunks on the model's device."""
    emb = embed_split(model, data)
    device = model_device(model)
    ev = params.evaluate
    by_dim = {}
    for d in dims or model.cfg.mrl.dims:
        norm = {m: (F.normalize(z[:, :d], dim=-1).to(device), o) for m, (z, o) in emb.items()}
        res = {}
        for m in ("image", "audio", "fused"):
            if m in norm and len(norm[m][1]):
                res.update(media_text_recalls(norm[m], norm["text"], m, ev.recall_k, ev.chunk_size))
        by_dim[d] = res
    return by_dim


def pooled_by_id(store: FeatureStore) -> dict[str, torch.Tensor]:
    """Every pooled feature of a store by id (the baseline works on pooled features only)."""
    ids, pooled = store.pooled()
    return dict(zip(ids, pooled))


def baseline_recalls(features_dir: Path, manifest: pd.DataFrame, split: str, params: Params) -> dict:
    """No training: frozen pooled media features mapped linearly into the frozen text space.

    The map is ridge regression fitted in closed form on train; the ridge strength is picked from
    RIDGE_GRID by mean R@1 on val, then the map is scored on ``split``.
    """
    text_pooled = pooled_by_id(FeatureStore(features_dir / "text"))
    split_of = dict(zip(manifest.item_id, manifest.split))
    text_by_item: dict[str, list[torch.Tensor]] = {}
    for cid, z in text_pooled.items():
        text_by_item.setdefault(cid.rsplit("#", 1)[0], []).append(z.double())
    ev = params.evaluate
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

        def scores(w: torch.Tensor, eval_ids: list[str]) -> dict:
            xe = (torch.stack([pooled[i].double() for i in eval_ids]) - mu) / sd
            mapped = F.normalize(apply_map(w, xe), dim=-1).float()
            caps = [(i, z) for i in eval_ids for z in text_by_item[i]]
            gallery = F.normalize(torch.stack([z for _, z in caps]), dim=-1).float()
            return media_text_recalls((mapped, eval_ids), (gallery, [i for i, _ in caps]), m, ev.recall_k, ev.chunk_size)

        maps = {r: ridge_map((x - mu) / sd, y, r) for r in RIDGE_GRID}
        if ids["val"]:
            val = {r: scores(w, ids["val"]) for r, w in maps.items()}
            best = max(RIDGE_GRID, key=lambda r: np.mean([t[f"R@{min(ev.recall_k)}"] for t in val[r].values()]))
        else:
            best = ev.baseline_ridge
        chosen[m] = best
        out.update(scores(maps[best], ids[split]))
    return {**out, "ridge": chosen}


def run_evaluate(params: Params, features_dir: str | Path, manifest_path: str | Path, model: AlignModel) -> tuple[dict, pd.DataFrame]:
    """Retrieval metrics of ``model`` on ``evaluate.split``, on ``evaluate.device``, and the ridge baseline."""
    from edge_glass.device import stage_device

    model = model.to(stage_device(params.evaluate.device, "evaluate.device"))
    features_dir = Path(features_dir)
    split = params.evaluate.split
    data = FeatureSplit(features_dir, manifest_path, split)
    by_dim = trained_recalls(model, data, params)
    manifest = pd.read_parquet(manifest_path, columns=["item_id", "split"])
    baseline = baseline_recalls(features_dir, manifest, split, params)
    top = max(by_dim)
    metrics = {
        "split": split,
        "items": len(data),
        "trained": by_dim[top],
        "baseline": baseline,
        "by_dim": {str(d): r for d, r in by_dim.items()},
    }
    rows = [{"dim": d, "task": task, **r} for d, res in by_dim.items() for task, r in res.items()]
    return metrics, pd.DataFrame(rows)
