"""Decoder throughput and memory: LoRA causal LM vs the TRM recursive decoder, on the real aligned features.

    python benchmarks/decode.py [--steps 10] [--batch-size 16] [--items 64]

Each decoder runs in its own process (so peak RSS is its own): training tokens/s over ``--steps``
steps, greedy generation tokens/s over ``--items`` test items, parameter counts and peak resident
memory. Prints the LM/TRM ratios. Needs `dvc repro align prepare_lm`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def measure(kind: str, args) -> dict:
    import torch
    import yaml

    from edge_glass.config import parse_params
    from edge_glass.data import FeatureSplit
    from edge_glass.decode import build_decoder, caption_batch, parameter_counts
    from edge_glass.decoders.conditioning import aligned_conditioning
    from edge_glass.generate import generate
    from edge_glass.align import load_model

    raw = yaml.safe_load(Path(args.params).read_text())
    raw["decode"]["kind"] = kind
    raw["decode"]["train"]["batch_size"] = args.batch_size
    params = parse_params(raw)
    align = load_model("data/align")
    train = FeatureSplit("data/features", "data/download/manifest.parquet", "train")
    test = FeatureSplit("data/features", "data/download/manifest.parquet", "test")
    cond = aligned_conditioning(align, train, params.decode.prefix_tokens)
    test_cond = aligned_conditioning(align, test, params.decode.prefix_tokens).select(list(range(min(args.items, len(test)))))
    decoder = build_decoder(params, cond, "data/lm", [c for caps in train.caption_texts for c in caps])
    opt = torch.optim.AdamW([p for p in decoder.parameters() if p.requires_grad], lr=1e-4)
    decoder.train()
    tokens, t0 = 0, None
    for step in range(args.steps + 1):  # step 0 is warm-up
        if step == 1:
            tokens, t0 = 0, time.perf_counter()
        c, ids, mask = caption_batch(decoder, train, cond, step, params)
        decoder.loss(c, ids, mask).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
    train_tps = tokens / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    captions = generate(decoder, test_cond, params.decode.generate)
    seconds = time.perf_counter() - t0
    generated = sum(len(decoder.tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for c in captions)
    return {"kind": kind, **parameter_counts(decoder), "train_tokens_per_s": train_tps,
            "generate_tokens_per_s": generated / seconds, "generated_tokens": generated,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--items", type=int, default=64, help="test items captioned for generation speed")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--only", choices=["lora_lm", "trm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args.only, args)))
        return
    results = {}
    for kind in ("lora_lm", "trm"):
        cmd = [sys.executable, __file__, "--only", kind, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--items", str(args.items), "--params", args.params]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[kind] = json.loads(out.strip().splitlines()[-1])
    print(f"{'decoder':>8} {'params':>12} {'trainable':>12} {'train tok/s':>12} {'gen tok/s':>10} {'peak RSS MB':>12}")
    for kind, r in results.items():
        print(f"{kind:>8} {r['total']:>12,} {r['trainable']:>12,} {r['train_tokens_per_s']:>12.1f} "
              f"{r['generate_tokens_per_s']:>10.1f} {r['peak_rss_mb']:>12.0f}")
    lm, trm = results["lora_lm"], results["trm"]
    print(f"ratios LM/TRM: parameters {lm['total'] / trm['total']:.1f}x, peak memory {lm['peak_rss_mb'] / trm['peak_rss_mb']:.1f}x; "
          f"TRM/LM speed: training {trm['train_tokens_per_s'] / lm['train_tokens_per_s']:.1f}x, "
          f"generation {trm['generate_tokens_per_s'] / lm['generate_tokens_per_s']:.1f}x")


if __name__ == "__main__":
    main()
