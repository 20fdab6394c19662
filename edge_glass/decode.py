"""The decode stage: train a caption decoder on aligned features, then caption the evaluation split."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import torch

from edge_glass.config import Params
from edge_glass.core.device import autocast, resolve_precision, stage_device
from edge_glass.core.io import (
    atomic_path,
    package_fingerprint,
    sha256_file,
    sha256_text,
    write_json,
)
from edge_glass.decoders.base import CaptionDecoder
from edge_glass.decoders.conditioning import Conditioning, aligned_conditioning
from edge_glass.decoders.generate import generate
from edge_glass.decoders.registry import build_decoder as registry_build
from edge_glass.decoders.saved import save_decoder
from edge_glass.features.dataset import FeatureSplit, global_batch
from edge_glass.models.aligner import load_model
from edge_glass.train.loop import run_loop, set_lr

log = logging.getLogger(__name__)


def build_decoder(params: Params, cond: Conditioning, lm_dir: str | Path, captions: list[str] | None = None,
                  device: torch.device | str = "cpu") -> CaptionDecoder:
    """The decoder named by ``decode.kind`` (registry ``DECODERS``), sized for ``cond``, on ``device``."""
    return registry_build(params, cond.latents.shape[-1], cond.embedding.shape[-1], lm_dir, captions, device)


def parameter_counts(decoder: CaptionDecoder) -> dict[str, int]:
    total = sum(p.numel() for p in decoder.parameters())
    trainable = sum(p.numel() for p in decoder.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def decode_fingerprint(params: Params, align_dir: Path, lm_dir: Path) -> str:
    """What a decode checkpoint must match: decode params, seed, align model, LM weights and code."""
    code = package_fingerprint("decode.py", "decoders", "models", "features", "train", "core")
    lm = sha256_file(lm_dir / "edge_glass.json") if (lm_dir / "edge_glass.json").exists() else params.decode.lm.model
    return sha256_text(json.dumps({"decode": params.decode.model_dump(exclude={"generate", "split"}), "seed": params.seed,
                                   "align": sha256_file(align_dir / "model.safetensors"), "lm": lm, "code": code},
                                  sort_keys=True))


def caption_batch(decoder: CaptionDecoder, data: FeatureSplit, cond: Conditioning, step: int, params: Params):
    """Step ``step``'s items (conditioning rows) and one caption each, on the conditioning's device."""
    t = params.decode.train
    idx, choice = global_batch(step, 0, 1, t.batch_size, len(data), params.decode_seed, data.caption_counts)
    ids, mask = decoder.encode_captions([data.caption_texts[i][k] for i, k in zip(idx, choice)],
                                        params.decode.max_caption_tokens)
    device = cond.latents.device
    return cond.select(idx), ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


def train_decoder(params: Params, decoder: CaptionDecoder, data: FeatureSplit, cond: Conditioning, out_dir: Path,
                  fingerprint: str, live_dir: str | Path | None) -> dict:
    """AdamW with warmup + cosine on the trainable parameters, in the shared loop (checkpoints, resume)."""
    t = params.decode.train
    precision = resolve_precision(params.decode.precision, cond.latents.device)
    trainable = [p for p in decoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
    decoder.train()
    tokens = 0

    def step_fn(step: int) -> dict:
        nonlocal tokens
        torch.manual_seed(params.decode_seed * 1_000_003 + step)  # LoRA / TRM dropout: the same draws after a resume
        lr = set_lr(opt, step, t)
        c, ids, mask = caption_batch(decoder, data, cond, step, params)
        with autocast(cond.latents.device, precision):
            loss = decoder.loss(c, ids, mask)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, t.clip_grad)) if t.clip_grad else float("nan")
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        return {"loss": float(loss.detach()), "lr": lr, "grad_norm": grad_norm}

    run = run_loop(name=f"decode[{params.decode.kind}]", model=decoder, opt=opt, t=t, step_fn=step_fn,
                   checkpoint=out_dir / "checkpoints" / "last.safetensors", fingerprint=fingerprint, live_dir=live_dir,
                   trainable_only=True, samples_per_step=t.batch_size)
    seconds = run["seconds"]
    return {"steps": t.steps, "resumed_from": run["start"], "seconds": round(seconds, 2),
            "train_tokens_per_s": round(tokens / seconds, 1) if seconds and tokens else None, "final": run["final"]}


def run_decode(params: Params, features_dir: str | Path, manifest: str | Path, align_dir: str | Path,
               lm_dir: str | Path, out_dir: str | Path, live_dir: str | Path | None = None) -> dict:
    """Train (or resume) the decoder, save it to ``model/`` (``decoders/saved.py``), then write captions for
    ``decode.split`` (= ``evaluate.split``, checked by the params) to ``captions.parquet`` (columns item_id,
    split, generated, references)."""
    dc = params.decode
    if dc.train.num_threads:
        torch.set_num_threads(dc.train.num_threads)
    device = stage_device(dc.device, "decode.device")
    features_dir, align_dir, lm_dir, out_dir = map(Path, (features_dir, align_dir, lm_dir, out_dir))
    align = load_model(align_dir).requires_grad_(False).to(device)
    train_data = FeatureSplit(features_dir, manifest, "train")
    eval_data = FeatureSplit(features_dir, manifest, dc.split)
    train_cond = aligned_conditioning(align, train_data, dc.prefix_tokens)
    eval_cond = aligned_conditioning(align, eval_data, dc.prefix_tokens)
    del align
    decoder = build_decoder(params, train_cond, lm_dir, [c for caps in train_data.caption_texts for c in caps], device)
    log.info("decoder on %s, precision %s", device, dc.precision)
    counts = parameter_counts(decoder)
    log.info("%s decoder: %s trainable of %s parameters", dc.kind, f"{counts['trainable']:,}", f"{counts['total']:,}")
    summary = train_decoder(params, decoder, train_data, train_cond, out_dir, decode_fingerprint(params, align_dir, lm_dir),
                            live_dir)
    # the trained decoder is an output (data/decode/model): edge_glass.load(...).caption and export read it
    save_decoder(out_dir / "model", decoder, params, train_cond.latents.shape[-1], train_cond.embedding.shape[-1], lm_dir)
    t0 = time.perf_counter()
    with autocast(device, resolve_precision(dc.precision, device)):
        captions = generate(decoder, eval_cond, dc.generate, seed=params.decode_seed)
    seconds = time.perf_counter() - t0
    generated_tokens = sum(len(decoder.tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for c in captions)
    # ``split`` on every row: evaluate scores these captions, and can check they are of the split it scores
    frame = pd.DataFrame({"item_id": eval_data.item_ids, "split": dc.split, "generated": captions,
                          "references": [list(c) for c in eval_data.caption_texts]})
    with atomic_path(out_dir / "captions.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    summary.update(kind=dc.kind, parameters=counts, split=dc.split, items=len(frame),
                   generate_seconds=round(seconds, 2), generate_tokens_per_s=round(generated_tokens / seconds, 1))
    write_json(summary, out_dir / "decode_summary.json")
    return summary
