import shutil

import pandas as pd
from helpers.setup import REPO

from edge_glass.report.markdown import ablation_rows, build_report


def test_report_renders_from_the_committed_metrics(tmp_path):
    """The committed metrics/ and dvclive/ of the default run render to markdown with real PNG plots."""
    repo = tmp_path / "repo"
    for part in ("metrics", "dvclive"):
        shutil.copytree(REPO / part, repo / part)
    report = build_report(repo, tmp_path / "out", experiments=False)
    text = report.read_text()
    assert "| image_to_text |" in text and "## R@1 vs MRL dim" in text and "## Loss curves" in text
    assert "## Captions" in text and "CIDEr-D" in text
    for png in ("recall_by_dim.png", "loss_curves.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ablation_rows_pick_perceiver_experiments_by_latents():
    table = pd.DataFrame({
        "Experiment": ["", "exp-a", "exp-b", "exp-c", None, "exp-d"],
        "align.perceiver.pool": ["mean", "perceiver", "perceiver", "perceiver", "perceiver", "perceiver"],
        "align.perceiver.num_latents": [64, 64, 16, 32, 8, 4],
        "trained.image_to_text.R@1": [0.30, 0.25, 0.20, 0.22, 0.1, "-"],
        "trained.audio_to_text.R@1": [0.40, 0.35, 0.30, "-", 0.1, "-"],
    })
    rows = ablation_rows(table)
    assert rows["align.perceiver.num_latents"].tolist() == [16, 32, 64]
    assert rows["mean media->text R@1"].round(3).tolist() == [0.25, 0.22, 0.30]


def test_recall_by_dim_plot_draws_each_tasks_interval_as_a_band(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from edge_glass.report.markdown import plot_recall_by_dim

    frame = pd.DataFrame({"dim": [64, 128, 64, 128], "task": ["image_to_text"] * 2 + ["text_to_image"] * 2,
                          "R@1": [0.2, 0.3, 0.25, 0.35], "R@1_ci95_lo": [0.15, 0.24, 0.2, 0.3],
                          "R@1_ci95_hi": [0.26, 0.37, 0.31, 0.41]})
    frame.to_csv(tmp_path / "by_dim.csv", index=False)
    bands, fill = [], Axes.fill_between
    monkeypatch.setattr(Axes, "fill_between", lambda self, x, lo, hi, **kw: bands.append((list(x), list(lo), list(hi)))
                        or fill(self, x, lo, hi, **kw))
    out = plot_recall_by_dim(tmp_path / "by_dim.csv", tmp_path / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(bands) == [([64, 128], [0.15, 0.24], [0.26, 0.37]), ([64, 128], [0.2, 0.3], [0.31, 0.41])]
    bands.clear()
    frame.drop(columns=["R@1_ci95_lo", "R@1_ci95_hi"]).to_csv(tmp_path / "old.csv", index=False)  # an older run's CSV
    plot_recall_by_dim(tmp_path / "old.csv", tmp_path / "old.png")
    assert bands == []
