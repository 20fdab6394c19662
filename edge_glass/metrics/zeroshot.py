"""Zero-shot classification of the labelled sets in ``data/zeroshot`` (CLIP protocol, as CLIP_benchmark runs it).

Every class is a set of prompts (its name in each template); the class embedding is the mean of the
L2-normalised prompt embeddings, normalised again. A medium is classified by cosine similarity to the class
embeddings: top-1 / top-5 accuracy and the mean per-class recall (balanced accuracy: a set dominated by one
class cannot look good by predicting it). Ties rank the lower class index first, as retrieval ranks the
lower gallery index first.

Two classifiers are scored on the same items:
- trained: the align model's media head on the media tokens, its text head on the prompts' pooled
  features, at every MRL dim (the top dim is the headline);
- baseline: the frozen pooled media features through the ridge map retrieval's baseline uses
  (``metrics.baseline``), against the frozen pooled prompt features: what the set scores with no training.

Intervals: a bootstrap over the items, stratified by class (``bootstrap.stratified_mean_ci``): each
resample keeps every class's item count, so the mean per-class recall is defined in every resample.
Counts reconcile: items in = scored + rejected, with the rejects counted by reason (listing, media checks,
the encoder, or missing features).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from edge_glass.config import Params
from edge_glass.config.evaluate import ZeroShotSet
from edge_glass.core.errors import DataError
from edge_glass.data.labelled import entry_fingerprint
from edge_glass.data.manifest import reason_kind
from edge_glass.features.dataset import Batch
from edge_glass.features.store import FeatureStore
from edge_glass.metrics.baseline import BaselineMap
from edge_glass.metrics.bootstrap import stratified_mean_ci
from edge_glass.models.aligner import AlignModel

KS = (1, 5)


@dataclass
class LabelledFeatures:
    """One set as evaluate reads it: the scored items (ids, class index), its classes, the rejects by reason,
    where its media features are (store and rows) and its prompts' pooled text features (classes, templates, d)."""

    name: str
    modality: str
    item_ids: list[str]
    y: np.ndarray
    classes: list[str]
    classnames: list[str]
    items_in: int
    rejected: dict[str, int]
    store: FeatureStore
    rows: np.ndarray
    prompts: torch.Tensor


def load_set(entry: ZeroShotSet, set_dir: Path, features_dir: Path, params: Params) -> LabelledFeatures | str:
    """Read what the zeroshot_features stage wrote for ``entry``; DataError when it is missing or was made for
    other params (the stage did not run after ``evaluate.zeroshot`` or the media settings changed). A set the
    stage skipped (the default emoji set on a run without images) gives the reason instead."""
    info_path = set_dir / "set.json"
    rerun = "run the zeroshot_features stage (dvc repro zeroshot_features)"
    if not info_path.exists():
        raise DataError(f"{info_path} not found: {rerun}")
    info = json.loads(info_path.read_text())
    if info.get("fingerprint") != entry_fingerprint(entry, params.download):
        raise DataError(f"{set_dir} was made for another evaluate.zeroshot entry {entry.name!r} or other media settings: {rerun}")
    if "skipped" in info:
        return info["skipped"]
    labels = pd.read_parquet(set_dir / "labels.parquet")
    rejects = pd.read_csv(set_dir / "rejects.csv", dtype=str, keep_default_na=False)
    m = info["modality"]
    store = FeatureStore((features_dir if info["media_features"] == "preprocess" else set_dir / "features") / m)
    rows = store.rows(labels.item_id)
    reasons = dict(zip(rejects.item_id, rejects.reason))
    scored = rows >= 0
    why = [reasons.get(i, f"no {m} features") for i in labels.item_id[~scored]]
    listing = [r for i, r in reasons.items() if i not in set(labels.item_id)]
    rejected: dict[str, int] = {}
    for r in [*listing, *why]:
        rejected[reason_kind(r)] = rejected.get(reason_kind(r), 0) + 1
    index = {c: k for k, c in enumerate(info["classes"])}
    text = FeatureStore(set_dir / "features" / "text")
    t = len(info["templates"])
    ids = [f"class/{c}#{j}" for c in range(len(info["classes"])) for j in range(t)]
    prompt_rows = text.rows(ids)
    if not ids:  # no classes: a set without items (the emoji set of data without emoji)
        return LabelledFeatures(entry.name, m, [], np.zeros(0, np.int64), [], [], len(rejects), {}, store,
                                np.zeros(0, np.int64), torch.zeros(0, 0, 0))
    if (prompt_rows < 0).any():
        raise DataError(f"{set_dir}/features/text lacks prompt features ({ids[int(np.argmax(prompt_rows < 0))]}): {rerun}")
    prompts = torch.from_numpy(text.gather_pooled(prompt_rows)).reshape(len(info["classes"]), t, -1)
    return LabelledFeatures(entry.name, m, labels.item_id[scored].tolist(), labels.label[scored].map(index).to_numpy(np.int64),
                            info["classes"], info["classnames"], len(labels) + len(listing), rejected, store,
                            rows[scored], prompts)


def class_embeddings(prompt_z: torch.Tensor) -> torch.Tensor:
    """(classes, templates, d) prompt embeddings -> (classes, d): the mean of the normalised prompts, normalised."""
    return F.normalize(F.normalize(prompt_z.float(), dim=-1).mean(1), dim=-1)


