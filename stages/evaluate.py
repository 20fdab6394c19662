"""evaluate stage: retrieval Recall@K on the test split for every MRL dim, and a no-training baseline,
each with bootstrap 95% intervals over test items; zero-shot classification of the evaluate.zeroshot sets;
caption metrics with intervals; per-query results for paired PR diffs; metrics/headline.json, the numbers a
reader compares, written last."""

import json
from pathlib import Path

import pandas as pd

from edge_glass.cli import run_stage, stage_parser
from edge_glass.core.errors import DataError
from edge_glass.core.io import atomic_path, write_json
from edge_glass.evaluate import headline, run_evaluate, run_zeroshot
from edge_glass.metrics.captions import caption_metrics, sample_table
from edge_glass.models.aligner import load_model


def fmt(r: dict | None, key: str) -> str:
    if not r or key not in r:
        return "–"
    ci = f" [{r[key + '_ci95_lo']:.3f}, {r[key + '_ci95_hi']:.3f}]" if key + "_ci95_lo" in r else ""
    return f"{r[key]:.3f}{ci}"


def caption_split(captions: pd.DataFrame, path: str, split: str) -> str:
    """The split decode captioned, which must be the one evaluate scores (decode.split = evaluate.split is
    checked at start-up; this catches a captions file from an older run or given by --captions)."""
    if "split" not in captions.columns:
        raise DataError(f"{path} has no 'split' column (made by an older decode): rerun decode "
                        f"(`dvc repro -f decode`) so the captions say which split they are of")
    found = sorted(set(captions["split"].astype(str)))
    if found != [split]:
        raise DataError(f"{path} holds captions of split(s) {found}, but evaluate.split is {split!r}: "
                        f"set decode.split to {split!r} and rerun decode")
    return split


def main(params, args):
    model = load_model(args.model)
    metrics, by_dim, per_query = run_evaluate(params, args.features, args.manifest, model)
    write_json(metrics, Path(args.metrics))
    with atomic_path(args.plot) as tmp:
        by_dim.to_csv(tmp, index=False)
    with atomic_path(args.queries) as tmp:
        per_query.to_parquet(tmp, index=False)
    left = {r: n for r, n in metrics["items_left_out_by_reason"].items() if n}
    print(f"{metrics['split']}: {metrics['items']} items scored, {metrics['items_left_out']} left out"
          + (f" ({', '.join(f'{r}: {n}' for r, n in left.items())})" if left else ""))
    ks = [f"R@{k}" for k in params.evaluate.recall_k[:2]]
    for task, r in metrics["trained"].items():
        shown = "  ".join(f"{k} {fmt(r, k)}" for k in ks)
        print(f"{task:>14}: {shown}  (baseline {ks[0]} {fmt(metrics['baseline'].get(task), ks[0])})")
    zeroshot, confusion = run_zeroshot(params, args.zeroshot, args.features, args.manifest, model)
    write_json(zeroshot, Path(args.zeroshot_metrics))
    with atomic_path(args.confusion) as tmp:
        confusion.to_csv(tmp, index=False)
    for name, z in zeroshot.items():
        if "skipped" in z:
            print(f"zero-shot {name}: skipped ({z['skipped']})")
            continue
        print(f"zero-shot {name}: {z['scored']} of {z['items']} items scored in {z['classes']} classes (chance "
              f"{z.get('chance_top1', '–')}): top1 {fmt(z['trained'], 'top1')}  top5 {fmt(z['trained'], 'top5')}  "
              f"(baseline top1 {fmt(z['baseline'], 'top1')})")
    scores = None
    if args.captions:
        captions = pd.read_parquet(args.captions)
        split = caption_split(captions, args.captions, params.evaluate.split)
        scores, items = caption_metrics(captions, params.preprocess.text.model,
                                        resamples=params.evaluate.bootstrap_resamples, seed=params.seed)
        write_json({"split": split, **scores}, Path(args.caption_metrics))
        with atomic_path(args.caption_items) as tmp:
            items.to_parquet(tmp, index=False)
        with atomic_path(args.caption_samples) as tmp:
            tmp.write_text(f"# Generated captions ({len(captions)} items, {params.evaluate.caption_samples} shown)\n\n"
                           + sample_table(captions, params.evaluate.caption_samples, params.seed))
        print("captions: " + ", ".join(f"{k} {fmt(scores, k)}" for k in ("BLEU-4", "CIDEr-D", "embedding_similarity"))
              + f", {scores['items']} items")
    with atomic_path(args.headline) as tmp:  # key order kept: `dvc exp show` lists the columns in it
        tmp.write_text(json.dumps(headline(metrics, zeroshot, scores, params.evaluate.recall_k), indent=2) + "\n")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--manifest", default="data/download/manifest.parquet")
    parser.add_argument("--model", default="data/align", help="folder with model.safetensors and model.json")
    parser.add_argument("--metrics", default="metrics/retrieval.json")
    parser.add_argument("--plot", default="metrics/recall_by_dim.csv", help="R@K with 95%% interval per MRL dim (DVC plot)")
    parser.add_argument("--queries", default="metrics/retrieval_queries.parquet",
                        help="per-query first-hit ranks (trained and baseline, top MRL dim): paired PR comparisons")
    parser.add_argument("--captions", default="data/decode/captions.parquet", help="decode output ('' to skip)")
    parser.add_argument("--caption-metrics", default="metrics/captions.json")
    parser.add_argument("--caption-items", default="metrics/caption_items.parquet", help="per-item caption statistics")
    parser.add_argument("--caption-samples", default="metrics/caption_samples.md")
    parser.add_argument("--zeroshot", default="data/zeroshot", help="the zeroshot_features stage's output")
    parser.add_argument("--zeroshot-metrics", default="metrics/zeroshot.json")
    parser.add_argument("--confusion", default="metrics/zeroshot_confusion.csv",
                        help="confusion counts of every zero-shot set (set, label, predicted, count)")
    parser.add_argument("--headline", default="metrics/headline.json", help="the numbers a reader compares (first metrics file)")
    run_stage("evaluate", parser, main)
