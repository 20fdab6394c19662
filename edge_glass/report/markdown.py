"""Markdown + PNG report of a pipeline run: retrieval vs baseline, R@1 per MRL dim, loss curves,
caption metrics and samples, and the Perceiver-latents ablation from `dvc exp show`.

``python -m edge_glass.report`` (``report/__main__.py``) writes it; ``--html`` writes the HTML report of the
report stage instead (``report/html.py``).
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pandas as pd

TASKS = ["image_to_text", "text_to_image", "audio_to_text", "text_to_audio", "fused_to_text", "text_to_fused"]
LATENTS_PARAM = "align.perceiver.num_latents"
POOL_PARAM = "align.perceiver.pool"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_line_plot(plt, fig, ax, out: Path) -> Path:
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def with_interval(r: dict | None, key: str) -> str:
    """``0.291 [0.250, 0.330]``: a value and its bootstrap 95% interval when the metrics carry one."""
    if not r or r.get(key) is None:
        return "–"
    lo, hi = r.get(f"{key}_ci95_lo"), r.get(f"{key}_ci95_hi")
    return f"{r[key]:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{r[key]:.3f}"


def retrieval_table(retrieval: dict) -> str:
    lines = ["| task | R@1 [95% CI] | R@5 [95% CI] | R@10 | baseline R@1 [95% CI] | baseline R@5 |",
             "|---|---|---|---|---|---|"]
    for task in TASKS:
        r = retrieval["trained"].get(task)
        if r is None:
            continue
        b = retrieval["baseline"].get(task, {})
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {task} | {with_interval(r, 'R@1')} | {with_interval(r, 'R@5')} | {fmt(r.get('R@10'))} | "
                     f"{with_interval(b, 'R@1')} | {fmt(b.get('R@5'))} |")
    return "\n".join(lines)


def source_table(retrieval: dict) -> str:
    """R@1 per source, with what each source's audio is (a spoken caption is partly a speech test)."""
    lines = ["| source | items | audio | task | R@1 [95% CI] |", "|---|---|---|---|---|"]
    for source, res in retrieval.get("by_source", {}).items():
        for task in TASKS:
            if task in res:
                lines.append(f"| {source} | {res['items']} | {res['audio']} | {task} | {with_interval(res[task], 'R@1')} |")
    return "\n".join(lines)


def plot_recall_by_dim(csv: Path, out: Path) -> Path:
    """R@1 per MRL dim and task, each with its 95% interval over test items as a band (when the CSV has
    ``R@1_ci95_lo/hi``: written by evaluate since the item-level bootstrap), so a drop between dims can be
    told from noise."""
    plt = _plt()
    frame = pd.read_csv(csv)
    bands = {"R@1_ci95_lo", "R@1_ci95_hi"} <= set(frame.columns)
    fig, ax = plt.subplots(figsize=(6, 4))
    for task, rows in frame.groupby("task"):
        rows = rows.sort_values("dim")
        line, = ax.plot(rows["dim"], rows["R@1"], marker="o", label=task)
        if bands:
            ax.fill_between(rows["dim"], rows["R@1_ci95_lo"], rows["R@1_ci95_hi"], color=line.get_color(), alpha=0.15,
                            linewidth=0)
    ax.set_xscale("log", base=2)
    title = "Recall@1 vs Matryoshka dim" + (" (bands: 95% interval over test items)" if bands else "")
    ax.set(xlabel="MRL dim", ylabel="R@1 (test)", title=title)
    return save_line_plot(plt, fig, ax, out)


def recall_by_dim_png(repo: Path, out: Path) -> Path | None:
    csv = repo / "metrics" / "recall_by_dim.csv"
    return plot_recall_by_dim(csv, out) if csv.exists() else None


def loss_curve_png(repo: Path, out: Path) -> Path | None:
    return plot_losses({"align": repo / "dvclive" / "align", "decode": repo / "dvclive" / "decode"}, out)


def read_tsv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, sep="\t") if path.exists() else None


