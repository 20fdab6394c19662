"""Resumable state on disk: checkpoints (model + AdamW in one safetensors file), weights, DVCLive logs.

Shared by the align and decode stages. A checkpoint's metadata carries the step, the loss history and
a fingerprint of everything the run depends on; a checkpoint with another fingerprint is ignored.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edge_glass.core.io import atomic_path, read_metadata

log = logging.getLogger(__name__)


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
            opt.state[p] = {  # moments live beside their parameter (GPU); AdamW keeps ``step`` on the CPU
                "step": tensors[f"optim.{name}.step"].reshape(()).clone(),
                "exp_avg": tensors[f"optim.{name}.exp_avg"].to(p.device, copy=True),
                "exp_avg_sq": tensors[f"optim.{name}.exp_avg_sq"].to(p.device, copy=True),
            }
    return meta["step"], meta["history"]


def save_weights(path: Path, model: torch.nn.Module, meta: dict | None = None) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"edge_glass": json.dumps(meta)} if meta is not None else None)


def best_score(path: Path, fingerprint: str) -> dict | None:
    """Step and val R@1 of the best model saved by this run so far (None if absent or from another run)."""
    meta = read_metadata(path)
    if meta is None or meta.get("fingerprint") != fingerprint:
        return None
    return {"step": meta["step"], "val_r1": meta["val_r1"]}


def open_live(live_dir: str | Path, history: list):
    """DVCLive logger, replaying the history of a resumed run so the curves are complete."""
    from dvclive import Live

    live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    for entry in history:
        log_entry(live, entry)
    return live


VAL_NAMES = {"val_loss": "val/loss", "val_r1": "val/recall_at_1"}
SOURCE_LOSS = "source_loss/"  # history keys of per-source training losses: curves only, see log_entry


def log_entry(live, entry: dict, plots: dict | None = None) -> None:
    """One step of the DVCLive logs: ``entry`` (the history) as curves and in metrics.json, except the
    per-source losses; ``plots`` (throughput: seconds, memory) as curves only.

    Kept out of metrics.json, which dvc.yaml declares as the stage's metrics: throughput differs from
    run to run (a forced rerun must give equal metrics), and per-source losses would add a column per
    source to ``dvc exp show``."""
    live.step = entry["step"]
    for k, v in entry.items():
        if k != "step":
            name = VAL_NAMES.get(k, f"train/{k}")
            if k.startswith(SOURCE_LOSS):
                log_plot_only(live, name, v)
            else:
                live.log_metric(name, v)
    for k, v in (plots or {}).items():
        log_plot_only(live, f"train/{k}", v)
    live.next_step()


def log_plot_only(live, name: str, value: float) -> None:
    """A point of the curve ``plots/metrics/<name>.tsv`` that stays out of ``live.summary`` (metrics.json).

    DVCLive's ``log_metric`` puts every value into the summary too (``plot=False`` is the other way
    round: summary only), so the value is logged and then taken out of the summary again."""
    live.log_metric(name, value)
    keys = os.path.normpath(name).split(os.path.sep)  # DVCLive's own split of a name into summary keys
    parents = [live.summary]
    for k in keys[:-1]:
        parents.append(parents[-1][k])
    del parents[-1][keys[-1]]
    for k, parent in zip(reversed(keys[:-1]), reversed(parents[:-1])):  # drop the groups it leaves empty
        if parent[k]:
            break
        del parent[k]