def true_class_ranks(media: torch.Tensor, classes: torch.Tensor, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(0-based rank of each item's true class, predicted class) from normalised media (n, d) and class (c, d)
    embeddings; ties rank the lower class index first."""
    sims = media.float() @ classes.float().t()
    yt = torch.from_numpy(np.array(y, dtype=np.int64))
    true = sims.gather(1, yt[:, None])
    index = torch.arange(sims.shape[1])[None, :]
    ahead = (sims > true) | ((sims == true) & (index < yt[:, None]))
    best = sims.max(1, keepdim=True).values
    predicted = torch.where(sims == best, index, sims.shape[1]).min(1).values
    return ahead.sum(1).numpy(), predicted.numpy()


def accuracy(ranks: np.ndarray, y: np.ndarray, n_classes: int, resamples: int, seed: int) -> dict[str, float]:
    """top-1, top-5 and mean per-class recall (of top-1), each with its class-stratified 95% interval."""
    if len(ranks) == 0:
        return {}
    hits = np.stack([ranks < k for k in KS], axis=1).astype(np.float64)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    # per-class recall as a mean over items: each hit weighted by n / (classes present * its class size)
    present = counts > 0
    balanced = hits[:, 0] * len(y) / (present.sum() * counts[y])
    stats = np.concatenate([hits, balanced[:, None]], axis=1)
    bounds = stratified_mean_ci(y, stats, resamples=resamples, seed=seed)
    out = {}
    for j, key in enumerate([*(f"top{k}" for k in KS), "mean_per_class_recall"]):
        out[key] = round(float(stats[:, j].mean()), 4)
        out[f"{key}_ci95_lo"], out[f"{key}_ci95_hi"] = round(bounds[j][0], 4), round(bounds[j][1], 4)
    return out


@torch.no_grad()
def trained_embeddings(model: AlignModel, data: LabelledFeatures, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's (unnormalised, full-width) media embeddings of the scored items and its text-head embeddings of
    every prompt (classes, templates, projection_dim), on the CPU."""
    device = next(model.parameters()).device
    m = data.modality
    text_dim = data.prompts.shape[-1]
    rows = []
    for start in range(0, len(data.rows), batch_size):
        sel = data.rows[start:start + batch_size]
        b = len(sel)
        x, mask = data.store.gather_tokens(sel)
        tokens = {o: torch.zeros(b, 1, 1) for o in model.media}
        masks = {o: torch.zeros(b, 1, dtype=torch.bool) for o in model.media}
        present = {o: torch.zeros(b, dtype=torch.bool) for o in model.media}
        tokens[m], masks[m], present[m] = torch.from_numpy(x), torch.from_numpy(mask), torch.ones(b, dtype=torch.bool)
        out = model(Batch(tokens, masks, present, torch.zeros(b, text_dim)).to(device))
        rows.append(out[m][0].float().cpu())
    media = torch.cat(rows) if rows else torch.zeros(0, model.cfg.projection_dim)
    c, t, _ = data.prompts.shape
    text = model.heads["text"](data.prompts.reshape(c * t, -1).to(device)).float().cpu().reshape(c, t, -1)
    return media, text


def confusion(data: LabelledFeatures, predicted: np.ndarray) -> pd.DataFrame:
    """Long-form confusion counts (set, label, predicted, count): every (true, predicted) pair that occurs."""
    frame = pd.DataFrame({"label": np.asarray(data.classes)[data.y], "predicted": np.asarray(data.classes)[predicted]})
    counts = frame.groupby(["label", "predicted"]).size().reset_index(name="count")
    return counts.assign(set=data.name)[["set", "label", "predicted", "count"]]


def score_set(data: LabelledFeatures, model: AlignModel, baseline: BaselineMap | None, resamples: int, seed: int
              ) -> tuple[dict, pd.DataFrame]:
    """The set's block of metrics/zeroshot.json and its confusion counts (trained model, top dim)."""
    empty = {"modality": data.modality, "items": data.items_in, "scored": 0, "rejected": sum(data.rejected.values()),
             "rejected_by_reason": data.rejected, "classes": len(data.classes), "trained": {}, "baseline": {}, "by_dim": {}}
    if not len(data.y) or not data.classes:
        return empty, pd.DataFrame(columns=["set", "label", "predicted", "count"])
    if data.modality not in model.media:
        raise DataError(f"zero-shot set {data.name!r} is {data.modality}, but the align model has no {data.modality} head "
                        f"(its media: {model.media})")
    media, text = trained_embeddings(model, data)
    n_classes = len(data.classes)
    by_dim, top_ranks, top_pred = {}, None, None
    for d in sorted(model.cfg.mrl.dims, reverse=True):
        ranks, predicted = true_class_ranks(F.normalize(media[:, :d], dim=-1), class_embeddings(text[..., :d]), data.y)
        by_dim[str(d)] = accuracy(ranks, data.y, n_classes, resamples, seed)
        if top_ranks is None:
            top_ranks, top_pred = ranks, predicted
    result = {"modality": data.modality, "items": data.items_in, "scored": len(data.y),
              "rejected": sum(data.rejected.values()), "rejected_by_reason": data.rejected,
              "classes": n_classes, "chance_top1": round(1 / n_classes, 4) if n_classes else None,
              "trained": by_dim[str(max(model.cfg.mrl.dims))]}
    if baseline is not None and len(data.y):
        pooled = torch.from_numpy(data.store.gather_pooled(data.rows))
        ranks, _ = true_class_ranks(baseline(pooled), class_embeddings(data.prompts), data.y)
        result["baseline"] = {**accuracy(ranks, data.y, n_classes, resamples, seed), "ridge": baseline.ridge}
    else:
        result["baseline"] = {}
    result["by_dim"] = by_dim
    frame = confusion(data, top_pred) if top_pred is not None and len(top_pred) else pd.DataFrame(columns=["set", "label", "predicted", "count"])
    return result, frame
