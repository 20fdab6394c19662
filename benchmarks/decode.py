"""Decoder throughput and memory: LoRA causal LM vs the TRM recursive decoder, and KV-cached generation.

    python benchmarks/decode.py [--steps 10] [--batch-size 16] [--items 64]
    python benchmarks/decode.py --generation [--items 64] [--repeats 3] [--device cpu|cuda]

Default: each decoder runs in its own process (so peak RSS is its own): training tokens/s over
``--steps`` steps, greedy generation tokens/s over ``--items`` test items, parameter counts and peak
resident memory. Prints the LM/TRM ratios. Needs `dvc repro align prepare_lm`.

``--generation``: the LoRA LM decoder of the default run (its trained checkpoint
``data/decode/checkpoints/last.safetensors`` when present, so captions have their real lengths)
captions ``--items`` test items with greedy decoding, uncached (the whole prefix + caption re-run per
token, every row to the end) and KV-cached (finished rows leave the batch), ``--repeats`` times each,
alternating; once with captions as long as the decoder makes them (``gen_speedup``) and once with EOS
forbidden until ``max_new_tokens`` (``gen_speedup_full``: the cache's gain grows with length). Checks
that the tokens are identical and ends with one line ``decode_bench gen_speedup=... gen_speedup_full=...
identical=...``. Needs `dvc repro decode`.
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
    from edge_glass.decode import build_decoder, caption_batch, parameter_counts
    from edge_glass.decoders.conditioning import aligned_conditioning
    from edge_glass.decoders.generate import generate
    from edge_glass.features.dataset import FeatureSplit
    from edge_glass.models.aligner import load_model

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


def generation(args) -> None:
    import statistics

    import torch
    import yaml
    from safetensors.torch import load_file

    from edge_glass.config import parse_params
    from edge_glass.core.device import autocast, resolve_precision, stage_device
    from edge_glass.decode import build_decoder
    from edge_glass.decoders.conditioning import aligned_conditioning
    from edge_glass.decoders.generate import generate_ids
    from edge_glass.features.dataset import FeatureSplit
    from edge_glass.models.aligner import load_model

    raw = yaml.safe_load(Path(args.params).read_text())
    raw["decode"]["kind"] = "lora_lm"
    params = parse_params(raw)
    device = stage_device(args.device, "--device")
    align = load_model(args.align).to(device)
    split = params.decode.split
    data = FeatureSplit(args.features, args.manifest, split)
    cond = aligned_conditioning(align, data, params.decode.prefix_tokens).select(list(range(min(args.items, len(data)))))
    decoder = build_decoder(params, cond, args.lm, device=device).eval()
    checkpoint = Path(args.decoder_checkpoint)
    trained = checkpoint.exists()
    if trained:
        state = {k[len("model."):]: v for k, v in load_file(str(checkpoint)).items() if k.startswith("model.")}
        decoder.load_state_dict(state, strict=False)
    precision = resolve_precision(params.decode.precision, device)
    summary = {}
    # natural: captions end where the decoder puts EOS; full: EOS forbidden until max_new_tokens
    for label, min_new in (("natural", 0), ("full", params.decode.generate.max_new_tokens)):
        cfg = params.decode.generate.model_copy(update={"strategy": "greedy", "min_new_tokens": min_new})
        times: dict[bool, list[float]] = {False: [], True: []}
        outputs: dict[bool, list] = {}

        def run(cached: bool) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with autocast(device, precision):
                outputs[cached] = generate_ids(decoder, cond, cfg, cached=cached)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[cached].append(time.perf_counter() - t0)

        run(True)  # warm-up (allocator, kernels)
        times[True].clear()
        for _ in range(args.repeats):
            run(False)
            run(True)
        tokens = sum(len(r) + (len(r) < cfg.max_new_tokens) for r in outputs[True])  # + EOS where one was generated
        ratios = [u / c for u, c in zip(times[False], times[True])]
        summary[label] = (statistics.mean(ratios), statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
                          outputs[True] == outputs[False])
        print(f"{label}: {len(cond)} {split} items on {device}, {'trained' if trained else 'untrained'} LoRA decoder, "
              f"greedy, {cfg.min_new_tokens}-{cfg.max_new_tokens} new tokens, batch {cfg.batch_size}: {tokens} tokens")
        for cached in (False, True):
            ts = times[cached]
            print(f"  {'cached' if cached else 'uncached':>8}: {statistics.mean(ts):.2f} s (sd {statistics.pstdev(ts):.2f}), "
                  f"{tokens / statistics.mean(ts):.1f} tokens/s")
        print(f"  speedup {summary[label][0]:.2f}x (sd {summary[label][1]:.2f} over {args.repeats} pairs), "
              f"identical tokens: {summary[label][2]}")
    (nat, nat_sd, nat_same), (full, full_sd, full_same) = summary["natural"], summary["full"]
    print(f"decode_bench gen_speedup={nat:.2f}+-{nat_sd:.2f} gen_speedup_full={full:.2f}+-{full_sd:.2f} "
          f"identical={nat_same and full_same} device={device.type}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generation", action="store_true", help="KV-cached vs uncached greedy generation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="--generation: auto, cpu, cuda or cuda:N")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--manifest", default="data/download/manifest.parquet")
    parser.add_argument("--align", default="data/align")
    parser.add_argument("--lm", default="data/lm")
    parser.add_argument("--decoder-checkpoint", default="data/decode/checkpoints/last.safetensors")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--items", type=int, default=64, help="test items captioned for generation speed")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--only", choices=["lora_lm", "trm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generation:
        generation(args)
        return
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
