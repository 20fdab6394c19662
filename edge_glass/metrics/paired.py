"""Paired comparison of two evaluated runs (a PR against its base): per metric new - base with a paired
item-level bootstrap interval, refusing runs that scored different test items. ``python -m edge_glass.compare``
is the command; this is the part the report stage uses too."""

from __future__ import annotations

import io
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from edge_glass.metrics.bootstrap import (
    RESAMPLES,
    paired_cluster_difference,
    paired_difference,
)
from edge_glass.metrics.captions import BLEU_COLUMNS, corpus_bleu

QUERIES = "metrics/retrieval_queries.parquet"


CAPTIONS = "metrics/caption_items.parquet"


RETRIEVAL = "metrics/retrieval.json"


KS = (1, 5, 10)


SHOWN = 5  # ids listed per side in messages


class NotComparable(Exception):
    """The two runs scored different test items: a paired difference between them would mean nothing."""


@dataclass
class Comparison:
    rows: list[dict] = field(default_factory=list)  # one paired difference per metric
    unmatched: list[dict] = field(default_factory=list)  # per task: queries (or caption items) one side lacks


def read_bytes_at(path: str, base_dir: Path | None = None, ref: str | None = None) -> bytes | None:
    """A metrics file from a folder or from a git revision; None when that run has none."""
    if ref is not None:
        out = subprocess.run(["git", "show", f"{ref}:{path}"], capture_output=True)
        return out.stdout if out.returncode == 0 else None
    file = (base_dir or Path(".")) / path
    return file.read_bytes() if file.exists() else None


def read_at(path: str, base_dir: Path | None = None, ref: str | None = None) -> pd.DataFrame | None:
    """A metrics parquet from a folder or from a git revision; None when that run has none."""
    data = read_bytes_at(path, base_dir, ref)
    return None if data is None else pd.read_parquet(io.BytesIO(data))


def read_json_at(path: str, base_dir: Path | None = None, ref: str | None = None) -> dict | None:
    data = read_bytes_at(path, base_dir, ref)
    return None if data is None else json.loads(data)


def first(ids, n: int = SHOWN) -> str:
    ids = sorted(map(str, ids))
    return ", ".join(ids[:n]) + (f", … ({len(ids) - n} more)" if len(ids) > n else "")


def item_difference(new_items: set, old_items: set) -> str:
    only_old, only_new = old_items - new_items, new_items - old_items
    return (f"{len(only_old)} items only in base ({first(only_old) or '–'}), "
            f"{len(only_new)} items only in new ({first(only_new) or '–'})")


def check_comparable(new_q: pd.DataFrame | None, old_q: pd.DataFrame | None, new_meta: dict | None,
                     old_meta: dict | None) -> None:
    """Raise NotComparable when the runs scored different test items.

    Both runs carry ``test_items_sha256``: they must agree. A run written before the key existed: the
    query sets of every (model, task) both runs have must agree (tasks only one run has are reported
    as unmatched, not refused: an ablation may drop a medium)."""
    new_sha, old_sha = (new_meta or {}).get("test_items_sha256"), (old_meta or {}).get("test_items_sha256")
    items = lambda q: set(q["item_id"].astype(str)) if q is not None else None  # noqa: E731
    if new_sha and old_sha:
        if new_sha != old_sha:
            detail = item_difference(items(new_q), items(old_q)) if new_q is not None and old_q is not None else \
                "no per-query ranks on one side to name them"
            raise NotComparable(f"the runs scored different test sets (test_items_sha256 base {old_sha[:12]}…, "
                                f"new {new_sha[:12]}…): {detail}")
        return
    if new_q is None or old_q is None:
        return
    keys = ["model", "task", "query"]
    shared = new_q[["model", "task"]].drop_duplicates().merge(old_q[["model", "task"]].drop_duplicates())
    new_k, old_k = (q.merge(shared)[[*keys, "item_id"]] for q in (new_q, old_q))
    joined = new_k.merge(old_k, on=keys, how="outer", indicator=True, suffixes=("_new", "_old"))
    if (joined["_merge"] != "both").any():
        only_old, only_new = joined[joined._merge == "right_only"], joined[joined._merge == "left_only"]
        side = "base" if not old_sha else "new"
        raise NotComparable(
            f"the runs scored different query sets (the {side} run has no test_items_sha256): "
            f"{len(only_old)} queries only in base ({first(only_old['task'] + ' ' + only_old['query'].astype(str))}), "
            f"{len(only_new)} only in new ({first(only_new['task'] + ' ' + only_new['query'].astype(str))}); "
            + item_difference(items(new_k), items(old_k)))


def unmatched_by(joined: pd.DataFrame, group: list[str], key: str, label) -> list[dict]:
    """Per group, the keys only one side has (``joined``: an outer merge with ``indicator=True``)."""
    out = []
    for name, g in joined[joined["_merge"] != "both"].groupby(group, sort=True):
        only_old, only_new = g.loc[g._merge == "right_only", key], g.loc[g._merge == "left_only", key]
        out.append({"what": label(name), "only_base": len(only_old), "only_new": len(only_new),
                    "base_ids": first(only_old), "new_ids": first(only_new)})
    return out


