"""Preprocess throughput: the whole stage (load, encode, write shards) vs the bare encoder forward.

    python benchmarks/preprocess.py [--items 256] [--manifest data/download/manifest.parquet]
                                    [--workers 0 1 2] [--params params.yaml] [--device cpu|cuda]

Both sides see the same items in the same batches; the ratio stage/bare is the overhead left by
loading and writing (target >= 0.9 on the CPU, >= 0.8 on a GPU). The stage runs once per
``--workers`` value (``preprocess.num_workers``: 0 = one loader thread, N = N DataLoader processes).
Also times the Whisper encoder on a 3 s clip trimmed to its length vs padded to 30 s. Uses the
manifest of `dvc repro download` if present, else downloads a small subset into a temporary folder.
Ends with one line ``preprocess_bench image=<stage/bare>@<workers> ...`` (best worker count per modality).
On a GPU without the packaged weights, pass the smoke params of `edge_glass.tools.smoke` (random weights).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edge_glass.config import parse_params  # noqa: E402
from edge_glass.data.manifest import read_manifest  # noqa: E402
from edge_glass.download import build_manifest  # noqa: E402
from edge_glass.encoders.registry import build_encoder  # noqa: E402
from edge_glass.encoders.whisper import log_mel  # noqa: E402
from edge_glass.preprocess import (  # noqa: E402
    loader_blas_single_threaded,
    make_batches,
    preprocess_modality,
    read_input,
    work_items,
)


def synchronize(encoder) -> None:
    if encoder.device.type == "cuda":
        torch.cuda.synchronize(encoder.device)


def bare_forward_seconds(encoder, items) -> float:
    """Time only encoder.forward over pre-loaded inputs, in the stage's batches."""
    batches = [[encoder.load(read_input(it)) for it in b] for b in make_batches(items, encoder.batch_size)]
    encoder.forward(batches[0])  # warm-up
    synchronize(encoder)
    t0 = time.perf_counter()
    for b in batches:
        encoder.forward(b)
    synchronize(encoder)
    return time.perf_counter() - t0


def whisper_trim_vs_pad(encoder, repeats: int = 5) -> tuple[float, float]:
    wav = (0.1 * np.sin(np.linspace(0, 3 * 440 * 2 * np.pi, 3 * 16000))).astype(np.float32)
    out = []
    for pad in (False, True):
        mel = log_mel(wav, encoder.encoder.n_mels, pad_to_30s=pad)
        encoder.forward([mel])
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            encoder.forward([mel])
            times.append(time.perf_counter() - t0)
        out.append(statistics.median(times))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=256, help="items per modality (default 256)")
    parser.add_argument("--manifest", default="data/download/manifest.parquet")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="preprocess.num_workers values")
    parser.add_argument("--params", help="params.yaml whose preprocess section to use (default: the schema defaults)")
    parser.add_argument("--device", help="override preprocess.device (auto, cpu, cuda, cuda:N)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="eg-bench-"))
    raw = yaml.safe_load(Path(args.params).read_text()) if args.params else {}
    raw.setdefault("preprocess", {})["shard_size"] = 128
    if args.device:
        raw["preprocess"]["device"] = args.device
    params = parse_params(raw)
    manifest_path = Path(args.manifest)
    if not manifest_path.exists():
        small = parse_params({"download": {"limit_per_source": args.items}})
        build_manifest(small, tmp / "download")
        manifest_path = tmp / "download" / "manifest.parquet"
    manifest = read_manifest(manifest_path)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, manifest {manifest_path}")
    print(f"{'modality':<8} {'items':>6} {'workers':>7} {'bare items/s':>13} {'stage items/s':>14} {'stage/bare':>11}")
    best = {}
    for modality in ("image", "audio", "text"):
        items = work_items(manifest, modality, manifest_path.parent)[: args.items]
        ids = {it.item_id for it in items}
        subset = manifest[manifest.item_id.isin(ids)]
        if modality == "text":
            items = work_items(subset, modality, manifest_path.parent)
        encoder = build_encoder(modality, params)
        bare = bare_forward_seconds(encoder, items)
        for workers in args.workers:
            run_params = params.model_copy(update={"preprocess": params.preprocess.model_copy(update={"num_workers": workers})})
            t0 = time.perf_counter()
            with loader_blas_single_threaded():
                preprocess_modality(modality, subset, manifest_path.parent, tmp / f"features-{modality}-{workers}",
                                    run_params, encoder)
            synchronize(encoder)
            stage = time.perf_counter() - t0
            print(f"{modality:<8} {len(items):>6} {workers:>7} {len(items) / bare:>13.1f} {len(items) / stage:>14.1f} "
                  f"{bare / stage:>11.2f}")
            if bare / stage > best.get(modality, (0, 0))[0]:
                best[modality] = (bare / stage, workers)
        if modality == "audio":
            trimmed, padded = whisper_trim_vs_pad(encoder)
    print(f"whisper encoder, 3 s clip: trimmed {trimmed * 1e3:.1f} ms, padded to 30 s {padded * 1e3:.1f} ms, "
          f"padded/trimmed {padded / trimmed:.1f}x")
    print("preprocess_bench " + " ".join(f"{m}={r:.2f}@{w}" for m, (r, w) in best.items())
          + f" device={encoder.device.type}")


if __name__ == "__main__":
    main()
