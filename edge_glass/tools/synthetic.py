"""Synthetic cached features in the project's own layout (open_clip's ``--dataset-type synthetic``).

Writes ``features/{image,audio,text}/shard-*.safetensors`` + ``index.parquet`` + ``encoders.json``
and a matching ``download/manifest.parquet`` for N items, with the default encoders' shapes (image
49 x 1280 tokens, audio 25-150 x 384, text 8-20 x 384; fp16) and a learnable shared signal: every
item has a hidden vector, its media tokens and its captions are noisy fixed linear images of it, so
alignment can learn (and tests can tell learning from noise). Shards are generated one at a time:
memory stays flat in N; disk is ~190 kB per item with the default shapes.

    python -m edge_glass.tools.synthetic --out data/synthetic --items 20000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from edge_glass.core.io import write_json
from edge_glass.data.manifest import Sample, write_manifest
from edge_glass.data.splits import assign_split
from edge_glass.features.store import plan_shards, shard_name, write_index, write_shard

SHAPES = {"image": ((49, 49), 1280), "audio": ((25, 150), 384), "text": ((8, 20), 384)}
LATENT = 32


def _projections(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 99])
    return {m: rng.standard_normal((LATENT, d)).astype(np.float32) / np.sqrt(LATENT) for m, (_, d) in SHAPES.items()}


def write_synthetic(out: str | Path, n: int, *, seed: int = 0, shard_size: int = 512, captions_per_item: int = 2,
                    modalities: tuple[str, ...] = ("image", "audio"), noise: float = 8.0, item_scale: float = 0.3, split=(0.8, 0.1)) -> dict:
    """Write N synthetic items; returns {"manifest": path, "features": path}."""
    out = Path(out)
    proj = _projections(seed)
    ids = [f"synthetic/{i:07d}" for i in range(n)]

    def hidden(rows: np.ndarray) -> np.ndarray:
        """Each item's hidden vector, a pure function of (seed, row): a concept shared by 4 items plus a smaller
        part of its own, so retrieval is learnable but not trivial (R@1 well below 1 at the start)."""
        concept = np.stack([np.random.default_rng([seed, 1, int(r) // 4]).standard_normal(LATENT) for r in rows])
        own = np.stack([np.random.default_rng([seed, 2, int(r)]).standard_normal(LATENT) for r in rows])
        return (concept + item_scale * own).astype(np.float32)

    encoders = {}
    for m in (*modalities, "text"):
        (lo, hi), dim = SHAPES[m]
        mod_dir = out / "features" / m
        mod_dir.mkdir(parents=True, exist_ok=True)
        feature_ids = ids if m != "text" else [f"{i}#{k}" for i in ids for k in range(captions_per_item)]
        index_rows = []
        for k, chunk in enumerate(plan_shards(feature_ids, shard_size)):
            rows = np.array([int(c.split("/")[1].split("#")[0]) for c in chunk])
            rng = np.random.default_rng([seed, k, len(m) * 7 + (m == "audio")])
            base = hidden(rows) @ proj[m]  # (b, dim): the shared signal
            lengths = rng.integers(lo, hi + 1, size=len(chunk))
            tokens = [torch.from_numpy(base[j] + noise * rng.standard_normal((int(n_j), dim), dtype=np.float32))
                      for j, n_j in enumerate(lengths)]
            pooled = torch.stack([t.mean(0) for t in tokens])
            if m == "text":
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            write_shard(mod_dir / shard_name(k), chunk, tokens, pooled, torch.float16, {"fingerprint": "synthetic"})
            index_rows += [{"id": c, "item_id": c.split("#")[0], "shard": k, "row": r, "n_tokens": int(n_j)}
                           for r, (c, n_j) in enumerate(zip(chunk, lengths))]
        write_index(mod_dir, index_rows)
        encoders[m] = {"modality": m, "name": f"synthetic-{m}", "token_dim": dim, "pooled_dim": dim, "weights": {},
                       "settings": {"seed": seed}, "encoded": len(feature_ids)}
    write_json(encoders, out / "features" / "encoders.json")
    samples = [Sample(i, "synthetic", [f"caption {k} of {i}" for k in range(captions_per_item)],
                      split=assign_split(i, seed, split[0], split[1])) for i in ids]
    write_manifest(samples, out / "download" / "manifest.parquet")
    return {"manifest": out / "download" / "manifest.parquet", "features": out / "features"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/synthetic")
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=512)
    args = parser.parse_args(argv)
    paths = write_synthetic(args.out, args.items, seed=args.seed, shard_size=args.shard_size)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
