"""Preprocess throughput: the whole stage (load, encode, write shards) vs the bare encoder forward.

    python benchmarks/preprocess.py [--items 256] [--manifest data/download/manifest.parquet]

Both sides see the same items in the same batches; the ratio stage/bare is the overhead left by
loading and writing (target >= 0.9). Also times the Whisper encoder on a 3 s clip trimmed to its
length vs padded to 30 s. Uses the manifest of `dvc repro download` if present, else downloads a
small subset into a temporary folder.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edge_glass.config import parse_params  # noqa: E402
from edge_glass.download import build_manifest  # noqa: E402
from edge_glass.encoders.whisper import log_mel  # noqa: E402
from edge_glass.manifest import read_manifest  # noqa: E402
from edge_glass.preprocess import (  # noqa: E402
    batch_size, build_encoder, loader_blas_single_threaded, make_batches, preprocess_modality, read_input, work_items,
)


def bare_forward_seconds(encoder, items, bs) -> float:
    """Time only encoder.forward over pre-loaded inputs, in the stage's batches."""
    batches = [[encoder.load(read_input(it)) for it in b] for b in make_batches(items, bs)]
    encoder.forward(batches[0])  # warm-up
    t0 = time.perf_counter()
    for b in batches:
        encoder.forward(b)
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
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="eg-bench-"))
    params = parse_params({"preprocess": {"shard_size": 128}})
    manifest_path = Path(args.manifest)
    if not manifest_path.exists():
        small = parse_params({"download": {"limit_per_source": args.items}})
        build_manifest(small, tmp / "download")
        manifest_path = tmp / "download" / "manifest.parquet"
    manifest = read_manifest(manifest_path)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, manifest {manifest_path}")
    print(f"{'modality':<8} {'items':>6} {'bare items/s':>13} {'stage items/s':>14} {'stage/bare':>11}")
    for modality in ("image", "audio", "text"):
        items = work_items(manifest, modality, manifest_path.parent)[: args.items]
        ids = {it.item_id for it in items}
        subset = manifest[manifest.item_id.isin(ids)]
        if modality == "text":
            items = work_items(subset, modality, manifest_path.parent)
        encoder = build_encoder(modality, params)
        bare = bare_forward_seconds(encoder, items, batch_size(modality, params))
        t0 = time.perf_counter()
        with loader_blas_single_threaded():
            preprocess_modality(modality, subset, manifest_path.parent, tmp / f"features-{modality}", params, encoder)
        stage = time.perf_counter() - t0
        print(f"{modality:<8} {len(items):>6} {len(items) / bare:>13.1f} {len(items) / stage:>14.1f} {bare / stage:>11.2f}")
        if modality == "audio":
            trimmed, padded = whisper_trim_vs_pad(encoder)
    print(f"whisper encoder, 3 s clip: trimmed {trimmed * 1e3:.1f} ms, padded to 30 s {padded * 1e3:.1f} ms, "
          f"padded/trimmed {padded / trimmed:.1f}x")


if __name__ == "__main__":
    main()
