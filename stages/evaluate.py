"""evaluate stage: retrieval Recall@K on the test split for every MRL dim, and a no-training baseline."""

from pathlib import Path

from edge_glass.cli import run_stage, stage_parser
from edge_glass.evaluate import run_evaluate
from edge_glass.io import atomic_path, write_json
from edge_glass.train import load_model


def main(params, args):
    metrics, by_dim = run_evaluate(params, args.features, args.manifest, load_model(args.model))
    write_json(metrics, Path(args.metrics))
    with atomic_path(args.plot) as tmp:
        by_dim.to_csv(tmp, index=False)
    for task, r in metrics["trained"].items():
        base = metrics["baseline"].get(task, {}).get("R@1")
        print(f"{task:>14}: R@1 {r['R@1']:.3f}  R@5 {r['R@5']:.3f}  (baseline R@1 {base if base is None else f'{base:.3f}'})")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--manifest", default="data/download/manifest.parquet")
    parser.add_argument("--model", default="data/align", help="folder with model.safetensors and model.json")
    parser.add_argument("--metrics", default="metrics/retrieval.json")
    parser.add_argument("--plot", default="metrics/recall_by_dim.csv", help="R@K per MRL dim (DVC plot)")
    run_stage("evaluate", parser, main)