def plot_losses(live_dirs: dict[str, Path], out: Path) -> Path | None:
    plt = _plt()
    curves = {name: {k: read_tsv(d / "plots" / "metrics" / rel) for k, rel in
                     (("train", Path("train/loss.tsv")), ("val", Path("val/loss.tsv")), ("val R@1", Path("val/recall_at_1.tsv")))}
              for name, d in live_dirs.items()}
    curves = {n: c for n, c in curves.items() if c["train"] is not None}
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.8), squeeze=False)
    for ax, (name, c) in zip(axes[0], curves.items()):
        ax.plot(c["train"]["step"], c["train"].iloc[:, -1], label="train loss")
        if c["val"] is not None:
            ax.plot(c["val"]["step"], c["val"].iloc[:, -1], label="val loss")
        ax.set(xlabel="step", ylabel="loss", title=name)
        ax.grid(alpha=0.3)
        if c["val R@1"] is not None:
            twin = ax.twinx()
            twin.plot(c["val R@1"]["step"], c["val R@1"].iloc[:, -1], color="tab:green", marker=".", label="val R@1")
            twin.set_ylabel("val R@1")
            twin.legend(loc="center right", fontsize=7)
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def experiments_table(repo: Path) -> pd.DataFrame | None:
    """One row per DVC experiment (and the workspace) with its params and metrics, from `dvc exp show --csv`."""
    proc = subprocess.run(["dvc", "exp", "show", "--csv", "--all-commits"], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return pd.read_csv(io.StringIO(proc.stdout))


def ablation_rows(table: pd.DataFrame) -> pd.DataFrame | None:
    """Perceiver-latent ablation: experiments with pool=perceiver, mean test R@1 over media->text tasks."""
    need = [c for c in table.columns if c.startswith("trained.") and c.endswith("_to_text.R@1")]
    if LATENTS_PARAM not in table.columns or POOL_PARAM not in table.columns or not need:
        return None
    named = table["Experiment"].fillna("").astype(str).str.len() > 0  # experiments, not plain commits
    rows = table[named & (table[POOL_PARAM] == "perceiver")].copy()
    rows[need] = rows[need].apply(pd.to_numeric, errors="coerce")
    rows = rows.dropna(subset=need, how="all")
    if rows.empty:
        return None
    rows["mean media->text R@1"] = rows[need].mean(axis=1)
    keep = ["Experiment", LATENTS_PARAM, *need, "mean media->text R@1"]
    return rows[[c for c in keep if c in rows.columns]].sort_values(LATENTS_PARAM)


def plot_ablation(rows: pd.DataFrame, out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for col in [c for c in rows.columns if c.endswith("R@1")]:
        ax.plot(rows[LATENTS_PARAM].astype(int), rows[col], marker="o", label=col.replace("trained.", ""))
    ax.set(xlabel="Perceiver latents", ylabel="R@1 (test)", title="Perceiver latents ablation")
    return save_line_plot(plt, fig, ax, out)


def build_report(repo: Path, out: Path, experiments: bool = True, base_ref: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    metrics = repo / "metrics"
    retrieval_path = metrics / "retrieval.json"
    if not retrieval_path.exists():
        raise FileNotFoundError(f"{retrieval_path}: run `dvc repro` first")
    retrieval = json.loads(retrieval_path.read_text())
    parts = ["# edge_glass report", "",
             f"Split `{retrieval['split']}`, {retrieval['items']} items. Trained = align model at the largest MRL dim; "
             "baseline = ridge map of frozen pooled features (no training).", "",
             "## Retrieval", "", "Intervals: bootstrap 95% over the test items (each resample draws items with "
             "replacement and keeps all of an item's queries together; "
             f"{retrieval.get('bootstrap', {}).get('resamples', '?')} resamples).", "", retrieval_table(retrieval), ""]
    if retrieval.get("by_source"):
        parts += ["### By source", "", "A caption read aloud (emoji: espeak-ng; Asterisk: a human recording of the "
                  "transcript) makes audio->text partly a test of recognising the caption's own words; only "
                  "sources whose audio is a sound described by the captions measure audio understanding.", "",
                  source_table(retrieval), ""]
    if (metrics / "recall_by_dim.csv").exists():
        plot_recall_by_dim(metrics / "recall_by_dim.csv", out / "recall_by_dim.png")
        parts += ["## R@1 vs MRL dim", "", "![R@1 vs MRL dim](recall_by_dim.png)", ""]
    if plot_losses({"align": repo / "dvclive" / "align", "decode": repo / "dvclive" / "decode"}, out / "loss_curves.png"):
        parts += ["## Loss curves", "", "![loss curves](loss_curves.png)", ""]
    if (metrics / "captions.json").exists():
        caps = json.loads((metrics / "captions.json").read_text())
        summary_path = repo / "data" / "decode" / "decode_summary.json"
        kind = json.loads(summary_path.read_text()).get("kind", "?") if summary_path.exists() else "?"
        parts += ["## Captions", "", f"Decoder: `{kind}`; intervals: bootstrap 95% over items.", "",
                  "| metric | value [95% CI] |", "|---|---|"]
        parts += [f"| {k} | {with_interval(caps, k)} |" for k, v in caps.items()
                  if isinstance(v, float) and "_ci95_" not in k]
        parts += [f"| {k} | {caps[k]} |" for k in ("empty_captions", "items") if k in caps]
        parts.append("")
        samples = metrics / "caption_samples.md"
        if samples.exists():
            parts += ["### Samples", "", *samples.read_text().splitlines()[2:], ""]
    if base_ref:
        from edge_glass.metrics.paired import (
            NotComparable,
            compare,
            markdown,
            not_comparable_markdown,
        )

        title = f"Paired comparison vs `{base_ref}`"
        try:
            parts += [markdown(compare(repo, None, base_ref), title), ""]
        except NotComparable as exc:  # different test sets: say so instead of pairing unrelated queries
            parts += [not_comparable_markdown(str(exc), title), ""]
    if experiments:
        table = experiments_table(repo)
        rows = ablation_rows(table) if table is not None else None
        parts += ["## Perceiver latents ablation", ""]
        if rows is None or rows.empty:
            parts += ["No experiments with `align.perceiver.pool=perceiver` yet: "
                      "`dvc exp run -S +experiment=perceiver_ablation -S 'align.perceiver.num_latents=16,32,64' --queue`"
                      " then `dvc queue start`.", ""]
        else:
            plot_ablation(rows, out / "perceiver_ablation.png")
            parts += [rows.to_markdown(index=False, floatfmt=".3f"), "", "![ablation](perceiver_ablation.png)", ""]
    report = out / "report.md"
    report.write_text("\n".join(parts))
    return report

