"""preprocess stage: run the frozen encoders once over the manifest; write feature shards to data/features.

Scale-out: `torchrun --nproc_per_node=N stages/preprocess.py` splits the shards over N ranks.
"""

from pathlib import Path

from edge_glass.cli import run_stage, stage_parser
from edge_glass.core.io import write_json
from edge_glass.preprocess import run_preprocess
from edge_glass.train.distributed import barrier, init_distributed, shutdown


def main(params, args):
    info = init_distributed(backend="gloo")  # torchrun --nproc_per_node=N: each rank writes its own shards
    try:
        stats = run_preprocess(params, args.manifest, args.out, info.rank, info.world, lambda: barrier(info))
    finally:
        shutdown(info)
    if stats is None:
        return
    write_json(stats, Path(args.metrics))
    for modality, s in stats.items():
        print(f"{modality}: {s['encoded']} encoded, {s['rejected']} rejected, {s.get('resumed_shards', 0)} shards resumed")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--manifest", default="data/download/manifest.parquet", help="manifest from the download stage")
    parser.add_argument("--out", default="data/features", help="output folder (default: data/features)")
    parser.add_argument("--metrics", default="metrics/preprocess.json", help="stats file (default: metrics/preprocess.json)")
    run_stage("preprocess", parser, main)
