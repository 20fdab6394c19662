import shutil

import pandas as pd

from helpers.setup import REPO
from edge_glass.report import ablation_rows, build_report


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
