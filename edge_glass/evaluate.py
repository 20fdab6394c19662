"""The evaluate stage: retrieval Recall@K per task and MRL dim, against a closed-form linear baseline."""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from edge_glass.config import Params
from edge_glass.data import FeatureSplit
from edge_glass.features import FeatureStore
from edge_glass.linear_probe import RIDGE_GRID, apply_map, ridge_map
from edge_glass.models.aligner import AlignModel
from edge_glass.bootstrap import cluster_ci
from edge_glass.retrieval import query_ranks, recall_from_ranks

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


def caption_ids(owners: list[str]) -> list[str]:
    """``item#j`` for the j-th caption of each item in ``owners`` order: query names a PR can pair on."""
    seen: dict[str, int] = {}
    out = []
    for o in owners:
        out.append(f"{o}#{seen.get(o, 0)}")
        seen[o] = seen.get(o, 0) + 1
    return out


def media_text_ranks(media: tuple[torch.Tensor, list], text: tuple[torch.Tensor, list], name: str,
                     chunk: int) -> dict[str, pd.DataFrame]:
    """Per-query first-hit ranks for media->text (over captions of items that have this medium) and
    text->media; inputs normalised. One frame per task: ``query``, ``item_id``, ``rank``."""
    zm, own_m = media
    zt, own_t = text
    own_m = np.asarray(own_m)
    keep = np.isin(np.asarray(own_t), own_m)
    zt, own_t = zt[torch.from_numpy(keep).to(zt.device)], np.asarray(own_t)[keep]
    return {
        f"{name}_to_text": pd.DataFrame({"query": own_m, "item_id": own_m,
                                         "rank": query_ranks(zm, own_m, zt, own_t, chunk)}),
        f"text_to_{name}": pd.DataFrame({"query": caption_ids(list(own_t)), "item_id": own_t,
                                         "rank": query_ranks(zt, own_t, zm, own_m, chunk)}),
    }


def media_text_recalls(media: tuple[torch.Tensor, list], text: tuple[torch.Tensor, list], name: str,
                       ks: list[int], chunk: int) -> dict[str, dict[str, float]]:
    """Recall@K of media->text and text->media (no intervals: align's validation uses it)."""
    return {task: {f"R@{k}": v for k, v in recall_from_ranks(f["rank"].to_numpy(), ks).items()}
            for task, f in media_text_ranks(media, text, name, chunk).items()}


def recalls_with_ci(ranks: pd.DataFrame, ks: list[int], resamples: int, seed: int) -> dict[str, float]:
    """R@K for every k with its bootstrap 95% interval over the test *items* (flat ``R@1_ci95_lo`` keys).

    The ranks stay fixed; a resample draws the items of ``ranks.item_id`` with replacement and weights
    every query of an item by its draw count (``bootstrap.cluster_ci``): the captions of one item are
    correlated, so resampling them as independent queries would make text->media intervals too narrow."""
    rank = ranks["rank"].to_numpy()
    hits = np.stack([(rank < k) for k in ks], axis=1).astype(np.float64) if len(rank) else np.zeros((0, len(ks)))
    bounds = cluster_ci(ranks["item_id"].to_numpy(), hits, resamples=resamples, seed=seed)
    out = {}
    for j, (k, (lo, hi)) in enumerate(zip(ks, bounds)):
        out[f"R@{k}"] = round(float(hits[:, j].mean()), 4) if len(rank) else float("nan")
        out[f"R@{k}_ci95_lo"], out[f"R@{k}_ci95_hi"] = round(lo, 4), round(hi, 4)
    return out


def embedded_ranks(emb: dict, d: int, device, chunk: int) -> dict[str, pd.DataFrame]:
    """Per-task query ranks at MRL dim ``d`` from ``embed_split`` output."""
    norm = {m: (F.normalize(z[:, :d], dim=-1).to(device), o) for m, (z, o) in emb.items()}
    out = {}
    for m in ("image", "audio", "fused"):
        if m in norm and len(norm[m][1]):
            out.update(media_text_ranks(norm[m], norm["text"], m, chunk))
    return out


def trained_recalls(model: AlignModel, data: FeatureSplit, dims: list[int], ks: list[int],
                    chunk_size: int = 1024) -> dict[int, dict]:
    """Recall@K per MRL dim (no intervals); embeddings and similarity chunks on the model's device."""
    emb = embed_split(model, data)
    return {d: {task: {f"R@{k}": v for k, v in recall_from_ranks(f["rank"].to_numpy(), ks).items()}
                for task, f in embedded_ranks(emb, d, model_device(model), chunk_size).items()}
            for d in dims}


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


def source_groups(params: Params) -> dict[str, str]:
    """What each source's audio is, from the source registry: a caption spoken aloud measures partly
    speech recognition of the caption itself, not audio understanding."""
    from edge_glass.sources.registry import FORMATS, SOURCES
    import edge_glass.sources  # noqa: F401  (fill the registries)

    kinds = {name: getattr(SOURCES[name], "audio_kind", "sound") for name in params.download.sources if name in SOURCES}
    kinds.update({e.name: getattr(FORMATS[e.format], "audio_kind", "sound") for e in params.download.local})
    return kinds


