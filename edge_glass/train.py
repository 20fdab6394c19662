"""Training of the alignment model on cached features: AdamW, warmup + cosine, accumulation, resume."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from edge_glass.config import AlignParams, Params
from edge_glass.data import AlignData, drop_tokens, global_batch
from edge_glass.device import autocast, enable_fast_matmul, resolve_precision
from edge_glass.distributed import DistInfo, barrier, gather_with_local_grad, sync_gradients
from edge_glass.linear_probe import RidgeStats, fit_ridge_streaming
from edge_glass.io import atomic_path, files_fingerprint, read_metadata, sha256_file, sha256_text, write_json
from edge_glass.models.align import AlignModel
from edge_glass.models.mrl import init_head_with_pca, mrl_info_nce

log = logging.getLogger(__name__)

PAIRS = {"image_text": ("image", "text"), "audio_text": ("audio", "text"),
         "image_audio": ("image", "audio"), "fused_text": ("fused", "text")}


def lr_at(step: int, t) -> float:
    """Linear warmup to ``t.lr``, then cosine decay to ``t.lr * t.min_lr_ratio`` at the last step (train params)."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def contrastive_loss(model: AlignModel, out: dict, cfg: AlignParams, info: DistInfo) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over configured pairs of the MRL InfoNCE loss on the global batch (gathered over ranks)."""
    gathered = {m: (gather_with_local_grad(z, info), gather_with_local_grad(p.to(torch.uint8), info).bool())
                for m, (z, p) in out.items()}
    scale = model.scale()
    total = torch.zeros((), device=scale.device)
    parts = {}
    for pair in cfg.loss.pairs:
        a, b = PAIRS[pair]
        if a not in gathered or b not in gathered:
            continue
        (za, pa), (zb, pb) = gathered[a], gathered[b]
        valid = pa & pb
        if int(valid.sum()) < 2:
            continue
        loss, _ = mrl_info_nce(za[valid], zb[valid], scale, cfg.mrl.dims, cfg.mrl.weights)
        total = total + loss
        parts[pair] = float(loss.detach())
    return total, parts


INIT_CHUNK = 256  # items per chunk while streaming the PCA / ridge statistics (bounds init memory)


def caption_chunks(data: AlignData, chunk: int = INIT_CHUNK):
    for start in range(0, len(data), chunk):
        yield data.caption_features(np.arange(start, min(start + chunk, len(data))))[0]


