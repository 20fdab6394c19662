"""align stage: train Perceiver resamplers, fusion and MRL heads on cached features (launch with torchrun)."""

from edge_glass.align import train
from edge_glass.cli import run_stage, stage_parser
from edge_glass.core.device import resolve_device
from edge_glass.train.distributed import init_distributed, shutdown


def main(params, args):
    info = init_distributed(device=resolve_device(params.align.device, "align.device"))
    try:
        summary = train(params, args.features, args.manifest, args.out, args.live, info)
    finally:
        shutdown(info)
    if info.is_main:
        final = summary["final"]
        print(f"trained {summary['steps']} steps in {summary['seconds']}s (resumed from {summary['resumed_from']}); "
              f"final loss {final.get('loss')}, val loss {final.get('val_loss')}")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--features", default="data/features", help="preprocess output folder")
    parser.add_argument("--manifest", default="data/download/manifest.parquet")
    parser.add_argument("--out", default="data/align", help="model, checkpoints/ and train_summary.json")
    parser.add_argument("--live", default="dvclive/align", help="DVCLive folder (loss curves)")
    run_stage("align", parser, main)
