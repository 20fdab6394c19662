"""The one training loop of the align and decode stages (nanoGPT-style: read it top to bottom).

    for step in range(start, steps):
        logged = step_fn(step)              # one optimizer step (the stage's own batch, loss, backward)
        logged |= evaluate(step) if due     # align: val loss / val R@1 and best-model tracking
        history + DVCLive every log_every   # and whenever an evaluation ran; throughput as curves only
        checkpoint every checkpoint_every   # model + AdamW + history, on the main rank; resume point

A killed run restarted with the same fingerprint resumes at the checkpoint's step with its history,
and the DVCLive curves are replayed so they come out whole.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from edge_glass.train.checkpoints import (
    load_checkpoint,
    log_entry,
    open_live,
    save_checkpoint,
)

log = logging.getLogger(__name__)


def lr_at(step: int, t) -> float:
    """Linear warmup to ``t.lr``, then cosine decay to ``t.lr * t.min_lr_ratio`` at the last step (train params)."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def set_lr(opt: torch.optim.Optimizer, step: int, t) -> float:
    lr = lr_at(step, t)
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """This process's peak resident memory so far, and the peak CUDA memory allocated on ``device``."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_mb": round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)}
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def throughput(step_seconds: list[float], samples_per_step: int | None, device: torch.device) -> dict[str, float]:
    """Mean seconds per training step since the last log line (evaluations and checkpoints not counted),
    samples per second at that pace, and peak memory: the loop's DVCLive curves that are not metrics."""
    if not step_seconds:
        return {}
    mean = sum(step_seconds) / len(step_seconds)
    out = {"step_seconds": round(mean, 6)}
    if samples_per_step and mean > 0:
        out["samples_per_s"] = round(samples_per_step / mean, 3)
    return out | peak_memory_mb(device)


def run_loop(*, name: str, model: torch.nn.Module, opt: torch.optim.Optimizer, t, step_fn: Callable[[int], dict],
             checkpoint: Path, fingerprint: str, live_dir: str | Path | None = None, is_main: bool = True,
             evaluate: Callable[[int], dict] | None = None, eval_every: int | None = None,
             trainable_only: bool = False, on_resume: Callable[[int], None] | None = None,
             after_step: Callable[[], None] = lambda: None, samples_per_step: int | None = None) -> dict:
    """Run (or resume) ``t.steps`` steps of ``step_fn``; returns start step, history, seconds and final entry.

    ``t``: the stage's optimizer params (steps, log_every, checkpoint_every); ``after_step``: e.g. a barrier
    between ranks; ``on_resume(start)``: restore state that lives beside the checkpoint (align: best model);
    ``samples_per_step``: items one step trains on (over all ranks), for ``train/samples_per_s``.

    Throughput (step seconds, samples/s, peak memory) goes to DVCLive as curves only and never into the
    history: it describes this process, not the run, so a resumed run's curves show only the steps it ran.
    """
    start, history = load_checkpoint(checkpoint, model, opt, fingerprint)
    if start:
        log.info("resuming %s from step %d (%s)", name, start, checkpoint)
        if on_resume:
            on_resume(start)
    live = open_live(live_dir, history) if is_main and live_dir else None
    bar = tqdm(range(start, t.steps), desc=name, unit="step", disable=not is_main, initial=start, total=t.steps)
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    step_seconds: list[float] = []
    for step in bar:
        started = time.perf_counter()
        logged = step_fn(step)
        step_seconds.append(time.perf_counter() - started)
        last = step + 1 == t.steps
        evaluated = evaluate is not None and ((step + 1) % eval_every == 0 or last)
        if evaluated:
            logged.update(evaluate(step))
        if (step + 1) % t.log_every == 0 or last or evaluated:
            entry = {"step": step + 1, **{k: round(v, 6) for k, v in logged.items()}}
            history.append(entry)
            if live:
                log_entry(live, entry, plots=throughput(step_seconds, samples_per_step, device))
            step_seconds = []
            bar.set_postfix(loss=f"{logged['loss']:.3f}")
        if is_main and ((step + 1) % t.checkpoint_every == 0 or last):
            save_checkpoint(checkpoint, model, opt, step + 1, fingerprint, history, trainable_only=trainable_only)
        after_step()
    if live:
        live.end()
    return {"start": start, "history": history, "seconds": time.perf_counter() - t0,
            "final": history[-1] if history else {}}
