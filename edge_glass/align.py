"""The align stage's library: the alignment model trained on cached features.

Initialisation (PCA text head, ridge-initialised linear path; streamed, float64), the optimizer, one
training step (global batch, token dropout, forward under autocast, contrastive loss, gradient sync,
clipping), validation (loss, R@1 for checkpoint selection) and saving. The loop itself is
``train/loop.py: run_loop``, shared with decode; the losses are in ``models/loss.py``; checkpoints in
``train/checkpoints.py``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from edge_glass.config import Params
from edge_glass.config.align import AlignParams
from edge_glass.core.device import autocast, configure_kernels, resolve_precision
from edge_glass.core.errors import DataError, ParamsError
from edge_glass.core.io import package_fingerprint, sha256_file, sha256_text, write_json
from edge_glass.features.dataset import FeatureSplit, drop_tokens, global_batch
from edge_glass.models.aligner import AlignModel, save_model
from edge_glass.models.loss import contrastive_loss
from edge_glass.models.mrl import init_head_with_pca
from edge_glass.models.ridge import RidgeStats, fit_ridge_streaming
from edge_glass.train.checkpoints import SOURCE_LOSS, best_score, save_weights
from edge_glass.train.distributed import DistInfo, barrier, sync_gradients
from edge_glass.train.loop import run_loop, set_lr

log = logging.getLogger(__name__)

INIT_CHUNK = 256  # items per chunk while streaming the PCA / ridge statistics (bounds init memory)


def caption_chunks(data: FeatureSplit, chunk: int = INIT_CHUNK):
    for start in range(0, len(data), chunk):
        yield data.caption_features(np.arange(start, min(start + chunk, len(data))))[0]


def build_model(cfg: AlignParams, data: FeatureSplit, seed: int, val: FeatureSplit | None = None) -> AlignModel:
    """Initial model, the same on every rank and for every thread count (PCA and ridge in float64, streamed)."""
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = AlignModel(cfg, data.token_dims, data.text_dim)
    if cfg.text_head == "pca":
        init_head_with_pca(model.heads["text"], caption_chunks(data))
    if cfg.freeze_text_head:
        model.heads["text"].requires_grad_(False)
    if model.linear is not None:
        init_linear_path(model, data, val)
    return model


@torch.no_grad()
def pooled_and_targets(model: AlignModel, data: FeatureSplit, modality: str, chunk: int = INIT_CHUNK):
    """Chunks of (mean media token, mean of the item's captions in the text space) for items with ``modality``."""
    idx = np.flatnonzero(data.has(modality))
    for start in range(0, len(idx), chunk):
        part = idx[start:start + chunk]
        pooled = model.pooled_tokens(data.batch(part), modality)
        feats, owner = data.caption_features(part)
        text = model.heads["text"](feats).double()
        sums = torch.zeros(len(part), text.shape[1], dtype=torch.float64).index_add_(
            0, torch.from_numpy(np.searchsorted(part, owner)), text)
        yield pooled, sums / torch.from_numpy(data.caption_counts[part]).double()[:, None]


@torch.no_grad()
def retrieval_score(model: AlignModel, val: FeatureSplit, modality: str):
    """Scorer of mapped val media embeddings: mean of media->text and text->media R@1 against every val
    caption, the score that selects checkpoints and that evaluation reports (not top-1 against the mean
    caption, which prefers too weak a ridge: image 100 instead of 1000 on the default data)."""
    from edge_glass.metrics.retrieval import recall_at_k

    idx = np.flatnonzero(val.has(modality))
    feats, owner = val.caption_features(idx)
    captions = torch.nn.functional.normalize(model.heads["text"](feats).float(), dim=-1)

    def score(mapped: torch.Tensor) -> float:
        media = torch.nn.functional.normalize(mapped.float(), dim=-1)
        m2t = recall_at_k(media, idx, captions, owner, [1], 1024)[1]
        t2m = recall_at_k(captions, owner, media, idx, [1], 1024)[1]
        return (m2t + t2m) / 2

    return score


@torch.no_grad()
def init_linear_path(model: AlignModel, data: FeatureSplit, val: FeatureSplit | None) -> dict[str, float]:
    """Set each medium's linear path to the ridge map from its mean token to its captions' text embedding.

    Train statistics are streamed (float64 sums); the ridge is chosen on val (held in memory) by
    :func:`retrieval_score`. The text head runs in eval mode (no dropout noise in the targets)."""
    chosen = {}
    was_training = model.training
    model.eval()  # the text head's dropout must not enter the targets
    for m in model.media:
        stats = RidgeStats()
        for x, y in pooled_and_targets(model, data, m):
            stats.add(x, y)
        xv = yv = None
        if val is not None and val.has(m).any():
            parts = list(pooled_and_targets(model, val, m))
            xv, yv = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        score = retrieval_score(model, val, m) if xv is not None else None
        weight, bias, chosen[m] = fit_ridge_streaming(stats, xv, yv, score=score)
        model.linear[m].weight.copy_(weight.t().float())
        model.linear[m].bias.copy_(bias.float())
    model.train(was_training)
    log.info("linear path initialised by ridge regression (ridge per medium: %s)", chosen)
    return chosen


def make_optimizer(model: AlignModel, cfg: AlignParams) -> torch.optim.AdamW:
    """Weight decay on matrices only; norms, biases, latents and the temperature are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "latents" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.98), eps=1e-6)


def run_fingerprint(params: Params, features_dir: Path) -> str:
    """What a checkpoint must match to be resumed: align params, seed, cached features and training code
    (with the validation code that picks the best step: a resumed finished run keeps its best model)."""
    code = package_fingerprint("align.py", "models", "features", "train", "metrics", "core")
    return sha256_text(json.dumps({"align": params.align.model_dump(), "seed": params.seed, "code": code,
                                   "features": sha256_file(features_dir / "encoders.json")}, sort_keys=True))


def train_step(model: AlignModel, opt, data: FeatureSplit, step: int, params: Params, info: DistInfo) -> dict:
    cfg = params.align
    t = cfg.train
    precision = resolve_precision(t.precision, info.device)
    lr = set_lr(opt, step, t)
    local = t.batch_size // info.world
    logged = {"loss": 0.0}
    cdf = data.mixing_cdf(cfg.data.weights)  # None without weights: the epoch-wise uniform sampler
    by_source = len(data.source_names) > 1
    source_sums: dict[str, list[float]] = {}
    for micro in range(t.grad_accum):
        indices, choice = global_batch(step, micro, t.grad_accum, t.batch_size, len(data), params.align_seed,
                                       data.caption_counts, cdf)
        sl = slice(info.rank * local, (info.rank + 1) * local)
        batch = data.batch(indices[sl], choice[sl])
        positions = np.arange(t.batch_size)[sl]
        batch.positions, batch.noise_key = positions, (params.align_seed, step, micro)  # keyed head dropout
        batch = drop_tokens(batch, positions, cfg.token_dropout, params.align_seed, step, micro).to(info.device)
        with autocast(info.device, precision):
            out = model(batch)
        loss, parts, rows = contrastive_loss(model, out, cfg, info, per_item=True)
        (loss / t.grad_accum).backward()
        logged["loss"] += float(loss.detach()) / t.grad_accum
        for k, v in parts.items():
            logged[f"loss_{k}"] = logged.get(f"loss_{k}", 0.0) + v / t.grad_accum
        if by_source:  # every rank holds the whole global batch's row losses: the same sums everywhere
            rows = rows.cpu().numpy()
            for source in np.unique(data.sources[indices]):
                sums = source_sums.setdefault(source, [0.0, 0])
                sums[0] += float(rows[data.sources[indices] == source].sum())
                sums[1] += int((data.sources[indices] == source).sum())
    sync_gradients(model, info, model.loss_parameters())
    if t.clip_grad:
        logged["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad))
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.clamp_scales_()
    logged["lr"] = lr
    logged |= model.loss_scalars()
    # per-source mean row loss (a curve per source; kept out of the metrics summary: see log_entry)
    logged |= {f"{SOURCE_LOSS}{s}": total / n for s, (total, n) in sorted(source_sums.items())}
    return logged


@torch.no_grad()
def validation_loss(model: AlignModel, data: FeatureSplit, params: Params, info: DistInfo) -> float:
    """Contrastive loss on the first caption of every validation item, in batches of batch_size."""
    model.eval()
    bs = params.align.train.batch_size
    losses = []
    single = DistInfo(0, 1, info.device)
    for start in range(0, len(data) - 1, bs):
        idx = list(range(start, min(start + bs, len(data))))
        if len(idx) < 2:
            break
        with autocast(info.device, resolve_precision(params.align.train.precision, info.device)):
            out = model(data.batch(idx).to(info.device))
        loss, _ = contrastive_loss(model, out, params.align, single)
        losses.append(float(loss))
    model.train()
    return float(np.mean(losses)) if losses else float("nan")


@torch.no_grad()
def validation_recall(model: AlignModel, data: FeatureSplit, params: Params) -> float:
    """Mean R@1 over the media<->text tasks at the largest MRL dim: the checkpoint-selection score.

    Its own K (1), whatever ``evaluate.recall_k`` lists: align reads no evaluate params."""
    from edge_glass.metrics.retrieval import trained_recalls

    model.eval()
    top = trained_recalls(model, data, dims=[params.align.mrl.dims[0]], ks=[1])[params.align.mrl.dims[0]]
    model.train()
    return float(np.mean([r["R@1"] for r in top.values()]))


def load_val(features_dir: Path, manifest: str | Path, select: str) -> FeatureSplit | None:
    """The val split, or None when the manifest has none (``select: last`` only); never a silent fallback.

    No val items with ``select: best_val`` is a params error naming ``align.train.select``: "best val"
    would otherwise quietly mean "last step". Val items that cannot be read (no features, a corrupt index
    or shard) stop the stage naming the files, whatever ``select`` is: they are a broken run, not a
    small data set."""
    from edge_glass.data.manifest import read_manifest

    n_val = int((read_manifest(manifest).split == "val").sum())
    if n_val == 0:
        if select == "best_val":
            raise ParamsError(f"align.train.select: best_val needs a val split, but {manifest} has no val items; "
                              "set align.train.select: last (or give val items: download.split.val, or a val split "
                              "in your data)")
        log.info("no val split: no validation; the final model is the last step (align.train.select: last)")
        return None
    try:
        val = FeatureSplit(features_dir, manifest, "val")
        for m, store in val.stores.items():  # open every shard the val items use: a corrupt one fails here
            for k in np.unique(store.shard_of[val.media_rows[m][val.media_rows[m] >= 0]]):
                store.view(int(k))
        for k in np.unique(val.text_store.shard_of[val.caption_rows]):
            val.text_store.view(int(k))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"align: the val split ({n_val} items in {manifest}) cannot be read from the features in "
                         f"{features_dir}: {exc}") from exc
    return val


def train(params: Params, features_dir: str | Path, manifest: str | Path, out_dir: str | Path,
          live_dir: str | Path | None, info: DistInfo = DistInfo()) -> dict:
    """Train (or resume) the alignment model; rank 0 writes checkpoints, the final model and DVCLive logs."""
    cfg = params.align
    if cfg.train.batch_size % info.world:  # the global batch is split over every rank of every node
        raise ParamsError(f"align.train.batch_size={cfg.train.batch_size} must be divisible by the world size "
                          f"{info.world} (nodes x processes per node); the remainder rows would be dropped")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    data = FeatureSplit(features_dir, manifest, "train")
    if cfg.train.batch_size > len(data):
        raise ParamsError(f"align.train.batch_size: {cfg.train.batch_size} exceeds the {len(data)} training items")
    data.mixing_cdf(cfg.data.weights)  # a weight naming no training source: a params error before any work
    val = load_val(features_dir, manifest, cfg.train.select)
    configure_kernels(info.device)
    model = build_model(cfg, data, params.align_seed, val).to(info.device)
    opt = make_optimizer(model, cfg)
    fingerprint = run_fingerprint(params, features_dir)
    best_path = out_dir / "checkpoints" / "best.safetensors"
    best = None

    def restore_best(start: int) -> None:
        nonlocal best
        best = best_score(best_path, fingerprint)

    def evaluate(step: int) -> dict:
        nonlocal best
        scores = {"val_loss": validation_loss(model, val, params, info), "val_r1": validation_recall(model, val, params)}
        if info.is_main and (best is None or scores["val_r1"] > best["val_r1"]):
            best = {"step": step + 1, "val_r1": scores["val_r1"]}
            save_weights(best_path, model, {"fingerprint": fingerprint, **best})
        return scores

    run = run_loop(name="align", model=model, opt=opt, t=cfg.train, checkpoint=out_dir / "checkpoints" / "last.safetensors",
                   fingerprint=fingerprint, live_dir=live_dir, is_main=info.is_main,
                   step_fn=lambda step: train_step(model, opt, data, step, params, info),
                   evaluate=evaluate if val is not None else None, eval_every=cfg.train.eval_every,
                   on_resume=restore_best, after_step=lambda: barrier(info),
                   samples_per_step=cfg.train.batch_size * cfg.train.grad_accum)
    summary = {"steps": cfg.train.steps, "resumed_from": run["start"], "train_items": len(data),
               "val_items": len(val) if val else 0, "parameters": sum(p.numel() for p in model.parameters()),
               "seconds": round(run["seconds"], 2), "final": run["final"]}
    if info.is_main:
        if cfg.train.select == "best_val" and best is None:  # an evaluation always runs at the last step
            raise RuntimeError(f"align.train.select: best_val but {best_path} holds no best model of this run "
                               f"(removed?); delete {out_dir / 'checkpoints'} to train again")
        if cfg.train.select == "best_val":
            model.load_state_dict(load_file(str(best_path), device=str(info.device)))
            log.info("keeping the step-%d model (val R@1 %.3f)", best["step"], best["val_r1"])
        summary["selected"] = best if cfg.train.select == "best_val" else {"step": cfg.train.steps}
        save_model(out_dir, model, params, data)
        write_json(summary, out_dir / "train_summary.json")
    return summary


