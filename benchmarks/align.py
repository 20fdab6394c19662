"""Align training speed and memory.

    python benchmarks/align.py [--steps 5] [--batch-size 32]
    python benchmarks/align.py --synthetic 100000 [--device cpu|cuda] [--batch-size 1024] [--pool mean|perceiver]

Default: a training step on cached features vs the same step with the frozen encoders run online
("online" is the design edge_glass replaces: every step decodes the batch's images, audio and
captions and runs EfficientNet-Lite0, the Whisper encoder and MiniLM before the same training step);
prints seconds per step for both and their ratio (target >= 50x). Needs `dvc repro preprocess`.

``--synthetic N``: N items of synthetic features with the default encoders' shapes
(edge_glass.tools.synthetic, written once to ``--workdir``), then the real training step (batch gather,
token dropout, forward, loss, backward, AdamW) on ``--device``. Prints steps/s, items/s, peak
anonymous RSS (memory-mapped shard pages are file-backed and reclaimable, so not counted), peak GPU
memory and mean GPU utilisation (sampled with nvidia-smi), and ends with one line
``align_bench N=... steps_per_s=... peak_rss_gb=... gpu_util=...``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edge_glass.align import build_model, make_optimizer, train_step  # noqa: E402
from edge_glass.config import parse_params  # noqa: E402
from edge_glass.data.manifest import media_ref, read_manifest  # noqa: E402
from edge_glass.encoders.registry import build_encoder  # noqa: E402
from edge_glass.features.dataset import (  # noqa: E402
    Batch,  # noqa: E402
    FeatureSplit,
    global_batch,
    pad_tokens,
)
from edge_glass.models.loss import contrastive_loss  # noqa: E402
from edge_glass.train.distributed import DistInfo  # noqa: E402


def online_batch(encoders, rows, base: Path, data: FeatureSplit) -> Batch:
    """Encode the batch's raw inputs now, as a notebook pipeline would, into the same Batch layout."""
    tokens, masks, present = {}, {}, {}
    for m in ("image", "audio"):
        refs = [media_ref(r, m) for r in rows]
        have = [i for i, ref in enumerate(refs) if ref is not None]
        feats, _ = encoders[m].forward([encoders[m].load(refs[i].read(base)) for i in have]) if have else ([], None)
        by_row = dict(zip(have, feats))
        tokens[m], masks[m], present[m] = pad_tokens([by_row.get(i) for i in range(len(rows))], data.token_dims[m])
    _, pooled = encoders["text"].forward([r.captions[0] for r in rows])
    return Batch(tokens, masks, present, pooled)


class PeakSampler:
    """Samples peak anonymous RSS (/proc/self/status RssAnon) and GPU utilisation in the background."""

    def __init__(self, gpu: bool, every_s: float = 0.05):
        self.peak_anon_kb, self.util, self._stop = 0, [], threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._smi = None
        if gpu and shutil.which("nvidia-smi"):
            self._smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "200", "-i", str(torch.cuda.current_device())],
                                         stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read_smi, daemon=True).start()

    def _read_smi(self):
        for line in self._smi.stdout:
            if line.strip().isdigit():
                self.util.append(int(line))

    def _run(self, every_s):
        while not self._stop.is_set():
            self.sample()
            time.sleep(every_s)

    def sample(self):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                self.peak_anon_kb = max(self.peak_anon_kb, int(line.split()[1]))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()
        if self._smi is not None:
            self._smi.terminate()


