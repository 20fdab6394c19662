"""Paired comparison of two evaluated runs: is a change outside the noise of the test set?

    python -m edge_glass.compare --base-ref origin/main          # this workspace vs a git revision
    python -m edge_glass.compare --base DIR --new DIR            # two metrics/ folders

Reads the per-query ranks (``metrics/retrieval_queries.parquet``) and per-item caption statistics
(``metrics/caption_items.parquet``) that the evaluate stage writes, pairs the two runs on the same
queries (same test split), and for every metric gives new − base with a paired bootstrap 95%
interval: each resample draws the same queries for both runs. A row whose interval excludes 0 is
marked ✱ (a change the test set can tell from chance). Writes a markdown table (``--out``) that the
PR workflow appends to its comment, and prints it.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from edge_glass.bootstrap import RESAMPLES, paired_difference
from edge_glass.caption_metrics import BLEU_COLUMNS, corpus_bleu

QUERIES = "metrics/retrieval_queries.parquet"
CAPTIONS = "metrics/caption_items.parquet"
KS = (1, 5, 10)


def read_at(path: str, base_dir: Path | None = None, ref: str | None = None) -> pd.DataFrame | None:
    """A metrics parquet from a folder or from a git revision; None when that run has none."""
    if ref is not None:
        out = subprocess.run(["git", "show", f"{ref}:{path}"], capture_output=True)
        return pd.read_parquet(io.BytesIO(out.stdout)) if out.returncode == 0 else None
    file = (base_dir or Path(".")) / path
    return pd.read_parquet(file) if file.exists() else None


def compare_retrieval(new: pd.DataFrame, old: pd.DataFrame, resamples: int, seed: int) -> list[dict]:
    rows = []
    keys = ["model", "task", "query"]
    joined = new.merge(old, on=keys, suffixes=("_new", "_old"))
    for (model, task), group in joined.groupby(["model", "task"], sort=True):
        n = len(group)
        for k in KS:
            hit_new = (group["rank_new"].to_numpy() < k).astype(np.float64)[:, None]
            hit_old = (group["rank_old"].to_numpy() < k).astype(np.float64)[:, None]
            res = paired_difference(hit_new, hit_old, lambda sums: sums[:, 0] / n, resamples=resamples, seed=seed)
            rows.append({"metric": f"{model} {task} R@{k}", "base": hit_old.mean(), "new": hit_new.mean(), "n": n, **res})
    return rows


def compare_captions(new: pd.DataFrame, old: pd.DataFrame, resamples: int, seed: int) -> list[dict]:
    joined = new.merge(old, on="item_id", suffixes=("_new", "_old"))
    n = len(joined)
    if not n:
        return []
    rows = []
    for name in ("CIDEr-D", "embedding_similarity", "exact_match"):
        a, b = joined[f"{name}_new"].to_numpy()[:, None], joined[f"{name}_old"].to_numpy()[:, None]
        rows.append({"metric": f"captions {name}", "base": b.mean(), "new": a.mean(), "n": n,
                     **paired_difference(a, b, lambda sums: sums[:, 0] / n, resamples=resamples, seed=seed)})
    a = joined[[f"{c}_new" for c in BLEU_COLUMNS]].to_numpy()
    b = joined[[f"{c}_old" for c in BLEU_COLUMNS]].to_numpy()
    for order in (1, 4):
        rows.append({"metric": f"captions BLEU-{order}", "base": float(corpus_bleu(b.sum(0), order)[0]),
                     "new": float(corpus_bleu(a.sum(0), order)[0]), "n": n,
                     **paired_difference(a, b, lambda sums, o=order: corpus_bleu(sums, o), resamples=resamples, seed=seed)})
    return rows


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"## {title}", "",
             "Paired bootstrap over the test queries both runs share (95% interval of new − base); "
             "✱ = the interval excludes 0.", "",
             "| metric | base | new | new − base | 95% interval | n |", "|---|---|---|---|---|---|"]
    for r in rows:
        mark = " ✱" if r["significant"] else ""
        lines.append(f"| {r['metric']} | {r['base']:.3f} | {r['new']:.3f} | {r['diff']:+.3f}{mark} | "
                     f"[{r['lo']:+.3f}, {r['hi']:+.3f}] | {r['n']} |")
    if not rows:
        lines.append("| (no paired per-query results on one side) | | | | | |")
    return "\n".join(lines) + "\n"


def compare(new_dir: Path, base_dir: Path | None, base_ref: str | None, resamples: int = RESAMPLES, seed: int = 0) -> list[dict]:
    rows = []
    new_q, old_q = read_at(QUERIES, new_dir), read_at(QUERIES, base_dir, base_ref)
    if new_q is not None and old_q is not None:
        rows += compare_retrieval(new_q, old_q, resamples, seed)
    new_c, old_c = read_at(CAPTIONS, new_dir), read_at(CAPTIONS, base_dir, base_ref)
    if new_c is not None and old_c is not None:
        rows += compare_captions(new_c, old_c, resamples, seed)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    side = parser.add_mutually_exclusive_group(required=True)
    side.add_argument("--base-ref", help="git revision of the base run (its committed metrics/)")
    side.add_argument("--base", type=Path, help="repository folder of the base run")
    parser.add_argument("--new", type=Path, default=Path("."), help="repository folder of the new run (default: here)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    rows = compare(args.new, args.base, args.base_ref, args.resamples, args.seed)
    text = markdown(rows, f"Paired comparison vs {args.base_ref or args.base}")
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
