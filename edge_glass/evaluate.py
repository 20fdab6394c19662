"""The evaluate stage: retrieval Recall@K per task and MRL dim, against a closed-form linear baseline."""

from __future__ import annotations

import hashlib
import logging
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from edge_glass.config import Params
from edge_glass.features.dataset import FeatureSplit
from edge_glass.metrics.baseline import baseline_ranks
from edge_glass.metrics.bootstrap import cluster_ci
from edge_glass.metrics.retrieval import (
    embed_split,
    embedded_ranks,
    model_device,
    recall_from_ranks,
)
from edge_glass.models.aligner import AlignModel


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


def source_groups(params: Params) -> dict[str, str]:
    """What each source's audio is, from the source registry: a caption spoken aloud measures partly
    speech recognition of the caption itself, not audio understanding."""
    import edge_glass.data.sources  # noqa: F401  (fill the registries)
    from edge_glass.data.sources.registry import FORMATS, SOURCES

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
    from edge_glass.core.device import stage_device

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
    items_of_source = Counter(source_of[i] for i in data.item_ids)
    for source in sorted(items_of_source):
        subset = {t: f[f.item_id.map(source_of) == source] for t, f in by_dim_ranks[top].items()}
        by_source[source] = {"audio": kinds.get(source, "sound"), "items": items_of_source[source],
                             **summarise({t: f for t, f in subset.items() if len(f)}, params)}
    # R@K with its interval for every dim and task, once: the top dim's is the headline "trained" block, and
    # recall_by_dim.csv (a DVC plot) carries each dim's interval (whether a smaller dim really loses recall)
    with_ci = {d: summarise(r, params) for d, r in by_dim_ranks.items()}
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
        "trained": with_ci[top],
        "baseline": {**summarise(base_ranks, params), "ridge": chosen},
        "by_source": by_source,
        "by_dim": {str(d): {t: {f"R@{k}": v for k, v in recall_from_ranks(f["rank"].to_numpy(), ev.recall_k).items()}
                            for t, f in r.items()} for d, r in by_dim_ranks.items()},
    }
    rows = [{"dim": d, "task": task, **r} for d, res in metrics["by_dim"].items() for task, r in res.items()]
    for row in rows:
        ci = with_ci[int(row["dim"])][row["task"]]
        row.update({key: ci[key] for k in ev.recall_k for key in (f"R@{k}_ci95_lo", f"R@{k}_ci95_hi")})
    per_query = pd.concat([f.assign(model=name, task=task, source=f.item_id.map(source_of))
                           for name, ranks in (("trained", by_dim_ranks[top]), ("baseline", base_ranks))
                           for task, f in ranks.items()], ignore_index=True)
    per_query = per_query[["model", "task", "query", "item_id", "source", "rank"]]
    by_dim_frame = pd.DataFrame(rows)
    by_dim_frame["dim"] = by_dim_frame["dim"].astype(int)
    return metrics, by_dim_frame, per_query


def run_zeroshot(params: Params, zeroshot_dir: str | Path, features_dir: str | Path, manifest_path: str | Path,
                 model: AlignModel) -> tuple[dict, pd.DataFrame]:
    """Zero-shot classification of every ``evaluate.zeroshot`` set (``metrics.zeroshot``): the trained model at
    every MRL dim and the ridge baseline of retrieval, each with class-stratified 95% intervals.

    Returns (metrics/zeroshot.json's content, the long-form confusion counts of every set)."""
    from edge_glass.metrics.baseline import baseline_maps
    from edge_glass.metrics.zeroshot import load_set, score_set

    ev = params.evaluate
    if not ev.zeroshot:
        return {}, pd.DataFrame(columns=["set", "label", "predicted", "count"])
    model.eval()
    features_dir, zeroshot_dir = Path(features_dir), Path(zeroshot_dir)
    manifest = pd.read_parquet(manifest_path, columns=["item_id", "split"])
    maps = baseline_maps(features_dir, manifest, ev.split, params)
    out, frames = {}, []
    for entry in ev.zeroshot:
        data = load_set(entry, zeroshot_dir / entry.name, features_dir, params)
        if isinstance(data, str):
            out[entry.name] = {"items": 0, "skipped": data, "trained": {}, "baseline": {}, "by_dim": {}}
            continue
        out[entry.name], frame = score_set(data, model, maps.get(data.modality), ev.bootstrap_resamples, params.seed)
        frames.append(frame)
    return out, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["set", "label", "predicted", "count"])


def headline(retrieval: dict, zeroshot: dict, captions: dict | None, recall_k: list[int]) -> dict[str, float]:
    """The numbers a reader compares, flat, in a fixed order (``dvc exp show`` lists a file's keys in order):
    R@1 / R@5 of every retrieval task with its interval, every zero-shot set's top-1 with its interval, CIDEr-D
    with its interval. Keys appear in no other metrics file (`dvc exp show` prefixes a column name two files share
    with the file path, in both files). Trained model only; the baselines, by-dim and per-source numbers are in the detail files."""
    out = {}
    for task, r in retrieval["trained"].items():
        for k in [k for k in recall_k if k in (1, 5)]:
            key = f"R@{k}"
            out[f"{task}_{key}"], out[f"{task}_{key}_lo"], out[f"{task}_{key}_hi"] = (
                r[key], r[f"{key}_ci95_lo"], r[f"{key}_ci95_hi"])
    for name, z in zeroshot.items():
        if "top1" in z["trained"]:
            t = z["trained"]
            out[f"zeroshot_{name}_top1"], out[f"zeroshot_{name}_top1_lo"], out[f"zeroshot_{name}_top1_hi"] = (
                t["top1"], t["top1_ci95_lo"], t["top1_ci95_hi"])
    if captions and "CIDEr-D" in captions:  # prefixed: a key also in captions.json would get path-prefixed columns
        out["captions_CIDEr-D"], out["captions_CIDEr-D_lo"], out["captions_CIDEr-D_hi"] = (
            captions["CIDEr-D"], captions.get("CIDEr-D_ci95_lo"), captions.get("CIDEr-D_ci95_hi"))
    return out
