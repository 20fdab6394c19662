"""download stage: build data/download/manifest.parquet (+ rejects.csv, media/<source>/NNNNN.tar shards) from
params.download: the packaged demo sources (download.sources) and your own data on disk (download.local).

A killed run resumes from its finished shards; see README "Your own data" for the formats.
"""

from pathlib import Path

from edge_glass.cli import run_stage, stage_parser
from edge_glass.download import build_manifest


def main(params, args):
    # metrics are written inside, before a source that kept nothing stops the stage (a DataError: exit 3)
    stats = build_manifest(params, args.out, Path(args.metrics))
    print(f"kept {stats['kept']} of {stats['in']} ({stats['rejected']} rejected, see {args.out}/rejects.csv)")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default="data/download", help="output folder (default: data/download)")
    parser.add_argument("--metrics", default="metrics/download.json", help="counts file (default: metrics/download.json)")
    run_stage("download", parser, main)
