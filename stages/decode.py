"""decode stage: train a caption decoder (LoRA LM or TRM) on aligned features and caption the eval split."""

from edge_glass.cli import run_stage, stage_parser
from edge_glass.decode import run_decode


def main(params, args):
    s = run_decode(params, args.features, args.manifest, args.align, args.lm, args.out, args.live)
    p = s["parameters"]
    print(f"{s['kind']}: {p['trainable']:,} trainable / {p['total']:,} parameters; {s['steps']} steps in {s['seconds']}s "
          f"(resumed from {s['resumed_from']}), final loss {s['final'].get('loss')}; "
          f"{s['items']} {s['split']} captions at {s['generate_tokens_per_s']} tokens/s")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--manifest", default="data/download/manifest.parquet")
    parser.add_argument("--align", default="data/align", help="folder with the trained align model")
    parser.add_argument("--lm", default="data/lm", help="prepare_lm output (packaged LM as a plain folder)")
    parser.add_argument("--out", default="data/decode", help="captions.parquet, decode_summary.json, checkpoints/")
    parser.add_argument("--live", default="dvclive/decode", help="DVCLive folder (loss curve)")
    run_stage("decode", parser, main)
