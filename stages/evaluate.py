"""evaluate stage: retrieval Recall@K on the test split for every MRL dim, and a no-training baseline."""

from pathlib import Path

import pandas as pd

from edge_glass.caption_metrics import caption_metrics, sample_table
from edge_glass.cli import run_stage, stage_parser
from edge_glass.evaluate import run_evaluate
from edge_glass.io import atomic_path, write_json
from edge_glass.align import load_model


def main(params, args):
    metrics, by_dim = run_evaluate(params, args.features, args.manifest, load_model(args.model))
    write_json(metrics, Path(args.metrics))
    with atomic_path(args.plot) as tmp:
        by_dim.to_csv(tmp, index=False)
    for task, r in metrics["trained"].items():
        base = metrics["baseline"].get(task, {}).get("R@1")
        print(f"{task:>14}: R@1 {r['R@1']:.3f}  R@5 {r['R@5']:.3f}  (baseline R@1 {base if base is None else f'{base:.3f}'})")
    if args.captions:
        captions = pd.read_parquet(args.captions)
        scores = caption_metrics(captions, params.preprocess.text.model)
        write_json(scores, Path(args.caption_metrics))
        with atomic_path(args.caption_samples) as tmp:
            tmp.write_text(f"# Generated captions ({len(captions)} items, {params.evaluate.caption_samples} shown)\n\n"
                           + sample_table(captions, params.evaluate.caption_samples, params.seed))
        print("captions: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items()))


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--manifest", default="data/download/manifest.parquet")
    parser.add_argument("--model", default="data/align", help="folder with model.safetensors and model.json")
    parser.add_argument("--metrics", default="metrics/retrieval.json")
    parser.add_argument("--plot", default="metrics/recall_by_dim.csv", help="R@K per MRL dim (DVC plot)")
    parser.add_argument("--captions", default="data/decode/captions.parquet", help="decode output ('' to skip)")
    parser.add_argument("--caption-metrics", default="metrics/captions.json")
    parser.add_argument("--caption-samples", default="metrics/caption_samples.md")
    run_stage("evaluate", parser, main)
