"""Run-to-run noise: rerun align, decode and evaluate with N training seeds and report mean ± std.

    python -m edge_glass.tools.seeds --seeds 3                         # the default recipe, seeds 0..2
    python -m edge_glass.tools.seeds --seeds 3 -S +experiment=trimodal_trm --name trimodal_trm
    python -m edge_glass.tools.seeds --collect --name default          # only summarise finished runs

Each seed is a `dvc exp run --temp` (the workspace is left as it is) setting ``align.train.seed`` and
``decode.train.seed``: the training randomness changes (initialisation, batches, dropout) while
``seed`` — and with it the data splits and the test set — stays, so download and preprocess come from
the cache and the spread is that of training alone. The experiments are named ``<name>-seed<k>``;
their metrics are read back with `dvc exp show --csv` and summarised as mean ± sample std over the
seeds in ``metrics/seeds/<name>.json`` and ``.md`` (R@1/R@5 of every task, trained and baseline,
and the caption metrics). Sampling error of the test set itself is the bootstrap interval that
every metric carries; the seed spread is the other half of the noise.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

METRIC_PREFIXES = ("trained.", "baseline.", "CIDEr-D", "BLEU-4", "embedding_similarity", "exact_match")


def run_seed(name: str, seed: int, overrides: list[str]) -> None:
    cmd = ["dvc", "exp", "run", "--temp", "-n", f"{name}-seed{seed}", "-S", f"align.train.seed={seed}",
           "-S", f"decode.train.seed={seed}"]
    for o in overrides:
        cmd += ["-S", o]
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def collect(name: str) -> pd.DataFrame:
    """One row per finished ``<name>-seed<k>`` experiment: its metrics columns (from `dvc exp show --csv`)."""
    # --all-commits: a sweep may span commits (each experiment is listed under the commit it started from)
    proc = subprocess.run(["dvc", "exp", "show", "--csv", "--all-commits"], capture_output=True, text=True, check=True)
    table = pd.read_csv(io.StringIO(proc.stdout))
    rows = table[table["Experiment"].fillna("").astype(str).str.fullmatch(rf"{name}-seed\d+")]
    if "Created" in rows.columns:  # a name run again (an interrupted sweep restarted): its newest run counts
        rows = rows.sort_values("Created").drop_duplicates("Experiment", keep="last")
    keep = [c for c in rows.columns if c.startswith(METRIC_PREFIXES) and "_ci95_" not in c
            and (".R@1" in c or ".R@5" in c or not c.startswith(("trained.", "baseline.")))]
    out = rows[["Experiment", *keep]].copy()
    out[keep] = out[keep].apply(pd.to_numeric, errors="coerce")
    return out.dropna(axis=1, how="all").sort_values("Experiment")


def summarise(rows: pd.DataFrame) -> dict[str, dict]:
    numeric = rows.drop(columns=["Experiment"])
    return {c: {"mean": round(float(numeric[c].mean()), 4), "std": round(float(numeric[c].std(ddof=1)), 4)
                if len(numeric) > 1 else None, "n": int(numeric[c].notna().sum())} for c in numeric.columns}


def markdown(name: str, rows: pd.DataFrame, summary: dict[str, dict]) -> str:
    lines = [f"# Seed spread: {name}", "",
             f"{len(rows)} runs ({', '.join(rows['Experiment'])}): training seed varied, test set fixed. "
             "mean ± sample std over seeds.", "", "| metric | mean ± std | n |", "|---|---|---|"]
    for metric, s in summary.items():
        spread = f" ± {s['std']:.3f}" if s["std"] is not None else ""
        lines.append(f"| {metric} | {s['mean']:.3f}{spread} | {s['n']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 (default 3)")
    parser.add_argument("--name", default="default", help="experiment name prefix and summary file name")
    parser.add_argument("-S", "--set-param", action="append", default=[], dest="overrides",
                        help="extra `dvc exp run -S` override (repeatable), e.g. +experiment=trimodal_trm")
    parser.add_argument("--collect", action="store_true", help="only summarise experiments that already ran")
    parser.add_argument("--out", type=Path, default=Path("metrics/seeds"))
    args = parser.parse_args(argv)
    if not args.collect:
        for seed in range(args.seeds):
            run_seed(args.name, seed, args.overrides)
    rows = collect(args.name)
    if rows.empty:
        print(f"seeds: no finished experiments named {args.name}-seed<k>", file=sys.stderr)
        return 3
    summary = summarise(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps({"runs": list(rows["Experiment"]), "overrides": args.overrides,
                                                            "metrics": summary}, indent=2) + "\n")
    text = markdown(args.name, rows, summary)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