def summarise(ranks: dict[str, pd.DataFrame], params: Params) -> dict[str, dict]:
    ev = params.evaluate
    return {task: recalls_with_ci(f, ev.recall_k, ev.bootstrap_resamples, params.seed) for task, f in ranks.items()}


def items_sha256(item_ids) -> str:
    """sha256 hex of the sorted item ids joined by newlines: two runs scored the same test items exactly
    when these agree (``compare`` refuses to pair runs whose hashes differ)."""
    return hashlib.sha256("\n".join(sorted(map(str, item_ids))).encode()).hexdigest()


VAL_WARNING = ("evaluate.split=val: the val split also selected the align checkpoint (align.train.select) and "
               "tuned the baseline's ridge strength, so these numbers are optimistic; report evaluate.split=test")


def run_evaluate(params: Params, features_dir: str | Path, manifest_path: str | Path,
                 model: AlignModel) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Retrieval metrics of ``model`` on ``evaluate.split`` (on ``evaluate.device``) and of the ridge
    baseline, each R@K with a bootstrap 95% interval over the test items, overall and per source.

    Returns (metrics, R@K with its interval per MRL dim and task, per-query ranks at the top dim: what a
    PR's paired bootstrap compares against its base)."""
    from edge_glass.device import stage_device

    model = model.to(stage_device(params.evaluate.device, "evaluate.device"))
    features_dir = Path(features_dir)
    ev = params.evaluate
    split = ev.split
    if split == "val":
        # both channels: the stage's log line can scroll by, stderr is what a CI log or a terminal keeps
        logging.getLogger(__name__).warning(VAL_WARNING)
        print(f"warning: {VAL_WARNING}", file=sys.stderr)
    data = FeatureSplit(features_dir, manifest_path, split)
    emb = embed_split(model, data)
    device = model_device(model)
    by_dim_ranks = {d: embedded_ranks(emb, d, device, ev.chunk_size) for d in model.cfg.mrl.dims}
    top = max(by_dim_ranks)
    manifest = pd.read_parquet(manifest_path, columns=["item_id", "split", "source"])
    base_ranks, chosen = baseline_ranks(features_dir, manifest, split, params)
    source_of = dict(zip(manifest.item_id, manifest.source))
    kinds = source_groups(params)
    by_source = {}
    for source in sorted({source_of[i] for i in data.item_ids}):
        subset = {t: f[f.item_id.map(source_of) == source] for t, f in by_dim_ranks[top].items()}
        by_source[source] = {"audio": kinds.get(source, "sound"), "items": int(sum(source_of[i] == source for i in data.item_ids)),
                             **summarise({t: f for t, f in subset.items() if len(f)}, params)}
    metrics = {
        "split": split,
        "items": len(data),
        "test_items_sha256": items_sha256(data.item_ids),
        # split items = items + items_left_out: the ones FeatureSplit could not score, by reason
        "items_left_out": data.left_out_total,
        "items_left_out_by_reason": dict(data.left_out),
        "bootstrap": {"resamples": ev.bootstrap_resamples, "level": 0.95, "seed": params.seed,
                      "over": "test items",
                      "method": "cluster bootstrap: each resample draws test items with replacement and weights "
                                "every query of an item by its draw count"},
        "trained": summarise(by_dim_ranks[top], params),
        "baseline": {**summarise(base_ranks, params), "ridge": chosen},
        "by_source": by_source,
        "by_dim": {str(d): {t: {f"R@{k}": v for k, v in recall_from_ranks(f["rank"].to_numpy(), ev.recall_k).items()}
                            for t, f in r.items()} for d, r in by_dim_ranks.items()},
    }
    # the CSV (a DVC plot) carries each dim's interval too: whether a smaller dim really loses recall
    rows = [{"dim": d, "task": task, **r} for d, res in metrics["by_dim"].items() for task, r in res.items()]
    bounds = {(str(d), task): recalls_with_ci(f, ev.recall_k, ev.bootstrap_resamples, params.seed)
              for d, r in by_dim_ranks.items() for task, f in r.items()}
    for row in rows:
        ci = bounds[(row["dim"], row["task"])]
        row.update({key: ci[key] for k in ev.recall_k for key in (f"R@{k}_ci95_lo", f"R@{k}_ci95_hi")})
    per_query = pd.concat([f.assign(model=name, task=task, source=f.item_id.map(source_of))
                           for name, ranks in (("trained", by_dim_ranks[top]), ("baseline", base_ranks))
                           for task, f in ranks.items()], ignore_index=True)
    per_query = per_query[["model", "task", "query", "item_id", "source", "rank"]]
    by_dim_frame = pd.DataFrame(rows)
    by_dim_frame["dim"] = by_dim_frame["dim"].astype(int)
    return metrics, by_dim_frame, per_query
