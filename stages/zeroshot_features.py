"""zeroshot_features stage: the labelled sets of evaluate.zeroshot, their media checked and normalised as download
does and encoded by the preprocess encoders (once per fingerprint), and their class prompts encoded; into data/zeroshot."""

from edge_glass.cli import run_stage, stage_parser
from edge_glass.preprocess import run_zeroshot_features


def main(params, args):
    stats = run_zeroshot_features(params, args.manifest, args.out)
    for name, s in stats.items():
        print(f"{name}: {s['items']} items listed in {s['classes']} classes, {s['rejected']} rejected")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--manifest", default="data/download/manifest.parquet", help="manifest (the emoji_groups set's items)")
    parser.add_argument("--out", default="data/zeroshot", help="output folder (default: data/zeroshot)")
    run_stage("zeroshot_features", parser, main)