def build_model(cfg: AlignParams, data: AlignData, seed: int, val: AlignData | None = None) -> AlignModel:
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
def pooled_and_targets(model: AlignModel, data: AlignData, modality: str, chunk: int = INIT_CHUNK):
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
def init_linear_path(model: AlignModel, data: AlignData, val: AlignData | None) -> dict[str, float]:
    """Set each medium's linear path to the ridge map from its mean token to its captions' text embedding.

    Train statistics are streamed (float64 sums); the ridge is chosen on val, which is held in memory."""
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
        weight, bias, chosen[m] = fit_ridge_streaming(stats, xv, yv)
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
    """What a checkpoint must match to be resumed: align params, seed, cached features and training code."""
    pkg = Path(__file__).parent
    code = files_fingerprint([*pkg.glob("models/*.py"), pkg / "train.py", pkg / "data.py", pkg / "distributed.py",
                              pkg / "features.py", pkg / "device.py", pkg / "linear_probe.py"])
    return sha256_text(json.dumps({"align": params.align.model_dump(), "seed": params.seed, "code": code,
                                   "features": sha256_file(features_dir / "encoders.json")}, sort_keys=True))


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, fingerprint: str,
                    history: list, trainable_only: bool = False) -> None:
    """Model and AdamW state in one safetensors file; step, fingerprint and loss history in its metadata.

    ``trainable_only`` keeps just the parameters that train (LoRA + projector next to a frozen LM).
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in trainable_state(model, trainable_only).items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq", "step"):
                if key in state:
                    tensors[f"optim.{names[id(p)]}.{key}"] = torch.as_tensor(state[key]).detach().cpu().reshape(-1).clone() \
                        if key == "step" else state[key].detach().cpu().contiguous()
    meta = {"edge_glass": json.dumps({"step": step, "fingerprint": fingerprint, "history": history})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def trainable_state(model: torch.nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    if not trainable_only:
        return model.state_dict()
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, fingerprint: str) -> tuple[int, list]:
    """Restore a checkpoint written for the same run; returns (next step, history) or (0, []) if none fits."""
    if not path.exists():
        return 0, []
    meta = read_metadata(path)
    if meta is None:
        log.warning("ignoring unreadable checkpoint %s", path)
        return 0, []
    if meta["fingerprint"] != fingerprint:
        log.info("checkpoint %s is from other params or features; training from scratch", path)
        return 0, []
    tensors = load_file(str(path))
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing = set(state) - set(model.state_dict())
    if missing:
        raise ValueError(f"{path}: checkpoint tensors not in the model: {sorted(missing)[:5]}")
    model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters())
    for name, p in params.items():
        if f"optim.{name}.exp_avg" in tensors:
            opt.state[p] = {
                "step": tensors[f"optim.{name}.step"].reshape(()).clone(),
                "exp_avg": tensors[f"optim.{name}.exp_avg"].clone(),
                "exp_avg_sq": tensors[f"optim.{name}.exp_avg_sq"].clone(),
            }
    return meta["step"], meta["history"]


def train_step(model: AlignModel, opt, data: AlignData, step: int, params: Params, info: DistInfo) -> dict:
    cfg = params.align
    t = cfg.train
    precision = resolve_precision(t.precision, info.device)
    lr = lr_at(step, t)
    for group in opt.param_groups:
        group["lr"] = lr
    local = t.batch_size // info.world
    logged = {"loss": 0.0}
    for micro in range(t.grad_accum):
        indices, choice = global_batch(step, micro, t.grad_accum, t.batch_size, len(data), params.seed,
                                       data.caption_counts)
        sl = slice(info.rank * local, (info.rank + 1) * local)
        batch = data.batch(indices[sl], choice[sl])
        positions = np.arange(t.batch_size)[sl]
        batch.positions, batch.noise_key = positions, (params.seed, step, micro)  # keyed head dropout
        batch = drop_tokens(batch, positions, cfg.token_dropout, params.seed, step, micro).to(info.device)
        with autocast(info.device, precision):
            out = model(batch)
        loss, parts = contrastive_loss(model, out, cfg, info)
        (loss / t.grad_accum).backward()
        logged["loss"] += float(loss.detach()) / t.grad_accum
        for k, v in parts.items():
            logged[f"loss_{k}"] = logged.get(f"loss_{k}", 0.0) + v / t.grad_accum
    sync_gradients(model, info, (model.logit_scale,))
    if t.clip_grad:
        logged["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad))
    opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.logit_scale.clamp_(max=math.log(100))
    logged["lr"] = lr
    logged["temperature"] = float(1 / model.scale().detach())
    return logged


@torch.no_grad()
def validation_loss(model: AlignModel, data: AlignData, params: Params, info: DistInfo) -> float:
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
def validation_recall(model: AlignModel, data: AlignData, params: Params) -> float:
    """Mean R@1 over the media<->text tasks at the largest MRL dim: the checkpoint-selection score."""
    from edge_glass.evaluate import trained_recalls

    model.eval()
    top = trained_recalls(model, data, params, dims=[params.align.mrl.dims[0]])[params.align.mrl.dims[0]]
    model.train()
    return float(np.mean([r["R@1"] for r in top.values()]))


def train(params: Params, features_dir: str | Path, manifest: str | Path, out_dir: str | Path,
          live_dir: str | Path | None, info: DistInfo = DistInfo()) -> dict:
    """Train (or resume) the alignment model; rank 0 writes checkpoints, the final model and DVCLive logs."""
    cfg = params.align
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    data = AlignData(features_dir, manifest, "train")
    if cfg.train.batch_size > len(data):
        raise ValueError(f"align.train.batch_size={cfg.train.batch_size} exceeds the {len(data)} training items")
    try:
        val = AlignData(features_dir, manifest, "val")
    except ValueError:  # no validation items (tiny subsets): no val loss
        val = None
    enable_fast_matmul(info.device)
    model = build_model(cfg, data, params.seed, val).to(info.device)
    opt = make_optimizer(model, cfg)
    fingerprint = run_fingerprint(params, features_dir)
    ckpt = out_dir / "checkpoints" / "last.safetensors"
    best_path = out_dir / "checkpoints" / "best.safetensors"
    start, history = load_checkpoint(ckpt, model, opt, fingerprint)
    best = best_score(best_path, fingerprint) if start else None
    if start and info.is_main:
        log.info("resuming from step %d (%s)", start, ckpt)
    live = open_live(live_dir, history) if info.is_main and live_dir else None
    bar = tqdm(range(start, cfg.train.steps), desc="align", unit="step", disable=not info.is_main, initial=start,
               total=cfg.train.steps)
    t0 = time.perf_counter()
    for step in bar:
        logged = train_step(model, opt, data, step, params, info)
        last = step + 1 == cfg.train.steps
        if val is not None and ((step + 1) % cfg.train.eval_every == 0 or last):
            logged["val_loss"] = validation_loss(model, val, params, info)
            logged["val_r1"] = validation_recall(model, val, params)
            if info.is_main and (best is None or logged["val_r1"] > best["val_r1"]):
                best = {"step": step + 1, "val_r1": logged["val_r1"]}
                save_weights(best_path, model, {"fingerprint": fingerprint, **best})
        if (step + 1) % cfg.train.log_every == 0 or last or "val_loss" in logged:
            entry = {"step": step + 1, **{k: round(v, 6) for k, v in logged.items()}}
            history.append(entry)
            if live:
                log_entry(live, entry)
            bar.set_postfix(loss=f"{logged['loss']:.3f}")
        if info.is_main and ((step + 1) % cfg.train.checkpoint_every == 0 or last):
            save_checkpoint(ckpt, model, opt, step + 1, fingerprint, history)
        barrier(info)
    seconds = time.perf_counter() - t0
    summary = {"steps": cfg.train.steps, "resumed_from": start, "train_items": len(data), "val_items": len(val) if val else 0,
               "parameters": sum(p.numel() for p in model.parameters()), "seconds": round(seconds, 2),
               "final": history[-1] if history else {}}
    if info.is_main:
        if cfg.train.select == "best_val" and best is not None:
            model.load_state_dict(load_file(str(best_path), device=str(info.device)))
            log.info("keeping the step-%d model (val R@1 %.3f)", best["step"], best["val_r1"])
        summary["selected"] = best if cfg.train.select == "best_val" else {"step": cfg.train.steps}
        save_model(out_dir, model, params, data)
        write_json(summary, out_dir / "train_summary.json")
        if live:
            live.end()
    return summary


def save_weights(path: Path, model: AlignModel, meta: dict | None = None) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"edge_glass": json.dumps(meta)} if meta is not None else None)


def best_score(path: Path, fingerprint: str) -> dict | None:
    """Step and val R@1 of the best model saved by this run so far (None if absent or from another run)."""
    meta = read_metadata(path)
    if meta is None or meta.get("fingerprint") != fingerprint:
        return None
    return {"step": meta["step"], "val_r1": meta["val_r1"]}


def save_model(out_dir: Path, model: AlignModel, params: Params, data: AlignData) -> None:
    save_weights(out_dir / "model.safetensors", model)
    write_json({"align": params.align.model_dump(), "seed": params.seed, "token_dims": data.token_dims,
                "text_dim": data.text_dim}, out_dir / "model.json")


def load_model(out_dir: str | Path, device: str | torch.device = "cpu") -> AlignModel:
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "model.json").read_text())
    model = AlignModel(AlignParams.model_validate(meta["align"]), meta["token_dims"], meta["text_dim"])
    model.load_state_dict(load_file(str(out_dir / "model.safetensors"), device=str(device)))
    return model.eval()


def open_live(live_dir: str | Path, history: list):
    """DVCLive logger, replaying the history of a resumed run so the curves are complete."""
    from dvclive import Live

    live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    for entry in history:
        log_entry(live, entry)
    return live


VAL_NAMES = {"val_loss": "val/loss", "val_r1": "val/recall_at_1"}


def log_entry(live, entry: dict) -> None:
    live.step = entry["step"]
    for k, v in entry.items():
        if k != "step":
            live.log_metric(VAL_NAMES.get(k, f"train/{k}"), v)
    live.next_step()

