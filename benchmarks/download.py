"""Your own data at scale: download + preprocess throughput over a local table, and files under data/.

    python benchmarks/download.py [--items 10000] [--shard-size 1000] [--skip-preprocess]

Generates an N-item image-caption table from packaged media (emoji on coloured backgrounds as JPEG
photos; edge_glass.tools.sample_datasets.write_large_table), then runs the download stage (read, check,
normalise, write tar shards) and the image + text preprocess on it, in a temporary folder. The same
download at N/10 items shows that the file count grows with N/shard_size only (no file per item).
Ends with one line:

    download_bench N=... download_items_per_s=... preprocess_items_per_s=... files=... files_at_N/10=...
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edge_glass.config import parse_params  # noqa: E402
from edge_glass.download import build_manifest  # noqa: E402
from edge_glass.tools.sample_datasets import write_large_table  # noqa: E402


def files_under(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file())


def bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def download(table: Path, n: int, shard_size: int, out: Path) -> tuple[dict, float]:
    entry = {"name": "bench", "format": "table", "path": str(table), "image_key": "image", "caption_keys": ["caption"],
             "limit": n}
    params = parse_params({"download": {"sources": [], "local": [entry], "shard_size": shard_size}})
    t0 = time.perf_counter()
    stats = build_manifest(params, out)
    return stats, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--shard-size", type=int, default=1000, help="download.shard_size")
    parser.add_argument("--skip-preprocess", action="store_true", help="time the download stage only")
    parser.add_argument("--workdir", default=None, help="keep the generated data here (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        t0 = time.perf_counter()
        table = write_large_table(work / "raw", args.items)
        original = bytes_under(work / "raw" / "images")
        print(f"generated {args.items} items ({original / 2**20:.1f} MiB of JPEGs) in {time.perf_counter() - t0:.1f}s")
        small_stats, _ = download(table, max(args.items // 10, 1), args.shard_size, work / "small" / "download")
        files_small = files_under(work / "small")
        stats, seconds = download(table, args.items, args.shard_size, work / "data" / "download")
        files = files_under(work / "data")
        media = stats["media_bytes"]
        print(f"download: {stats['kept']} kept, {stats['rejected']} rejected in {seconds:.1f}s = "
              f"{stats['in'] / seconds:.1f} items/s; {files} files under data/ ({files_small} at N/10); "
              f"media shards {media / 2**20:.1f} MiB = {media / original:.2f}x the originals")
        pre_rate = float("nan")
        if not args.skip_preprocess:
            from edge_glass.preprocess import run_preprocess

            params = parse_params({"preprocess": {"modalities": ["image", "text"]}})
            t0 = time.perf_counter()
            pre = run_preprocess(params, work / "data" / "download" / "manifest.parquet", work / "data" / "features")
            pre_seconds = time.perf_counter() - t0
            pre_rate = stats["kept"] / pre_seconds
            files = files_under(work / "data")
            print(f"preprocess: image {pre['image']['encoded']}, text {pre['text']['encoded']} encoded in "
                  f"{pre_seconds:.1f}s = {pre_rate:.1f} items/s; {files} files under data/")
        total = seconds + (stats["kept"] / pre_rate if pre_rate == pre_rate else 0.0)
        print(f"download_bench N={args.items} download_items_per_s={stats['in'] / seconds:.1f} "
              f"preprocess_items_per_s={pre_rate:.1f} end_to_end_items_per_s={stats['in'] / total:.1f} "
              f"files={files} files_at_N/10={files_small} media_vs_original={media / original:.2f}")


if __name__ == "__main__":
    main()