def synthetic_bench(args) -> None:
    from edge_glass.core.device import resolve_device
    from edge_glass.tools.synthetic import write_synthetic

    work = Path(args.workdir) / f"synthetic-{args.synthetic}"
    if not (work / "features" / "encoders.json").exists():
        t0 = time.perf_counter()
        write_synthetic(work, args.synthetic)
        print(f"wrote {args.synthetic} synthetic items to {work} in {time.perf_counter() - t0:.0f}s")
    device = resolve_device(args.device, "--device")
    raw = {"align": {"device": args.device, "perceiver": {"pool": args.pool, "num_latents": 32},
                     "train": {"batch_size": args.batch_size, "steps": args.steps + 1, "warmup_steps": 1}}}
    params = parse_params(raw)
    info = DistInfo(0, 1, device)
    with PeakSampler(device.type == "cuda") as peak:
        t0 = time.perf_counter()
        data = FeatureSplit(work / "features", work / "download" / "manifest.parquet", "train")
        val = FeatureSplit(work / "features", work / "download" / "manifest.parquet", "val")
        model = build_model(params.align, data, params.seed, val).to(device)
        init_s = time.perf_counter() - t0
        opt = make_optimizer(model, params.align)
        train_step(model, opt, data, 0, params, info)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        util_start = len(peak.util)
        t0 = time.perf_counter()
        for s in range(1, args.steps + 1):
            train_step(model, opt, data, s, params, info)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    util = peak.util[util_start:]
    steps_per_s = args.steps / seconds
    gpu_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    gpu_util = sum(util) / len(util) if util else float("nan")
    print(f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads; {len(data)} train items, "
          f"batch {args.batch_size}, pool {args.pool}, {args.steps} steps; init (data + PCA/ridge) {init_s:.1f}s")
    print(f"{steps_per_s:.2f} steps/s, {steps_per_s * args.batch_size:.0f} items/s; peak anonymous RSS "
          f"{peak.peak_anon_kb / 2**20:.2f} GiB; peak GPU memory {gpu_mem:.2f} GiB; mean GPU utilisation {gpu_util:.0f}%")
    print(f"align_bench N={args.synthetic} device={device.type} batch={args.batch_size} pool={args.pool} "
          f"steps_per_s={steps_per_s:.2f} items_per_s={steps_per_s * args.batch_size:.0f} "
          f"peak_rss_gb={peak.peak_anon_kb / 2**20:.2f} gpu_mem_gb={gpu_mem:.2f} gpu_util={gpu_util:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--synthetic", type=int, default=0, help="benchmark on N synthetic items instead")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (with --synthetic)")
    parser.add_argument("--pool", default="mean", choices=["mean", "perceiver"], help="with --synthetic")
    parser.add_argument("--workdir", default="benchmarks/results", help="where synthetic features are kept")
    args = parser.parse_args()
    if args.synthetic:
        return synthetic_bench(args)
    raw = yaml.safe_load(Path(args.params).read_text())
    raw["align"]["train"]["batch_size"] = args.batch_size
    params = parse_params(raw)
    manifest_path = Path("data/download/manifest.parquet")
    data = FeatureSplit("data/features", manifest_path, "train")
    manifest = read_manifest(manifest_path).set_index("item_id")
    model = build_model(params.align, data, params.seed)
    opt = make_optimizer(model, params.align)
    info = DistInfo()
    train_step(model, opt, data, 0, params, info)  # warm-up
    t0 = time.perf_counter()
    for s in range(1, args.steps + 1):
        train_step(model, opt, data, s, params, info)
    cached = (time.perf_counter() - t0) / args.steps

    encoders = {m: build_encoder(m, params) for m in ("image", "audio", "text")}
    t0 = time.perf_counter()
    for s in range(1, args.steps + 1):
        indices, _ = global_batch(s, 0, 1, args.batch_size, len(data), params.seed, data.caption_counts)
        rows = [manifest.loc[data.item_ids[i]] for i in indices]
        with torch.no_grad():
            batch = online_batch(encoders, rows, manifest_path.parent, data)
        out = model(batch)
        loss, _ = contrastive_loss(model, out, params.align, info)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    online = (time.perf_counter() - t0) / args.steps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.steps} steps")
    print(f"cached features: {cached * 1e3:8.1f} ms/step")
    print(f"online encoders: {online * 1e3:8.1f} ms/step")
    print(f"online / cached: {online / cached:8.1f}x")


if __name__ == "__main__":
    main()
