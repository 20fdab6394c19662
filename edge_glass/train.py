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
from edge_glass.distributed import DistInfo, barrier, gather_with_local_grad, sync_gradients
from edge_glass.io import atomic_path, files_fingerprint, sha256_file, sha256_text, write_json
from edge_glass.models.align import AlignModel
from edge_glass.models.mrl import init_head_with_pca, mrl_info_nce

log = logging.getLogger(__name__)

PAIRS = {"image_text": ("image", "text"), "audio_text": ("audio", "text"),
         "image_audio": ("image", "audio"), "fused_text": ("fused", "text")}


def lr_at(step: int, cfg: AlignParams) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the last step."""
    t = cfg.train
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


def build_model(cfg: AlignParams, data: AlignData, seed: int) -> AlignModel:
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = AlignModel(cfg, data.token_dims, data.text_dim)
    if cfg.text_head == "pca":
        init_head_with_pca(model.heads["text"], torch.cat(data.captions))
    if cfg.freeze_text_head:
        model.heads["text"].requires_grad_(False)
    return model


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
    code = files_fingerprint([*pkg.glob("models/*.py"), pkg / "train.py", pkg / "data.py", pkg / "distributed.py"])
    return sha256_text(json.dumps({"align": params.align.model_dump(), "seed": params.seed, "code": code,
                                   "features": sha256_file(features_dir / "encoders.json")}, sort_keys=True))


def save_checkpoint(path: Path, model: AlignModel, opt: torch.optim.Optimizer, step: int, fingerprint: str, history: list) -> None:
    """Model and AdamW state in one safetensors file; step, fingerprint and loss history in its metadata."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
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


def load_checkpoint(path: Path, model: AlignModel, opt: torch.optim.Optimizer, fingerprint: str) -> tuple[int, list]:
    """Restore a checkpoint written for the same run; returns (next step, history) or (0, []) if none fits."""
    if not path.exists():
        return 0, []
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["edge_glass"])
    except Exception:
        log.warning("ignoring unreadable checkpoint %s", path)
        return 0, []
    if meta["fingerprint"] != fingerprint:
        log.info("checkpoint %s is from other params or features; training from scratch", path)
        return 0, []
    tensors = load_file(str(path))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
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
    lr = lr_at(step, cfg)
    for group in opt.param_groups:
        group["lr"] = lr
    local = t.batch_size // info.world
    logged = {"loss": 0.0}
    for micro in range(t.grad_accum):
        indices, choice = global_batch(step, micro, t.grad_accum, t.batch_size, len(data), params.seed,
                                       [len(c) for c in data.captions])
        sl = slice(info.rank * local, (info.rank + 1) * local)
        batch = data.batch(indices[sl], choice[sl])
        positions = np.arange(t.batch_size)[sl]
        batch = drop_tokens(batch, positions, cfg.token_dropout, params.seed, step, micro).to(info.device)
        loss, parts = contrastive_loss(model, model(batch), cfg, info)
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
        loss, _ = contrastive_loss(model, model(data.batch(idx).to(info.device)), params.align, single)
        losses.append(float(loss))
    model.train()
    return float(np.mean(losses)) if losses else float("nan")


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
    model = build_model(cfg, data, params.seed).to(info.device)
    opt = make_optimizer(model, cfg)
    fingerprint = run_fingerprint(params, features_dir)
    ckpt = out_dir / "checkpoints" / "last.safetensors"
    start, history = load_checkpoint(ckpt, model, opt, fingerprint)
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
        save_model(out_dir, model, params, data)
        write_json(summary, out_dir / "train_summary.json")
        if live:
            live.end()
    return summary


def save_model(out_dir: Path, model: AlignModel, params: Params, data: AlignData) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp))
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


def log_entry(live, entry: dict) -> None:
    live.step = entry["step"]
    for k, v in entry.items():
        if k != "step":
            live.log_metric(f"train/{k}" if k != "val_loss" else "val/loss", v)
    live.next_step()