def compare_retrieval(new: pd.DataFrame, old: pd.DataFrame, resamples: int, seed: int) -> Comparison:
    """Paired R@K differences per (model, task) over the queries both runs have, resampling test items."""
    keys = ["model", "task", "query"]
    joined = new[[*keys, "item_id", "rank"]].merge(old[[*keys, "item_id", "rank"]], on=keys, how="outer",
                                                   suffixes=("_new", "_old"), indicator=True)
    result = Comparison(unmatched=unmatched_by(joined, ["model", "task"], "query", lambda mt: f"{mt[0]} {mt[1]} queries"))
    for (model, task), group in joined[joined["_merge"] == "both"].groupby(["model", "task"], sort=True):
        items = group["item_id_new"].astype(str).to_numpy()
        for k in KS:
            hit_new = (group["rank_new"].to_numpy() < k).astype(np.float64)
            hit_old = (group["rank_old"].to_numpy() < k).astype(np.float64)
            res = paired_cluster_difference(items, hit_new, hit_old, resamples=resamples, seed=seed)
            result.rows.append({"metric": f"{model} {task} R@{k}", "base": hit_old.mean(), "new": hit_new.mean(),
                                "n": len(group), "items": len(set(items)), **res})
    return result


def compare_captions(new: pd.DataFrame, old: pd.DataFrame, resamples: int, seed: int) -> Comparison:
    """Paired caption-metric differences over the items both runs captioned (one row per item already)."""
    joined = new.merge(old, on="item_id", how="outer", suffixes=("_new", "_old"), indicator=True)
    result = Comparison(unmatched=unmatched_by(joined.assign(_g="captions"), ["_g"], "item_id", lambda _: "caption items"))
    joined = joined[joined["_merge"] == "both"]
    n = len(joined)
    if not n:
        return result
    for name in ("CIDEr-D", "embedding_similarity", "exact_match"):
        a, b = joined[f"{name}_new"].to_numpy()[:, None], joined[f"{name}_old"].to_numpy()[:, None]
        result.rows.append({"metric": f"captions {name}", "base": b.mean(), "new": a.mean(), "n": n, "items": n,
                            **paired_difference(a, b, lambda sums: sums[:, 0] / n, resamples=resamples, seed=seed)})
    a = joined[[f"{c}_new" for c in BLEU_COLUMNS]].to_numpy()
    b = joined[[f"{c}_old" for c in BLEU_COLUMNS]].to_numpy()
    for order in (1, 4):
        result.rows.append({"metric": f"captions BLEU-{order}", "base": float(corpus_bleu(b.sum(0), order)[0]),
                            "new": float(corpus_bleu(a.sum(0), order)[0]), "n": n, "items": n,
                            **paired_difference(a, b, lambda sums, o=order: corpus_bleu(sums, o), resamples=resamples,
                                                seed=seed)})
    return result


def markdown(comparison: Comparison, title: str) -> str:
    lines = [f"## {title}", "",
             "Paired bootstrap over the test items both runs share (each resample draws the same items for both "
             "runs; 95% interval of new − base); ✱ = the interval excludes 0. n = queries (items).", "",
             "| metric | base | new | new − base | 95% interval | n |", "|---|---|---|---|---|---|"]
    for r in comparison.rows:
        mark = " ✱" if r["significant"] else ""
        lines.append(f"| {r['metric']} | {r['base']:.3f} | {r['new']:.3f} | {r['diff']:+.3f}{mark} | "
                     f"[{r['lo']:+.3f}, {r['hi']:+.3f}] | {r['n']} ({r['items']}) |")
    if not comparison.rows:
        lines.append("| (no paired per-query results on one side) | | | | | |")
    if comparison.unmatched:
        lines += ["", "Not in the comparison (only one run has them):", ""]
        lines += [f"- {u['what']}: {u['only_base']} only in base ({u['base_ids'] or '–'}), "
                  f"{u['only_new']} only in new ({u['new_ids'] or '–'})" for u in comparison.unmatched]
    elif comparison.rows:
        lines += ["", "Every query and caption item of either run is in the comparison."]
    return "\n".join(lines) + "\n"


def not_comparable_markdown(message: str, title: str) -> str:
    return f"## {title}\n\n**Not comparable** (no paired comparison): {message}.\n"


def compare(new_dir: Path, base_dir: Path | None, base_ref: str | None, resamples: int = RESAMPLES,
            seed: int = 0) -> Comparison:
    """Paired differences of every metric; raises NotComparable when the runs scored different test items."""
    if base_ref is not None and subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{base_ref}^{{commit}}"],
                                               capture_output=True).returncode != 0:
        raise ValueError(f"--base-ref {base_ref}: not a git revision here (fetch it first)")
    new_q, old_q = read_at(QUERIES, new_dir), read_at(QUERIES, base_dir, base_ref)
    check_comparable(new_q, old_q, read_json_at(RETRIEVAL, new_dir), read_json_at(RETRIEVAL, base_dir, base_ref))
    result = Comparison()
    if new_q is not None and old_q is not None:
        part = compare_retrieval(new_q, old_q, resamples, seed)
        result.rows += part.rows
        result.unmatched += part.unmatched
    new_c, old_c = read_at(CAPTIONS, new_dir), read_at(CAPTIONS, base_dir, base_ref)
    if new_c is not None and old_c is not None:
        part = compare_captions(new_c, old_c, resamples, seed)
        result.rows += part.rows
        result.unmatched += part.unmatched
    return result
