"""Align training step on cached features vs the same step with the frozen encoders run online.

    python benchmarks/align.py [--steps 5] [--batch-size 32]

"Online" is the design edge_glass replaces: every step decodes the batch's images, audio and
captions and runs EfficientNet-Lite0, the Whisper encoder and MiniLM before the same training step.
Prints seconds per step for both and their ratio (target >= 50x). Needs `dvc repro preprocess`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edge_glass.config import parse_params  # noqa: E402
from edge_glass.data import AlignData, global_batch, pad_tokens  # noqa: E402
from edge_glass.distributed import DistInfo  # noqa: E402
from edge_glass.manifest import media_ref, read_manifest  # noqa: E402
from edge_glass.models.align import Batch  # noqa: E402
from edge_glass.preprocess import build_encoder  # noqa: E402
from edge_glass.train import build_model, contrastive_loss, make_optimizer, train_step  # noqa: E402


def online_batch(encoders, rows, base: Path, data: AlignData) -> Batch:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    raw = yaml.safe_load(Path(args.params).read_text())
    raw["align"]["train"]["batch_size"] = args.batch_size
    params = parse_params(raw)
    manifest_path = Path("data/download/manifest.parquet")
    data = AlignData("data/features", manifest_path, "train")
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
